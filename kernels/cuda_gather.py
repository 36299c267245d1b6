"""Batch feature assembly on the GPU: the CUDA twin of :mod:`disktrain.kernels.gather`.

The host assembles the rows it holds (CPU cache, packed reads) into the batch's feature matrix
and copies it to the device; this kernel then fills the rows the GPU cache serves, in one
launch:

    out[gpu_pos[k]] = gpu_cache[gpu_slot[k]]   for every row served by the GPU cache

:func:`scatter_gather_host` is its CPU twin.

Rows move as wide unsigned words: each lane of a warp copies 16 bytes (one ``ld.v4.u32`` and one
``st.v4.u32``) when every row's width, every row stride and every array's address are multiples
of 16 bytes, else 8, 4 or 2 bytes (:func:`lane_bytes`). A 512 B row is one warp of 32 lanes x
16 B; narrower rows share a warp, wider ones loop. Copies are bit-identical (NaN payloads
survive).

Arrays may be anything with ``__cuda_array_interface__`` (torch CUDA tensors, CuPy, Numba
device arrays), taken zero-copy; under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) they
are NumPy arrays, and the 16-byte moves are emulated word by word.
"""

import math

import numpy as np
from numba import config, cuda

from .gather import BITS

_WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}
"""Lane width in bytes -> the word moved per lane (16 bytes: four uint32, one vector)."""
_BLOCK = 256
"""Threads per block: 256 / lanes-per-row rows at a time."""
_MAX_BLOCKS = 65535
"""Grid cap; grid-stride loops cover the remaining rows."""


if config.ENABLE_CUDASIM:
    def _load16(arr, row, col):
        return (arr[row, col], arr[row, col + 1], arr[row, col + 2], arr[row, col + 3])

    def _store16(arr, row, col, value):
        for t in range(4):
            arr[row, col + t] = value[t]
else:
    from llvmlite import ir
    from numba.cuda import cgutils, types
    from numba.cuda.extending import intrinsic

    _VEC4 = ir.VectorType(ir.IntType(32), 4)
    _WORDS4 = types.UniTuple(types.uint32, 4)

    def _vec4_pointer(context, builder, sig, args):
        """Pointer to ``arr[row, col:col + 4]`` as one 16-byte-aligned ``<4 x i32>``."""
        arr_ty, row_ty, col_ty = sig.args[:3]
        ary = context.make_array(arr_ty)(context, builder, args[0])
        index = [context.cast(builder, args[1], row_ty, types.intp),
                 context.cast(builder, args[2], col_ty, types.intp)]
        ptr = cgutils.get_item_pointer(context, builder, arr_ty, ary, index, wraparound=False)
        return builder.bitcast(ptr, _VEC4.as_pointer())

    def _is_word_matrix(arr, row, col) -> bool:
        return (isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.uint32
                and isinstance(row, types.Integer) and isinstance(col, types.Integer))

    @intrinsic
    def _load16(typingctx, arr, row, col):
        """``arr[row, col:col + 4]`` (uint32, 16-byte aligned) in one vector load."""
        if not _is_word_matrix(arr, row, col):
            return None

        def codegen(context, builder, sig, args):
            vec = builder.load(_vec4_pointer(context, builder, sig, args), align=16)
            words = [builder.extract_element(vec, ir.Constant(ir.IntType(32), t))
                     for t in range(4)]
            return context.make_tuple(builder, _WORDS4, words)

        return _WORDS4(arr, row, col), codegen

    @intrinsic
    def _store16(typingctx, arr, row, col, value):
        """``arr[row, col:col + 4] = value`` (four uint32, 16-byte aligned) in one store."""
        if not (_is_word_matrix(arr, row, col) and value == _WORDS4):
            return None

        def codegen(context, builder, sig, args):
            vec = ir.Constant(_VEC4, ir.Undefined)
            for t in range(4):
                word = builder.extract_value(args[3], t)
                vec = builder.insert_element(vec, word, ir.Constant(ir.IntType(32), t))
            builder.store(vec, _vec4_pointer(context, builder, sig, args), align=16)
            return context.get_dummy_value()

        return types.void(arr, row, col, value), codegen


@cuda.jit(device=True)
def _load1(arr, row, col):
    return arr[row, col]


@cuda.jit(device=True)
def _store1(arr, row, col, value):
    arr[row, col] = value


