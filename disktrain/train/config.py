"""Configuration of a training run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from disktrain.errors import ConfigError
from disktrain.models.gnn import MODELS
from disktrain.robust import RobustConfig, aggregate

PLAN_REUSE = ("fresh", "cycle", "pool")
ON_NONFINITE = ("stop", "skip")
EVAL_MODES = ("auto", "packed", "online")
DEVICE_TYPES = ("cpu", "cuda")


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
    plan_reuse: str = "fresh"
    """Epochs beyond the E that `disktrain prepare` sampled. fresh: each is sampled and
    packed afresh while the one before trains (``disktrain.train.fresh``), so every epoch
    sees new samples; cycle: epoch e reuses pre-sampled epoch e mod E; pool: every epoch
    draws its batches from the whole pre-sampled pool (as DiskGNN)."""
    prepare_ahead: int = 1
    """With plan_reuse "fresh": epochs prepared ahead of the one training (each is an epoch
    of samples and packed rows on disk)."""
    eval_every: int = 1
    """Evaluate validation and test accuracy every this many epochs (and after the last)."""
    evaluation: str = "auto"
    """How val and test are evaluated. packed: their batches as `disktrain prepare` sampled
    and packed them, read through the training pipeline; online: sampled now, features read
    from the raw array; auto: packed where prepared, else online."""
    eval_batch_size: int = 4096
    """Seeds per batch of online evaluation."""
    device: str = "cpu"
    """Torch device of this worker ("cuda" picks LOCAL_RANK's GPU)."""
    prefetch: int = 2
    """Batches in flight between pipeline stages."""
    read_threads: int = 2
    """Threads reading packed ranges."""
    compute_threads: int = 0
    """Torch intra-op threads for compute (0: on a CPU every core, but one while fresh
    epochs are prepared in the background; on a GPU, or under a launcher's OMP_NUM_THREADS,
    torch's default)."""
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
    keep_checkpoints: int = 2
    """Checkpoint files kept, newest first: the newest and, by default, one to fall back on
    when the newest cannot be read."""
    resume: bool = False
    """Continue from the newest checkpoint in rank 0's checkpoint_dir that loads (every rank
    resumes from it; refused when written by another number of workers)."""
    metrics: str | None = None
    """JSON-lines file receiving one record per epoch."""
    max_batches: int | None = None
    """Stop each epoch after this many batches (smoke tests and benchmarks)."""
    on_nonfinite: str = "stop"
    """A step whose loss or (synchronized) gradient is not finite: stop (an error naming the
    epoch and batch) or skip (no optimizer update; counted as skipped_steps)."""
    progress: bool = True
    """Show a progress bar per epoch (rank 0)."""

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        for name, allowed in (("plan_reuse", PLAN_REUSE), ("on_nonfinite", ON_NONFINITE),
                              ("evaluation", EVAL_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "hidden", "heads", "eval_every", "eval_batch_size", "prefetch",
                     "read_threads", "keep_checkpoints", "prepare_ahead"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model == "gat" and self.hidden % self.heads:
            raise ValueError(f"hidden must be divisible by heads for model 'gat', got "
                             f"hidden={self.hidden}, heads={self.heads}")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("seed", "byzantine_f", "flag_subspace", "compute_threads",
                     "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1, got {self.max_batches}")
        self.robust()  # validates the aggregator name
        if self.byzantine_f and self.aggregator == "mean":
            raise ValueError(f"byzantine_f={self.byzantine_f} needs a robust aggregator "
                             "(the mean tolerates no faulty worker); pick one with aggregator")
        if self.flag_subspace and self.aggregator != "flag":
            raise ValueError(f"flag_subspace={self.flag_subspace} applies to aggregator 'flag' "
                             f"only, got aggregator {self.aggregator!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in DEVICE_TYPES or (device.type == "cpu"
                                                                 and device.index is not None):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")

    def robust(self) -> RobustConfig:
        """The gradient aggregation this run asks for."""
        return RobustConfig(aggregator=self.aggregator, f=self.byzantine_f,
                            subspace=self.flag_subspace)

    def check_world_size(self, world_size: int) -> None:
        """Refuse (ConfigError) an aggregation ``world_size`` workers cannot run: a robust rule
        on one process, or more faulty workers than the rule tolerates among ``world_size``."""
        if self.aggregator == "mean":
            return
        if world_size < 2:
            raise ConfigError(f"aggregator {self.aggregator!r} combines the gradients of several "
                              "workers and needs >= 2 (torchrun --nproc_per_node, or --workers); "
                              "one process would train with the plain mean")
        try:  # the rule's own requirement check (n against f), on a stack of zeros
            aggregate(torch.zeros((world_size, 1)), self.robust())
        except ValueError as e:
            raise ConfigError(f"aggregator {self.aggregator!r} with byzantine_f="
                              f"{self.byzantine_f} on {world_size} workers: {e}") from e
