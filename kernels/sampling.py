"""Multi-layer uniform neighbor sampling with per-batch relabeling, for offline mini-batch plans.

One call samples ``B`` mini-batches. The graph is an in-neighbor CSR (row ``v`` lists the
sources ``u`` of the edges ``u -> v``); its arrays may be ``np.memmap`` and are never copied.

Layout of the result (:class:`SampledBatches`), PyG/DGL style, per batch ``b``:

* ``nodes``: the seeds first (in the given order), then the nodes first reached at hop 1 in
  order of first appearance, then those first reached at hop 2, ... ``hop_counts[b, l]`` is the
  number of nodes known after hop ``l`` (``hop_counts[b, 0]`` = number of seeds;
  ``nodes[:hop_counts[b, L]]`` are the input nodes whose features the batch reads).
* hop ``l`` (1..L) is the bipartite block of GNN layer ``L - l + 1``: its dst nodes are
  ``nodes[:hop_counts[b, l-1]]``, its src nodes ``nodes[:hop_counts[b, l]]``, and every dst
  node has its own sample of ``fanouts[l-1]`` in-neighbors (DGL's ``MultiLayerNeighborSampler``
  semantics: a node present at several hops is sampled independently at each of them).
  Edges are COO in local ids, ``edge_src[e] -> edge_dst[e]``, grouped by dst in dst order.
  With ``frontier_only=True`` hop ``l`` samples only the nodes first reached at hop ``l - 1``
  (the seeds at hop 1), as ``torch_sparse.neighbor_sample`` does for PyG: every node is sampled
  once and the union of all hops' edges is PyG's sampled subgraph.

Randomness: the sample of node ``v`` at hop ``l`` is a pure function of ``(key, l, v)`` and the
row of ``v`` (a counter-based splitmix64 stream), so results do not depend on the number of
threads, nor on how batches are grouped into calls. Sampling is without replacement over the
row's entries: a row of length ``d <= fanout`` (or ``fanout == -1``) is taken whole, in CSR
order; otherwise Floyd's algorithm picks ``fanout`` distinct entries uniformly.

Parallelism is over batches: ``numba.get_num_threads()`` Python threads each take the next
batch and run one serial, GIL-free Numba kernel on it (per hop: sampled degrees and their
prefix sum, the picks, a prefetching gather of the picked ids, then relabeling through an
open-addressing hash table that lives for the whole batch). No barrier joins the threads, which
keeps both cores busy on a machine shared with other work; fork-join ``prange`` passes (two
barriers per pass and hop) measured 2-3x slower there than a single thread.

Memory: a thread writes its batches one after another into work buffers (the hash table, the
node list, the edge lists, ...) that outlive the batch and the call: a finished call leaves them
to the next one (up to ``_IDLE_BYTES``), so sampling writes into memory already paged in, and
the result's arrays are filled by one copy, sized from the counts. Fresh arrays per batch, grown
hop by hop, then concatenated, spent a quarter to a third of the sampler's CPU in the kernel
faulting in and zeroing fresh pages (2 MiB ones for NumPy's arrays of 4 MiB and more).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .rng import GOLDEN, stream_key, uniform_below

_SMALL_FANOUT = 32
"""Up to this many picks, Floyd's duplicate check scans the picks; above it, a hash set."""
_EMPTY = -1
_AHEAD = 16
"""Prefetch distance (loop iterations) of the random CSR and hash-table reads."""
_NO_BUFFERS = (np.empty(0, np.int64),) * 4 + (np.empty(0, np.int32),) * 2
"""Empty work buffers ``(table, ids, rows, nodes, src, dst)`` (see :func:`_sample_batch`)."""
_IDLE_BYTES = 512 << 20
"""At most this many bytes of work buffers wait between calls for the next one: enough for two
threads' share of 64 batches of 1024 seeds, fanouts 15,10,5 (about 230 MiB each)."""
_idle: list = []
"""Work buffer sets left by finished calls."""
_idle_lock = threading.Lock()


