"""Feature-gather kernels: CPU (Numba) against NumPy, CUDA twin under the simulator and on a GPU.

The CUDA simulator must be switched on before ``numba.cuda`` is first imported, so those checks
run in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``; this process imports Numba normally.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import needs_two_threads

from disktrain.kernels.gather import gather_rows

UINT = {np.float16: np.uint16, np.float32: np.uint32}


def random_bits(rng, shape, dtype):
    """Arbitrary bit patterns of ``dtype``: NaNs with payloads, infinities, subnormals."""
    uint = UINT[dtype]
    return rng.integers(0, np.iinfo(uint).max, shape, dtype=uint, endpoint=True).view(dtype)


def reference(cpu_cache, packed, slot, out):
    """NumPy fancy indexing over the concatenation; rows with slot < 0 keep ``out``'s bits."""
    want = out.copy()
    keep = slot >= 0
    want[keep] = np.concatenate([cpu_cache, packed])[slot[keep]]
    return want


def batch(rng, dtype, num_rows=50, width=7, num_cpu=20, num_packed=30):
    cpu_cache = random_bits(rng, (num_cpu, width), dtype)
    packed = random_bits(rng, (num_packed, width), dtype)
    slot = rng.integers(-1, num_cpu + num_packed, num_rows).astype(np.int64)
    return cpu_cache, packed, slot


