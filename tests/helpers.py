"""What several test files use: a prepared dataset, the newest checkpoint, torchrun, gloo ranks, a free port, the
user-error check, a second Numba thread, and a directory read past the page cache."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
import pytest

from disktrain.cluster.head import free_port
from disktrain.pack import PackConfig, PackedStore, pack_dataset
from disktrain.pack.prepare import prepare_eval
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.train.checkpoint import load_bytes, read_newest

TORCHRUN = Path(sys.executable).with_name("torchrun")

needs_two_threads = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2,
    reason="NUMBA_NUM_THREADS=1: no second Numba thread to compare one thread with")
"""For tests that compare 1 Numba thread with several (conftest.py starts Numba with 2 at
least, unless NUMBA_NUM_THREADS says otherwise)."""

SAMPLE = SampleConfig(fanouts=(4, 3), batch_size=16, epochs=2, seed=0)
PACK = PackConfig(cpu_cache_bytes=1024, chunk_bytes=256)
"""The settings :func:`prepare` takes by default: 2 epochs of small batches whose packed rows
span many chunks."""
RAY_SAMPLE = SampleConfig(fanouts=(4, 3), batch_size=16, epochs=2, seed=0, group_size=3)
RAY_PACK = PackConfig(cpu_cache_bytes=1024, chunk_bytes=256, group_bytes=2000)
"""The Ray tests' settings: several sampling and packing groups, so tasks split them."""


def prepare(path: Path, sample: SampleConfig = SAMPLE, pack: PackConfig = PACK, *,
            evaluation: bool = False) -> PackedStore:
    """Sample and pack the dataset at ``path`` (and its evaluation batches with
    ``evaluation``); the packed store."""
    sample_dataset(path, sample, progress=False)
    packed = pack_dataset(path, pack, progress=False)
    if evaluation:
        prepare_eval(path, progress=False)
    return packed


def disk_use(path: Path) -> int:
    """Bytes allocated to ``path`` and everything under it (files and directories)."""
    total = os.lstat(path).st_blocks * 512
    for root, dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(root, n)).st_blocks * 512 for n in dirs + files)
    return total


def newest_checkpoint(directory: Path) -> dict:
    """The newest checkpoint in ``directory`` that loads."""
    path, data = read_newest(directory)
    return load_bytes(data, path)


def torchrun(*args: str, nproc: int = 2, timeout: float = 60,
             ok: bool = True) -> subprocess.CompletedProcess:
    """``torchrun ARGS`` with ``nproc`` ranks on 127.0.0.1, one thread each; asserts that it
    succeeds (``ok``) or fails, and shows the output's tail where it does not. Its temporary
    files (torchrun leaves a ``torchelastic_*`` directory behind) go with the call."""
    cmd = [str(TORCHRUN), "--nnodes=1", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    with tempfile.TemporaryDirectory(prefix="torchrun-") as tmp:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                "TMPDIR": tmp})
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def spawn_ranks(target: Callable, world: int, *args, timeout: float = 60) -> None:
    """``target(rank, port, *args)`` in ``world`` spawned processes that meet on ``port``;
    asserts that every one exits cleanly."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    assert [p.exitcode for p in procs] == [0] * world


def assert_user_error(status: int, err: str, *needles: str) -> None:
    """Exit status 2 and one ``disktrain: error:`` naming every needle, no traceback."""
    assert status == 2, (status, err[-3000:])
    assert err.startswith("disktrain: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def assert_same_rows(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """Inference rows computed in another cut (other ranges, a resumed run's chunks, Ray
    tasks): equal up to float32 rounding, not byte for byte. BLAS rounds a row of a product
    by where it falls among the rows multiplied (MKL on AVX2 CPUs by its position modulo the
    kernel's row block; on AVX-512 only in products of a few rows), so only the same cut
    gives the same bytes; a wrong neighbour or weight moves a row by far more."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=what)


def resident_pages(path: Path) -> int:
    """Pages of file ``path`` in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        pages = (ctypes.c_ubyte * (-(-size // mmap.PAGESIZE)))()
        try:
            assert libc.mincore(addr, size, pages) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(p & 1 for p in pages)


def evict(path: Path) -> None:
    """Drop file ``path`` from the page cache (where its filesystem can)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def uncached_reads(directory: Path) -> bool:
    """Whether files in ``directory`` leave the page cache and are read with ``O_DIRECT``
    (not so on tmpfs, which keeps files in memory, nor where ``O_DIRECT`` is refused)."""
    if not getattr(os, "O_DIRECT", 0):
        return False
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".o_direct_probe")
    try:
        os.write(fd, bytes(2 * mmap.PAGESIZE))
        os.close(fd)
        evict(probe)
        if resident_pages(probe):
            return False
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
        return os.preadv(fd, [mmap.mmap(-1, mmap.PAGESIZE)], 0) == mmap.PAGESIZE
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        os.unlink(probe)


def rows_chunk(ds: Path) -> tuple[int, int]:
    """The first chunk of batch 3 in the (single) shard file of ``ds``'s packed rows (float32),
    and the byte it starts at (each chunk: data, crc32c, zeros to a 4 KiB block)."""
    batch_rows = np.frombuffer((ds / "packed/batch_rows/c/0").read_bytes()[:-4], "<i8")
    meta = json.loads((ds / "packed/rows/zarr.json").read_bytes())
    rows, dim = meta["codecs"][0]["configuration"]["chunk_shape"]
    chunk = int(batch_rows[3]) // rows
    return chunk, chunk * (-(-(rows * dim * 4 + 4) // 4096) * 4096)


def ray_pids(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (every process of our Ray instances)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(root).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def assert_no_ray_left(root: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := ray_pids(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left behind: {left}"
