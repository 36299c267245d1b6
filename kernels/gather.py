"""Batch feature assembly on the CPU: copy each input row from the tier that holds it.

A batch has ``n`` input rows. ``slot[i]`` says where row ``i`` comes from, as an index into
the virtual concatenation ``[cpu_cache rows | packed rows of this batch]``::

    slot[i] <  0            row i is served elsewhere (e.g. by the GPU cache): left untouched
    slot[i] <  n_cpu        out[i] = cpu_cache[slot[i]]
    slot[i] >= n_cpu        out[i] = packed[slot[i] - n_cpu]

Copies are bit-identical: the kernels move the rows' bits as unsigned integers of the same
width, so float16 (which Numba's CPU target cannot type) works and NaN payloads survive.
``out`` may be a view into a larger preallocated buffer (any strides).
"""

import numba as nb
import numpy as np

BITS = {
    np.dtype(np.float16): np.uint16,
    np.dtype(np.float32): np.uint32,
    np.dtype(np.float64): np.uint64,
}
"""Feature dtypes the kernels (these and the CUDA ones) accept, mapped to the unsigned type
used to move their bits."""


@nb.njit(parallel=True, nogil=True, cache=True)
def _gather_two(out, first, second, slot):
    n_first = first.shape[0]
    width = out.shape[1]
    for i in nb.prange(slot.shape[0]):
        s = slot[i]
        if s < 0:
            continue
        if s < n_first:
            for j in range(width):
                out[i, j] = first[s, j]
        else:
            s -= n_first
            for j in range(width):
                out[i, j] = second[s, j]


def gather_rows(out: np.ndarray, cpu_cache: np.ndarray, packed: np.ndarray,
                slot: np.ndarray) -> None:
    """Fill ``out[i]`` from ``cpu_cache`` or ``packed`` as ``slot[i]`` says (module docstring).

    ``out`` (n, d), ``cpu_cache`` (n_cpu, d) and ``packed`` (n_packed, d) share one dtype
    (float16, float32 or float64); ``slot`` is an int64 (n,) array. Rows with ``slot < 0`` are
    skipped. Runs in parallel without the GIL; raises ``ValueError`` on mismatched shapes or
    dtypes and on a slot past the end of the concatenation.
    """
    bits = _check_rows("out", out, out)
    _check_rows("cpu_cache", cpu_cache, out)
    _check_rows("packed", packed, out)
    _check_index("slot", slot, out, cpu_cache.shape[0] + packed.shape[0])
    _gather_two(out.view(bits), cpu_cache.view(bits), packed.view(bits), slot)


def _check_rows(name: str, arr: np.ndarray, out: np.ndarray) -> type:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D numpy array, got {_describe(arr)}")
    if arr.dtype not in BITS:
        raise ValueError(f"{name} dtype must be one of float16/float32/float64, got {arr.dtype}")
    if arr.dtype != out.dtype or arr.shape[1] != out.shape[1]:
        raise ValueError(
            f"{name} must match out's dtype and width {out.dtype}[*, {out.shape[1]}], "
            f"got {arr.dtype}{list(arr.shape)}"
        )
    return BITS[arr.dtype]


def _check_index(name: str, idx: np.ndarray, out: np.ndarray, num_rows: int) -> None:
    if not isinstance(idx, np.ndarray) or idx.dtype != np.int64 or idx.shape != out.shape[:1]:
        raise ValueError(
            f"{name} must be an int64 array of shape ({out.shape[0]},), got {_describe(idx)}"
        )
    if idx.size and idx.max() >= num_rows:
        bad = int(np.argmax(idx >= num_rows))
        raise ValueError(f"{name}[{bad}] = {int(idx[bad])} is out of range: only {num_rows} rows")


def _describe(arr: object) -> str:
    if isinstance(arr, np.ndarray):
        return f"{arr.dtype}{list(arr.shape)}"
    return type(arr).__name__
