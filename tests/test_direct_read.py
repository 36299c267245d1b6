"""Packed reads past the page cache (O_DIRECT): same rows, same integrity checks, automatic
fallback, and feature buffers laid out for them."""

import errno
import fcntl
import mmap
import os

import numpy as np
import pytest
import torch
from helpers import evict, prepare, resident_pages
from tinygraphs import make_dataset

from disktrain.errors import CorruptDataError
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader, _BufferPool
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, SampleStore, sample_dataset
from disktrain.storage.dataset import Dataset
from disktrain.storage.io import BLOCK, aligned_buffer, direct_span

O_DIRECT = getattr(os, "O_DIRECT", 0)
pytestmark = pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform")


def _prepare(path, dim=16, chunk_bytes=8192):
    return prepare(make_dataset(path, dim=dim), SampleConfig(fanouts=(4, 3), batch_size=24, seed=2),
                   PackConfig(chunk_bytes=chunk_bytes))


@pytest.fixture
def direct_opens(monkeypatch):
    """Counts opens that ask for O_DIRECT (whether or not the filesystem grants it)."""
    real, seen = os.open, []

    def spy(path, flags, *args, **kwargs):
        seen.append(bool(flags & O_DIRECT))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return seen


def _padded_buffer(packed, b, skip=0):
    """An uninitialized buffer of batch ``b``'s padded rows, ``skip`` bytes past 4 KiB."""
    rows = int(packed.batch_rows[b + 1] - packed.batch_rows[b])
    nbytes = rows * packed.feature_dim * packed.dtype.itemsize
    return aligned_buffer(nbytes + skip)[skip:].view(packed.dtype).reshape(rows, -1)


@pytest.mark.parametrize(("address", "nbytes", "expected"), [
    (0, 8192, 8192), (4096, 8192 + 100, 8192), (8192, 4095, 0), (64, 8192, 0),
    (4096 * 7, 0, 0), (512, 4096, 0)])
def test_direct_span_table(address, nbytes, expected):
    assert direct_span(address, nbytes) == expected


@pytest.mark.parametrize(("dim", "chunk_bytes"), [(16, 8192), (16, 8192 + 64), (100, 8192),
                                                  (256, 4096 * 3)])
def test_direct_and_buffered_reads_give_identical_rows(uncached_tmp, direct_opens, dim,
                                                       chunk_bytes):
    packed = _prepare(uncached_tmp / "d", dim, chunk_bytes)
    raw = Dataset(uncached_tmp / "d").feature_rows(0, Dataset(uncached_tmp / "d").num_nodes)
    samples = SampleStore(uncached_tmp / "d")
    chunk_bytes = packed.chunk_rows * dim * 4
    assert packed.n_cpu == packed.n_gpu == 0
    for b in range(packed.num_batches):
        direct_opens.clear()
        got = packed.read_packed(b, _padded_buffer(packed, b)).copy()
        # one open of the one shard file, direct where every chunk is whole blocks (then
        # every chunk's place in the aligned buffer is aligned), granted, not fallen back
        assert direct_opens == [chunk_bytes % BLOCK == 0] * int(packed.batch_packed[b] > 0)
        assert packed.direct
        assert np.array_equal(got[packed.slots(b)], raw[samples.input_nodes(b)])
        packed.direct = False
        direct_opens.clear()
        assert np.array_equal(packed.read_packed(b, _padded_buffer(packed, b)), got)
        assert not any(direct_opens)
        packed.direct = True


def test_a_flipped_byte_is_caught_on_the_direct_path(uncached_tmp, direct_opens):
    packed = _prepare(uncached_tmp / "d", 16, 8192)  # two whole blocks per chunk
    b = int(np.flatnonzero(packed.batch_packed)[0])
    f, at = packed.layout.place(int(packed.batch_rows[b]) // packed.chunk_rows)
    clean = f.read_bytes()
    for offset in (at + 3, at + 8190, at + 8193):  # the data's first block, its last, the crc
        data = bytearray(clean)
        data[offset] ^= 0x01
        f.write_bytes(bytes(data))
        direct_opens.clear()
        with pytest.raises(CorruptDataError, match=rf"\(batch {b}\).*crc32c"):
            packed.read_packed(b, _padded_buffer(packed, b))
        assert direct_opens[0] and packed.direct
    f.write_bytes(clean[:at + 4096])
    with pytest.raises(CorruptDataError, match="truncated"):
        packed.read_packed(b, _padded_buffer(packed, b))
    f.write_bytes(clean)
    packed.read_packed(b, _padded_buffer(packed, b))
    packed.verify = False  # unchecked reads still come in whole
    assert np.array_equal(packed.read_packed(b), packed.read_packed(b, _padded_buffer(packed, b)))


def test_misaligned_destinations_read_through_the_page_cache(tmp_path, direct_opens):
    packed = _prepare(tmp_path / "d", 16, 8192)
    for b in range(packed.num_batches):
        want = packed.read_packed(b).copy()  # a fresh aligned buffer
        direct_opens.clear()
        got = packed.read_packed(b, _padded_buffer(packed, b, skip=64))
        assert np.array_equal(got, want) and not any(direct_opens)


def _refuse_open(monkeypatch):
    real = os.open

    def refusing(path, flags, *args, **kwargs):
        if flags & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)


