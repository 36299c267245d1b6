"""Kernel for the typed synthetic graph's relations between two node types (paper -> author,
...): counter-based like :mod:`.rmat`, so a chunk is a pure function of (keys, edge ids)."""

import numba as nb
import numpy as np

from .rmat import class_member, node_class, permute, uniform
from .rng import draw

_U16 = np.uint64(16)
_LOW16 = np.uint64(0xFFFF)
_MAX_ATTEMPTS = 1000


@nb.njit(nogil=True, cache=True, inline="always")
def _skewed(key, n, bits, zero_below):
    """An id in [0, n) with R-MAT's one-sided skew from draws 3.. of ``key``: each of ``bits``
    bits is 0 when a 16-bit draw is below ``zero_below``; ids >= n are redrawn."""
    j = 3
    v = np.uint64(0)
    for _ in range(_MAX_ATTEMPTS):
        v = np.uint64(0)
        x = np.uint64(0)
        for level in range(bits):
            if level % 4 == 0:
                x = draw(key, j)
                j += 1
            v = (v << np.uint64(1)) | np.uint64((x & _LOW16) >= zero_below)
            x = x >> _U16
        if v < np.uint64(n):
            return v
    return v % np.uint64(n)


@nb.njit(parallel=True, nogil=True, cache=True)
def bipartite_edges(start, src, dst, num_src, num_dst, dst_bits, zero_below, homophily,
                    num_classes, edge_key, src_class_key, dst_class_key, dst_perm):
    """Fill src/dst with edges start .. start + len(src) of one seeded relation.

    Edge e's source is uniform in [0, num_src). With probability ``homophily`` its destination
    is a uniformly random destination node of the source's planted class (classes as
    :func:`.rmat.node_class` with each type's class key); otherwise it is skewed
    (:func:`_skewed`, ``dst_bits`` = ceil(log2 num_dst)) and permuted by ``dst_perm``, so
    popularity does not follow id.
    """
    num_blocks = (num_dst + num_classes - 1) // num_classes
    for i in nb.prange(src.shape[0]):
        key = draw(edge_key, start + i)
        s = min(np.int64(uniform(draw(key, 0)) * num_src), num_src - 1)
        if uniform(draw(key, 1)) < homophily:
            block = min(np.int64(uniform(draw(key, 2)) * num_blocks), num_blocks - 1)
            d = class_member(block, node_class(s, num_classes, src_class_key), num_dst,
                             num_classes, dst_class_key)
        else:
            d = permute(_skewed(key, num_dst, dst_bits, zero_below), num_dst, dst_perm,
                        dst_bits)
        src[i] = s
        dst[i] = d
