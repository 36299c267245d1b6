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

The implementation is the homogeneous sampler's (threads over batches, one serial GIL-free
Numba kernel per batch, work buffers reused across batches and calls, prefetched CSR reads, one
hash table per batch), over every relation's CSR: see :func:`_sample_typed_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from .rng import GOLDEN, stream_key
from .sampling import (
    _AHEAD,
    _EMPTY,
    _check_csr,
    _check_fanouts,
    _check_seeds,
    _empty_table,
    _gather,
    _grow,
    _insert_known,
    _pick,
    _pick_work,
    _prefetch,
    _run_batches,
    _sampled_degrees,
    _table_bits,
)

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
            type's local ids; int32 or int64 src-type local ids, one dtype for all relations),
            memmaps allowed (never copied); the indices are not validated.
        rel_src, rel_dst: int (R,) type of each relation's src and dst nodes.
        type_offsets: int64 (T+1,) global id ranges of the types.
        seeds: int64 global ids of all batches, concatenated; unique within a batch.
        seed_offsets: int64 (B+1,).
        fanouts: int (L, R): ``fanouts[l-1, r]`` picks per dst node at hop ``l`` along ``r``.
        key: the random key, as for :func:`disktrain.kernels.sampling.sample_batches`.
        frontier_only: at hop ``l`` sample only the nodes first reached at hop ``l - 1``.

    Returns:
        :class:`TypedSampledBatches`. Runs on ``numba.get_num_threads()`` threads, one batch
        each at a time, as :func:`~disktrain.kernels.sampling.sample_batches` does; the result
        does not depend on their number.
    """
    indptrs, indices, rel_src, rel_dst, type_offsets = _check_graph(indptrs, indices, rel_src,
                                                                    rel_dst, type_offsets)
    seeds, seed_offsets = _check_seeds(seeds, seed_offsets, int(type_offsets[-1]))
    fanouts = np.asarray(fanouts)
    if fanouts.ndim != 2 or fanouts.shape[1] != len(rel_src):
        raise ValueError(f"fanouts must be (hops, relations) = (L, {len(rel_src)}), got shape "
                         f"{fanouts.shape}")
    fanouts = _check_fanouts(fanouts.reshape(-1)).reshape(fanouts.shape)
    num_hops, num_rels = fanouts.shape
    ukey = np.uint64(int(key) & _MASK64)
    rel_keys = np.array([[(int(stream_key(ukey, hop)) ^ (int(GOLDEN) * r)) & _MASK64
                          for r in range(num_rels)] for hop in range(1, num_hops + 1)],
                        np.uint64)
    num_batches = seed_offsets.shape[0] - 1
    type_counts = np.zeros((num_batches, len(type_offsets) - 1, num_hops + 1), np.int64)

    def sample(b: int, *work) -> tuple:
        counts, offsets, duplicate, too_big, buffers = _sample_typed_batch(
            indptrs, indices, rel_src, rel_dst, type_offsets,
            seeds[seed_offsets[b]:seed_offsets[b + 1]], fanouts, rel_keys, frontier_only, *work)
        type_counts[b] = counts
        # in sampling's layout, each (hop, relation) one of its hops; only the last hop count
        # (the batch's number of nodes) is read there
        return np.full(offsets.shape[0], counts[:, -1].sum()), offsets, duplicate, too_big, buffers

    flat = _run_batches(num_batches, sample, num_hops * num_rels, "sample_typed")
    return TypedSampledBatches(nodes=flat.nodes, node_offsets=flat.node_offsets,
                               type_counts=type_counts, edge_src=flat.edge_src,
                               edge_dst=flat.edge_dst, edge_offsets=flat.edge_offsets)


def _check_graph(indptrs, indices, rel_src, rel_dst, type_offsets) -> tuple:
    """The validated graph: CSRs as tuples of read-only views (one Numba type for every
    relation, so that the kernel indexes them by a runtime relation number), int64 arrays."""
    type_offsets = np.asarray(type_offsets)
    if type_offsets.ndim != 1 or type_offsets.shape[0] < 2 or \
            not np.issubdtype(type_offsets.dtype, np.integer) or type_offsets[0] != 0 or \
            (np.diff(type_offsets) < 0).any():
        raise ValueError(f"type_offsets must be T+1 ints rising from 0, got {type_offsets!r}")
    type_offsets = type_offsets.astype(np.int64)
    num_types = type_offsets.shape[0] - 1
    rels = []
    for name, arr in (("rel_src", rel_src), ("rel_dst", rel_dst)):
        arr = np.asarray(arr)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be a non-empty 1-d int array (a type per relation), "
                             f"got {arr!r}")
        bad = np.flatnonzero((arr < 0) | (arr >= num_types))
        if bad.size:
            raise ValueError(f"{name}: relation {bad[0]} has type {arr[bad[0]]}, outside "
                             f"[0, {num_types})")
        rels.append(arr.astype(np.int64))
    rel_src, rel_dst = rels
    num_rels = rel_src.shape[0]
    if rel_dst.shape[0] != num_rels or len(indptrs) != num_rels or len(indices) != num_rels:
        raise ValueError(f"rel_src, rel_dst, indptrs and indices must have one entry per "
                         f"relation, got {num_rels}, {rel_dst.shape[0]}, {len(indptrs)}, "
                         f"{len(indices)}")
    csrs = []
    for r in range(num_rels):
        try:
            indptr, ind = _check_csr(indptrs[r], indices[r])
        except ValueError as e:
            raise ValueError(f"relation {r}: {e}") from None
        d = rel_dst[r]
        num_dst = type_offsets[d + 1] - type_offsets[d]
        if indptr.shape[0] != num_dst + 1:
            raise ValueError(f"relation {r}: indptr has {indptr.shape[0]} row pointers, but its "
                             f"dst type {d} has {num_dst} nodes (expected {num_dst + 1})")
        csrs.append((_read_only(indptr), _read_only(ind)))
    dtypes = sorted({str(ind.dtype) for _, ind in csrs})
    if len(dtypes) > 1:
        raise ValueError(f"indices: every relation's indices must have one dtype, got {dtypes}")
    return (tuple(c[0] for c in csrs), tuple(c[1] for c in csrs), rel_src, rel_dst,
            type_offsets)


def _read_only(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


@nb.njit(nogil=True, cache=True)
def _sample_typed_batch(indptrs, indices, rel_src, rel_dst, type_offsets, seeds, fanouts,
                        rel_keys, frontier_only, buffers, node_base, edge_base):
    """Sample and relabel one typed batch, every hop and relation, into work buffers reused
    across batches (those of :func:`disktrain.kernels.sampling._sample_batch`, used alike).

    The type-grouped node list lives at ``nodes[node_base:]``, type ``t``'s segment from
    ``starts[t]``; the hash table maps a global id to its position in its type's segment. A
    hop reads the dst nodes from the segments, samples every relation into one flat list of
    CSR offsets (``rows`` holds the dst nodes' row starts, lengths and sampled-degree prefix
    sums, relation after relation), gathers the picked ids, relabels them (new ones compacted
    at the front of ``ids``, a run of one src type per relation) and then merges the new nodes
    into the segments. Returns ``(type_counts, edge_offsets, repeated seed or -1, hop whose
    local ids would overflow int32 or 0, buffers)``.
    """
    table, ids, rows, node_buf, src_buf, dst_buf = buffers
    num_types = type_offsets.shape[0] - 1
    num_hops, num_rels = fanouts.shape
    counts = np.zeros((num_types, num_hops + 1), np.int64)
    edge_offsets = np.zeros(num_hops * num_rels + 1, np.int64)
    n = seeds.shape[0]
    # the seeds, grouped by type
    seed_types = np.empty(n, np.int64)
    for i in range(n):
        t = 0
        while type_offsets[t + 1] <= seeds[i]:
            t += 1
        seed_types[i] = t
        counts[t, 0] += 1
    starts = np.zeros(num_types + 1, np.int64)
    for t in range(num_types):
        starts[t + 1] = starts[t] + counts[t, 0]
    known = counts[:, 0].copy()  # nodes of each type known so far
    fill = starts[:num_types].copy()
    node_buf = _grow(node_buf, node_base + n, node_base)
    nodes = node_buf[node_base:]
    for i in range(n):
        nodes[fill[seed_types[i]]] = seeds[i]
        fill[seed_types[i]] += 1
    src = src_buf[edge_base:]
    dst = dst_buf[edge_base:]
    num_edges = 0
    duplicate = -1
    too_big = 0
    work = _pick_work(max(1, fanouts.max()))
    dst_lo = np.zeros(num_rels, np.int64)  # per relation: its first dst position
    rel_rows = np.zeros(num_rels + 1, np.int64)  # and where its dst nodes start in rows
    new_end = np.zeros(num_rels, np.int64)  # where its new src nodes end in ids
    bits = 0  # the hash table has 2**bits slots; 0: not built yet for this batch
    for hop in range(1, num_hops + 1):
        m = 0
        for r in range(num_rels):
            d = rel_dst[r]
            dst_lo[r] = counts[d, hop - 2] if frontier_only and hop > 1 else 0
            rel_rows[r] = m
            if fanouts[hop - 1, r] != 0:
                m += counts[d, hop - 1] - dst_lo[r]
        rel_rows[num_rels] = m
        rows = _grow(rows, 3 * m + 1, 0)
        row_start = rows[:m]
        row_len = rows[m:2 * m]
        eptr = rows[2 * m:]
        eptr[0] = 0
        for r in range(num_rels):
            d = rel_dst[r]
            lo, hi = rel_rows[r], rel_rows[r + 1]
            first = starts[d] + dst_lo[r] - lo  # rows[i] is the dst node nodes[first + i]
            _sampled_degrees(indptrs[r], nodes, first, type_offsets[d], lo, hi,
                             fanouts[hop - 1, r], row_start, row_len, eptr)
        e = eptr[m]
        if n + e >= 2**31 or num_edges + e >= 2**31:
            too_big = hop
            break
        ids = _grow(ids, e, 0)
        src_buf = _grow(src_buf, edge_base + num_edges + e, edge_base + num_edges)
        dst_buf = _grow(dst_buf, edge_base + num_edges + e, edge_base + num_edges)
        node_buf = _grow(node_buf, node_base + n + e, node_base + n)
        nodes = node_buf[node_base:]
        src = src_buf[edge_base:]
        dst = dst_buf[edge_base:]
        # the hash table stays at most half full; rebuilt from the known nodes when it grows
        if (1 << bits) < 2 * (n + e):
            bits = _table_bits(n + e)
            table = _empty_table(table, bits)
            for t in range(num_types):
                duplicate = _insert_known(table, bits, nodes[starts[t]:], known[t])
                if duplicate >= 0:
                    break
            if duplicate >= 0:
                break
        # picks as CSR offsets, then per relation one gather loop of prefetched loads
        for r in range(num_rels):
            lo, hi = rel_rows[r], rel_rows[r + 1]
            first = starts[rel_dst[r]] + dst_lo[r] - lo
            _pick(ids, eptr, row_start, row_len, lo, hi, nodes, first, rel_keys[hop - 1, r], work)
        for r in range(num_rels):
            _gather(ids, indices[r], eptr[rel_rows[r]], eptr[rel_rows[r + 1]],
                    type_offsets[rel_src[r]])
        # relabel: known ids map to their position, new ones are appended to their type
        mask = (1 << bits) - 1
        shift = np.uint64(64 - bits)
        num_new = 0
        for r in range(num_rels):
            lo, hi = rel_rows[r], rel_rows[r + 1]
            first = dst_lo[r] - lo
            for i in range(lo, hi):
                dst[num_edges + eptr[i]:num_edges + eptr[i + 1]] = first + i
            position = known[rel_src[r]]  # of the next new node of the src type
            for j in range(eptr[lo], eptr[hi]):
                if j + _AHEAD < e:
                    _prefetch(table, 2 * np.int64((np.uint64(ids[j + _AHEAD]) * GOLDEN) >> shift))
                g = ids[j]
                h = np.int64((np.uint64(g) * GOLDEN) >> shift)
                while True:
                    slot_key = table[2 * h]
                    if slot_key == g:
                        src[num_edges + j] = table[2 * h + 1]
                        break
                    if slot_key == _EMPTY:
                        table[2 * h] = g
                        table[2 * h + 1] = position
                        src[num_edges + j] = position
                        position += 1
                        ids[num_new] = g  # num_new <= j: ids[j] is read already
                        num_new += 1
                        break
                    h = (h + 1) & mask
            known[rel_src[r]] = position
            new_end[r] = num_new
            edge_offsets[(hop - 1) * num_rels + r + 1] = num_edges + eptr[hi]
        # merge: the segments move up (the last type first) and take their new nodes
        n += num_new
        end = n
        for t in range(num_types - 1, -1, -1):
            begin = end - known[t]
            old = counts[t, hop - 1]
            if begin > starts[t]:
                for i in range(old - 1, -1, -1):  # downwards: the ranges may overlap
                    nodes[begin + i] = nodes[starts[t] + i]
            at = begin + old
            for r in range(num_rels):
                if rel_src[r] == t:
                    lo = new_end[r - 1] if r > 0 else 0
                    nodes[at:at + new_end[r] - lo] = ids[lo:new_end[r]]
                    at += new_end[r] - lo
            starts[t] = begin
            end = begin
        num_edges += e
        counts[:, hop] = known
    return counts, edge_offsets, duplicate, too_big, (table, ids, rows, node_buf, src_buf,
                                                      dst_buf)
