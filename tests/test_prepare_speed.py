"""The fast preparation paths keep their results and their checks: feature chunks read ahead
on threads (``O_DIRECT`` where the filesystem allows), packed exactly (the write paths of
packed chunks: tests/test_shards.py)."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from tinygraphs import make_dataset

from disktrain.errors import CorruptDataError
from disktrain.loader.pipeline import PackedLoader
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.storage import dataset as dataset_mod
from disktrain.storage.chunkfile import chunk_file
from disktrain.storage.dataset import Dataset
from disktrain.verify import verify

ROWS = 16  # feature rows per chunk in these tests
CHUNK_FILE_BYTES = ROWS * 16 * 4 + 4


@pytest.fixture
def chunked(tmp_path, monkeypatch) -> Path:
    """300 nodes of 16 float32 features in 16-row chunks (19 chunk files of 1028 bytes:
    not whole 4 KiB blocks, as ``O_DIRECT`` reads must handle)."""
    monkeypatch.setattr(dataset_mod, "FEATURE_CHUNK_BYTES", ROWS * 16 * 4)
    return make_dataset(tmp_path / "d")


def _raw(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(path / "features", mode="r")[...])


def _reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("feature-read")]


@pytest.mark.parametrize("max_read_bytes", [1, 3 * ROWS * 16 * 4, 1 << 20])
def test_iter_sorted_reads_each_needed_chunk_once(chunked, monkeypatch, max_read_bytes):
    ds = Dataset(chunked)
    assert ds.features.chunks == (ROWS, 16)
    want = _raw(chunked)
    reads = []
    real = Dataset._read_feature_chunk
    monkeypatch.setattr(Dataset, "_read_feature_chunk",
                        lambda self, c, buf: (reads.append(c), real(self, c, buf))[1])
    ids = np.unique(np.random.default_rng(0).integers(0, ds.num_nodes, 90))
    got, seen = np.full((len(ids), 16), np.nan, np.float32), 0
    per_span = max(1, max_read_bytes // (ROWS * 16 * 4))
    for i, j, rows in ds.iter_sorted(ids, max_read_bytes=max_read_bytes):
        assert i == seen < j and rows.shape == (j - i, 16)
        assert ids[j - 1] // ROWS - ids[i] // ROWS < per_span  # a span's chunks
        got[i:j], seen = rows, j
    assert seen == len(ids)
    assert np.array_equal(got, want[ids])
    assert sorted(reads) == np.unique(ids // ROWS).tolist()  # each needed chunk, once
    assert not _reader_threads()


def test_gather_sorted_repeats_and_empty(chunked):
    ds = Dataset(chunked)
    want = _raw(chunked)
    ids = np.sort(np.random.default_rng(1).integers(0, ds.num_nodes, 400))  # repeats
    assert np.array_equal(ds.gather_sorted(ids), want[ids])
    assert ds.gather_sorted(np.zeros(0, np.int64)).shape == (0, 16)
    assert list(ds.iter_sorted(np.zeros(0, np.int64))) == []
    assert np.array_equal(ds.gather_sorted(np.array([299])), want[[299]])  # the edge chunk


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:1000])


def _extend(f: Path) -> None:
    f.write_bytes(f.read_bytes() + bytes(100))


def _flip(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[100] ^= 0x40
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,problem", [
    (_flip, "failed its crc32c check"),
    (_truncate, f"has 1000 bytes, expected {CHUNK_FILE_BYTES}"),
    (_extend, f"has {CHUNK_FILE_BYTES + 100} bytes, expected {CHUNK_FILE_BYTES}"),
    (Path.unlink, "is missing"),
])
def test_iter_sorted_checks_every_chunk(chunked, damage, problem):
    f = chunk_file(chunked / "features", 5, 0)
    damage(f)
    rows = []
    with pytest.raises(CorruptDataError, match=rf"'features': chunk file {f} {problem}"):
        for i, j, r in Dataset(chunked).iter_sorted(np.arange(300), max_read_bytes=1):
            rows.append((i, j))
    assert rows == [(k * ROWS, (k + 1) * ROWS) for k in range(5)]  # the chunks before
    assert not _reader_threads()


def test_iter_sorted_stopped_early_stops_its_readers(chunked):
    it = Dataset(chunked).iter_sorted(np.arange(300), max_read_bytes=1)
    next(it)
    it.close()
    assert not _reader_threads()


def test_iter_sorted_without_o_direct(chunked, monkeypatch):
    """A filesystem that refuses O_DIRECT (EINVAL on open) is read buffered, same rows."""
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(dataset_mod.os, "open", no_direct)
    ids = np.arange(0, 300, 7)
    rows = np.concatenate([r.copy() for _, _, r in Dataset(chunked).iter_sorted(ids)])
    assert np.array_equal(rows, _raw(chunked)[ids])


def test_iter_sorted_when_the_device_refuses_o_direct_reads(chunked, monkeypatch):
    """O_DIRECT accepted at open but refused by the read (EINVAL): read buffered instead."""
    real_preadv, refused = os.preadv, []

    def no_direct_reads(fd, buffers, offset, *args):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset, *args)

    monkeypatch.setattr(dataset_mod.os, "preadv", no_direct_reads)
    ids = np.arange(3, 300, 5)
    rows = np.concatenate([r.copy() for _, _, r in Dataset(chunked).iter_sorted(ids)])
    assert np.array_equal(rows, _raw(chunked)[ids])
    assert len(refused) in (0, len(np.unique(ids // ROWS)))  # 0: refused at open already


def test_packing_many_feature_chunks_is_exact(chunked):
    """Packing reads 19 feature chunks in spans and writes 32-row packed chunks: every
    batch's rows equal the raw features, and every store checks clean."""
    sample_dataset(chunked, SampleConfig(fanouts=(4, 3), batch_size=24, epochs=2, seed=2,
                                         group_size=3), progress=False)
    packed = pack_dataset(chunked, PackConfig(cpu_cache_bytes=640, chunk_bytes=32 * 64),
                          progress=False)
    raw = _raw(chunked)
    rows = zarr.open_array(chunked / "packed" / "rows", mode="r")
    assert rows.shape[0] == packed.info()["padded_rows"] > 0
    for mb in PackedLoader(chunked)(range(packed.num_batches)):
        assert torch.equal(mb.x, torch.from_numpy(raw[mb.input_nodes]))
    assert verify(chunked).clean


@pytest.mark.parametrize("num_nodes", [50, 10**9])  # by the bitmap, then by the sort
def test_sorted_unique_positions(num_nodes):
    from disktrain.pack.packer import _sorted_unique

    rng = np.random.default_rng(3)
    runs = [np.sort(rng.choice(50, n, replace=False)) for n in (0, 7, 30, 50, 1)]
    needed, positions = _sorted_unique(runs, num_nodes)
    assert needed.tolist() == np.unique(np.concatenate(runs)).tolist()
    for run, pos in zip(runs, positions, strict=True):
        assert needed[pos].tolist() == run.tolist()
    empty, none = _sorted_unique([], num_nodes)
    assert len(empty) == 0 and none == []
