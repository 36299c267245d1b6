"""Kernels for the streaming CSR build: degree counting, scatter, per-row sort and dedup."""

import numba as nb
import numpy as np


@nb.njit(nogil=True, cache=True)
def count_degrees(rows, counts):
    """counts[r] += 1 for every r in rows."""
    for i in range(rows.shape[0]):
        counts[rows[i]] += 1


@nb.njit(nogil=True, cache=True)
def scatter_edges(rows, cols, cursor, indices):
    """indices[cursor[r]++] = c for every edge (r, c), in input order."""
    for i in range(rows.shape[0]):
        r = rows[i]
        indices[cursor[r]] = cols[i]
        cursor[r] += 1


@nb.njit(parallel=True, nogil=True, cache=True)
def sort_rows(indptr, indices):
    """Sort every row's column ids in place."""
    for r in nb.prange(indptr.shape[0] - 1):
        a, b = indptr[r], indptr[r + 1]
        if b - a > 1:
            indices[a:b] = np.sort(indices[a:b])


@nb.njit(nogil=True, cache=True)
def dedup_sorted_rows(indptr, indices):
    """Drop repeated column ids within each (sorted) row, compacting in place.

    Rewrites ``indptr`` and returns the new number of entries.
    """
    out = 0
    start = indptr[0]
    for r in range(indptr.shape[0] - 1):
        a, b = start, indptr[r + 1]
        start = b
        indptr[r] = out
        for i in range(a, b):
            if i == a or indices[i] != indices[i - 1]:
                indices[out] = indices[i]
                out += 1
    indptr[indptr.shape[0] - 1] = out
    return out
