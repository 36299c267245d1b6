"""The packed layout of a batch's feature rows: which tier serves each input row, in which
order the packer writes the uncached ones, and where each row lands in the loader's buffer.

Every other module takes these decisions from here: the packer (:func:`pack_slots`), the
tiers (:func:`gpu_code`) and the loader's assembly (:class:`RowLayout`).

**Slot codes.** Per input row of a batch (int64, as the packed store's ``slots`` holds them)::

    code <  0          GPU cache row  -1 - code
    0 <= code < n_cpu  CPU cache row  code
    code >= n_cpu      packed row     code - n_cpu of the batch

(:data:`NOT_CACHED` marks an uncached node before packing gives it a packed row.)

**Packed rows.** A batch packs its uncached rows as two runs, each in ascending node id: the
last-hop-only rows (input positions ``inner`` on), then the inner rows.

**The feature buffer.** The loader reads a batch's packed range straight into its buffer at
row ``inner``, so the first run is in place with no copy; the buffer's first ``num_rows``
rows then become the batch's feature matrix::

    [0, inner)                      inner rows, in sampled order (gathered)
    [inner, inner + num_read)       uncached last-hop rows, as packed (read in place)
    [inner + num_read, num_rows)    cached last-hop rows, in sampled order (gathered)

Input row ``i`` lands on row ``newpos[i]``; block 0's source ids are relabelled through
``newpos``. The order of a block's source nodes is free, so a model computes the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disktrain.kernels.gather import gather_rows

NOT_CACHED = np.iinfo(np.int64).max
"""The tier code of a node no cache holds: packing gives it a packed row."""


def gpu_code(slot: np.ndarray) -> np.ndarray:
    """The code of GPU cache rows ``slot`` (and back: the function is its own inverse)."""
    return -1 - slot


def pack_slots(codes: np.ndarray, nodes: np.ndarray, inner: int, n_cpu: int,
               last_hop: bool = True) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Slot codes of a batch's input rows ``nodes`` (the first ``inner`` of them inner), and
    the node ids it packs as two ascending runs (last-hop-only, then inner).

    ``codes``: every node's tier code (:meth:`disktrain.pack.tiers.Tiers.codes`);
    ``n_cpu``: rows of the CPU cache. Without ``last_hop`` (the first hop aggregated at pack
    time) the batch reads only its inner rows: slots of those, the first run empty.
    """
    if not 0 <= inner <= len(nodes):
        raise ValueError(f"inner must be in [0, {len(nodes)}], got {inner}")
    nodes = nodes if last_hop else nodes[:inner]
    slots = codes[nodes]
    runs = []
    for lo, hi in ((inner, len(nodes)), (0, inner)):
        pos = lo + np.flatnonzero(slots[lo:hi] == NOT_CACHED)
        # a batch's input nodes are distinct, so any sort gives this order (NumPy's default
        # argsort is SIMD-accelerated, its stable one several times slower)
        runs.append(pos[np.argsort(nodes[pos])])
    order = np.concatenate(runs)
    slots[order] = n_cpu + np.arange(len(order))
    return slots, (nodes[runs[0]], nodes[runs[1]])


@dataclass(frozen=True, eq=False)
class RowLayout:
    """Where each input row of one batch comes from and lands (see the module docstring)."""

    num_rows: int
    """Input rows of the batch (rows of its feature matrix)."""
    inner: int
    """Input rows that are not last-hop-only: the first ``inner``."""
    num_read: int
    """Uncached last-hop rows: rows ``[inner, inner + num_read)``, read in place."""
    num_packed: int
    """Packed rows of the batch (both runs); the read puts them at rows ``inner`` on."""
    newpos: np.ndarray
    """int64 (num_rows,): the row of the feature matrix input row ``i`` lands on."""
    input_nodes: np.ndarray
    """Global id of each row of the feature matrix."""
    inner_slots: np.ndarray
    """int64 (inner,): slot codes of rows ``[0, inner)``, gathered from the CPU cache and
    the packed rows (GPU ones skipped)."""
    cached_slots: np.ndarray
    """int64 (num_rows - inner - num_read,): slot codes of rows ``[inner + num_read,
    num_rows)``, all cached (CPU ones gathered, GPU ones skipped)."""
    gpu_pos: np.ndarray
    """int64: rows of the feature matrix the GPU cache fills ..."""
    gpu_slot: np.ndarray
    """... from these GPU cache rows."""

    @classmethod
    def of(cls, nodes: np.ndarray, inner: int, slots: np.ndarray, n_cpu: int) -> RowLayout:
        """The layout of a batch with input rows ``nodes`` (the first ``inner`` inner), whose
        rows come from ``slots`` (codes, as :func:`pack_slots` makes them)."""
        n = len(nodes)
        if len(slots) != n or not 0 <= inner <= n:
            raise ValueError(f"a batch of {n} input rows needs {n} slots and inner in "
                             f"[0, {n}], got {len(slots)} slots and inner {inner}")
        slots = np.asarray(slots, np.int64)
        outer = slots[inner:]
        packed_outer = outer >= n_cpu
        num_read = int(np.count_nonzero(packed_outer))
        cached = np.flatnonzero(~packed_outer)
        newpos = np.arange(n)
        newpos[inner:][packed_outer] = inner + outer[packed_outer] - n_cpu
        newpos[inner + cached] = inner + num_read + np.arange(len(cached))
        input_nodes = np.empty_like(nodes)
        input_nodes[newpos] = nodes
        on_gpu = np.flatnonzero(slots < 0)
        return cls(num_rows=n, inner=inner, num_read=num_read,
                   num_packed=num_read + int(np.count_nonzero(slots[:inner] >= n_cpu)),
                   newpos=newpos, input_nodes=input_nodes,
                   inner_slots=np.ascontiguousarray(slots[:inner]), cached_slots=outer[cached],
                   gpu_pos=newpos[on_gpu], gpu_slot=gpu_code(slots[on_gpu]))

    @staticmethod
    def buffer_rows(num_rows: int, inner: int, padded_rows: int) -> int:
        """Rows of a buffer that holds a batch's feature matrix of ``num_rows`` rows and,
        from row ``inner``, its packed range of ``padded_rows`` rows (chunk padding too)."""
        return max(num_rows, inner + padded_rows)

    def place(self, values: np.ndarray) -> np.ndarray:
        """Per-input-row ``values`` in the feature matrix's row order."""
        out = np.empty_like(values)
        out[self.newpos] = values
        return out

    def relabel(self, src: np.ndarray) -> np.ndarray:
        """Input row ids (block 0's source ids) as rows of the feature matrix."""
        return self.newpos[src]

    def gather(self, buf: np.ndarray, cpu_cache: np.ndarray) -> np.ndarray:
        """Complete the feature matrix in ``buf``, which holds the packed rows from row
        ``inner``: the inner rows from the CPU cache and the packed rows, then the cached
        last-hop rows from the CPU cache (in that order: these overwrite packed inner rows).
        Rows the GPU cache serves are left as they are. Returns the matrix, a view of ``buf``.
        """
        inner, num_read = self.inner, self.num_read
        packed = buf[inner:inner + self.num_packed]
        gather_rows(buf[:inner], cpu_cache, packed, self.inner_slots)
        gather_rows(buf[inner + num_read:self.num_rows], cpu_cache, packed[:0],
                    self.cached_slots)
        return buf[:self.num_rows]
