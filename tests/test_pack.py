"""Tiers, batched packing and the packed store: exact assembly, integrity, budget."""


import json

import numpy as np
import pytest
import torch
import zarr
from helpers import prepare
from tinygraphs import make_dataset

from disktrain.errors import CorruptDataError, DataError
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader
from disktrain.pack import PackConfig, PackedStore, assign_tiers, pack_dataset
from disktrain.pack.tiers import NOT_CACHED, cache_rows_to_fit
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.storage.chunkfile import ChunkWriter
from disktrain.storage.dataset import Dataset


def test_assign_tiers_table():
    counts = np.array([0, 5, 1, 5, 3, 0, 2])
    tiers = assign_tiers(counts, row_bytes=10, gpu_cache_bytes=20, cpu_cache_bytes=15)
    assert tiers.gpu_nodes.tolist() == [1, 3]      # the two hottest (tie: lower id first)
    assert tiers.cpu_nodes.tolist() == [4]         # 15 bytes hold one 10-byte row
    codes = tiers.codes(7)
    assert codes.tolist() == [NOT_CACHED, -1, NOT_CACHED, -2, 0, NOT_CACHED, NOT_CACHED]
    assert cache_rows_to_fit(counts, 3) == 3
    assert cache_rows_to_fit(counts, 100) == 0
    never = assign_tiers(counts, 10, 1000, 1000)
    assert 0 not in never.gpu_nodes and 5 not in never.cpu_nodes
    none = assign_tiers(counts, 10, 0, 9)  # no cache holds a row: nothing ranked
    assert none.gpu_nodes.dtype == tiers.gpu_nodes.dtype and not len(none.gpu_nodes)
    assert not len(none.cpu_nodes) and none.codes(7).tolist() == [NOT_CACHED] * 7


def _prepare(path, pack_cfg, dtype=np.float32):
    return prepare(make_dataset(path, dtype=dtype),
                   SampleConfig(fanouts=(4, 3), batch_size=24, epochs=2, seed=2, group_size=3),
                   pack_cfg)


@pytest.mark.parametrize("gpu,cpu,dtype", [(0, 0, np.float32), (640, 1280, np.float32),
                                           (10**6, 0, np.float16), (0, 2000, np.float16)])
def test_assembled_features_are_bit_identical(tmp_path, gpu, cpu, dtype):
    path = tmp_path / "d"
    packed = _prepare(path, PackConfig(gpu_cache_bytes=gpu, cpu_cache_bytes=cpu,
                                       chunk_bytes=200, group_bytes=4000), dtype)
    raw = Dataset(path).feature_rows(0, Dataset(path).num_nodes)
    loader = PackedLoader(path, LoaderConfig(prefetch=2, read_threads=2))
    seen = 0
    for mb in loader(range(loader.num_batches)):
        stored = loader.samples.input_nodes(mb.index)
        inner = loader.samples.inner_count(mb.index)
        assert np.array_equal(mb.input_nodes[:inner], stored[:inner])
        assert np.array_equal(np.sort(mb.input_nodes), np.sort(stored))
        assert torch.equal(mb.x, torch.from_numpy(raw[mb.input_nodes]))
        seen += 1
    assert seen == loader.num_batches
    info = packed.info()
    assert info["duplication_factor"] >= 1.0 or info["packed_rows"] == 0


def test_zarr_reads_the_packed_store(tmp_path):
    path = tmp_path / "d"
    packed = _prepare(path, PackConfig(chunk_bytes=128))
    arr = zarr.open_array(path / "packed" / "rows", mode="r")
    for b in range(packed.num_batches):
        start = packed.batch_rows[b]
        mine = packed.read_packed(b)
        assert np.array_equal(arr[start:start + len(mine)], mine)


def test_corrupted_or_truncated_chunk_names_batch_and_file(tmp_path):
    path = tmp_path / "d"
    packed = _prepare(path, PackConfig(chunk_bytes=128))
    b = 3
    chunk = int(packed.batch_rows[b]) // packed.chunk_rows
    f, at = packed.layout.place(chunk)
    clean = f.read_bytes()
    data = bytearray(clean)
    data[at + 5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match=rf"packed store .*'rows' \(batch {b}\): chunk "
                       rf"file .*c\.0\.0 holds chunk {chunk} .*failed its crc32c.*rerun "
                       "disktrain prepare"):
        packed.read_packed(b)
    f.write_bytes(clean[:at + 10])
    with pytest.raises(CorruptDataError, match="truncated"):
        packed.read_packed(b)
    with pytest.raises(CorruptDataError, match=r"'rows' \(batches 0\.\.\d+\): .*expected"):
        PackedStore(path)  # the shard's index is cut off: every batch in it is named
    f.write_bytes(bytes(data))
    loader = PackedLoader(path)
    with pytest.raises(CorruptDataError, match=rf"\(batch {b}\)"):
        for _ in loader(range(loader.num_batches)):
            pass


