"""Chunk files written front to back: bytes + crc32c as Zarr writes them, any piece sizes,
O_DIRECT or not; errors and aborts leave nothing behind."""

from __future__ import annotations

import errno
import os
import threading
import time

import google_crc32c
import numpy as np
import pytest
import zarr
from helpers import evict

from disktrain.errors import DiskSpaceError
from disktrain.storage import chunkfile
from disktrain.storage.chunkfile import ChunkFileWriter, ChunkWriter, chunk_file, create_flat
from disktrain.storage.dataset import open_flat_array
from disktrain.storage.io import BLOCK, aligned_buffer, cached_prefix


def _expected(data: bytes) -> bytes:
    return data + google_crc32c.value(data).to_bytes(4, "little")


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("sizes", [[], [1], [BLOCK - 1], [BLOCK, 3], [5, 8191, 3 * BLOCK + 7],
                                   [2 * BLOCK] * 5, [11 * BLOCK + 5]])
def test_writer_bytes_and_crc(tmp_path, direct, sizes):
    rng = np.random.default_rng(len(sizes))
    pieces = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    path = tmp_path / "chunk"
    with ChunkFileWriter(path, reserve=sum(sizes) + 100, block_bytes=2 * BLOCK,
                         direct=direct) as writer:
        for piece in pieces:
            writer.write(piece)
    assert writer.nbytes == sum(sizes)
    assert path.read_bytes() == _expected(b"".join(p.tobytes() for p in pieces))


def test_writer_takes_any_dtype_and_abort_removes_the_file(tmp_path):
    path = tmp_path / "chunk"
    values = np.arange(5000, dtype=np.int64)
    with ChunkFileWriter(path, block_bytes=BLOCK) as writer:
        writer.write(values[:1234])
        writer.write(values[1234:])
    assert path.read_bytes() == _expected(values.tobytes())
    with pytest.raises(RuntimeError, match="boom"), ChunkFileWriter(path) as writer:
        writer.write(values)
        raise RuntimeError("boom")
    assert not path.exists()


def test_full_disk_in_the_thread_is_raised_naming_the_file(tmp_path, monkeypatch):
    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunkfile, "pwrite_all", full)
    path = tmp_path / "chunk"
    for blocks in (1, 8):  # met by close, or by a later write
        with pytest.raises(DiskSpaceError, match="chunk"), ChunkFileWriter(
                path, block_bytes=BLOCK) as writer:
            for _ in range(blocks):
                writer.write(np.zeros(BLOCK, np.uint8))
        assert not path.exists()


def test_block_bytes_checked(tmp_path):
    with pytest.raises(ValueError, match="block_bytes"):
        ChunkFileWriter(tmp_path / "x", block_bytes=BLOCK + 1)


def test_create_flat_readable_by_zarr_and_dataset(tmp_path):
    group = zarr.open_group(tmp_path, mode="w")
    values = np.arange(10_000, dtype=np.int32) * 7
    with create_flat(group, "ids", values.shape, np.int32) as writer:
        writer.write(values)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ids")[...], values)
    np.testing.assert_array_equal(open_flat_array(tmp_path, "ids", verify=True), values)
    assert create_flat(group, "empty", (0,), np.int64) is None
    assert zarr.open_array(tmp_path / "empty").shape == (0,)


