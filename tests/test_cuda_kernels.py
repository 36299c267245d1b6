"""CUDA kernels against their CPU twins: bit for bit under Numba's CUDA simulator, and on a GPU.

The simulator must be switched on before ``numba.cuda`` is first imported, so those checks run
in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (tiny inputs: it runs every thread in Python).
The tests marked ``gpu`` run the same checks on real CUDA tensors and are skipped without one.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from disktrain.errors import ConfigError
from disktrain.kernels.cuda_gather import lane_bytes, scatter_gather_host
from disktrain.kernels.cuda_sampling import hop_key, sample_neighbors_host
from disktrain.kernels.sampling import sample_batches
from disktrain.loader.device import DeviceAssembler, sample_on_device

UINT = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32,
        np.dtype(np.float64): np.uint64}
HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def random_bits(rng, shape, dtype):
    """Arbitrary bit patterns of ``dtype``: NaNs with payloads, infinities, subnormals."""
    uint = UINT[np.dtype(dtype)]
    return rng.integers(0, np.iinfo(uint).max, shape, dtype=uint, endpoint=True).view(dtype)


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(UINT[a.dtype]), b.view(UINT[b.dtype]))


def aligned(rows, width, dtype, offset=0):
    """A fresh (rows, width) array whose first byte sits ``offset`` bytes past a 64 B
    boundary, so that the lane width the kernel picks does not depend on the allocator."""
    item = np.dtype(dtype).itemsize
    raw = np.zeros(rows * width * item + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    return raw[start:start + rows * width * item].view(dtype).reshape(rows, width)


def scatter_case(rng, dtype, n, width, n_cache, n_gpu):
    """Inputs of one scatter: ``n_gpu`` of ``n`` rows from the cache, at random distinct
    positions."""
    gpu_pos = rng.permutation(n)[:n_gpu]
    cache = random_bits(rng, (n_cache, width), dtype)
    gpu_slot = rng.integers(0, max(n_cache, 1), n_gpu)
    return cache, gpu_pos, gpu_slot


@pytest.mark.parametrize(("rows", "width", "dtype", "offset", "want"), [
    (4, 128, np.float32, 0, 16),   # 512 B rows: one warp x 16 B per row
    (4, 64, np.float16, 0, 16),    # 128 B rows
    (4, 4, np.float16, 0, 8),      # 8 B rows
    (4, 3, np.float32, 0, 4),      # 12 B rows
    (4, 5, np.float16, 0, 2),      # 10 B rows: element width
    (4, 1, np.float64, 0, 8),
    (4, 128, np.float32, 8, 8),    # 8 B off a 16 B boundary
    (1, 128, np.float32, 4, 4),    # one row: its stride does not matter, its address does
])
def test_lane_bytes_is_the_widest_width_rows_and_addresses_allow(rows, width, dtype, offset,
                                                                 want):
    arr = aligned(rows, width, dtype, offset)
    assert lane_bytes(arr, aligned(3, width, dtype), aligned(0, width, dtype, 2)) == want


def test_lane_bytes_of_views():
    buf = aligned(10, 130, np.float32)
    assert lane_bytes(buf[:, :128]) == 8    # 520 B row stride
    assert lane_bytes(buf[1:, 2:6]) == 8    # address 528 B past the boundary
    assert lane_bytes(buf[:, ::2]) == 4     # strided columns: one element per move
    assert lane_bytes(aligned(8, 130, np.float32)[2:6]) == 8  # rows of 520 B


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_scatter_gather_host_matches_fancy_indexing(dtype):
    rng = np.random.default_rng(0)
    cache, gpu_pos, gpu_slot = scatter_case(rng, dtype, 30, 7, 9, 12)
    out = random_bits(rng, (33, 7), dtype)
    want = out.copy()
    want[gpu_pos] = cache[gpu_slot]
    scatter_gather_host(out, cache, gpu_pos, gpu_slot)
    assert same_bits(out, want)  # rows not in gpu_pos keep their bits


@pytest.mark.parametrize(("change", "message"), [
    ({"gpu_pos": np.array([0, 4])}, r"gpu_pos\[1\] = 4 is out of range \[0, 4\)"),
    ({"gpu_slot": np.array([-1, 0])}, r"gpu_slot\[0\] = -1 is out of range \[0, 3\)"),
    ({"gpu_cache": np.zeros((3, 2), np.float32)}, "gpu_cache must match out's dtype and width"),
    ({"gpu_slot": np.array([0])}, "gpu_slot must be a 1-D integer array of length 2"),
])
def test_scatter_gather_host_rejects_bad_arguments(change, message):
    args = {"out": np.zeros((4, 3), np.float32), "gpu_cache": np.zeros((3, 3), np.float32),
            "gpu_pos": np.array([0, 1]), "gpu_slot": np.array([2, 0])}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        scatter_gather_host(**args)


def run_simulated(code: str) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=path)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "simulator ok" in result.stdout


@pytest.mark.slow
def test_scatter_kernel_under_simulator_matches_cpu_twin_bit_for_bit():
    run_simulated("""
        import numpy as np
        from numba import config
        assert config.ENABLE_CUDASIM
        from disktrain.kernels import cuda_gather
        from disktrain.kernels.cuda_gather import (lane_bytes, scatter_gather_device,
                                                   scatter_gather_host)
        from test_cuda_kernels import aligned, random_bits, same_bits, scatter_case

        rng = np.random.default_rng(7)
        lanes = set()
        # (dtype, n, width, cache rows, rows from the cache, how out sits in its buffer)
        cases = [(np.float32, 9, 128, 5, 4, "fresh"),   # 512 B rows, 16 B lanes
                 (np.float32, 6, 300, 4, 3, "fresh"),   # 1200 B: two rounds and a tail
                 (np.float16, 7, 24, 3, 3, "fresh"),    # 48 B rows, 16 B lanes
                 (np.float16, 5, 4, 3, 2, "fresh"),     # 8 B rows
                 (np.float32, 6, 3, 4, 2, "fresh"),     # 12 B rows
                 (np.float16, 8, 5, 6, 5, "fresh"),     # odd width: 2 B moves
                 (np.float32, 6, 32, 4, 3, "offset"),   # out 8 B off a boundary
                 (np.float16, 6, 8, 4, 6, "fresh"),     # all rows from the cache
                 (np.float32, 4, 8, 3, 0, "fresh")]     # nothing at all
        for dtype, n, width, n_cache, n_gpu, layout in cases:
            cache, gpu_pos, gpu_slot = scatter_case(rng, dtype, n, width, n_cache, n_gpu)
            # (the simulator copies arrays in and out whole: no block-of-columns views here)
            buffer = aligned(n + 2, width, dtype, 8 if layout == "offset" else 0)
            buffer[...] = random_bits(rng, buffer.shape, dtype)
            out = buffer[1:n + 1]
            want = buffer.copy()
            scatter_gather_host(want[1:n + 1], cache, gpu_pos, gpu_slot)
            lanes.add(lane_bytes(out, cache))
            scatter_gather_device(out, cache, gpu_pos, gpu_slot)
            assert same_bits(buffer, want), (dtype, width, layout)
        assert lanes == {16, 8, 4, 2}, lanes

        # A grid smaller than the rows: the grid-stride loop covers the rest.
        cuda_gather._MAX_BLOCKS = 1
        cache, gpu_pos, gpu_slot = scatter_case(rng, np.float32, 20, 64, 8, 11)
        out, want = np.zeros((20, 64), np.float32), np.zeros((20, 64), np.float32)
        scatter_gather_host(want, cache, gpu_pos, gpu_slot)
        scatter_gather_device(out, cache, gpu_pos, gpu_slot)
        assert same_bits(out, want)

        # Zero-width rows and zero rows are no-ops.
        empty = np.zeros(0, np.int64)
        scatter_gather_device(np.zeros((3, 0), np.float32), np.zeros((2, 0), np.float32),
                              np.array([0]), np.array([1]))
        scatter_gather_device(out, cache, empty, empty)
        try:
            scatter_gather_device(out, cache.astype(np.float16), gpu_pos, gpu_slot)
        except ValueError as e:
            assert "gpu_cache must match out's dtype and width" in str(e), e
        else:
            raise AssertionError("dtype mismatch accepted")
        print("simulator ok")
    """)


def random_csr(rng, num_nodes=40, max_degree=12, index_dtype=np.int64):
    degrees = rng.integers(0, max_degree + 1, num_nodes)
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(degrees, out=indptr[1:])
    indices = rng.integers(0, num_nodes, indptr[-1]).astype(index_dtype)
    return indptr, indices


def cpu_hops(indptr, indices, seeds, fanouts, key, frontier_only):
    """Per hop of the CPU kernel's one batch: (dst nodes, sample sizes, sampled global ids)."""
    batch = sample_batches(indptr, indices, seeds, np.array([0, len(seeds)]), fanouts, key,
                           frontier_only=frontier_only).batch(0)
    hops = []
    for hop in range(1, len(fanouts) + 1):
        lo = batch.hop_counts[hop - 2] if frontier_only and hop > 1 else 0
        dst_nodes = batch.nodes[lo:batch.hop_counts[hop - 1]]
        src, dst = batch.hop(hop)
        sizes = np.bincount(dst - lo, minlength=len(dst_nodes))
        hops.append((dst_nodes, sizes, batch.nodes[src]))
    return hops