def _refuse_read(monkeypatch):
    real = os.preadv

    def refusing(fd, buffers, offset, *args):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset, *args)

    monkeypatch.setattr(os, "preadv", refusing)


@pytest.mark.parametrize("refuse", [_refuse_open, _refuse_read])
def test_a_filesystem_refusing_o_direct_falls_back(tmp_path, monkeypatch, refuse):
    packed = _prepare(tmp_path / "d", 16, 8192)
    want = [packed.read_packed(b).copy() for b in range(packed.num_batches)]
    refuse(monkeypatch)
    assert packed.direct
    got = [packed.read_packed(b, _padded_buffer(packed, b)) for b in range(packed.num_batches)]
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert not packed.direct  # asked once, then no more


@pytest.mark.parametrize(("dim", "dtype"), [(256, np.float32), (128, np.float32),
                                            (32, np.float32), (100, np.float32),
                                            (200, np.float16)])
def test_the_pool_aligns_any_row_without_moving_foreign_tensors(dim, dtype):
    pool = _BufferPool(dim, np.dtype(dtype), pin=False)
    buf = pool.take(100)
    rows, base = buf.shape[0], buf.untyped_storage().data_ptr()
    assert buf.data_ptr() % BLOCK == 0
    for row in (0, 1, 3, 7, 41, rows - 1):
        _BufferPool.align(buf, row)
        assert buf[row].data_ptr() % BLOCK == 0
        assert buf.shape[0] == rows and buf.is_contiguous()
        assert 0 <= buf.data_ptr() - base < BLOCK  # within the allocation's slack
        buf.numpy()[-1] = 1  # the whole view is writable memory
    pool.give(buf)
    assert pool.take(rows) is buf
    big = torch.zeros(10, dim, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)
    part = big[1:5]
    _BufferPool.align(part, 1)
    assert part.data_ptr() == big[1].data_ptr()


@pytest.mark.parametrize("dim", [256, 128, 32, 100])
def test_loader_batches_are_exact_with_aligned_packed_rows(tmp_path, dim):
    path = tmp_path / "d"
    make_dataset(path, dim=dim)
    sample_dataset(path, SampleConfig(fanouts=(3, 2), batch_size=8, seed=0), progress=False)
    pack_dataset(path, PackConfig(chunk_bytes=8192, cpu_cache_bytes=20 * dim * 4),
                 progress=False)
    raw = Dataset(path).feature_rows(0, Dataset(path).num_nodes)
    loader = PackedLoader(path, LoaderConfig(prefetch=2, read_threads=2))
    starts = []
    real_read = loader.read

    def read(batch):
        out = real_read(batch)
        inner = loader.samples.inner_count(batch.index)
        starts.append(batch.buffer[inner].data_ptr() % BLOCK)
        return out

    loader.read = read
    seen = 0
    for mb in loader(range(loader.num_batches)):
        assert torch.equal(mb.x, torch.from_numpy(raw[mb.input_nodes]))
        seen += 1
    assert seen == loader.num_batches and starts == [0] * seen


def test_direct_reads_leave_the_page_cache_alone(uncached_tmp):
    packed = _prepare(uncached_tmp / "d", 256, 4096 * 8)  # chunks of 8 whole blocks
    b = int(np.argmax(packed.batch_packed))
    files = [packed.layout.path(s) for s in range(packed.layout.num_shards)]
    for f in files:
        evict(f)
    assert not any(resident_pages(f) for f in files)
    packed.read_packed(b, _padded_buffer(packed, b))
    assert packed.direct
    # the crc and padding sit in a block of their own after each chunk: read directly too
    assert sum(resident_pages(f) for f in files) == 0
    packed.direct = False
    packed.read_packed(b, _padded_buffer(packed, b))
    chunks = int(packed.batch_rows[b + 1] - packed.batch_rows[b]) // packed.chunk_rows
    assert sum(resident_pages(f) for f in files) >= chunks * packed.layout.stride // mmap.PAGESIZE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned memory)")
@pytest.mark.gpu
def test_pinned_buffers_are_aligned_and_read_directly(uncached_tmp, direct_opens):
    packed = _prepare(uncached_tmp / "d", 256, 4096 * 4)
    pool = _BufferPool(packed.feature_dim, packed.dtype, pin=True)
    b = int(np.argmax(packed.batch_packed))
    padded = int(packed.batch_rows[b + 1] - packed.batch_rows[b])
    buf = pool.take(padded + 3)
    _BufferPool.align(buf, 3)
    assert buf.is_pinned() and buf[3].data_ptr() % BLOCK == 0
    got = packed.read_packed(b, buf.numpy()[3:3 + padded])
    assert all(direct_opens) and packed.direct and np.array_equal(got, packed.read_packed(b))
