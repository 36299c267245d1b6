"""Kernels for the CSR build: bucket edges by row, then build each bucket's rows in cache.

A stored edge is ``(row, col) = (dst, src)`` of an input edge ``(src, dst)``, and also
``(src, dst)`` when ``undirected``; ``skip_self_loops`` drops ``src == dst``. Rows are cut
into buckets of ``2**shift`` consecutive ids. :func:`partition` groups a chunk's stored edges
by bucket (a counting sort: sequential reads, one write stream per bucket); :func:`fill_bucket`
then builds one bucket's rows from all its edges: the sort, counts, offsets, fill and dedup
all touch only that bucket's few MB, so they run from the CPU caches instead of paying a
memory miss per edge. Each kernel is serial and releases the GIL: callers run
several at once on threads (chunk slices, buckets).
"""

import numba as nb
import numpy as np


@nb.njit(nogil=True, cache=True)
def partition(src, dst, undirected, skip_self_loops, shift, offsets, rows_out, cols_out):
    """Group the stored edges of the chunk by bucket ``row >> shift``, in input order.

    ``offsets`` (number of buckets + 1) gets each bucket's first position, ``rows_out`` the
    row within its bucket (``row & (2**shift - 1)``), ``cols_out`` the col; both need room
    for ``2 * len(src)`` edges when ``undirected``. Returns the number of stored edges.
    """
    mask = (1 << shift) - 1
    offsets[:] = 0
    for i in range(src.shape[0]):
        s, d = src[i], dst[i]
        if skip_self_loops and s == d:
            continue
        offsets[(d >> shift) + 1] += 1
        if undirected:
            offsets[(s >> shift) + 1] += 1
    for b in range(1, offsets.shape[0]):
        offsets[b] += offsets[b - 1]
    pos = offsets[:-1].copy()
    for i in range(src.shape[0]):
        s, d = src[i], dst[i]
        if skip_self_loops and s == d:
            continue
        b = d >> shift
        rows_out[pos[b]] = d & mask
        cols_out[pos[b]] = s
        pos[b] += 1
        if undirected:
            b = s >> shift
            rows_out[pos[b]] = s & mask
            cols_out[pos[b]] = d
            pos[b] += 1
    return offsets[offsets.shape[0] - 1]


@nb.njit(nogil=True, cache=True)
def fill_bucket(rows, cols, seg_lo, seg_hi, bits, dedup, starts, out):
    """Build one bucket's rows from its edges ``rows[seg_lo[k]:seg_hi[k]]`` (rows within the
    bucket) and the matching ``cols``, for every segment k; cols are ``bits`` wide.

    ``starts`` (rows in the bucket + 1) gets the row offsets into ``out``, ``out`` (room for
    every edge) the cols of each row, sorted, repeats dropped if ``dedup``. Returns the
    number of entries. The edges are radix-sorted by col (least significant digit first,
    digits of at most 11 bits), then placed row by row in that order: every row comes out
    sorted, at a cost per edge that does not grow with the row's length (hub rows of a
    power-law graph hold most edges).
    """
    n = 0
    for k in range(seg_lo.shape[0]):
        n += seg_hi[k] - seg_lo[k]
    key_rows = np.empty(n, rows.dtype)
    key_cols = np.empty(n, cols.dtype)
    j = 0
    for k in range(seg_lo.shape[0]):
        for i in range(seg_lo[k], seg_hi[k]):
            key_rows[j] = rows[i]
            key_cols[j] = cols[i]
            j += 1
    passes = -(-bits // 11)
    if passes:
        _radix_sort(key_rows, key_cols, -(-bits // passes), passes)
    starts[:] = 0
    for i in range(n):
        starts[key_rows[i] + 1] += 1
    for r in range(starts.shape[0] - 1):
        starts[r + 1] += starts[r]
    cursor = starts[:-1].copy()
    for i in range(n):
        r = key_rows[i]
        out[cursor[r]] = key_cols[i]
        cursor[r] += 1
    if dedup:
        return _dedup(starts, out)
    return n


@nb.njit(nogil=True, cache=True)
def _radix_sort(rows, cols, digit, passes):
    """Sort (rows, cols) pairs by cols in place: ``passes`` stable counting sorts on
    ``digit``-bit digits, least significant first."""
    n = rows.shape[0]
    other_rows = np.empty(n, rows.dtype)
    other_cols = np.empty(n, cols.dtype)
    mask = (1 << digit) - 1
    counts = np.empty((1 << digit) + 1, np.int64)
    for p in range(passes):
        shift = p * digit
        counts[:] = 0
        for i in range(n):
            counts[((cols[i] >> shift) & mask) + 1] += 1
        for d in range(1 << digit):
            counts[d + 1] += counts[d]
        for i in range(n):
            d = (cols[i] >> shift) & mask
            other_rows[counts[d]] = rows[i]
            other_cols[counts[d]] = cols[i]
            counts[d] += 1
        rows, other_rows = other_rows, rows
        cols, other_cols = other_cols, cols
    if passes % 2:  # the sorted pairs are in the scratch arrays
        other_rows[:] = rows
        other_cols[:] = cols


@nb.njit(nogil=True, cache=True)
def _dedup(starts, values):
    """Drop repeats within each sorted row, compacting the rows to the front; rewrite
    ``starts`` and return the number of values kept."""
    out = 0
    for r in range(starts.shape[0] - 1):
        a, b = starts[r], starts[r + 1]  # starts[r + 1] is not rewritten yet
        starts[r] = out
        for i in range(a, b):
            if i == a or values[i] != values[out - 1]:
                values[out] = values[i]
                out += 1
    starts[starts.shape[0] - 1] = out
    return out
