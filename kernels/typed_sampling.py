"""Multi-layer neighbor sampling over a typed graph: a CSR per relation, per-relation fanouts,
per-type relabeling. The typed twin of :mod:`disktrain.kernels.sampling` (same randomness,
same picks; with one type and one relation, the same batches).

The graph: node types ``0..T-1`` own the global ids ``[type_offsets[t], type_offsets[t+1])``;
relation ``r`` (``rel_src[r] -> rel_dst[r]``) is an in-neighbor CSR over its dst type's local
ids (``indptrs[r]``, length ``n_dst + 1``) whose entries are src-type local ids
(``indices[r]``).

Layout of a batch (:class:`TypedSampledBatch`; PyG's hetero sampler output):

* ``nodes``: global ids grouped by type in type order; within a type, in order of first
  appearance: the batch's seeds of that type first (in the given order), then the nodes first
  reached at hop 1, hop 2, ... ``type_counts[t, l]`` is the number of nodes of type ``t`` known
  after hop ``l`` (cumulative); type ``t``'s segment of ``nodes`` starts at
  ``type_starts[t]`` and is ``type_counts[t, L]`` long.
* hop ``l`` (1..L), relation ``r``: the dst nodes are every node of type ``rel_dst[r]`` known
  after hop ``l - 1`` (its positions ``[0, type_counts[d, l-1])``; with ``frontier_only``, only
  those first reached at hop ``l - 1``, the seeds at hop 1); each gets its own sample of
  ``fanouts[l-1, r]`` in-neighbors along ``r`` (``-1``: all, ``0``: the relation is not
  sampled at that hop). Relations are sampled in order ``r = 0..R-1``, dst nodes in position
  order, picks in Floyd order; a src node not known yet is appended to its type's list then.
  Edges ``edge_src[e] -> edge_dst[e]`` are positions within the src and dst types' lists
  (int32), hop-major then relation-major: hop ``l``, relation ``r`` are
  ``[edge_offsets[(l-1)*R + r], edge_offsets[(l-1)*R + r + 1])``.

Randomness: the sample of node ``v`` (global id) at hop ``l`` along relation ``r`` is a pure
function of ``(key, l, r, v)`` and its row: stream ``stream_key(hop_key_l ^ (GOLDEN * r), v)``
with ``hop_key_l = stream_key(key, l)`` as in :mod:`disktrain.kernels.sampling` (relation 0's
stream is the homogeneous sampler's), sampling without replacement as there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rng import GOLDEN, stream_key
from .sampling import _check_fanouts, _floyd_small

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class TypedSampledBatch:
    """One sampled typed batch (views into a :class:`TypedSampledBatches` or a sample store
    group)."""

    nodes: np.ndarray
    """int64 global ids, grouped by type (see the module docstring)."""
    type_counts: np.ndarray
    """int64 (T, L+1): nodes of each type known after each hop."""
    edge_src: np.ndarray
    """int32 positions in the src type's node list."""
    edge_dst: np.ndarray
    """int32 positions in the dst type's node list."""
    edge_offsets: np.ndarray
    """int64 (L*R+1,): hop ``l``, relation ``r``: ``[o[(l-1)*R + r], o[(l-1)*R + r + 1])``."""
    index: int = 0

    @property
    def num_types(self) -> int:
        return self.type_counts.shape[0]

    @property
    def num_hops(self) -> int:
        return self.type_counts.shape[1] - 1

    @property
    def num_relations(self) -> int:
        return (self.edge_offsets.shape[0] - 1) // max(1, self.num_hops)

    @property
    def type_starts(self) -> np.ndarray:
        """int64 (T+1,): where each type's segment of ``nodes`` starts."""
        return np.concatenate(([0], np.cumsum(self.type_counts[:, -1])))

    def type_nodes(self, t: int) -> np.ndarray:
        """Global ids of type ``t``'s nodes in the batch, in their positions' order."""
        starts = self.type_starts
        return self.nodes[starts[t]:starts[t + 1]]

    @property
    def num_seeds(self) -> int:
        return int(self.type_counts[:, 0].sum())

    def hop_relation(self, hop: int, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(edge_src, edge_dst)`` of relation ``r`` at hop ``hop`` (1-based)."""
        if not 1 <= hop <= self.num_hops or not 0 <= r < self.num_relations:
            raise ValueError(f"hop must be in [1, {self.num_hops}] and relation in "
                             f"[0, {self.num_relations}), got {hop}, {r}")
        k = (hop - 1) * self.num_relations + r
        lo, hi = self.edge_offsets[k], self.edge_offsets[k + 1]
        return self.edge_src[lo:hi], self.edge_dst[lo:hi]

    def layers(self) -> list[tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]]:
        """Per GNN layer in model order (the farthest hop first): ``(edges per relation,
        num_src per type, num_dst per type)``."""
        c = self.type_counts
        return [([self.hop_relation(hop, r) for r in range(self.num_relations)], c[:, hop],
                 c[:, hop - 1]) for hop in range(self.num_hops, 0, -1)]


@dataclass(frozen=True)
class TypedSampledBatches:
    """The flat result of :func:`sample_typed_batches` for ``B`` batches."""

    nodes: np.ndarray
    node_offsets: np.ndarray
    """int64 (B+1,)."""
    type_counts: np.ndarray
    """int64 (B, T, L+1)."""
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_offsets: np.ndarray
    """int64 (B*L*R+1,): batch ``b``'s edges start at ``o[b*L*R]``."""

    @property
    def num_batches(self) -> int:
        return self.type_counts.shape[0]

    def batch(self, b: int, index: int | None = None) -> TypedSampledBatch:
        if not 0 <= b < self.num_batches:
            raise ValueError(f"batch index must be in [0, {self.num_batches}), got {b}")
        per = (self.edge_offsets.shape[0] - 1) // self.num_batches
        offsets = self.edge_offsets[b * per:(b + 1) * per + 1]
        lo, hi = offsets[0], offsets[-1]
        return TypedSampledBatch(
            nodes=self.nodes[self.node_offsets[b]:self.node_offsets[b + 1]],
            type_counts=self.type_counts[b], edge_src=self.edge_src[lo:hi],
            edge_dst=self.edge_dst[lo:hi], edge_offsets=offsets - lo,
            index=b if index is None else index)


def sample_typed_batches(indptrs, indices, rel_src, rel_dst, type_offsets, seeds: np.ndarray,
                         seed_offsets: np.ndarray, fanouts, key: int, *,
                         frontier_only: bool = False) -> TypedSampledBatches:
    """Sample ``L`` hops of every relation for each of ``B`` batches of seeds.

    Args:
        indptrs, indices: per relation its in-neighbor CSR (int64 row pointers over the dst
            type's local ids; int32 or int64 src-type local ids), memmaps allowed.
        rel_src, rel_dst: int (R,) type of each relation's src and dst nodes.
        type_offsets: int64 (T+1,) global id ranges of the types.
        seeds: int64 global ids of all batches, concatenated; unique within a batch.
        seed_offsets: int64 (B+1,).
        fanouts: int (L, R): ``fanouts[l-1, r]`` picks per dst node at hop ``l`` along ``r``.
        key: the random key, as for :func:`disktrain.kernels.sampling.sample_batches`.
        frontier_only: at hop ``l`` sample only the nodes first reached at hop ``l - 1``.
    """
    rel_src, rel_dst = np.asarray(rel_src, np.int64), np.asarray(rel_dst, np.int64)
    type_offsets = np.asarray(type_offsets, np.int64)
    fanouts = np.asarray(fanouts)
    if fanouts.ndim != 2 or fanouts.shape[1] != len(rel_src):
        raise ValueError(f"fanouts must be (hops, relations) = (L, {len(rel_src)}), got shape "
                         f"{fanouts.shape}")
    fanouts = _check_fanouts(fanouts.reshape(-1)).reshape(fanouts.shape)
    ukey = np.uint64(int(key) & _MASK64)
    num_hops = fanouts.shape[0]
    hop_keys = [int(stream_key(ukey, hop)) for hop in range(1, num_hops + 1)]
    out = [_sample_one(indptrs, indices, rel_src, rel_dst, type_offsets,
                       seeds[seed_offsets[b]:seed_offsets[b + 1]], fanouts, hop_keys,
                       frontier_only) for b in range(len(seed_offsets) - 1)]
    node_offsets = np.concatenate(([0], np.cumsum([len(o[0]) for o in out]))).astype(np.int64)
    edge_counts = np.concatenate([np.diff(o[4]) for o in out]) if out else np.zeros(0)
    return TypedSampledBatches(
        nodes=np.concatenate([o[0] for o in out]) if out else np.zeros(0, np.int64),
        node_offsets=node_offsets,
        type_counts=np.stack([o[1] for o in out]) if out else
        np.zeros((0, len(type_offsets) - 1, num_hops + 1), np.int64),
        edge_src=np.concatenate([o[2] for o in out]).astype(np.int32) if out else
        np.zeros(0, np.int32),
        edge_dst=np.concatenate([o[3] for o in out]).astype(np.int32) if out else
        np.zeros(0, np.int32),
        edge_offsets=np.concatenate(([0], np.cumsum(edge_counts))).astype(np.int64))


def _sample_one(indptrs, indices, rel_src, rel_dst, type_offsets, seeds, fanouts, hop_keys,
                frontier_only):
    num_types, (num_hops, num_rels) = len(type_offsets) - 1, fanouts.shape
    lists: list[list[int]] = [[] for _ in range(num_types)]
    pos: dict[int, int] = {}
    counts = np.zeros((num_types, num_hops + 1), np.int64)
    for v in seeds.tolist():
        t = int(np.searchsorted(type_offsets, v, side="right")) - 1
        if v in pos:
            raise ValueError(f"seeds: a batch repeats seed {v} (seeds must be unique within "
                             "a batch)")
        pos[v] = len(lists[t])
        lists[t].append(v)
    counts[:, 0] = [len(x) for x in lists]
    src, dst, offsets = [], [], [0]
    picks = np.empty(max(1, int(fanouts.max())), np.int64)
    for hop in range(1, num_hops + 1):
        for r in range(num_rels):
            f, s, d = int(fanouts[hop - 1, r]), int(rel_src[r]), int(rel_dst[r])
            lo = int(counts[d, hop - 2]) if frontier_only and hop > 1 else 0
            indptr, ind = indptrs[r], indices[r]
            stream_base = np.uint64((hop_keys[hop - 1] ^ (GOLDEN_INT * r)) & _MASK64)
            for i in range(lo, int(counts[d, hop - 1]) if f else lo):
                v = lists[d][i]
                row = v - int(type_offsets[d])
                start, deg = int(indptr[row]), int(indptr[row + 1] - indptr[row])
                k = deg if f < 0 or deg <= f else f
                if k == deg:
                    chosen = range(deg)
                else:
                    _floyd_small(np.uint64(stream_key(stream_base, v)), deg, k, picks)
                    chosen = picks[:k].tolist()
                for p in chosen:
                    u = int(ind[start + p]) + int(type_offsets[s])
                    if u not in pos:
                        pos[u] = len(lists[s])
                        lists[s].append(u)
                    src.append(pos[u])
                    dst.append(i)
            offsets.append(len(src))
        counts[:, hop] = [len(x) for x in lists]
    nodes = np.array([v for x in lists for v in x], np.int64)
    return nodes, counts, np.array(src, np.int64), np.array(dst, np.int64), np.array(offsets)


GOLDEN_INT = int(GOLDEN)