def same_bits(a, b):
    return a.dtype == b.dtype and np.array_equal(a.view(UINT[a.dtype.type]),
                                                 b.view(UINT[b.dtype.type]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_gather_rows_is_bit_identical_to_fancy_indexing(dtype):
    rng = np.random.default_rng(0)
    cpu_cache, packed, slot = batch(rng, dtype)
    assert (slot == -1).any() and (slot < 20).any() and (slot >= 20).any()
    out = np.ones((slot.shape[0], 7), dtype)
    want = reference(cpu_cache, packed, slot, out)
    gather_rows(out, cpu_cache, packed, slot)
    assert same_bits(out, want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_gather_rows_skips_negative_slots(dtype):
    rng = np.random.default_rng(1)
    cpu_cache, packed, _ = batch(rng, dtype)
    slot = np.array([-1, 3, -1, 25, -7], np.int64)
    out = random_bits(rng, (5, 7), dtype)
    before = out.copy()
    gather_rows(out, cpu_cache, packed, slot)
    assert same_bits(out[[0, 2, 4]], before[[0, 2, 4]])
    assert same_bits(out[1], cpu_cache[3]) and same_bits(out[3], packed[5])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_gather_rows_into_views_of_a_larger_buffer(dtype):
    rng = np.random.default_rng(2)
    cpu_cache, packed, slot = batch(rng, dtype)
    # A row slice (contiguous), then a block of columns (strided).
    for shape, region in (((80, 7), np.s_[10:60]), ((80, 10), np.s_[20:70, 2:9])):
        buffer = random_bits(rng, shape, dtype)
        want = buffer.copy()
        want[region] = reference(cpu_cache, packed, slot, buffer[region])
        gather_rows(buffer[region], cpu_cache, packed, slot)
        assert same_bits(buffer, want)


@needs_two_threads
def test_gather_rows_is_deterministic_across_runs_and_threads():
    import numba

    rng = np.random.default_rng(3)
    cpu_cache, packed, slot = batch(rng, np.float32, num_rows=4000, width=33, num_cpu=500,
                                    num_packed=700)
    results = []
    for threads in (numba.config.NUMBA_NUM_THREADS, 1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        out = np.zeros((4000, 33), np.float32)
        gather_rows(out, cpu_cache, packed, slot)
        results.append(out)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert all(same_bits(r, results[0]) for r in results)
    assert same_bits(results[0], reference(cpu_cache, packed, slot, np.zeros_like(results[0])))


@pytest.mark.parametrize(("change", "message"), [
    ({"slot": np.array([0, 50], np.int64)}, r"slot\[1\] = 50 is out of range: only 50 rows"),
    ({"slot": np.array([0, 1], np.int32)}, "slot must be an int64 array of shape"),
    ({"packed": np.zeros((30, 7), np.float64)}, "packed must match out's dtype"),
    ({"cpu_cache": np.zeros((20, 6), np.float32)}, "cpu_cache must match out's dtype and width"),
    ({"out": np.zeros((2, 7), np.int32)}, "out dtype must be one of"),
])
def test_gather_rows_rejects_bad_arguments(change, message):
    args = {"out": np.zeros((2, 7), np.float32), "cpu_cache": np.zeros((20, 7), np.float32),
            "packed": np.zeros((30, 7), np.float32), "slot": np.array([0, 1], np.int64)}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        gather_rows(**args)


SIMULATOR_CHECK = textwrap.dedent("""
    import numpy as np
    from numba import config
    assert config.ENABLE_CUDASIM
    from disktrain.kernels.cuda_gather import scatter_gather_device
    from disktrain.kernels.gather import gather_rows

    rng = np.random.default_rng(5)
    for dtype, uint in ((np.float16, np.uint16), (np.float32, np.uint32)):
        def bits(shape):
            return rng.integers(0, np.iinfo(uint).max, shape, dtype=uint,
                                endpoint=True).view(dtype)
        n, d = 12, 5
        cpu_cache, packed, gpu_cache = bits((6, d)), bits((4, d)), bits((7, d))
        on_gpu = rng.integers(0, 2, n).astype(bool)
        slot = np.where(on_gpu, -1, rng.integers(0, 10, n)).astype(np.int64)
        gslot = rng.integers(0, 7, n).astype(np.int64)
        want = np.where(on_gpu[:, None], gpu_cache[gslot],
                        np.concatenate([cpu_cache, packed])[np.maximum(slot, 0)])

        # Host side: the CPU kernel assembles its rows in place (the pipeline's layout);
        # the device fills the GPU cache's rows of the copy.
        buffer = bits((n + 4, d))
        out = buffer[2:2 + n]
        gather_rows(out, cpu_cache, packed, slot)
        gpu_pos = np.flatnonzero(on_gpu)
        edges = buffer[[0, 1, n + 2, n + 3]].copy()
        scatter_gather_device(out, gpu_cache, gpu_pos, gslot[gpu_pos])
        assert np.array_equal(out.view(uint), want.view(uint)), dtype
        assert np.array_equal(buffer[[0, 1, n + 2, n + 3]].view(uint), edges.view(uint))

    try:
        scatter_gather_device(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32),
                              np.zeros(0, np.int64), np.zeros(0, np.int64))
    except ValueError as e:
        assert "gpu_cache must match out's dtype and width" in str(e), e
    else:
        raise AssertionError("width mismatch accepted")
    print("simulator ok")
""")


@pytest.mark.slow
def test_cuda_kernel_under_simulator_matches_cpu_kernel():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", SIMULATOR_CHECK], check=False, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "simulator ok" in result.stdout


def _has_gpu():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_cuda_kernel_on_gpu_with_torch_tensors(dtype):
    import torch

    from disktrain.kernels.cuda_gather import scatter_gather_device

    rng = np.random.default_rng(6)
    n, d = 3000, 100
    cpu_cache, packed, _ = batch(rng, dtype, num_rows=n, width=d, num_cpu=400, num_packed=900)
    gpu_cache = random_bits(rng, (500, d), dtype)
    on_gpu = rng.random(n) < 0.4
    slot = np.where(on_gpu, -1, rng.integers(0, 1300, n)).astype(np.int64)
    gslot = rng.integers(0, 500, n).astype(np.int64)
    want = np.where(on_gpu[:, None], gpu_cache[gslot],
                    np.concatenate([cpu_cache, packed])[np.maximum(slot, 0)])

    staged = np.zeros((n + 8, d), dtype)
    gather_rows(staged[4:4 + n], cpu_cache, packed, slot)
    gpu_pos = np.flatnonzero(on_gpu)

    def dev(a):
        return torch.from_numpy(np.ascontiguousarray(a)).cuda()

    inputs = [dev(a) for a in (gpu_cache, gpu_pos, gslot[gpu_pos])]
    buffer = dev(staged)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    scatter_gather_device(buffer[4:4 + n], *inputs, stream=stream.cuda_stream)
    stream.synchronize()
    got = buffer.cpu().numpy()
    assert same_bits(got[4:4 + n], want)
    assert not got[:4].any() and not got[4 + n:].any()