def test_budget_error_says_what_fits(tmp_path):
    path = tmp_path / "d"
    with pytest.raises(DataError, match=r"max-packed-bytes.*hottest rows"):
        _prepare(path, PackConfig(max_packed_bytes=1000))
    assert not (path / "packed").exists()
    ok = pack_dataset(path, PackConfig(cpu_cache_bytes=10**6, max_packed_bytes=1000),
                      progress=False)
    assert ok.info()["packed_rows"] == 0


def test_resume_keeps_finished_groups(tmp_path, monkeypatch):
    path = tmp_path / "d"
    cfg = PackConfig(chunk_bytes=128, group_bytes=2000)
    make_dataset(path)
    sample_dataset(path, SampleConfig(fanouts=(4, 3), batch_size=24, seed=2), progress=False)
    real = ChunkWriter._write
    n = {"calls": 0}

    def dying(self, chunk, buf):
        n["calls"] += 1
        if n["calls"] == 12:
            raise OSError("disk full")
        real(self, chunk, buf)

    monkeypatch.setattr(ChunkWriter, "_write", dying)
    with pytest.raises(OSError):
        pack_dataset(path, cfg, progress=False)
    assert not (path / "packed").exists() and (path / "packed.partial").exists()
    monkeypatch.setattr(ChunkWriter, "_write", real)
    packed = pack_dataset(path, cfg, progress=False)
    raw = Dataset(path).feature_rows(0, Dataset(path).num_nodes)
    loader = PackedLoader(path)
    for mb in loader(range(packed.num_batches)):
        assert torch.equal(mb.x, torch.from_numpy(raw[mb.input_nodes]))


def test_one_group_reads_the_raw_features_once_in_order(tmp_path, monkeypatch):
    path = tmp_path / "d"
    monkeypatch.setattr("disktrain.storage.dataset.FEATURE_CHUNK_BYTES", 1024)  # 16-row chunks
    make_dataset(path)
    sample_dataset(path, SampleConfig(fanouts=(4, 3), batch_size=24, epochs=2, seed=2),
                   progress=False)
    reads = []
    real = Dataset._read_feature_chunk

    def recording(self, c, buf):
        reads.append(c)
        return real(self, c, buf)

    monkeypatch.setattr(Dataset, "_read_feature_chunk", recording)
    packed = pack_dataset(path, PackConfig(chunk_bytes=128), progress=False)
    assert packed.num_batches > 5 and packed.info()["packed_rows"] > 0
    # one packing group: each raw feature chunk read once (by read-ahead threads)
    assert len(reads) == len(set(reads)) > 5
    raw = Dataset(path).feature_rows(0, Dataset(path).num_nodes)
    loader = PackedLoader(path)
    for mb in loader(range(packed.num_batches)):
        assert torch.equal(mb.x, torch.from_numpy(raw[mb.input_nodes]))


def test_crash_after_the_last_group_still_resumes(tmp_path, monkeypatch):
    from disktrain.pack import packer

    path = tmp_path / "d"
    make_dataset(path)
    sample_dataset(path, SampleConfig(fanouts=(4, 3), batch_size=24, seed=2), progress=False)
    monkeypatch.setattr(packer, "replace_dir", lambda src, final: (_ for _ in ()).throw(
        OSError("killed during rename")))
    with pytest.raises(OSError):
        pack_dataset(path, PackConfig(chunk_bytes=128), progress=False)
    monkeypatch.undo()
    packed = pack_dataset(path, PackConfig(chunk_bytes=128), progress=False)
    assert packed.num_batches > 0 and not (path / "packed.partial").exists()