@cuda.jit(device=True)
def _row_ends(r, num_rows, gpu_pos, gpu_slot):
    """(row of ``out``, row of the cache) of the ``r``-th row to move; (-1, -1) past the end."""
    if r >= num_rows:
        return np.int64(-1), np.int64(-1)
    return np.int64(gpu_pos[r]), np.int64(gpu_slot[r])


def _make_kernel(load, store, words: int):
    """The scatter kernel moving ``words`` array elements per lane with ``load``/``store``.

    Each row gets ``2**lane_shift`` consecutive lanes (a warp holds ``32 >> lane_shift`` rows);
    a lane handles every ``2**lane_shift``-th word group of its row, two groups in flight. The
    next row's positions are loaded before the current row moves, so that their latency
    overlaps its copy rather than preceding the next one.
    """

    @cuda.jit(device=True)
    def copy_row(dst, dst_row, src, src_row, lane, lanes, width):
        step = lanes * words
        col = lane * words
        while col + step < width:
            first = load(src, src_row, col)
            second = load(src, src_row, col + step)
            store(dst, dst_row, col, first)
            store(dst, dst_row, col + step, second)
            col += 2 * step
        if col < width:
            store(dst, dst_row, col, load(src, src_row, col))

    @cuda.jit
    def kernel(out, gpu_cache, gpu_pos, gpu_slot, lane_shift):
        lanes = 1 << lane_shift
        tid = cuda.threadIdx.x
        rows_per_block = cuda.blockDim.x >> lane_shift
        row_step = cuda.gridDim.x * rows_per_block
        lane = tid & (lanes - 1)
        num_rows = gpu_pos.shape[0]
        width = out.shape[1]
        r = cuda.blockIdx.x * rows_per_block + (tid >> lane_shift)
        dst, src = _row_ends(r, num_rows, gpu_pos, gpu_slot)
        while r < num_rows:
            following = r + row_step
            next_dst, next_src = _row_ends(following, num_rows, gpu_pos, gpu_slot)
            copy_row(out, dst, gpu_cache, src, lane, lanes, width)
            r, dst, src = following, next_dst, next_src

    return kernel


_KERNEL_16 = _make_kernel(_load16, _store16, 4)
_KERNEL_1 = _make_kernel(_load1, _store1, 1)


def scatter_gather_device(out, gpu_cache, gpu_pos, gpu_slot, *, stream=0) -> None:
    """Fill rows ``gpu_pos`` of ``out`` on the device from rows ``gpu_slot`` of the GPU cache.

    Shapes: ``out`` (n, d), ``gpu_cache`` (n_cache, d), one dtype (float16, float32 or
    float64); ``gpu_pos`` and ``gpu_slot`` (n_gpu,) integer arrays. Positions must be distinct
    and in range: values are not checked (that would synchronize the device). Rows of ``out``
    not in ``gpu_pos`` are untouched.

    ``stream`` is a Numba stream or a raw ``cudaStream_t`` handle, e.g.
    ``torch.cuda.current_stream().cuda_stream``; 0 is the legacy default stream. The launch is
    asynchronous on that stream and does not synchronize the streams the inputs came from.
    """
    out, gpu_cache, gpu_pos, gpu_slot = (as_device_array(a)
                                         for a in (out, gpu_cache, gpu_pos, gpu_slot))
    _check_all(out, gpu_cache, gpu_pos, gpu_slot)
    num_rows = gpu_pos.shape[0]
    if num_rows == 0 or out.shape[1] == 0:
        return
    lane = lane_bytes(out, gpu_cache)
    word = np.uint32 if lane == 16 else _WORDS[lane]
    out, gpu_cache = _words(out, word), _words(gpu_cache, word)
    units = out.shape[1] // (4 if lane == 16 else 1)
    lane_shift = min(5, max(0, math.ceil(math.log2(units))))
    blocks = min(math.ceil(num_rows / (_BLOCK >> lane_shift)), _MAX_BLOCKS)
    kernel = _KERNEL_16 if lane == 16 else _KERNEL_1
    kernel[blocks, _BLOCK, as_stream(stream)](out, gpu_cache, gpu_pos, gpu_slot, lane_shift)


