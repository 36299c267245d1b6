"""Batch feature assembly on the GPU: the CUDA twin of :mod:`disktrain.kernels.gather`.

The host assembles the rows it holds (CPU cache, packed reads) into ``host_rows`` and copies
them to the device; this kernel then builds the batch's feature matrix ``out`` in one launch:

    out[gpu_pos[k]]  = gpu_cache[gpu_slot[k]]   for every row served by the GPU cache
    out[host_pos[k]] = host_rows[k]             for every row assembled on the host

Arrays may be anything with ``__cuda_array_interface__`` (torch CUDA tensors, CuPy, Numba
device arrays); under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) they are NumPy
arrays. Copies are bit-identical (bits are moved as unsigned integers of the same width).
"""

import math

import numpy as np
from numba import cuda

_BITS = {
    np.dtype(np.float16): np.uint16,
    np.dtype(np.float32): np.uint32,
    np.dtype(np.float64): np.uint64,
}
# One warp across a row's columns, several rows per block; grid-stride loops cover the rest.
_THREADS = (32, 8)
_MAX_BLOCKS = (32, 65535)


@cuda.jit
def _scatter_gather_kernel(out, gpu_cache, gpu_pos, gpu_slot, host_rows, host_pos):
    col0, row0 = cuda.grid(2)
    col_step, row_step = cuda.gridsize(2)
    num_gpu = gpu_pos.shape[0]
    num_rows = num_gpu + host_pos.shape[0]
    width = out.shape[1]
    for r in range(row0, num_rows, row_step):
        if r < num_gpu:
            dst = gpu_pos[r]
            src = gpu_slot[r]
            for j in range(col0, width, col_step):
                out[dst, j] = gpu_cache[src, j]
        else:
            k = r - num_gpu
            dst = host_pos[k]
            for j in range(col0, width, col_step):
                out[dst, j] = host_rows[k, j]


def scatter_gather_device(out, gpu_cache, gpu_pos, gpu_slot, host_rows, host_pos, *,
                          stream=0) -> None:
    """Fill ``out`` on the device from the GPU cache and the host-assembled rows.

    Shapes: ``out`` (n, d), ``gpu_cache`` (n_cache, d), ``host_rows`` (n_host, d), one dtype
    (float16, float32 or float64); ``gpu_pos`` and ``gpu_slot`` (n_gpu,) and ``host_pos``
    (n_host,) integer arrays. Positions must be distinct and in range: values are not checked
    (that would synchronize the device). Rows of ``out`` named by neither list are untouched.

    ``stream`` is a Numba stream or a raw ``cudaStream_t`` handle, e.g.
    ``torch.cuda.current_stream().cuda_stream``; 0 is the legacy default stream. The launch is
    asynchronous on that stream and does not synchronize the streams the inputs came from.
    """
    out, gpu_cache, gpu_pos, gpu_slot, host_rows, host_pos = (
        _as_device(a) for a in (out, gpu_cache, gpu_pos, gpu_slot, host_rows, host_pos)
    )
    bits = _check_rows("out", out, out)
    _check_rows("gpu_cache", gpu_cache, out)
    _check_rows("host_rows", host_rows, out)
    _check_index("gpu_pos", gpu_pos, gpu_pos.shape[0])
    _check_index("gpu_slot", gpu_slot, gpu_pos.shape[0])
    _check_index("host_pos", host_pos, host_rows.shape[0])
    num_rows = gpu_pos.shape[0] + host_pos.shape[0]
    if num_rows == 0 or out.shape[1] == 0:
        return
    blocks = (
        min(math.ceil(out.shape[1] / _THREADS[0]), _MAX_BLOCKS[0]),
        min(math.ceil(num_rows / _THREADS[1]), _MAX_BLOCKS[1]),
    )
    launch = _scatter_gather_kernel[blocks, _THREADS, _as_stream(stream)]
    launch(out.view(bits), gpu_cache.view(bits), gpu_pos, gpu_slot, host_rows.view(bits),
           host_pos)


def _as_device(arr):
    """A Numba view of a CUDA-array-interface object; other arrays (NumPy) pass through."""
    if hasattr(arr, "__cuda_array_interface__"):
        # sync=False: ordering comes from the launch stream, not a host-side wait.
        return cuda.as_cuda_array(arr, sync=False)
    return arr


def _as_stream(stream):
    if isinstance(stream, int):
        return cuda.default_stream() if stream == 0 else cuda.external_stream(stream)
    return stream


def _check_rows(name: str, arr, out) -> type:
    if arr.ndim != 2 or np.dtype(arr.dtype) not in _BITS:
        raise ValueError(
            f"{name} must be a 2-D float16/float32/float64 array, got "
            f"{arr.dtype}{list(arr.shape)}"
        )
    if arr.dtype != out.dtype or arr.shape[1] != out.shape[1]:
        raise ValueError(
            f"{name} must match out's dtype and width {out.dtype}[*, {out.shape[1]}], "
            f"got {arr.dtype}{list(arr.shape)}"
        )
    return _BITS[np.dtype(arr.dtype)]


def _check_index(name: str, arr, length: int) -> None:
    if arr.ndim != 1 or arr.shape[0] != length or np.dtype(arr.dtype).kind not in "iu":
        raise ValueError(
            f"{name} must be a 1-D integer array of length {length}, got "
            f"{arr.dtype}{list(arr.shape)}"
        )