@pytest.mark.parametrize("chunk_bytes", [200, 4096, 8192 + 64])
def test_chunks_written_past_the_page_cache_read_back_and_verify(tmp_path, chunk_bytes):
    """Chunks of whole 4 KiB blocks go through O_DIRECT (where the filesystem has it), the
    rest through the page cache: every way reads back bit-identical and verifies clean."""
    from disktrain.verify import verify

    path = tmp_path / "d"
    packed = _prepare(path, PackConfig(chunk_bytes=chunk_bytes, group_bytes=40_000))
    from disktrain.sample import SampleStore

    raw = Dataset(path).feature_rows(0, Dataset(path).num_nodes)
    samples = SampleStore(path)
    assert packed.n_gpu == packed.n_cpu == 0
    for b in range(packed.num_batches):
        rows = packed.read_packed(b)
        assert np.array_equal(rows[packed.slots(b)], raw[samples.input_nodes(b)])
        start, stop = packed.batch_rows[b], packed.batch_rows[b + 1]
        assert not packed.read_packed(b, np.full((stop - start, raw.shape[1]), 7,
                                                 raw.dtype))[len(rows):].any()
    assert verify(path).clean


def test_shard_files_do_not_grow_with_batches(tmp_path):
    """Three times the epochs, three times the batches and rows: as many shard files."""
    counts = []
    for epochs in (1, 3):
        path = tmp_path / f"e{epochs}"
        make_dataset(path)
        sample_dataset(path, SampleConfig(fanouts=(4, 3), batch_size=24, epochs=epochs, seed=2),
                       progress=False)
        packed = pack_dataset(path, PackConfig(chunk_bytes=128), progress=False)
        counts.append((packed.num_batches, len(list((packed.path / "rows").glob("c.*")))))
    assert counts[1][0] >= 3 * counts[0][0] > 0 and counts[0][1] == counts[1][1] == 1


def test_old_format_is_refused_and_repacked(tmp_path):
    path = tmp_path / "d"
    _prepare(path, PackConfig(chunk_bytes=128))
    meta = json.loads((path / "packed" / "zarr.json").read_text())
    del meta["attributes"]["format_version"]  # as version 1 wrote it
    (path / "packed" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"packed store {path / 'packed'} has format version 1, "
                       rf"not 2 .*re-create it: remove {path / 'packed'} and rerun disktrain "
                       "prepare"):
        PackedStore(path)
    assert pack_dataset(path, PackConfig(chunk_bytes=128), progress=False).num_batches > 0


def test_decoded_rows_are_the_same_whatever_the_shard_size(tmp_path):
    """A shard per chunk, or all chunks in one shard: zarr decodes the same rows."""
    path = tmp_path / "d"
    _prepare(path, PackConfig(chunk_bytes=200, shard_bytes=1))
    one_per_chunk = zarr.open_group(path / "packed", mode="r")["rows"][...]
    store = PackedStore(path)
    assert len(list((path / "packed" / "rows").glob("c.*"))) == store.layout.num_shards == \
        -(-len(one_per_chunk) // store.chunk_rows) > 1
    for b in range(store.num_batches):  # each shard names the batches with rows in it
        rows = store.batch_rows[b:b + 2] // store.chunk_rows
        assert all(b in store.shard_batches(c) for c in range(*rows))
    assert store.shard_batches(store.layout.num_shards - 1).stop <= store.num_batches
    pack_dataset(path, PackConfig(chunk_bytes=200), progress=False)
    assert np.array_equal(zarr.open_group(path / "packed", mode="r")["rows"][...],
                          one_per_chunk)


def test_rows_of_no_bytes_have_no_files(tmp_path):
    """A dataset without features: its packed rows (no bytes) are neither sharded nor stored."""
    from disktrain.verify import verify

    path = make_dataset(tmp_path / "d", dim=0)
    sample_dataset(path, SampleConfig(fanouts=(2,), batch_size=64), progress=False)
    packed = pack_dataset(path, PackConfig(), progress=False)
    assert packed.batch_packed[0] > 0 and not list((packed.path / "rows").glob("c.*"))
    assert packed.read_packed(0).shape == (packed.batch_packed[0], 0)
    assert verify(path).clean


def test_a_pass_reads_raw_rows_in_spans_of_a_quarter_of_the_group_memory():
    assert PackConfig().span_bytes == 256 << 20  # 1 GiB groups
    assert PackConfig(group_bytes=512 << 20).span_bytes == 128 << 20
    assert PackConfig(group_bytes=1 << 20).span_bytes == 64 << 20
    assert PackConfig(group_bytes=1 << 40).span_bytes == 256 << 20
