"""Shard files: Zarr's ``sharding_indexed`` layout with every chunk on a 4 KiB boundary,
written in any order by any write path, read back checked, decoded by zarr itself."""

from __future__ import annotations

import errno
import fcntl
import os

import numpy as np
import pytest
import zarr

from disktrain.errors import CorruptDataError
from disktrain.storage import io
from disktrain.storage.chunkfile import ChunkWriter, StoreRef, crc_bytes
from disktrain.storage.io import BLOCK, aligned_buffer
from disktrain.storage.shards import EMPTY, ShardLayout, create_sharded

REF = StoreRef("packed store", "/s", "redo it")
O_DIRECT = getattr(os, "O_DIRECT", 0)


def _write(tmp_path, rows, dim, dtype, chunk_rows, shard_bytes, order=None):
    """An array of ``rows`` random rows written chunk by chunk through a ChunkWriter."""
    group = zarr.open_group(tmp_path / "g", mode="w")
    data = np.random.default_rng(rows).standard_normal((rows, dim)).astype(dtype)
    layout = create_sharded(group, "x", data.shape, dtype, chunk_rows, shard_bytes)
    chunks = range(layout.num_chunks) if order is None else order
    with ChunkWriter(layout.chunk_bytes, layout.place, depth=2) as writer:
        for k in chunks:
            buf = writer.buffer()
            part = np.zeros((chunk_rows, dim), dtype)
            rows_k = data[k * chunk_rows:(k + 1) * chunk_rows]
            part[:len(rows_k)] = rows_k
            buf[:layout.chunk_bytes] = part.reshape(-1).view(np.uint8)
            writer.submit(k, buf)
    return layout, data


@pytest.mark.parametrize(("rows", "dim", "dtype", "chunk_rows", "shard_bytes"), [
    (40, 3, np.float32, 4, 5 * 4096),        # unaligned chunks, 5 a shard, last shard partial
    (64, 256, np.float32, 4, 4 * 4100),      # whole-block chunks (4 KiB + crc padded to 8)
    (7, 100, np.float16, 7, 1 << 30),        # one chunk, one shard
    (30, 16, np.float32, 8, 1),              # a shard per chunk; the last chunk part padding
])
def test_zarr_decodes_our_shards(tmp_path, rows, dim, dtype, chunk_rows, shard_bytes):
    order = None if rows != 40 else [9, 0, 4, 1, 8, 2, 3, 7, 6, 5]  # any order
    layout, data = _write(tmp_path, rows, dim, dtype, chunk_rows, shard_bytes, order)
    stored = zarr.open_group(tmp_path / "g", mode="r")["x"]
    assert stored.shards[0] == layout.per_shard * chunk_rows and stored.chunks[0] == chunk_rows
    np.testing.assert_array_equal(stored[...], data)
    files = sorted(p.name for p in (tmp_path / "g" / "x").iterdir() if p.name != "zarr.json")
    assert files == sorted(f"c.{s}.0" for s in range(layout.num_shards))
    for s in range(layout.num_shards):
        raw = layout.path(s).read_bytes()
        assert len(raw) == layout.file_bytes(s)
        index = np.frombuffer(raw[-layout.index_bytes:-4], "<u8").reshape(-1, 2)
        assert raw[-4:] == crc_bytes(raw[-layout.index_bytes:-4])
        for j, (offset, nbytes) in enumerate(index):
            if j >= layout.chunks_in(s):
                assert offset == nbytes == EMPTY
                continue
            assert offset % BLOCK == 0 and nbytes == layout.chunk_bytes + 4
            chunk = raw[offset:offset + layout.chunk_bytes]
            assert raw[offset + layout.chunk_bytes:offset + nbytes] == crc_bytes(chunk)
            assert not any(raw[offset + nbytes:offset + layout.stride])  # zero padding