def test_writer_writes_chunk_files_zarr_reads(tmp_path):
    group = zarr.open_group(tmp_path, mode="w")
    rows, dim = 300, 7
    arr = group.create_array("x", shape=(1000, dim), dtype=np.float16, chunks=(rows, dim),
                             compressors=(zarr.codecs.Crc32cCodec(),), fill_value=0)
    data = np.random.default_rng(0).standard_normal((1000, dim)).astype(np.float16)
    chunk_bytes = rows * dim * 2
    with ChunkWriter(chunk_bytes, lambda c: (chunk_file(tmp_path / "x", c, 0), None), 2,
                     2) as writer:
        for c in range(0, 1000, rows):
            buf = writer.buffer()
            part = data[c:c + rows].view(np.uint8).reshape(-1)
            buf[:part.size] = part
            buf[part.size:chunk_bytes] = 0
            writer.submit(c // rows, buf)
    np.testing.assert_array_equal(arr[...], data)
    last = chunk_file(tmp_path / "x", 3, 0).read_bytes()
    assert len(last) == chunk_bytes + 4


def test_writer_error_raised_on_close(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    writer = ChunkWriter(BLOCK, lambda c: (blocker / "c" / str(c), None))
    writer.submit(0, writer.buffer())  # a parent that is a file
    with pytest.raises(OSError):
        writer.close()


def test_writer_holds_at_most_depth_chunks_and_cancel_drops_the_waiting(tmp_path):
    release, placed = threading.Event(), []

    def place(c):  # the first chunk's write waits for `release`
        placed.append(c)
        if c == 0:
            release.wait(10)
        return chunk_file(tmp_path / "x", c, 0), None

    writer = ChunkWriter(BLOCK, place, threads=1, depth=3)
    for c in range(3):
        writer.submit(c, writer.buffer())
    fourth = threading.Thread(target=lambda: writer.submit(3, writer.buffer()))
    fourth.start()
    fourth.join(0.3)
    assert fourth.is_alive()  # three chunks wait or are written: the fourth blocks
    release.set()
    fourth.join(10)
    writer.close()
    assert sorted(placed) == [0, 1, 2, 3]
    assert all(chunk_file(tmp_path / "x", c, 0).stat().st_size == BLOCK + 4 for c in range(4))

    release.clear()
    placed.clear()
    writer = ChunkWriter(BLOCK, place, threads=1, depth=3)
    for c in range(3):
        writer.submit(c, writer.buffer())
    for _ in range(1000):  # the first chunk is being written
        if placed:
            break
        time.sleep(0.01)
    closing = threading.Thread(target=writer.close, kwargs={"cancel": True})
    closing.start()
    closing.join(0.2)
    release.set()
    closing.join(10)
    assert placed == [0]  # the chunks still queued were dropped
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(4, writer.buffer())
    with pytest.raises(ValueError, match="depth"):
        ChunkWriter(BLOCK, place, depth=0)


@pytest.mark.parametrize("align", [BLOCK, 2 << 20])
def test_aligned_buffer_aligned_and_zeroed(align):
    for n in (0, 1, BLOCK, 3 * BLOCK + 5):
        buf = aligned_buffer(n, align, hugepages=True)
        assert buf.size == n and buf.ctypes.data % align == 0 and not buf.any()


@pytest.mark.parametrize("refuse", [False, True])
@pytest.mark.parametrize("nbytes", [3 * BLOCK, 3 * BLOCK + 100, 100])
def test_check_chunk_into_reads_whole_blocks_direct_and_the_tail_buffered(
        tmp_path, monkeypatch, nbytes, refuse):
    """A checked read into an aligned buffer (how the CSR is loaded): same bytes and crc with
    O_DIRECT for the whole blocks, and where the filesystem refuses it (EINVAL)."""
    data = np.random.default_rng(0).integers(0, 256, nbytes, np.uint8)
    path = tmp_path / "c"
    path.write_bytes(data.tobytes() + chunkfile.crc_bytes(data))
    evict(path)  # (else the page cache's copy is taken)
    if refuse:
        monkeypatch.setattr(chunkfile, "set_direct", lambda fd, on: False)
    into = aligned_buffer(nbytes)
    assert chunkfile.check_chunk(path, nbytes, into=into, slice_bytes=2 * BLOCK) == \
        (None, nbytes + 4)
    assert np.array_equal(into, data)
    path.write_bytes(data.tobytes() + b"\0\0\0\0")
    assert chunkfile.check_chunk(path, nbytes, into=aligned_buffer(nbytes))[0] == \
        "failed its crc32c check (corrupted)"


def _drop(path, offset: int, nbytes: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


HUGE = 2 << 20
"""Dropped from here on, whole page-cache folios go (at most 2 MiB, each at a multiple of its
size), whatever folios the filesystem caches the file in."""


def test_cached_prefix_counts_the_pages_the_page_cache_holds(uncached_tmp):
    path, n = uncached_tmp / "c", HUGE + 3 * BLOCK + 100
    path.write_bytes(bytes(n))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cached_prefix(fd, 0, n) == n  # just written
        _drop(path, HUGE)
        assert cached_prefix(fd, 0, n) == HUGE
        assert cached_prefix(fd, BLOCK, HUGE - BLOCK) == HUGE - BLOCK
        assert cached_prefix(fd, HUGE, n - HUGE) == 0
        assert cached_prefix(fd, 100, BLOCK) == 0  # not at a page: not asked
        assert cached_prefix(fd, 0, n + 2 * BLOCK) == 0  # past the end: not asked
    finally:
        os.close(fd)


def test_a_checked_read_takes_the_cached_pages_and_the_rest_past_the_cache(uncached_tmp,
                                                                         monkeypatch):
    """How the CSR is loaded: a file the page cache holds is not read again from the device;
    the pages it lacks are read with O_DIRECT (whole blocks; the tail buffered); the crc32c
    covers both."""
    nbytes = HUGE + 3 * BLOCK + 100
    data = np.random.default_rng(1).integers(0, 256, nbytes, np.uint8)
    path = uncached_tmp / "c"
    path.write_bytes(data.tobytes() + chunkfile.crc_bytes(data))
    direct, read_at = [], chunkfile.read_at
    monkeypatch.setattr(chunkfile, "read_at", lambda fd, bufs, offset, d: direct.append(
        (offset, sum(len(b) for b in bufs))) or read_at(fd, bufs, offset, d))
    for dropped, expected in [(None, []), (HUGE, [(HUGE, 3 * BLOCK)]),
                              (0, [(0, HUGE + 3 * BLOCK)])]:
        if dropped is not None:
            _drop(path, dropped)
        direct.clear()
        into = aligned_buffer(nbytes)
        assert chunkfile.check_chunk(path, nbytes, into=into) == (None, nbytes + 4)
        assert np.array_equal(into, data) and direct == expected, dropped
    bad = data.copy()
    bad[5] ^= 1  # a flipped byte in the cached pages is caught all the same
    path.write_bytes(bad.tobytes() + chunkfile.crc_bytes(data))
    assert chunkfile.check_chunk(path, nbytes, into=aligned_buffer(nbytes))[0] == \
        "failed its crc32c check (corrupted)"
