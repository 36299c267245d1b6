"""Configuration of a training run: the run's own settings, composed with the configs of the
model, the loader, the optimizer, the gradient aggregation, the attack, the evaluation and the
checkpoints (each defined, with its defaults and validation, next to the code it configures:
the optimizer's here)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from disktrain.errors import ConfigError, check_min
from disktrain.loader.config import LoaderConfig
from disktrain.loader.loader import PLAN_REUSE
from disktrain.models.gnn import ModelConfig
from disktrain.robust import AttackConfig, RobustConfig, aggregate
from disktrain.sample.plan import TASKS
from disktrain.storage.atomic import require_writable
from disktrain.storage.objstore import is_url
from disktrain.storage.remote import stage, staged_path
from disktrain.train.checkpoint import CheckpointConfig
from disktrain.train.evaluate import EvalConfig

ON_NONFINITE = ("stop", "skip")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The optimizer that steps on the aggregated gradient."""

    optimizer: str = "adam"
    """adam, or sgd (plain SGD with ``momentum``: the optimizer of the Byzantine-robustness
    literature, whose step follows the aggregate's scale; Adam normalizes each coordinate's
    step, which blunts attacks that only rescale or reverse the mean)."""
    lr: float = 0.01
    """Learning rate."""
    momentum: float = 0.0
    """SGD momentum (optimizer sgd only), applied to the aggregated gradient."""
    weight_decay: float = 5e-4
    """Weight decay (L2, added to the aggregated gradient by the optimizer)."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"OptimizerConfig.optimizer must be one of {OPTIMIZERS}, got "
                             f"{self.optimizer!r}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"OptimizerConfig.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"OptimizerConfig.momentum must be in [0, 1), got {self.momentum}")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"OptimizerConfig.momentum={self.momentum} applies to optimizer "
                             f"'sgd' only, got optimizer {self.optimizer!r}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"OptimizerConfig.weight_decay must be a finite number >= 0, got "
                             f"{self.weight_decay}")

    def build(self, params) -> torch.optim.Optimizer:
        """The optimizer this config names, over ``params``."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run over a prepared dataset.

        TrainConfig(dataset="papers", epochs=20, model=ModelConfig(model="gat", hidden=256),
                    loader=LoaderConfig(device="cuda"), optimizer=OptimizerConfig(lr=0.003),
                    robust=RobustConfig(aggregator="krum", f=1),
                    checkpoint=CheckpointConfig(every=500))
    """

    dataset: str
    """Dataset directory, prepared by `disktrain prepare`."""
    run_dir: str | None = None
    """Where the run writes: its checkpoints (``run_dir``/checkpoints unless
    ``checkpoint.dir``) and its fresh epochs (a directory of its own under
    ``run_dir``/epochs, removed at the end). None: the dataset directory, which must then be
    writable (a read-only dataset is refused before anything loads)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The node classifier (its input width, classes and layers come from the dataset and
    the sampled fanouts)."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    """The read pipeline, and the device of the run (``loader.device``: "cuda" picks
    LOCAL_RANK's GPU). Training sets ``degrees`` when the model needs them and, when
    ``assemble_threads`` is 0, gives assembly the cores compute leaves free."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """The optimizer and its learning rate, momentum and weight decay."""
    robust: RobustConfig = field(default_factory=RobustConfig)
    """How workers' gradients combine: mean (all-reduce) or a Byzantine-robust rule from
    disktrain.robust (median, trimmed-mean, meamed, krum, multi-krum, bulyan, geomed,
    centered-clipping, flag) tolerating ``f`` faulty workers, after the pre-aggregators
    ``pre_aggregate`` (nnm, bucketing, clip)."""
    attack: AttackConfig | None = None
    """Real attacking workers (disktrain.robust.worker): the ranks ``attack.ranks`` replace
    their gradient before communication (or, with label-flip, train on flipped labels).
    None: every worker is honest."""
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    """How and how often val and test accuracy are evaluated."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Where and how often to checkpoint, and whether to resume."""
    epochs: int = 10
    """Training epochs."""
    task: str = "node"
    """node: classify the seed nodes (cross-entropy on their labels); link: score edges,
    ``model.decoder`` over the model's node embeddings (binary cross-entropy over positive
    and negative pairs), on a dataset prepared with ``--task link``."""
    seed: int = 0
    """Seeds initialization, dropout and the batch order."""
    worker_momentum: float = 0.0
    """Each worker sends the running average of its gradients, m = beta m + (1 - beta) g, with
    this beta, instead of the gradient (disktrain.robust.momentum; 0: off). A robust rule over
    these averages withstands attacks it cannot over single gradients; the Byzantine-robustness
    literature and ByzFL's benchmark train with beta 0.9 and an SGD without momentum of its
    own. Checkpointed per worker."""
    plan_reuse: str = "fresh"
    """Epochs beyond the E that `disktrain prepare` sampled. fresh: each is sampled and
    packed afresh while the one before trains (``disktrain.loader.fresh``), so every epoch
    sees new samples; cycle: epoch e reuses pre-sampled epoch e mod E; pool: every epoch
    draws its batches from the whole pre-sampled pool (as DiskGNN)."""
    prepare_ahead: int = 1
    """With plan_reuse "fresh": epochs prepared ahead of the one training (each is an epoch
    of samples and packed rows on disk)."""
    compute_threads: int = 0
    """Torch intra-op threads for compute (0: on a CPU every core, but one while fresh
    epochs are prepared in the background; on a GPU, or under a launcher's OMP_NUM_THREADS,
    torch's default)."""
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
        for f in dataclasses.fields(self):
            kind, value = _COMPONENTS.get(f.name), getattr(self, f.name)
            if kind is not None and not isinstance(value, kind) and \
                    not (value is None and f.name in _OPTIONAL):
                raise ValueError(f"TrainConfig.{f.name} must be a {kind.__name__}, got "
                                 f"{value!r}")
        for name, allowed in (("plan_reuse", PLAN_REUSE), ("on_nonfinite", ON_NONFINITE),
                              ("task", TASKS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}")
        check_min(self, 1, "epochs", "prepare_ahead", owner="TrainConfig.")
        if not 0 <= self.worker_momentum < 1:
            raise ValueError(f"TrainConfig.worker_momentum must be in [0, 1), got "
                             f"{self.worker_momentum}")
        check_min(self, 0, "seed", "compute_threads", owner="TrainConfig.")
        check_min(self, 1, "max_batches", owner="TrainConfig.")

    @property
    def writes_to(self) -> Path:
        """The directory the run writes to: ``run_dir``, else the dataset's (for a dataset on
        object storage, ``<its staged copy>.run`` on this node, beside the copy
        :func:`~disktrain.storage.remote.stage` replaces when the dataset is published again)."""
        if self.run_dir is None and is_url(self.dataset):
            staged = staged_path(self.dataset)
            return staged.with_name(f"{staged.name}.run")
        return Path(self.run_dir or self.dataset)

    def staged(self) -> TrainConfig:
        """This run on the dataset's copy staged on this node, writing to :attr:`writes_to`,
        when ``dataset`` is a URL (staged first, once per node); else itself."""
        if not is_url(self.dataset):
            return self
        return replace(self, dataset=str(stage(self.dataset)), run_dir=str(self.writes_to))

    def check_writable(self, fresh_epochs: bool) -> None:
        """Refuse (ConfigError), before anything loads, a run that could not write where it
        writes: its checkpoints, its fresh epochs (``fresh_epochs``: it will prepare some) and
        its metrics. A read-only dataset needs ``run_dir``."""
        run_dir = "give the run a writable directory with --run-dir DIR (TrainConfig.run_dir)"
        checkpoints = self.checkpoint.directory(self.writes_to)
        places = [(checkpoints, f"the run's checkpoints go to {checkpoints}",
                   "give a writable --checkpoint-dir DIR (CheckpointConfig.dir)"
                   if self.checkpoint.dir else run_dir)]
        if fresh_epochs:
            epochs = self.writes_to / "epochs"
            places.append((self.writes_to, f"the run's fresh epochs go to {epochs}", run_dir))
        if self.metrics and not is_url(self.metrics):
            places.append((Path(self.metrics).parent, f"the run's metrics go to {self.metrics}",
                           "give a writable --metrics FILE"))
        for path, what, fix in places:
            require_writable(path, what, fix)

    def check_world_size(self, world_size: int) -> None:
        """Refuse (ConfigError) what ``world_size`` workers cannot run: attacking ranks that
        do not exist or leave no honest one, a robust rule on one process, or more faulty
        workers than the rule tolerates among ``world_size``."""
        if self.attack is not None:
            try:
                self.attack.check_world_size(world_size)
            except ValueError as e:
                raise ConfigError(f"byzantine ranks (--byzantine-ranks, attack.ranks) "
                                  f"{','.join(map(str, self.attack.ranks))}: {e}") from e
        aggregator = self.robust.aggregator
        if aggregator == "mean":
            return
        if world_size < 2:
            raise ConfigError(f"aggregator {aggregator!r} combines the gradients of several "
                              "workers and needs >= 2 (torchrun --nproc_per_node, or --workers); "
                              "one process would train with the plain mean")
        try:  # the rule's own requirement check (n against f), on a stack of zeros
            aggregate(torch.zeros((world_size, 1)), self.robust)
        except ValueError as e:
            raise ConfigError(f"aggregator {aggregator!r} with f={self.robust.f} on "
                              f"{world_size} workers: {e}") from e


_COMPONENTS = {"model": ModelConfig, "loader": LoaderConfig, "optimizer": OptimizerConfig,
               "robust": RobustConfig, "attack": AttackConfig, "evaluation": EvalConfig,
               "checkpoint": CheckpointConfig}
"""TrainConfig's fields that hold another component's config, and its class."""
_OPTIONAL = {"attack"}
"""The components that may be None."""