SAMPLING_CASES = [((3, 2), False), ((-1, 4), False), ((5, 0, 2), True), ((40, 1), True)]


@pytest.mark.parametrize(("fanouts", "frontier_only"), SAMPLING_CASES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_sampling_host_twin_gives_the_cpu_kernels_neighbors(fanouts, frontier_only,
                                                             index_dtype):
    rng = np.random.default_rng(11)
    indptr, indices = random_csr(rng, index_dtype=index_dtype)
    seeds = rng.choice(40, 6, replace=False).astype(np.int64)
    for hop, (dst_nodes, sizes, ids) in enumerate(
            cpu_hops(indptr, indices, seeds, fanouts, 1234, frontier_only), start=1):
        eptr, got = sample_neighbors_host(indptr, indices, dst_nodes, fanouts[hop - 1],
                                          hop_key(1234, hop))
        assert np.array_equal(np.diff(eptr), sizes)
        assert np.array_equal(got, ids)


def check_device_sample(device):
    """``sample_on_device`` on ``device`` against the CPU kernel, field by field."""
    rng = np.random.default_rng(14)
    indptr, indices = random_csr(rng, num_nodes=300, max_degree=40, index_dtype=np.int32)
    seeds = rng.choice(300, 16, replace=False).astype(np.int64)
    graph = [torch.from_numpy(a).to(device) for a in (indptr, indices)]
    for fanouts, frontier_only in SAMPLING_CASES:
        want = sample_batches(indptr, indices, seeds, np.array([0, 16]), fanouts, 77,
                              frontier_only=frontier_only).batch(0)
        got = sample_on_device(*graph, torch.from_numpy(seeds).to(device), fanouts, 77,
                               frontier_only=frontier_only)
        assert got.hop_counts == want.hop_counts.tolist()
        assert got.edge_offsets == want.edge_offsets.tolist()
        assert np.array_equal(got.nodes.cpu().numpy(), want.nodes)
        assert np.array_equal(got.edge_src.cpu().numpy(), want.edge_src)
        assert np.array_equal(got.edge_dst.cpu().numpy(), want.edge_dst)


def test_sample_on_device_equals_the_cpu_kernels_batch_on_cpu():
    check_device_sample("cpu")


def test_sample_on_device_refuses_repeated_seeds():
    with pytest.raises(ValueError, match="seeds must be distinct, got 3 seeds of which 2"):
        sample_on_device(torch.zeros(3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                         torch.tensor([0, 1, 0]), [2], 0)


@pytest.mark.slow
def test_sampling_kernels_under_simulator_give_the_cpu_kernels_neighbors():
    run_simulated("""
        import numpy as np
        from numba import config
        assert config.ENABLE_CUDASIM
        from disktrain.kernels.cuda_sampling import (hop_key, sample_neighbors_device,
                                                     sampled_degrees_device)
        from test_cuda_kernels import SAMPLING_CASES, cpu_hops, random_csr

        rng = np.random.default_rng(12)
        for index_dtype in (np.int32, np.int64):
            indptr, indices = random_csr(rng, index_dtype=index_dtype)
            seeds = rng.choice(40, 5, replace=False).astype(np.int64)
            for fanouts, frontier_only in SAMPLING_CASES:
                hops = cpu_hops(indptr, indices, seeds, fanouts, 99, frontier_only)
                for hop, (dst_nodes, sizes, ids) in enumerate(hops, start=1):
                    counts = np.full(len(dst_nodes), -7, np.int64)
                    sampled_degrees_device(indptr, dst_nodes, fanouts[hop - 1], counts)
                    assert np.array_equal(counts, sizes), (fanouts, hop)
                    eptr = np.zeros(len(dst_nodes) + 1, np.int64)
                    np.cumsum(counts, out=eptr[1:])
                    out = np.full(eptr[-1], -7, np.int64)
                    sample_neighbors_device(indptr, indices, dst_nodes, eptr,
                                            hop_key(99, hop), out)
                    assert np.array_equal(out, ids), (fanouts, hop)
        print("simulator ok")
    """)


def test_device_assembler_fills_its_cache_once_in_slices_and_assembles_on_cpu():
    rng = np.random.default_rng(3)
    rows = random_bits(rng, (50, 6), np.float32)
    assembler = DeviceAssembler(rows, "cpu", budget_bytes=rows.nbytes, chunk_bytes=7 * 24)
    assert same_bits(assembler.cache.numpy(), rows)

    # The pipeline's layout: host rows in place, cached rows filled (as torch indexing did).
    host_x = torch.from_numpy(random_bits(rng, (12, 6), np.float32))
    gpu_pos, gpu_slot = np.array([1, 4, 11]), np.array([49, 0, 7])
    want = host_x.clone()
    want[torch.from_numpy(gpu_pos)] = assembler.cache[torch.from_numpy(gpu_slot)]
    x = assembler.assemble(host_x, gpu_pos, gpu_slot)
    assert same_bits(x.numpy(), want.numpy())


def test_device_assembler_refuses_a_cache_over_its_budget():
    with pytest.raises(ConfigError, match=r"50 rows of 24 B = 1200 B, over the budget of 1000 B"):
        DeviceAssembler(np.zeros((50, 6), np.float32), "cpu", budget_bytes=1000)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("width", [1, 5, 64, 128, 300, 1024])
@pytest.mark.parametrize("columns", [0, 8])
def test_scatter_kernel_on_gpu_matches_cpu_twin(dtype, width, columns):
    """``columns``: ``out`` is a block of columns of a wider buffer (strided rows)."""
    from disktrain.kernels.cuda_gather import scatter_gather_device

    rng = np.random.default_rng(width)
    n = 3000
    cache, gpu_pos, gpu_slot = scatter_case(rng, dtype, n, width, 500, 1300)
    want = random_bits(rng, (n + 8, width + columns), dtype)
    buffer = torch.from_numpy(want.copy()).cuda()
    block = np.s_[4:4 + n, columns:]
    scatter_gather_host(want[block], cache, gpu_pos, gpu_slot)
    inputs = [torch.from_numpy(np.ascontiguousarray(a)).cuda()
              for a in (cache, gpu_pos, gpu_slot)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    scatter_gather_device(buffer[block], *inputs, stream=stream.cuda_stream)
    stream.synchronize()
    assert same_bits(buffer.cpu().numpy(), want)


@pytest.mark.gpu
@needs_gpu
def test_scatter_kernel_on_gpu_moves_16_bytes_per_lane():
    from disktrain.kernels import cuda_gather

    cache = torch.randn(64, 128, device="cuda")  # 512 B rows
    out = torch.zeros(32, 128, device="cuda")
    pos = torch.arange(32, device="cuda")
    cuda_gather.scatter_gather_device(out, cache, pos, pos)
    torch.cuda.synchronize()
    assert torch.equal(out, cache[:32])
    ptx = "\n".join(cuda_gather._KERNEL_16.inspect_asm().values())
    assert re.search(r"\bld(\.global)?(\.nc)?\.v4\.u32", ptx), "no 16-byte loads"
    assert re.search(r"\bst(\.global)?\.v4\.u32", ptx), "no 16-byte stores"


@pytest.mark.gpu
@needs_gpu
def test_device_assembler_on_gpu_matches_torch_indexing():
    rng = np.random.default_rng(4)
    rows = random_bits(rng, (400, 128), np.float32)
    assembler = DeviceAssembler(rows, "cuda", budget_bytes=rows.nbytes, chunk_bytes=64 * 512)
    host_x = torch.from_numpy(random_bits(rng, (1000, 128), np.float32)).pin_memory()
    gpu_pos = rng.permutation(1000)[:300]
    gpu_slot = rng.integers(0, 400, 300)
    want = host_x.clone()
    want[torch.from_numpy(gpu_pos)] = torch.from_numpy(rows)[torch.from_numpy(gpu_slot)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = assembler.assemble(host_x, gpu_pos, gpu_slot)
    stream.synchronize()
    assert same_bits(x.cpu().numpy(), want.numpy())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("fanouts", "frontier_only"), SAMPLING_CASES)
def test_sampling_kernels_on_gpu_give_the_cpu_kernels_neighbors(fanouts, frontier_only):
    from disktrain.kernels.cuda_sampling import sample_neighbors_device, sampled_degrees_device

    rng = np.random.default_rng(13)
    indptr, indices = random_csr(rng, num_nodes=2000, max_degree=60)
    seeds = rng.choice(2000, 64, replace=False).astype(np.int64)
    dev = [torch.from_numpy(a).cuda() for a in (indptr, indices)]
    for hop, (dst_nodes, sizes, ids) in enumerate(
            cpu_hops(indptr, indices, seeds, fanouts, 5, frontier_only), start=1):
        nodes = torch.from_numpy(dst_nodes).cuda()
        counts = torch.empty(len(dst_nodes), dtype=torch.int64, device="cuda")
        stream = torch.cuda.current_stream().cuda_stream
        sampled_degrees_device(dev[0], nodes, fanouts[hop - 1], counts, stream=stream)
        eptr = torch.zeros(len(dst_nodes) + 1, dtype=torch.int64, device="cuda")
        torch.cumsum(counts, 0, out=eptr[1:])
        out = torch.empty(int(eptr[-1]), dtype=torch.int64, device="cuda")
        sample_neighbors_device(*dev, nodes, eptr, hop_key(5, hop), out, stream=stream)
        assert np.array_equal(counts.cpu().numpy(), sizes)
        assert np.array_equal(out.cpu().numpy(), ids)


@pytest.mark.gpu
@needs_gpu
def test_sample_on_device_equals_the_cpu_kernels_batch_on_gpu():
    check_device_sample("cuda")


# scripts/bench_gpu.py: its arithmetic, and its gather part end to end on the CPU -------------

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def load_bench():
    sys.path.insert(0, SCRIPTS)
    try:
        import bench_gpu
    finally:
        sys.path.remove(SCRIPTS)
    return bench_gpu


@pytest.mark.parametrize(("row_bytes", "kernel_s", "meets"), [
    (512, 1.0, True),     # 2 GB/s of 2.5: 80% of copy, faster than torch
    (512, 1.5, False),    # slower than index_select
    (1024, 1.2, False),   # 1.67 GB/s: 67% of copy, under 70%
    (256, 1.2, True),     # under 512 B only "as fast as torch" counts
])
def test_bench_gather_summary(row_bytes, kernel_s, meets):
    bench = load_bench()
    got = bench.gather_summary(2.5, row_bytes, {"kernel": kernel_s, "kernel_scatter": 9.0,
                                                "index_select": 1.2, "gather": 3.0}, 2 * 10**9)
    assert got["meets_goal"] is meets
    assert got["methods"]["index_select"]["gbps"] == pytest.approx(2 / 1.2)
    assert got["methods"]["kernel"]["of_copy"] == pytest.approx(2 / kernel_s / 2.5)


def test_bench_epoch_summary_and_time_box():
    bench = load_bench()
    record = {"epoch": 1, "epoch_time_s": 10.0, "batches": 4, "read_s": 6.0, "assemble_s": 2.0,
              "copy_s": 1.0, "compute_s": 8.0, "wait_s": 2.0}
    got = bench.epoch_summary(record)
    assert got["overlap_efficiency"] == pytest.approx(10 / 8)
    assert got["share_of_epoch"]["compute"] == pytest.approx(0.8)
    assert got["s_per_batch"] == pytest.approx(2.5)
    assert bench.parse_time_box("epoch=5") == {"gather": 100.0, "epoch": 5.0, "pyg": 110.0}
    with pytest.raises(argparse.ArgumentTypeError, match="expected PART=SECONDS"):
        bench.parse_time_box("copy=3")


@pytest.mark.slow
def test_bench_gpu_dry_run_of_the_gather_part(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_gpu.py"), "--dry-run",
                           "--parts", "gather", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    gather = report["parts"]["gather"]
    assert "failed" not in gather, gather
    assert [r["row_bytes"] for r in gather["rows"]] == [256, 512, 1024, 2048, 4096]
    assert all(all(r["equal_to_index_select"].values()) for r in gather["rows"])
