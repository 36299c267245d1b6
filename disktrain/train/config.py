"""Configuration of a training run."""

from __future__ import annotations

from dataclasses import dataclass

from disktrain.models.gnn import MODELS
from disktrain.robust import RobustConfig

PLAN_REUSE = ("cycle", "pool")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run over a prepared dataset."""

    dataset: str
    """Dataset directory, prepared by `disktrain prepare`."""
    model: str = "sage"
    """One of sage, gcn, gat (mlp: a features-only baseline)."""
    epochs: int = 10
    """Training epochs."""
    seed: int = 0
    """Seeds initialization, dropout and the batch order."""
    hidden: int = 128
    """Hidden units per layer (for gat: all heads together; must divide by heads)."""
    heads: int = 4
    """Attention heads (gat only)."""
    dropout: float = 0.5
    """Dropout between layers."""
    input_dropout: float = 0.0
    """Dropout on the input features."""
    lr: float = 0.01
    """Adam learning rate."""
    weight_decay: float = 5e-4
    """Adam weight decay."""
    plan_reuse: str = "cycle"
    """cycle: epoch e trains on pre-sampled epoch e mod E; pool: every epoch draws its
    batches from the whole pre-sampled pool (as DiskGNN)."""
    eval_every: int = 1
    """Evaluate validation and test accuracy every this many epochs (and after the last)."""
    eval_batch_size: int = 4096
    """Seeds per evaluation batch (evaluation samples online with the same kernels)."""
    device: str = "cpu"
    """Torch device of this worker ("cuda" picks LOCAL_RANK's GPU)."""
    prefetch: int = 2
    """Batches in flight between pipeline stages."""
    read_threads: int = 2
    """Threads reading packed ranges."""
    compute_threads: int = 0
    """Torch intra-op threads for compute (0: on a CPU every core but one, which the loader
    keeps; on a GPU, or under a launcher's OMP_NUM_THREADS, torch's default)."""
    aggregator: str = "mean"
    """How workers' gradients combine: mean (all-reduce) or a Byzantine-robust rule from
    disktrain.robust (median, trimmed-mean, krum, multi-krum, geomed, flag)."""
    byzantine_f: int = 0
    """Faulty workers the robust rule tolerates (trimmed-mean and krum drop that many)."""
    flag_subspace: int = 0
    """The flag aggregator's subspace dimension r (0: the number of workers)."""
    checkpoint_dir: str | None = None
    """Where checkpoints go (default: DATASET/checkpoints)."""
    checkpoint_every: int = 0
    """Also checkpoint every this many batches inside an epoch (0: at epoch ends only)."""
    resume: bool = False
    """Continue from the latest checkpoint."""
    metrics: str | None = None
    """JSON-lines file receiving one record per epoch."""
    max_batches: int | None = None
    """Stop each epoch after this many batches (smoke tests and benchmarks)."""
    progress: bool = True
    """Show a progress bar per epoch (rank 0)."""

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.plan_reuse not in PLAN_REUSE:
            raise ValueError(f"plan_reuse must be one of {PLAN_REUSE}, got {self.plan_reuse!r}")
        for name in ("epochs", "hidden", "heads", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.byzantine_f < 0:
            raise ValueError(f"byzantine_f must be >= 0, got {self.byzantine_f}")
        if self.flag_subspace < 0:
            raise ValueError(f"flag_subspace must be >= 0, got {self.flag_subspace}")
        self.robust()  # validates the aggregator name
        if self.compute_threads < 0:
            raise ValueError(f"compute_threads must be >= 0, got {self.compute_threads}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")

    def robust(self) -> RobustConfig:
        """The gradient aggregation this run asks for."""
        return RobustConfig(aggregator=self.aggregator, f=self.byzantine_f,
                            subspace=self.flag_subspace)
