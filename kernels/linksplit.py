"""Kernels for link prediction's edge split: which split each edge lands in, and the fixed
negatives of the evaluation edges, both counter-based (:mod:`disktrain.kernels.rng`), so the
result depends on the seed and the edge alone, not on chunking or thread count.
"""

import numba as nb

from .rng import stream_key, uniform_below


@nb.njit(nogil=True, cache=True)
def split_codes(src, dst, key, bounds, out):
    """``out[i]``: the split of edge ``(src[i], dst[i])``: the number of ``bounds`` (two
    ascending uint64 thresholds) at or below a hash of ``key`` and the canonical pair
    ``(min, max)``, so both directions of an edge get the same code (0, 1 or 2)."""
    for i in range(src.shape[0]):
        a, b = min(src[i], dst[i]), max(src[i], dst[i])
        h = stream_key(stream_key(key, a), b)
        out[i] = (h >= bounds[0]) + (h >= bounds[1])


@nb.njit(nogil=True, cache=True)
def uniform_negatives(key, first_row, num_nodes, out):
    """``out[r, k]``: a node drawn uniformly from ``[0, num_nodes)`` by stream ``(key, row)``
    (row = ``first_row + r``), draw ``k``: row ``r`` of a block is row ``first_row + r`` of
    the whole, whatever the blocks."""
    for r in range(out.shape[0]):
        stream = stream_key(key, first_row + r)
        counter = 0
        for k in range(out.shape[1]):
            out[r, k], counter = uniform_below(stream, counter, num_nodes)
