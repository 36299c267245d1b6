"""The sample plan: which seeds form which batch, and which batches form a unit of work.

Everything here is a pure function of (train ids, config), so any worker (a thread, a Ray
task on another node) can recompute the seeds of a batch group without coordination.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from disktrain.kernels.rng import derive_key


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Offline neighbor sampling of every mini-batch of every epoch."""

    fanouts: tuple[int, ...] = (15, 10, 5)
    """Neighbors per hop, first hop from the seeds first (PyG order); -1 takes all."""
    batch_size: int = 1024
    """Seeds per mini-batch."""
    epochs: int = 1
    """Epochs of batches to pre-sample (training may reuse them cyclically)."""
    seed: int = 0
    """Seeds the per-epoch shuffle and the sampling RNG."""
    group_size: int = 16
    """Batches per unit of work (one task; one resumable step)."""

    def __post_init__(self):
        object.__setattr__(self, "fanouts", tuple(int(f) for f in self.fanouts))
        if not self.fanouts or any(f == 0 or f < -1 for f in self.fanouts):
            raise ValueError(f"fanouts must be positive or -1, got {self.fanouts}")
        for name in ("batch_size", "epochs", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_attrs(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def sampling_key(seed: int, epoch: int) -> int:
    """The RNG key of one epoch's sampling."""
    return derive_key(seed, epoch)


@dataclass(frozen=True)
class SamplePlan:
    """Batches of every epoch: epoch e's train ids shuffled with (seed, e), cut in order."""

    config: SampleConfig
    train_ids: np.ndarray

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.train_ids) // self.config.batch_size)

    @property
    def num_batches(self) -> int:
        return self.batches_per_epoch * self.config.epochs

    @property
    def num_groups(self) -> int:
        return -(-self.num_batches // self.config.group_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Train ids in epoch ``epoch``'s shuffled order."""
        return np.random.default_rng([self.config.seed, epoch]).permutation(self.train_ids)

    def group_batches(self, group: int) -> range:
        """Global batch indices in ``group``."""
        g = self.config.group_size
        return range(group * g, min((group + 1) * g, self.num_batches))

    def batch_seeds(self, batch: int, order: np.ndarray | None = None) -> np.ndarray:
        """Seed ids of global batch ``batch`` (pass the epoch order to avoid reshuffling)."""
        epoch, i = divmod(batch, self.batches_per_epoch)
        if order is None:
            order = self.epoch_order(epoch)
        b = self.config.batch_size
        return order[i * b:(i + 1) * b]

    def batch_epoch(self, batch: int) -> int:
        return batch // self.batches_per_epoch