def scatter_gather_host(out: np.ndarray, gpu_cache: np.ndarray, gpu_pos: np.ndarray,
                        gpu_slot: np.ndarray) -> None:
    """The CPU twin of :func:`scatter_gather_device`: same arguments (NumPy arrays), same bits.

    Positions are checked here (cheap on the host): a position or slot out of range raises
    ``ValueError`` naming the array and the value.
    """
    _check_all(out, gpu_cache, gpu_pos, gpu_slot)
    for name, idx, bound in (("gpu_pos", gpu_pos, out.shape[0]),
                             ("gpu_slot", gpu_slot, gpu_cache.shape[0])):
        if idx.size and (idx.min() < 0 or idx.max() >= bound):
            bad = int(np.flatnonzero((idx < 0) | (idx >= bound))[0])
            raise ValueError(f"{name}[{bad}] = {int(idx[bad])} is out of range [0, {bound})")
    bits = BITS[np.dtype(out.dtype)]
    dst = out.view(bits)
    dst[gpu_pos] = gpu_cache.view(bits)[gpu_slot]


def lane_bytes(*arrays) -> int:
    """Bytes each lane moves at once for these 2-D row arrays: 16, 8, 4 or 2.

    The widest width dividing the row's byte width, and, for every array holding rows, its
    address and row stride; rows must be contiguous (a strided last axis keeps the element
    width).
    """
    item = np.dtype(arrays[0].dtype).itemsize
    if any(a.shape[0] and a.shape[1] > 1 and a.strides[1] != item for a in arrays):
        return item
    sizes = [arrays[0].shape[1] * item]
    for a in arrays:
        if a.shape[0]:
            sizes += [_address(a), a.strides[0] if a.shape[0] > 1 else 0]
    for lane in (16, 8, 4, 2):
        if lane >= item and all(size % lane == 0 for size in sizes):
            return lane
    return item


def _words(arr, word):
    """``arr`` (2-D, rows contiguous) viewed as rows of ``word``: zero-copy, same addresses."""
    if np.dtype(word).itemsize == np.dtype(arr.dtype).itemsize:
        return arr.view(word)
    if isinstance(arr, np.ndarray):
        return arr.view(word)  # NumPy allows it with a contiguous last axis
    from numba.cuda.cudadrv.devicearray import DeviceNDArray  # not in the simulator

    word = np.dtype(word)
    row_words = arr.shape[1] * np.dtype(arr.dtype).itemsize // word.itemsize
    return DeviceNDArray(shape=(arr.shape[0], row_words), strides=(arr.strides[0], word.itemsize),
                         dtype=word, stream=arr.stream, gpu_data=arr.gpu_data)


def _address(arr) -> int:
    if isinstance(arr, np.ndarray):
        return arr.ctypes.data
    return arr.__cuda_array_interface__["data"][0]


def as_device_array(arr):
    """A Numba view of a CUDA-array-interface object; other arrays (NumPy) pass through."""
    if hasattr(arr, "__cuda_array_interface__"):
        # sync=False: ordering comes from the launch stream, not a host-side wait.
        return cuda.as_cuda_array(arr, sync=False)
    return arr


def device_context(index: int):
    """Numba's context manager making GPU ``index`` current in this thread (torch and Numba
    share its primary context): launches and stream handles then refer to that GPU."""
    return cuda.gpus[index]


def as_stream(stream):
    """A Numba stream for a Numba stream or a raw ``cudaStream_t`` handle (0: default)."""
    if isinstance(stream, int):
        return cuda.default_stream() if stream == 0 else cuda.external_stream(stream)
    return stream


def _check_all(out, gpu_cache, gpu_pos, gpu_slot) -> None:
    _check_rows("out", out, out)
    _check_rows("gpu_cache", gpu_cache, out)
    _check_index("gpu_pos", gpu_pos, gpu_pos.shape[0])
    _check_index("gpu_slot", gpu_slot, gpu_pos.shape[0])


def _check_rows(name: str, arr, out) -> None:
    if arr.ndim != 2 or np.dtype(arr.dtype) not in BITS:
        raise ValueError(
            f"{name} must be a 2-D float16/float32/float64 array, got "
            f"{arr.dtype}{list(arr.shape)}"
        )
    if arr.dtype != out.dtype or arr.shape[1] != out.shape[1]:
        raise ValueError(
            f"{name} must match out's dtype and width {out.dtype}[*, {out.shape[1]}], "
            f"got {arr.dtype}{list(arr.shape)}"
        )


def _check_index(name: str, arr, length: int) -> None:
    if arr.ndim != 1 or arr.shape[0] != length or np.dtype(arr.dtype).kind not in "iu":
        raise ValueError(
            f"{name} must be a 1-D integer array of length {length}, got "
            f"{arr.dtype}{list(arr.shape)}"
        )
