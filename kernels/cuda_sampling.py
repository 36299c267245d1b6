"""Neighbor sampling on the GPU (online evaluation): the CUDA twin of one hop of
:mod:`disktrain.kernels.sampling`.

For dst node ``v`` at hop ``l`` the sample is, as on the CPU, a pure function of the hop key
``stream_key(key, l)``, of ``v`` and of ``v``'s CSR row: a row of length ``d <= fanout`` (or
``fanout == -1``) is taken whole in CSR order, otherwise Floyd's algorithm picks ``fanout``
distinct entries. The kernels call the very Numba functions the CPU kernel calls
(:func:`~disktrain.kernels.rng.stream_key`, its Floyd's algorithm), compiled for the GPU, so
the neighbors are the same, in the same order.

One hop is two launches, one thread per dst node: :func:`sampled_degrees_device` writes each
node's sample size; the caller turns them into offsets ``eptr`` (an exclusive prefix sum,
e.g. ``torch.cumsum``, whose total sizes the output); :func:`sample_neighbors_device` writes
node ``i``'s sampled neighbors (global ids) to ``out[eptr[i]:eptr[i + 1]]``.
:func:`sample_neighbors_host` is the CPU twin of both. Relabeling into local ids is left to
the caller (see :mod:`disktrain.loader.device`).

Arrays as in :mod:`disktrain.kernels.cuda_gather`: ``__cuda_array_interface__`` objects,
zero-copy, or NumPy arrays under the CUDA simulator.
"""

import math

import numba as nb
import numpy as np
from numba import config, cuda

from .cuda_gather import as_device_array, as_stream
from .rng import stream_key
from .sampling import _floyd_small

# The simulator hands kernels array wrappers a CPU-compiled function cannot take: there the
# kernel runs Floyd's algorithm as Python (its draws still come from the compiled rng).
_floyd = _floyd_small.py_func if config.ENABLE_CUDASIM else _floyd_small
_BLOCK = 128
_MAX_BLOCKS = 65535


def hop_key(key: int, hop: int) -> np.uint64:
    """The key of hop ``hop`` (1-based) for the sampling key ``key``, as the CPU kernel's."""
    return np.uint64(stream_key(np.uint64(int(key) & ((1 << 64) - 1)), hop))


@cuda.jit
def _degrees_kernel(indptr, nodes, fanout, counts):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, nodes.shape[0], step):
        v = nodes[i]
        deg = indptr[v + 1] - indptr[v]
        counts[i] = deg if fanout < 0 or deg <= fanout else fanout


@cuda.jit
def _neighbors_kernel(indptr, indices, nodes, eptr, key, out):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, nodes.shape[0], step):
        v = nodes[i]
        row = indptr[v]
        deg = indptr[v + 1] - row
        first = eptr[i]
        k = eptr[i + 1] - first
        if k == deg:
            for j in range(k):
                out[first + j] = indices[row + j]
        else:
            picks = out[first:first + k]
            # (no-op casts on a GPU; the simulator passes and returns uint64 as Python ints)
            _floyd(np.uint64(stream_key(np.uint64(key), v)), deg, k, picks)
            for j in range(k):
                picks[j] = indices[row + picks[j]]


def sampled_degrees_device(indptr, nodes, fanout: int, counts, *, stream=0) -> None:
    """``counts[i]``: how many neighbors node ``nodes[i]`` gets at this hop (min(d, fanout)).

    ``indptr`` int64 (N+1,), ``nodes`` int64 (m,), ``counts`` int64 (m,); ``stream`` as in
    :func:`~disktrain.kernels.cuda_gather.scatter_gather_device`. Asynchronous.
    """
    indptr, nodes, counts = (as_device_array(a) for a in (indptr, nodes, counts))
    _check_vector("counts", counts, nodes.shape[0])
    if nodes.shape[0]:
        _degrees_kernel[_blocks(nodes.shape[0]), _BLOCK, as_stream(stream)](
            indptr, nodes, fanout, counts)


def sample_neighbors_device(indptr, indices, nodes, eptr, key, out, *, stream=0) -> None:
    """Write the sampled neighbors of ``nodes[i]`` to ``out[eptr[i]:eptr[i + 1]]``.

    ``eptr`` int64 (m+1,): the offsets of the sizes :func:`sampled_degrees_device` gave
    (they carry the fanout); ``key`` is :func:`hop_key`; ``out`` int64 (``eptr[m]``,).
    Asynchronous.
    """
    indptr, indices, nodes, eptr, out = (as_device_array(a)
                                         for a in (indptr, indices, nodes, eptr, out))
    _check_vector("eptr", eptr, nodes.shape[0] + 1)
    if nodes.shape[0]:
        _neighbors_kernel[_blocks(nodes.shape[0]), _BLOCK, as_stream(stream)](
            indptr, indices, nodes, eptr, np.uint64(key), out)


@nb.njit(nogil=True, cache=True)
def _neighbors_host(indptr, indices, nodes, fanout, key):
    m = nodes.shape[0]
    eptr = np.zeros(m + 1, np.int64)
    for i in range(m):
        v = nodes[i]
        deg = indptr[v + 1] - indptr[v]
        eptr[i + 1] = eptr[i] + (deg if fanout < 0 or deg <= fanout else fanout)
    out = np.empty(eptr[m], np.int64)
    for i in range(m):
        v = nodes[i]
        row = indptr[v]
        deg = indptr[v + 1] - row
        first = eptr[i]
        k = eptr[i + 1] - first
        if k == deg:
            for j in range(k):
                out[first + j] = indices[row + j]
        else:
            picks = out[first:first + k]
            _floyd_small(stream_key(key, v), deg, k, picks)
            for j in range(k):
                picks[j] = indices[row + picks[j]]
    return eptr, out


def sample_neighbors_host(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray,
                          fanout: int, key) -> tuple[np.ndarray, np.ndarray]:
    """The CPU twin of a hop on the device: ``(eptr, out)`` as the two launches leave them."""
    nodes = np.ascontiguousarray(nodes, np.int64)
    return _neighbors_host(indptr, indices, nodes, np.int64(fanout), np.uint64(key))


def _blocks(n: int) -> int:
    return min(math.ceil(n / _BLOCK), _MAX_BLOCKS)


def _check_vector(name: str, arr, length: int) -> None:
    if arr.ndim != 1 or arr.shape[0] != length or np.dtype(arr.dtype) != np.int64:
        raise ValueError(f"{name} must be an int64 array of shape ({length},), got "
                         f"{arr.dtype}{list(arr.shape)}")
