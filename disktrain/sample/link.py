"""Edge batches for link prediction: positive training edges and the negatives drawn for them,
offline, as a pure function of (dataset, config, batch).

Epoch ``e``'s order of the training edges (``link_train``) is a seeded hash permutation of
their indices (:func:`~disktrain.kernels.rmat.permute`, keyed by ``(seed, e)``), so any worker
computes any batch's positives in O(batch), without an O(E) shuffle. Batch ``b`` takes
``batch_size`` of them, then draws ``num_negatives`` destinations per positive (its source
kept; ``shared_negatives``: that many for the whole batch, every positive's source paired
with each), uniformly over the nodes or by in-degree ** 0.75 (word2vec's smoothing), from a
generator seeded with ``(seed, epoch, batch)``. Its seeds, the nodes it samples neighbours
of, are the distinct endpoints of every pair, ascending; the pairs are stored as positions
among them (``label_src``, ``label_dst``), positives first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from disktrain.errors import DataError
from disktrain.kernels.rmat import permutation_bits, permutation_keys, permute_range
from disktrain.kernels.rng import derive_key

NEGATIVE_SAMPLING = ("uniform", "degree")
DEGREE_POWER = 0.75


@dataclass(frozen=True)
class LinkLabels:
    """One edge batch's supervision pairs, as positions among its seeds: ``label_src``,
    ``label_dst`` (int32), the first ``num_pos`` positives, the rest negatives."""

    label_src: np.ndarray
    label_dst: np.ndarray
    num_pos: int

    @property
    def edge_label(self) -> np.ndarray:
        """float32 1 for a positive pair, 0 for a negative one."""
        out = np.zeros(len(self.label_src), np.float32)
        out[:self.num_pos] = 1
        return out


@dataclass(frozen=True)
class LinkBatches:
    """Several edge batches' :class:`LinkLabels`, concatenated (a sample group's arrays)."""

    label_src: np.ndarray
    label_dst: np.ndarray
    label_offsets: np.ndarray
    """int64 (B+1,): batch ``i``'s pairs are ``[label_offsets[i], label_offsets[i+1])``."""
    label_pos: np.ndarray
    """int64 (B,): its positives (they come first)."""

    @classmethod
    def of(cls, labels: list[LinkLabels]) -> LinkBatches:
        offsets = np.zeros(len(labels) + 1, np.int64)
        np.cumsum([len(x.label_src) for x in labels], out=offsets[1:])
        return cls(np.concatenate([x.label_src for x in labels]).astype(np.int32),
                   np.concatenate([x.label_dst for x in labels]).astype(np.int32),
                   offsets, np.asarray([x.num_pos for x in labels], np.int64))

    def batch(self, i: int) -> LinkLabels:
        a, b = self.label_offsets[i], self.label_offsets[i + 1]
        return LinkLabels(self.label_src[a:b], self.label_dst[a:b], int(self.label_pos[i]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"label_src": self.label_src, "label_dst": self.label_dst,
                "label_offsets": self.label_offsets, "label_pos": self.label_pos}


class LinkPlan:
    """The edge batches of every epoch of a :class:`~disktrain.sample.plan.SampleConfig`
    with ``task="link"``: the interface of :class:`~disktrain.sample.plan.SamplePlan`, a
    batch being ``batch_size`` positive edges and their negatives."""

    def __init__(self, dataset, config):
        self.config, self.dataset = config, dataset
        self.edges = dataset.link_edges("train")
        if not len(self.edges):
            raise DataError(f"{dataset.path}: link_train holds no edges; nothing to sample")
        self.num_nodes = dataset.num_nodes

    @property
    def num_items(self) -> int:
        """What an epoch batches: the training edges (``edges_per_epoch`` of them)."""
        return min(len(self.edges), self.config.edges_per_epoch or len(self.edges))

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.num_items // self.config.batch_size)

    @property
    def num_batches(self) -> int:
        return self.batches_per_epoch * self.config.epochs

    @property
    def num_groups(self) -> int:
        return -(-self.num_batches // self.config.group_size)

    @property
    def max_seeds(self) -> int:
        """The most seeds (distinct endpoints) a batch can have."""
        p, k = self.config.batch_size, self.config.num_negatives
        return min(self.num_nodes, 2 * p + (k if self.config.shared_negatives else p * k))

    def group_batches(self, group: int) -> range:
        g = self.config.group_size
        return range(group * g, min((group + 1) * g, self.num_batches))

    def batch_epoch(self, batch: int) -> int:
        return self.config.first_epoch + batch // self.batches_per_epoch

    def epoch_order(self, epoch: int) -> int:
        """The epoch (batches are computed on their own; no order is precomputed)."""
        return epoch

    def batch_seeds(self, batch: int, order=None) -> np.ndarray:
        return self.batch(batch)[0]

    def positives(self, batch: int) -> np.ndarray:
        """(P, 2) ``(src, dst)`` positive edges of the plan's batch ``batch``."""
        i, p = batch % self.batches_per_epoch, self.config.batch_size
        n, last = len(self.edges), self.num_items
        key = derive_key(self.config.seed, self.batch_epoch(batch), 0x11AB)
        picks = permute_range(i * p, min((i + 1) * p, last), n, permutation_keys(key),
                              permutation_bits(n))
        order = np.argsort(picks)  # ascending reads of the (memory-mapped) edges
        out = np.empty((len(picks), 2), np.int64)
        out[order] = self.edges[picks[order]]
        return out

    def negatives(self, batch: int, count: int) -> np.ndarray:
        """``count`` negative destinations of the plan's batch ``batch``."""
        rng = np.random.default_rng([self.config.seed, self.batch_epoch(batch), batch, 0x4E6])
        if self.config.negative_sampling == "uniform":
            return rng.integers(0, self.num_nodes, count, dtype=np.int64)
        cdf = self._degree_cdf
        return np.searchsorted(cdf, rng.random(count) * cdf[-1], side="right").astype(np.int64)

    @cached_property
    def _degree_cdf(self) -> np.ndarray:
        """Cumulative in-degree ** 0.75 over the nodes (a node without in-edges is never
        drawn, as in word2vec)."""
        indptr = np.asarray(self.dataset.indptr)
        weights = np.diff(indptr).astype(np.float64) ** DEGREE_POWER
        cdf = np.cumsum(weights)
        if cdf[-1] <= 0:
            raise DataError(f"{self.dataset.path}: no edges to draw degree-weighted negatives by")
        return cdf

    def batch(self, batch: int) -> tuple[np.ndarray, LinkLabels]:
        """The seeds (distinct endpoints, ascending) of the plan's batch ``batch`` and its
        pairs as positions among them."""
        pos = self.positives(batch)
        p, k = len(pos), self.config.num_negatives
        neg = self.negatives(batch, k if self.config.shared_negatives else p * k)
        seeds, inverse = np.unique(np.concatenate((pos[:, 0], pos[:, 1], neg)),
                                   return_inverse=True)
        src, dst, neg = inverse[:p], inverse[p:2 * p], inverse[2 * p:]
        if self.config.shared_negatives:
            neg_src, neg_dst = np.repeat(src, k), np.tile(neg, p)
        else:
            neg_src, neg_dst = np.repeat(src, k), neg
        return seeds, LinkLabels(np.concatenate((src, neg_src)).astype(np.int32),
                                 np.concatenate((dst, neg_dst)).astype(np.int32), p)
