"""The sample plan: which seeds form which batch, and which batches form a unit of work.

Everything here is a pure function of (train ids, config), so any worker (a thread, a Ray
task on another node) can recompute the seeds of a batch group without coordination.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from disktrain.errors import DataError, check_min
from disktrain.kernels.rng import derive_key
from disktrain.sample.link import NEGATIVE_SAMPLING, LinkPlan
from disktrain.storage.dataset import TypedDataset

SPLITS = ("train", "val", "test")
TASKS = ("node", "link")


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Offline neighbor sampling of every mini-batch of every epoch."""

    fanouts: tuple[int, ...] = (15, 10, 5)
    """Neighbors per hop, first hop from the seeds first (PyG order); -1 takes all."""
    batch_size: int = 1024
    """Seeds per mini-batch (link prediction: positive edges per batch)."""
    epochs: int = 1
    """Epochs of batches to pre-sample (training may reuse them cyclically)."""
    first_epoch: int = 0
    """The store's first epoch: it holds epochs ``first_epoch`` .. ``first_epoch + epochs - 1``
    of the run, the same batches a store sampled from epoch 0 holds for them (training
    prepares fresh epochs one store at a time)."""
    split: str = "train"
    """Whose seeds are batched: the train split, or val/test for packed evaluation."""
    seed: int = 0
    """Seeds the per-epoch shuffle and the sampling RNG."""
    group_size: int = 16
    """Batches per unit of work (one task; one resumable step)."""
    relation_fanouts: tuple = ()
    """Typed graphs: ``(relation, fanouts)`` pairs (or a dict) giving a relation its own
    neighbors per hop (``0``: not sampled at that hop) instead of ``fanouts``, as PyG's
    ``num_neighbors`` dict; a relation is named ``src__rel__dst``, or ``rel`` alone where
    no other relation has that name."""
    task: str = "node"
    """"node": batches of seed nodes (``split``'s); "link": batches of the dataset's training
    edges (``link_train``) and negatives drawn for them (:mod:`disktrain.sample.link`)."""
    num_negatives: int = 1
    """Link prediction: negative destinations drawn per positive edge (its source kept), or
    per batch with ``shared_negatives``."""
    negative_sampling: str = "uniform"
    """Link prediction: negatives drawn "uniform" over the nodes, or by in-"degree" ** 0.75."""
    edges_per_epoch: int = 0
    """Link prediction: train each epoch on this many of the training edges, a different
    random subset every epoch (0: all of them), as a LinkNeighborLoader over a sampled
    ``edge_label_index``; bounds an epoch of a graph of billions of edges."""
    shared_negatives: bool = False
    """Link prediction: one set of ``num_negatives`` destinations per batch, paired with
    every positive's source (fewer nodes to sample per batch) instead of one per edge."""

    def __post_init__(self):
        object.__setattr__(self, "fanouts", tuple(int(f) for f in self.fanouts))
        if not self.fanouts or any(f == 0 or f < -1 for f in self.fanouts):
            raise ValueError(f"fanouts must be positive or -1, got {self.fanouts}")
        pairs = self.relation_fanouts
        pairs = tuple((str(n), tuple(int(f) for f in fs))
                      for n, fs in (pairs.items() if isinstance(pairs, dict) else pairs))
        object.__setattr__(self, "relation_fanouts", pairs)
        for name, fs in pairs:
            if len(fs) != len(self.fanouts) or any(f < -1 for f in fs):
                raise ValueError(f"relation_fanouts[{name!r}] must be {len(self.fanouts)} "
                                 f"ints >= -1 (one per hop, as fanouts), got {list(fs)}")
        check_min(self, 1, "batch_size", "epochs", "group_size", "num_negatives")
        check_min(self, 0, "seed", "first_epoch", "edges_per_epoch")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got "
                             f"{self.negative_sampling!r}")
        if self.task == "link" and (self.split != "train" or self.relation_fanouts):
            raise ValueError("task 'link' batches the training edges of a graph of one node "
                             "type: split must be 'train' and relation_fanouts empty")

    def to_attrs(self) -> dict:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out["relation_fanouts"] = [[n, list(fs)] for n, fs in self.relation_fanouts]
        return out

    def fanout_matrix(self, relations: list[tuple[str, str, str]]) -> np.ndarray:
        """int64 (hops, relations): each relation's neighbors per hop."""
        out = np.tile(np.asarray(self.fanouts, np.int64)[:, None], (1, len(relations)))
        full = ["__".join(r) for r in relations]
        for name, fs in self.relation_fanouts:
            hits = [i for i, r in enumerate(relations) if name in (full[i], r[1])]
            if len(hits) != 1:
                raise ValueError(f"relation_fanouts: {name!r} names "
                                 f"{'no' if not hits else 'more than one'} relation of the "
                                 f"dataset (relations: {full})")
            out[:, hits[0]] = fs
        return out


def sampling_key(seed: int, epoch: int) -> int:
    """The RNG key of one epoch's sampling."""
    return derive_key(seed, epoch)


@dataclass(frozen=True)
class SamplePlan:
    """Batches of every epoch: epoch e's seed ids (the config's split) shuffled with
    (seed, e), cut in order. Batch ``b`` of the plan belongs to epoch ``first_epoch + b //
    batches_per_epoch`` of the run."""

    config: SampleConfig
    train_ids: np.ndarray
    """The seed ids (those of ``config.split``)."""

    @classmethod
    def of(cls, dataset, config: SampleConfig) -> SamplePlan | LinkPlan:
        """The plan of ``config`` over ``dataset`` (a :class:`~disktrain.storage.dataset.Dataset`):
        a :class:`~disktrain.sample.link.LinkPlan` for link prediction."""
        if config.task == "link":
            if isinstance(dataset, TypedDataset):
                raise DataError(f"{dataset.path}: link prediction on a typed graph is not "
                                "supported yet (one node type only)")
            return LinkPlan(dataset, config)
        return cls(config, dataset.split(config.split))

    @property
    def max_seeds(self) -> int:
        """The most seeds a batch has."""
        return self.config.batch_size

    @property
    def num_items(self) -> int:
        """What an epoch batches: its seed nodes."""
        return len(self.train_ids)

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.num_items // self.config.batch_size)

    @property
    def num_batches(self) -> int:
        return self.batches_per_epoch * self.config.epochs

    @property
    def num_groups(self) -> int:
        return -(-self.num_batches // self.config.group_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Seed ids in (run) epoch ``epoch``'s shuffled order."""
        return np.random.default_rng([self.config.seed, epoch]).permutation(self.train_ids)

    def group_batches(self, group: int) -> range:
        """Global batch indices in ``group``."""
        g = self.config.group_size
        return range(group * g, min((group + 1) * g, self.num_batches))

    def batch_seeds(self, batch: int, order: np.ndarray | None = None) -> np.ndarray:
        """Seed ids of global batch ``batch`` (pass the epoch order to avoid reshuffling)."""
        i = batch % self.batches_per_epoch
        if order is None:
            order = self.epoch_order(self.batch_epoch(batch))
        b = self.config.batch_size
        return order[i * b:(i + 1) * b]

    def batch_epoch(self, batch: int) -> int:
        """The run epoch of the plan's batch ``batch``."""
        return self.config.first_epoch + batch // self.batches_per_epoch