@dataclass(frozen=True)
class SampledBatch:
    """One sampled batch (views into a :class:`SampledBatches`, or into a group of the sample
    store, which stores the same arrays): the one batch type of the sampler, the sample store
    and online evaluation."""

    nodes: np.ndarray
    """int64 global ids: seeds, then new nodes of hop 1, hop 2, ... (the input nodes)."""
    hop_counts: np.ndarray
    """int64 (L+1,): nodes known after each hop."""
    edge_src: np.ndarray
    """int32 local src ids of every hop's edges, hop after hop."""
    edge_dst: np.ndarray
    """int32 local dst ids, aligned with ``edge_src``."""
    edge_offsets: np.ndarray
    """int64 (L+1,): hop ``l``'s edges are ``[edge_offsets[l-1], edge_offsets[l])``."""
    index: int = 0
    """The batch's number among those it was sampled or stored with."""

    @property
    def input_nodes(self) -> np.ndarray:
        """The global ids of the feature rows the batch reads (``nodes``), seeds first."""
        return self.nodes

    @property
    def num_seeds(self) -> int:
        return int(self.hop_counts[0])

    @property
    def seeds(self) -> np.ndarray:
        return self.nodes[:self.num_seeds]

    @property
    def blocks(self) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
        """Per GNN layer ``(edge_src, edge_dst, num_src, num_dst)``, in model order: the
        farthest hop's block first."""
        h = self.hop_counts
        return [(*self.hop(hop), int(h[hop]), int(h[hop - 1])) for hop in range(len(h) - 1, 0, -1)]

    def hop(self, hop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(edge_src, edge_dst)`` of hop ``hop`` (1-based; the block of layer L - hop + 1)."""
        num_hops = self.edge_offsets.shape[0] - 1
        if not 1 <= hop <= num_hops:
            raise ValueError(f"hop must be in [1, {num_hops}], got {hop}")
        lo, hi = self.edge_offsets[hop - 1], self.edge_offsets[hop]
        return self.edge_src[lo:hi], self.edge_dst[lo:hi]


@dataclass(frozen=True)
class SampledBatches:
    """The flat result of :func:`sample_batches` for ``B`` batches and ``L`` hops."""

    nodes: np.ndarray
    """int64: every batch's node ids, batch after batch."""
    node_offsets: np.ndarray
    """int64 (B+1,): batch ``b``'s nodes are ``nodes[node_offsets[b]:node_offsets[b+1]]``."""
    hop_counts: np.ndarray
    """int64 (B, L+1): cumulative node counts per hop."""
    edge_src: np.ndarray
    """int32 local src ids (``< hop_counts[b, l]``)."""
    edge_dst: np.ndarray
    """int32 local dst ids (``< hop_counts[b, l-1]``)."""
    edge_offsets: np.ndarray
    """int64 (B*L+1,): edges of batch ``b``, hop ``l`` are ``[o[b*L+l-1], o[b*L+l])``."""

    @property
    def num_batches(self) -> int:
        return self.hop_counts.shape[0]

    @property
    def num_hops(self) -> int:
        return self.hop_counts.shape[1] - 1

    def batch(self, b: int, index: int | None = None) -> SampledBatch:
        """Batch ``b`` as views, with edge offsets relative to the batch; numbered ``index``
        (default: ``b``)."""
        if not 0 <= b < self.num_batches:
            raise ValueError(f"batch index must be in [0, {self.num_batches}), got {b}")
        num_hops = self.num_hops
        offsets = self.edge_offsets[b * num_hops:(b + 1) * num_hops + 1]
        lo, hi = offsets[0], offsets[-1]
        return SampledBatch(
            nodes=self.nodes[self.node_offsets[b]:self.node_offsets[b + 1]],
            hop_counts=self.hop_counts[b],
            edge_src=self.edge_src[lo:hi],
            edge_dst=self.edge_dst[lo:hi],
            edge_offsets=offsets - lo,
            index=b if index is None else index,
        )


def sample_batches(indptr: np.ndarray, indices: np.ndarray, seeds: np.ndarray,
                   seed_offsets: np.ndarray, fanouts, key: int, *,
                   frontier_only: bool = False) -> SampledBatches:
    """Sample ``L = len(fanouts)`` hops of neighbors for each of ``B`` batches of seeds.

    Args:
        indptr: int64 (N+1,) in-neighbor CSR row pointers (may be a memmap).
        indices: int32 or int64 (E,) source ids of each row (may be a memmap); not validated.
        seeds: int64 seed ids of all batches, concatenated; unique within a batch.
        seed_offsets: int64 (B+1,), batch ``b``'s seeds are ``seeds[o[b]:o[b+1]]``.
        fanouts: ints (L,), PyG order (``fanouts[0]`` is the first hop out of the seeds);
            ``-1`` takes every neighbor.
        key: the random key (any int, taken modulo 2**64), e.g.
            ``disktrain.kernels.rng.derive_key(seed, epoch)``.
        frontier_only: sample at each hop only the nodes first reached at the previous hop
            (torch_sparse/PyG semantics) instead of every node known so far (DGL blocks).

    Returns:
        :class:`SampledBatches` (layout in this module's docstring). Runs on
        ``numba.get_num_threads()`` threads; the result does not depend on that number.
    """
    indptr, indices = _check_csr(indptr, indices)
    seeds, seed_offsets = _check_seeds(seeds, seed_offsets, indptr.shape[0] - 1)
    fanouts = _check_fanouts(fanouts)
    ukey = np.uint64(int(key) & ((1 << 64) - 1))
    hop_keys = np.array([stream_key(ukey, hop) for hop in range(1, fanouts.shape[0] + 1)],
                        np.uint64)
    return _run_batches(seed_offsets.shape[0] - 1, lambda b, *work: _sample_batch(
        indptr, indices, seeds[seed_offsets[b]:seed_offsets[b + 1]], fanouts, hop_keys,
        frontier_only, *work), fanouts.shape[0], "sample_batches")


def load_kernels(index_dtype=np.int32) -> None:
    """Load (or compile) :func:`sample_batches`' kernels for a read-only CSR with
    ``index_dtype`` ids (as a dataset holds its CSR), by sampling a graph of one node, and
    :func:`count_rows` for its batches' nodes: a process's first call otherwise pays it
    (about a third of a second from Numba's cache), which a thread can overlap with reading
    the CSR."""
    indptr, indices = np.zeros(2, np.int64), np.zeros(0, index_dtype)
    indptr.flags.writeable = indices.flags.writeable = False
    got = sample_batches(indptr, indices, np.zeros(1, np.int64), np.array([0, 1], np.int64),
                         (1,), 0)
    count_rows(np.zeros(1, np.int32), got.nodes)


@nb.njit(nogil=True, cache=True)
def count_rows(counts, rows):
    """``counts[r] += 1`` for each ``r`` of ``rows``, repeats included (the access counts:
    a fancy-indexed ``+=`` takes several passes over ``counts``' random rows); a row outside
    ``counts`` is an ``IndexError``, as in NumPy."""
    n = len(counts)
    for r in rows:
        if r < 0 or r >= n:
            raise IndexError("count_rows: a row outside the counts")
        counts[r] += 1


def _run_batches(num_batches: int, sample, num_hops: int, name: str) -> SampledBatches:
    """``sample(b, buffers, node_base, edge_base)`` for every batch ``b`` on
    ``numba.get_num_threads()`` threads (``name``), each writing its batches one after another
    into work buffers of its own, then the batches :func:`_assemble`-d. ``sample`` returns
    what :func:`_sample_batch` does, with ``num_hops`` hops."""
    results: list = [None] * num_batches
    spools: dict = {}  # per thread: [work buffers, where its next batch's nodes, edges go]

    def run(b: int) -> None:
        spool = spools.get(threading.get_ident())
        if spool is None:
            spool = spools[threading.get_ident()] = [_take_buffers(), 0, 0]
        buffers, node_base, edge_base = spool
        *out, spool[0] = sample(b, buffers, node_base, edge_base)
        results[b] = (*out, spool, node_base, edge_base)
        spool[1] += out[0][-1]  # hop_counts[-1]: the batch's nodes
        spool[2] += out[1][-1]  # and edges

    try:
        num_threads = min(nb.get_num_threads(), num_batches)
        if num_threads <= 1:
            for b in range(num_batches):
                run(b)
        else:
            with ThreadPoolExecutor(num_threads, thread_name_prefix=name) as pool:
                list(pool.map(run, range(num_batches)))
        return _assemble(results, num_hops)
    finally:
        _leave_buffers([spool[0] for spool in spools.values()])


def _take_buffers() -> tuple:
    """Work buffers left by an earlier call, or empty ones."""
    with _idle_lock:
        return _idle.pop() if _idle else _NO_BUFFERS


def _leave_buffers(sets: list) -> None:
    """Leave work buffer sets to later calls, as many as a call can use, within the budget."""
    with _idle_lock:
        total = sum(a.nbytes for kept in _idle for a in kept)
        for buffers in sets:
            size = sum(a.nbytes for a in buffers)
            if len(_idle) < nb.config.NUMBA_NUM_THREADS and total + size <= _IDLE_BYTES:
                _idle.append(buffers)
                total += size


def _assemble(results: list, num_hops: int) -> SampledBatches:
    """Copy the batches out of the threads' work buffers into the flat batch-major layout.

    The large arrays come from :func:`_empty` (4 KiB pages, see there), sized from the counts.
    """
    for b, (_, _, duplicate, too_big, *_) in enumerate(results):
        if duplicate >= 0:
            raise ValueError(f"seeds: batch {b} repeats seed {duplicate} "
                             "(seeds must be unique within a batch)")
        if too_big:
            raise ValueError(f"batch {b} reaches 2**31 nodes or edges at hop {too_big}: local "
                             "ids must fit int32 (lower the fanouts or the batch size)")
    num_batches = len(results)
    hop_counts = np.zeros((num_batches, num_hops + 1), np.int64)
    per_hop = np.zeros((num_batches, num_hops), np.int64)
    for b, (counts, hop_offsets, *_) in enumerate(results):
        hop_counts[b] = counts
        per_hop[b] = np.diff(hop_offsets)
    node_offsets = np.zeros(num_batches + 1, np.int64)
    np.cumsum(hop_counts[:, -1], out=node_offsets[1:])
    edge_offsets = np.zeros(num_batches * num_hops + 1, np.int64)
    np.cumsum(per_hop.reshape(-1), out=edge_offsets[1:])

    nodes = _empty(node_offsets[-1], np.int64)
    edge_src = _empty(edge_offsets[-1], np.int32)
    edge_dst = _empty(edge_offsets[-1], np.int32)
    for b, (*_, (buffers, *_), node_base, edge_base) in enumerate(results):
        lo, hi = node_offsets[b], node_offsets[b + 1]
        nodes[lo:hi] = buffers[3][node_base:node_base + hi - lo]
        lo, hi = edge_offsets[b * num_hops], edge_offsets[(b + 1) * num_hops]
        edge_src[lo:hi] = buffers[4][edge_base:edge_base + hi - lo]
        edge_dst[lo:hi] = buffers[5][edge_base:edge_base + hi - lo]
    return SampledBatches(nodes=nodes, node_offsets=node_offsets, hop_counts=hop_counts,
                          edge_src=edge_src, edge_dst=edge_dst, edge_offsets=edge_offsets)


# Validation -----------------------------------------------------------------------------------

def _check_csr(indptr, indices) -> tuple[np.ndarray, np.ndarray]:
    indptr, indices = np.asarray(indptr), np.asarray(indices)  # memmap -> ndarray view, no copy
    if indptr.ndim != 1 or indptr.dtype != np.int64 or indptr.shape[0] < 1:
        raise ValueError(f"indptr must be a 1-d int64 array of N+1 row pointers, got "
                         f"{indptr.dtype} of shape {indptr.shape}")
    if indices.ndim != 1 or indices.dtype not in (np.int32, np.int64):
        raise ValueError(f"indices must be a 1-d int32 or int64 array, got {indices.dtype} of "
                         f"shape {indices.shape}")
    if not (indptr.flags.c_contiguous and indices.flags.c_contiguous):
        raise ValueError("indptr and indices must be contiguous")
    if int(indptr[-1]) != indices.shape[0]:
        raise ValueError(f"indptr[-1] is {int(indptr[-1])} but indices has {indices.shape[0]} "
                         "entries")
    return indptr, indices


def _check_seeds(seeds, seed_offsets, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    seeds = np.ascontiguousarray(seeds)
    seed_offsets = np.ascontiguousarray(seed_offsets)
    if seeds.ndim != 1 or seeds.dtype != np.int64:
        raise ValueError(f"seeds must be a 1-d int64 array, got {seeds.dtype} of shape "
                         f"{seeds.shape}")
    if seed_offsets.ndim != 1 or seed_offsets.dtype != np.int64 or seed_offsets.shape[0] < 1:
        raise ValueError(f"seed_offsets must be a 1-d int64 array of B+1 offsets, got "
                         f"{seed_offsets.dtype} of shape {seed_offsets.shape}")
    if seed_offsets[0] != 0 or seed_offsets[-1] != seeds.shape[0] or \
            (np.diff(seed_offsets) < 0).any():
        raise ValueError(f"seed_offsets must rise from 0 to len(seeds)={seeds.shape[0]}, got "
                         f"{seed_offsets[:8].tolist()}{'...' if seed_offsets.size > 8 else ''}")
    if seeds.size and (seeds.min() < 0 or seeds.max() >= num_nodes):
        bad = seeds[(seeds < 0) | (seeds >= num_nodes)][0]
        raise ValueError(f"seeds: id {int(bad)} is outside [0, {num_nodes})")
    return seeds, seed_offsets


def _check_fanouts(fanouts) -> np.ndarray:
    arr = np.asarray(fanouts)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or \
            (arr < -1).any():
        raise ValueError(f"fanouts must be a non-empty list of ints >= -1 (-1: all neighbors), "
                         f"got {fanouts!r}")
    return arr.astype(np.int64)


# Kernels --------------------------------------------------------------------------------------

@intrinsic
def _prefetch(typingctx, arr, index):
    """Hint the CPU to fetch ``arr[index]`` into cache (``llvm.prefetch``: read, no fault)."""
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        # read access, low temporal locality (1), data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(1), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, index), codegen


@nb.njit(nogil=True, cache=True, inline="always")
def _floyd_small(stream, d, k, picks):
    """k distinct offsets in [0, d) into picks[:k]; duplicates found by scanning the picks."""
    counter = 0
    for i in range(k):
        j = d - k + i
        t, counter = uniform_below(stream, counter, j + 1)
        for q in range(i):
            if picks[q] == t:
                t = j  # j was never picked: every earlier pick is < j
                break
        picks[i] = t


@nb.njit(nogil=True, cache=True, inline="always")
def _floyd_hashed(stream, d, k, picks, table, shift, slots):
    """As :func:`_floyd_small`, with an open-addressing set of ``2**(64 - shift)`` slots.

    ``table`` is all empty on entry and on exit (``slots`` remembers what to clear).
    """
    mask = table.shape[0] - 1
    counter = 0
    for i in range(k):
        j = d - k + i
        t, counter = uniform_below(stream, counter, j + 1)
        h = np.int64((np.uint64(t) * GOLDEN) >> shift)
        while table[h] != _EMPTY:
            if table[h] == t:
                t = j
                h = np.int64((np.uint64(t) * GOLDEN) >> shift)
                while table[h] != _EMPTY:
                    h = (h + 1) & mask
                break
            h = (h + 1) & mask
        table[h] = t
        slots[i] = h
        picks[i] = t
    for i in range(k):
        table[slots[i]] = _EMPTY


@nb.njit(nogil=True, cache=True)
def _empty(size, dtype):
    """``np.empty(size, dtype)`` from Numba's allocator (``malloc``), without NumPy's advice.

    NumPy advises allocations of 4 MiB and more ``MADV_HUGEPAGE``. A large call's result arrays
    (above glibc's largest mmap threshold, 32 MiB) are fresh mappings every call, and faulting
    them in as zeroed 2 MiB pages cost 1.5x the system time of 4 KiB ones (64 batches of 1024
    a call; at 16 a call, served from reused heap memory, huge pages were slightly cheaper).
    The arrays are written once, in order: huge pages buy them nothing.
    """
    return np.empty(size, dtype)


@nb.njit(nogil=True, cache=True)
def _grow(arr, size, keep):
    """``arr`` if it holds ``size`` items, else a larger copy of its first ``keep`` items."""
    if arr.shape[0] >= size:
        return arr
    out = np.empty(max(size, 2 * arr.shape[0]), arr.dtype)
    out[:keep] = arr[:keep]
    return out


@nb.njit(nogil=True, cache=True)
def _insert_known(table, bits, nodes, n):
    """Insert ``nodes[i] -> i`` (``i < n``) into an empty table; return a repeated id, or -1."""
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    for i in range(n):
        g = nodes[i]
        h = np.int64((np.uint64(g) * GOLDEN) >> shift)
        while table[2 * h] != _EMPTY:
            if table[2 * h] == g:
                return g
            h = (h + 1) & mask
        table[2 * h] = g
        table[2 * h + 1] = i
    return -1


@nb.njit(nogil=True, cache=True)
def _table_bits(count):
    """The smallest ``bits >= 4`` with ``2**bits >= 2 * count``: a table at most half full."""
    bits = 4
    while (1 << bits) < 2 * count:
        bits += 1
    return bits


@nb.njit(nogil=True, cache=True)
def _empty_table(table, bits):
    """``table`` (or a larger one in its place) with the ``2**bits`` (key, value) slot pairs
    of a hash table all empty."""
    if table.shape[0] < (2 << bits):
        table = np.empty(2 << bits, np.int64)
    table[:2 << bits] = _EMPTY
    return table


@nb.njit(nogil=True, cache=True)
def _pick_work(max_fanout):
    """Floyd's work arrays for up to ``max_fanout`` picks: ``(picks, slots, table, shift)``,
    the hash set of :func:`_floyd_hashed` only where a fanout exceeds ``_SMALL_FANOUT``."""
    bits = _table_bits(max_fanout)
    table = np.full((1 << bits) if max_fanout > _SMALL_FANOUT else 1, _EMPTY, np.int64)
    return (np.empty(max_fanout, np.int64), np.empty(max_fanout, np.int64), table,
            np.uint64(64 - bits))


@nb.njit(nogil=True, cache=True)
def _sampled_degrees(indptr, nodes, first, offset, lo, hi, fanout, row_start, row_len, eptr):
    """For rows ``i`` in ``[lo, hi)`` of a hop, dst node ``nodes[first + i]`` (``- offset``: its
    row of ``indptr``): its CSR row start and length, and ``eptr[i + 1]``, the prefix sum of
    the sampled degrees (min(length, fanout); the whole row with -1)."""
    for i in range(lo, hi):
        if i + _AHEAD < hi:
            _prefetch(indptr, nodes[first + i + _AHEAD] - offset)
        v = nodes[first + i] - offset
        start = indptr[v]
        deg = indptr[v + 1] - start
        row_start[i] = start
        row_len[i] = deg
        eptr[i + 1] = eptr[i] + (deg if fanout < 0 or deg <= fanout else fanout)


@nb.njit(nogil=True, cache=True)
def _pick(ids, eptr, row_start, row_len, lo, hi, nodes, first, key, work):
    """The picks of rows ``[lo, hi)`` of a hop as CSR offsets, row ``i``'s into
    ``ids[eptr[i]:eptr[i + 1]]``: its whole row, or Floyd's sample from the stream of its dst
    node ``nodes[first + i]`` under ``key`` (``work``: :func:`_pick_work`'s arrays)."""
    picks, slots, table, shift = work
    for i in range(lo, hi):
        o = eptr[i]
        k = eptr[i + 1] - o
        start = row_start[i]
        deg = row_len[i]
        if k == deg:
            for j in range(k):
                ids[o + j] = start + j
            continue
        stream = stream_key(key, nodes[first + i])
        if k <= _SMALL_FANOUT:
            _floyd_small(stream, deg, k, picks)
        else:
            _floyd_hashed(stream, deg, k, picks, table, shift, slots)
        for j in range(k):
            ids[o + j] = start + picks[j]


@nb.njit(nogil=True, cache=True)
def _gather(ids, indices, lo, hi, offset):
    """``ids[lo:hi]``, CSR offsets, replaced by the ids there (plus ``offset``): one loop of
    independent (prefetched) loads."""
    for j in range(lo, hi):
        if j + _AHEAD < hi:
            _prefetch(indices, ids[j + _AHEAD])
        ids[j] = indices[ids[j]] + offset


@nb.njit(nogil=True, cache=True)
def _sample_batch(indptr, indices, seeds, fanouts, hop_keys, frontier_only, buffers,
                  node_base, edge_base):
    """Sample and relabel one batch, every hop, into work buffers reused across batches.

    ``buffers`` are ``(table, ids, rows, nodes, src, dst)``: the hash table ((global id, local
    id) pairs, open addressing, linear probing), the picked CSR offsets and then the ids at
    them, the per-hop row starts, lengths and sampled-degree prefix sums, and where the batch's
    node list goes (from ``nodes[node_base]``) and its edges (from ``src[edge_base]`` and
    ``dst[edge_base]``); what lies before the bases is kept (earlier batches), nothing else in
    them is read. Returns ``(hop_counts, hop_edge_offsets, repeated seed or -1, hop whose local
    ids would overflow int32 or 0, buffers)``, the buffers possibly grown.
    """
    table, ids, rows, node_buf, src_buf, dst_buf = buffers
    num_hops = fanouts.shape[0]
    n = seeds.shape[0]
    hop_counts = np.zeros(num_hops + 1, np.int64)
    hop_counts[0] = n
    hop_offsets = np.zeros(num_hops + 1, np.int64)
    node_buf = _grow(node_buf, node_base + n, node_base)
    nodes = node_buf[node_base:]
    nodes[:n] = seeds
    src = src_buf[edge_base:]
    dst = dst_buf[edge_base:]
    num_edges = 0
    duplicate = -1
    too_big = 0
    work = _pick_work(max(1, fanouts.max()))
    bits = 0  # the hash table has 2**bits slots; 0: not built yet for this batch
    for hop in range(1, num_hops + 1):
        fanout = fanouts[hop - 1]
        lo = hop_counts[hop - 2] if frontier_only and hop > 1 else 0
        m = n - lo
        # sampled degrees of the dst nodes nodes[lo:n], and their prefix sum
        rows = _grow(rows, 3 * m + 1, 0)
        row_start = rows[:m]
        row_len = rows[m:2 * m]
        eptr = rows[2 * m:]
        eptr[0] = 0
        _sampled_degrees(indptr, nodes, lo, 0, 0, m, fanout, row_start, row_len, eptr)
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
            duplicate = _insert_known(table, bits, nodes, n)
            if duplicate >= 0:
                break
        # picks as CSR offsets, then one gather loop of independent (prefetched) loads
        _pick(ids, eptr, row_start, row_len, 0, m, nodes, lo, hop_keys[hop - 1], work)
        _gather(ids, indices, 0, e, 0)
        # relabel: known ids map to their local id, new ones are appended in order
        for i in range(m):
            dst[num_edges + eptr[i]:num_edges + eptr[i + 1]] = lo + i
        mask = (1 << bits) - 1
        shift = np.uint64(64 - bits)
        for j in range(e):
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
                    table[2 * h + 1] = n
                    src[num_edges + j] = n
                    nodes[n] = g
                    n += 1
                    break
                h = (h + 1) & mask
        num_edges += e
        hop_counts[hop] = n
        hop_offsets[hop] = num_edges
    return hop_counts, hop_offsets, duplicate, too_big, (table, ids, rows, node_buf, src_buf,
                                                         dst_buf)