@pytest.mark.parametrize("direct", [True, False])
def test_read_checks_every_chunk(tmp_path, direct):
    layout, data = _write(tmp_path, 64, 256, np.float32, 4, 3 * 8192)
    out = aligned_buffer(9 * layout.chunk_bytes)
    layout.read(2, out, REF, "x", range(5, 6), direct=direct)
    np.testing.assert_array_equal(out.view(np.float32).reshape(-1, 256), data[8:44])
    path, at = layout.place(4)
    raw = bytearray(path.read_bytes())
    for offset in (at + 10, at + layout.chunk_bytes + 1):  # the data, the crc
        damaged = raw.copy()
        damaged[offset] ^= 1
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptDataError, match=rf"'x' \(batch 5\): chunk file {path} "
                           rf"holds chunk 1 \(at byte {at}\), which failed its crc32c"):
            layout.read(2, out, REF, "x", range(5, 6), direct=direct)
    layout.read(2, out, REF, "x", verify=False, direct=direct)  # unchecked: read whole
    path.write_bytes(bytes(raw[:at + 100]))
    with pytest.raises(CorruptDataError, match=rf"chunk file {path} is truncated"):
        layout.read(2, out, REF, "x", direct=direct)


def test_index_checked_against_the_layout(tmp_path):
    layout, _ = _write(tmp_path, 40, 3, np.float32, 4, 5 * 4096)
    assert layout.index_problem(1) is None
    path = layout.path(1)
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    assert layout.index_problem(1) == "has a shard index that failed its crc32c check " \
        "(corrupted)"
    entries = np.frombuffer(raw[-layout.index_bytes:-4], "<u8").copy()
    entries[0] += 4096  # a valid index of another layout
    path.write_bytes(raw[:-layout.index_bytes] + entries.tobytes() + crc_bytes(entries))
    assert "does not match the store's layout" in layout.index_problem(1)
    path.write_bytes(raw + b"\0")
    assert layout.index_problem(1) == f"has {len(raw) + 1} bytes, expected {len(raw)} " \
        "(truncated or overwritten)"
    path.unlink()
    assert layout.index_problem(1) == "is missing"


def _files(layout: ShardLayout) -> list[bytes]:
    return [layout.path(s).read_bytes() for s in range(layout.num_shards)]


def test_every_write_path_makes_the_same_files(tmp_path, monkeypatch):
    """Uncached (where the kernel has it), O_DIRECT and buffered writes: the same bytes."""
    want = _files(_write(tmp_path / "uncached", 64, 256, np.float32, 4, 3 * 8192)[0])
    real = os.pwritev

    def no_dontcache(fd, buffers, offset, flags=0):
        if flags:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real(fd, buffers, offset)

    monkeypatch.setattr(io.os, "pwritev", no_dontcache)
    assert _files(_write(tmp_path / "direct", 64, 256, np.float32, 4, 3 * 8192)[0]) == want
    refused = []

    def no_direct(fd, buffers, offset, flags=0):  # the device refuses O_DIRECT writes
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return no_dontcache(fd, buffers, offset, flags)

    monkeypatch.setattr(io.os, "pwritev", no_direct)
    assert _files(_write(tmp_path / "buffered", 64, 256, np.float32, 4, 3 * 8192)[0]) == want
    assert len(refused) in (0, 16)  # 0: O_DIRECT refused when set already (tmpfs)


def test_writer_hands_on_the_first_error(tmp_path, monkeypatch):
    group = zarr.open_group(tmp_path, mode="w")
    layout = create_sharded(group, "x", (400, 16), np.float32, 4, 1 << 20)
    calls = []

    def failing(self, chunk, buf):
        calls.append(chunk)
        raise OSError(f"cannot write chunk {chunk}")

    monkeypatch.setattr(ChunkWriter, "_write", failing)
    with pytest.raises(OSError, match="chunk 0"), \
            ChunkWriter(layout.chunk_bytes, layout.place, depth=2) as w:
        for k in range(50):
            w.submit(k, w.buffer())
    assert calls == [0]  # later chunks are dropped, never written


def test_file_count_does_not_grow_with_chunks(tmp_path):
    group = zarr.open_group(tmp_path, mode="w")
    for n in (10, 1000, 5000):
        layout = create_sharded(group, f"x{n}", (4 * n, 16), np.float32, 4, 64 << 20)
        assert layout.num_shards == 1 and len(list((tmp_path / f"x{n}").glob("c.*"))) == 1
