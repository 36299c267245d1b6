"""Fault injection: every stored array is checksummed and checked where it is read; derived
stores are tied to what they were made from; the sample store's open files stay bounded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import prepare
from tinygraphs import make_dataset

from disktrain.errors import CorruptDataError, DataError
from disktrain.loader.pipeline import PackedLoader
from disktrain.pack import PackConfig, PackedStore, pack_dataset
from disktrain.sample import SampleConfig, SampleStore, sample_dataset
from disktrain.sample import store as store_mod
from disktrain.storage.dataset import Dataset, chunk_file

SAMPLE_CFG = SampleConfig(fanouts=(3, 2), batch_size=16, epochs=2, seed=4, group_size=2)
PACK_CFG = PackConfig(gpu_cache_bytes=640, cpu_cache_bytes=1280, chunk_bytes=256)
RERUN_DATASET = r"re-create the dataset \(disktrain ingest / disktrain synth\)"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = make_dataset(tmp_path_factory.mktemp("pristine") / "d")
    prepare(path, SAMPLE_CFG, PACK_CFG)
    return path


@pytest.fixture
def prepared(pristine, tmp_path) -> Path:
    """A fresh copy of a prepared dataset (dataset, sample store, packed store)."""
    return Path(shutil.copytree(pristine, tmp_path / "d"))


def flip(path: Path, offset: int = 3) -> None:
    """Flip one data byte of a chunk file in place."""
    data = bytearray(path.read_bytes())
    assert len(data) > offset + 4
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _read_all_features(d: Path):
    ds = Dataset(d)
    return ds.feature_rows(0, ds.num_nodes)


def _dataset_reads(name: str):
    return {
        "indptr": lambda d: Dataset(d).indptr,
        "indices": lambda d: Dataset(d).indices,
        "features": _read_all_features,
        "labels": lambda d: Dataset(d).labels,
        "train": lambda d: Dataset(d).split("train"),
        "val": lambda d: Dataset(d).split("val"),
        "test": lambda d: Dataset(d).split("test"),
    }[name]


@pytest.mark.parametrize("name", ["indptr", "indices", "features", "labels", "train", "val",
                                  "test"])
def test_dataset_arrays(prepared, name):
    ndim = 2 if name == "features" else 1
    f = chunk_file(prepared / name, *[0] * ndim)
    flip(f)
    with pytest.raises(CorruptDataError, match=rf"dataset {prepared}: array '{name}': chunk "
                       rf"file {f} failed its crc32c check.*{RERUN_DATASET}"):
        _dataset_reads(name)(prepared)


def test_csr_is_checked_once_per_process(prepared, monkeypatch):
    from disktrain.storage import dataset as dataset_mod

    calls = []
    real = dataset_mod.check_chunk
    monkeypatch.setattr(dataset_mod, "check_chunk", lambda p, n, **k: (
        k.get("verify", True) and calls.append(p), real(p, n, **k))[1])
    for _ in range(3):
        ds = Dataset(prepared)
        assert len(ds.indptr) == ds.num_nodes + 1 and len(ds.indices) == ds.indptr[-1]
    assert sorted(Path(p).parent.parent.name for p in calls) == ["indices", "indptr"]
    Dataset(prepared)  # opening alone checks nothing
    assert len(calls) == 2


def test_feature_chunks_are_checked_and_read_once(tmp_path, monkeypatch):
    from disktrain.storage import dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "FEATURE_CHUNK_BYTES", 16 * 16 * 4)  # 16-row chunks
    path = make_dataset(tmp_path / "d")
    ds = Dataset(path)
    assert ds.features.chunks == (16, 16)
    want = np.asarray(zarr.open_array(path / "features", mode="r")[...])
    reads = []
    real = dataset_mod.read_chunk
    monkeypatch.setattr(dataset_mod, "read_chunk",
                        lambda p, *a, **k: (reads.append(p), real(p, *a, **k))[1])
    ids = np.unique(np.random.default_rng(0).integers(0, ds.num_nodes, 120))
    assert np.array_equal(ds.gather_sorted(ids), want[ids])
    assert len(reads) == len(set(reads)) == len(np.unique(ids // 16))  # each chunk read once
    f = chunk_file(path / "features", 5, 0)
    flip(f, offset=100)
    ds = Dataset(path)
    assert np.array_equal(ds.feature_rows(0, 80), want[:80])  # chunks 0..4 are intact
    with pytest.raises(CorruptDataError, match=rf"'features': chunk file {f} failed"):
        ds.feature_rows(70, 100)


def test_every_chunk_has_a_file(tmp_path):
    """All-zero chunks are written too (a missing chunk is damage, never the fill value);
    flat arrays are created at their full size, room for the crc included."""
    from disktrain.storage.dataset import create_features, create_flat_array

    group = zarr.open_group(tmp_path / "g", mode="w")
    feats = create_features(group, 10, 3, np.float32)
    feats[...] = np.zeros((10, 3), np.float32)
    assert chunk_file(tmp_path / "g" / "features", 0, 0).stat().st_size == 10 * 3 * 4 + 4
    flat = create_flat_array(group, "flat", (1000,), np.int64)
    f = chunk_file(tmp_path / "g" / "flat", 0)
    assert f.stat().st_size == 8004
    del flat


def test_missing_feature_chunk(prepared):
    f = chunk_file(prepared / "features", 0, 0)
    f.unlink()
    with pytest.raises(CorruptDataError, match=rf"chunk file {f} is missing"):
        _read_all_features(prepared)


def test_truncated_flat_array(prepared):
    f = chunk_file(prepared / "indices", 0)
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(CorruptDataError, match=rf"{f} has \d+ bytes, expected \d+"):
        np.asarray(Dataset(prepared).indices)


def test_version_1_dataset_is_refused(prepared):
    meta = json.loads((prepared / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 1
    (prepared / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"{prepared}: format_version 1 .*{RERUN_DATASET}"):
        Dataset(prepared)


@pytest.mark.parametrize("name", store_mod.GROUP_ARRAYS)
def test_sample_group_arrays(prepared, name):
    group = 1
    f = chunk_file(prepared / "samples" / "groups" / f"g{group:06d}" / name,
                   *([0, 0] if name == "hop_counts" else [0]))
    flip(f, offset=0)
    store = SampleStore(prepared)
    store.batch(0)  # group 0 is intact
    with pytest.raises(CorruptDataError,
                       match=rf"sample store {prepared}/samples: array 'groups/g000001/{name}' "
                       rf"\(batches 2..3\): chunk file {f} failed its crc32c check.*remove "
                       rf"{prepared}/samples and rerun disktrain prepare"):
        store.batch(3)


def test_access_counts(prepared):
    f = chunk_file(prepared / "samples" / "access_counts", 0)
    flip(f)
    store = SampleStore(prepared)
    with pytest.raises(CorruptDataError, match=rf"'access_counts': chunk file {f} failed"):
        np.asarray(store.access_counts)


def test_packed_rows_name_the_batch(prepared):
    packed = PackedStore(prepared)
    b = int(np.flatnonzero(packed.batch_packed)[-1])
    chunk = int(packed.batch_rows[b]) // packed.chunk_rows
    f, at = packed.layout.place(chunk)
    flip(f, at + 3)
    inner = chunk % packed.layout.per_shard
    with pytest.raises(CorruptDataError, match=rf"packed store {packed.path}: array 'rows' "
                       rf"\(batch {b}\): chunk file {f} holds chunk {inner} "
                       rf"\(at byte {at}\), which failed its crc32c check.*remove "
                       rf"{packed.path} and rerun disktrain prepare"):
        packed.read_packed(b)


@pytest.mark.parametrize("name", ["slots", "cache_rows", "batch_rows", "batch_packed",
                                  "slot_offsets", "gpu_nodes", "cpu_nodes"])
def test_packed_arrays(prepared, name):
    f = chunk_file(prepared / "packed" / name, *([0, 0] if name == "cache_rows" else [0]))
    flip(f)
    with pytest.raises(CorruptDataError, match=rf"packed store {prepared}/packed: array "
                       rf"'{name}': chunk file {f} failed its crc32c check.*rerun disktrain"):
        PackedLoader(prepared)  # opens the packed store and loads the caches


def test_zarr_reads_every_array(prepared):
    ds = Dataset(prepared)
    root = zarr.open_group(prepared, mode="r")
    for name in ("indptr", "indices"):
        assert np.array_equal(root[name][...], getattr(ds, name))
    assert np.array_equal(root["features"][...], ds.feature_rows(0, ds.num_nodes))
    assert np.array_equal(root["labels"][...], ds.labels)
    samples = SampleStore(prepared)
    assert np.array_equal(root["samples/access_counts"][...], samples.access_counts)
    nodes = root["samples/groups/g000001/nodes"][...]
    assert np.array_equal(nodes[:len(samples.input_nodes(2))], samples.input_nodes(2))
    packed = PackedStore(prepared)
    assert np.array_equal(root["packed/cache_rows"][...], packed.cache_rows())
    assert np.array_equal(root["packed/slots"][...][packed.slot_offsets[1]:packed.slot_offsets[2]],
                          packed.slots(1))


def _other_dataset(prepared: Path, tmp_path: Path) -> Path:
    """A second dataset with the same content (a new dataset_id) holding ``prepared``'s
    sample and packed stores."""
    other = make_dataset(tmp_path / "other")
    for store in ("samples", "packed"):
        shutil.copytree(prepared / store, other / store)
    return other


def test_sample_store_of_another_dataset(prepared, tmp_path):
    other = _other_dataset(prepared, tmp_path)
    theirs = Dataset(prepared).dataset_id
    ours = Dataset(other).dataset_id
    with pytest.raises(DataError, match=rf"sample store {other}/samples was made from dataset "
                       rf"'{theirs}', but dataset {other} is '{ours}'; remove {other}/samples"):
        SampleStore(other)
    with pytest.raises(DataError, match=rf"sample store {other}/samples was made from"):
        PackedStore(other)
    store = sample_dataset(other, SAMPLE_CFG, progress=False)  # redone, not reused
    assert store.dataset_id == ours
    packed = pack_dataset(other, PACK_CFG, progress=False)
    assert packed.attrs["samples_id"] == store.store_id


def test_packed_store_of_another_sample_store(prepared):
    old = PackedStore(prepared)
    sample_dataset(prepared, SampleConfig(fanouts=(2,), batch_size=32, seed=9), progress=False)
    new = SampleStore(prepared)
    with pytest.raises(DataError, match=rf"packed store {prepared}/packed was made from sample "
                       rf"store '{old.attrs['samples_id']}' .* but sample store "
                       rf"{prepared}/samples is '{new.store_id}'.*remove {prepared}/packed"):
        PackedStore(prepared)
    packed = pack_dataset(prepared, PACK_CFG, progress=False)
    assert packed.attrs["samples_id"] == new.store_id != old.attrs["samples_id"]
    assert packed.num_batches == new.num_batches


def test_packed_store_with_other_counts(prepared):
    root = zarr.open_group(prepared / "samples", mode="r+")
    root.attrs["num_input_nodes"] = root.attrs["num_input_nodes"] + 1
    with pytest.raises(DataError, match=r"packed store .* holds \d+ batches of \d+ input rows, "
                       r"but sample store .* holds"):
        PackedStore(prepared)


def test_group_cache_is_thread_safe(prepared, monkeypatch):
    reference = SampleStore(prepared)
    want = {b: reference.batch(b) for b in range(reference.num_batches)}
    reads = []
    real = store_mod._GroupReader._read

    def slow_read(self, g):
        reads.append(g)
        time.sleep(0.01)  # widen the window in which other threads want the same group
        return real(self, g)

    monkeypatch.setattr(store_mod._GroupReader, "_read", slow_read)
    store = SampleStore(prepared, cache_bytes=10**9)
    with ThreadPoolExecutor(8) as pool:  # eight threads want group 0 at once: read once
        list(pool.map(lambda _: store.input_nodes(0), range(8)))
    assert reads == [0]

    store = SampleStore(prepared, cache_bytes=1)  # keeps only the newest group
    rng = np.random.default_rng(0)
    order = rng.integers(0, store.num_batches, (6, 60))

    def check(batches):
        for b in batches:
            got = store.batch(int(b))
            assert np.array_equal(got.input_nodes, want[b].input_nodes)
            for x, y in zip(got.blocks, want[b].blocks):
                assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
        return len(batches)

    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(check, order)) == order.size
    reader = store._reader
    assert len(reader._groups) == 1 and reader._bytes == sum(
        e.nbytes for e in reader._groups.values())


def test_group_read_error_reaches_every_waiter_and_is_not_cached(prepared, monkeypatch):
    real = store_mod._GroupReader._read
    fail = threading.Event()
    fail.set()

    def flaky(self, g):
        time.sleep(0.01)
        if fail.is_set():
            raise OSError("disk gone")
        return real(self, g)

    monkeypatch.setattr(store_mod._GroupReader, "_read", flaky)
    store = SampleStore(prepared)

    def attempt(_):
        try:
            store.input_nodes(0)
        except OSError as e:
            return str(e)
        return "ok"

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(attempt, range(4))) == {"disk gone"}
    fail.clear()
    assert len(store.input_nodes(0)) > 0


LOW_LIMIT_SCRIPT = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from pathlib import Path
from tinygraphs import make_dataset
from disktrain.pack import PackConfig, pack_dataset
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader
from disktrain.sample import SampleConfig, SampleStore, sample_dataset

path = make_dataset(Path(sys.argv[1]) / "d", num_nodes=200, num_edges=800)
sample_dataset(path, SampleConfig(fanouts=(2,), batch_size=1, epochs=4, seed=1,
                                  group_size=1), progress=False)
store = SampleStore(path, cache_bytes=4096)
assert store.num_batches >= 400, store.num_batches
seen = sum(len(store.batch(b).input_nodes) for b in range(store.num_batches))

def sweep(start):
    return sum(len(store.batch((start + b) % store.num_batches).input_nodes)
               for b in range(store.num_batches))

with ThreadPoolExecutor(4) as pool:
    assert list(pool.map(sweep, [0, 101, 202, 303])) == [seen] * 4
pack_dataset(path, PackConfig(chunk_bytes=256), progress=False)
loader = PackedLoader(path, LoaderConfig(read_threads=3))
assert sum(1 for _ in loader(range(loader.num_batches))) == store.num_batches
print("ok", store.num_batches)
"""


@pytest.mark.slow
def test_sample_store_under_a_low_open_file_limit(tmp_path):
    tests = Path(__file__).resolve().parent
    result = subprocess.run([sys.executable, "-c", LOW_LIMIT_SCRIPT, str(tmp_path), str(tests)],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok ")
