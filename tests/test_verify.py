"""``disktrain verify``: every chunk of every array, provenance links, the report, exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import rows_chunk

from disktrain import verify as verify_module
from disktrain.cli import main
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.storage.chunkfile import crc32c
from disktrain.storage.dataset import write_small_array
from disktrain.storage.lock import LOCK
from disktrain.verify import verify

GROUP_SIZE = 2
PREPARE = ["--fanouts", "3,2", "--batch-size", "32", "--group-size", str(GROUP_SIZE),
           "--gpu-cache-bytes", "512", "--cpu-cache-bytes", "1K", "--chunk-bytes", "256",
           "--no-progress"]
DATASET_ARRAYS = ("indptr", "indices", "features", "labels", "train", "val", "test")
GROUP_ARRAYS = ("nodes", "node_offsets", "hop_counts", "edge_src", "edge_dst", "edge_offsets")
PACKED_ARRAYS = ("rows", "batch_rows", "batch_packed", "slot_offsets", "slots", "cache_rows",
                 "gpu_nodes", "cpu_nodes")


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory) -> Path:
    """A synthetic dataset with samples (5 groups of 2 batches) and a packed store whose rows
    span many chunks and whose GPU and CPU caches are both non-empty."""
    path = tmp_path_factory.mktemp("verify") / "ds"
    assert main(["synth", "--out", str(path), "--nodes", "500", "--feature-dim", "8",
                 "--no-progress"]) == 0
    assert main(["prepare", str(path), *PREPARE]) == 0
    return path


@pytest.fixture
def prepared(prepared_once, tmp_path, capsys) -> Path:
    """A fresh copy of :func:`prepared_once` for a test to damage."""
    path = tmp_path / "ds"
    shutil.copytree(prepared_once, path)
    capsys.readouterr()
    return path


def _store(array: str) -> tuple[str, str]:
    """(store kind, store directory relative to the dataset) of an array."""
    if array in DATASET_ARRAYS:
        return "dataset", "."
    if array in PACKED_ARRAYS:
        return "packed store", "packed"
    return "sample store", "samples"


def _chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json")


def _target(ds: Path, array: str) -> tuple[Path, range | None]:
    """The chunk file of ``array`` a test damages, and the batches verify should name (for
    ``rows``: the shard file, and the batch whose first chunk :func:`_flip` damages)."""
    array_dir = ds / _store(array)[1] / array
    if array == "rows":
        assert len(_chunk_files(array_dir)) == 1
        return array_dir / "c.0.0", range(3, 4)
    files = _chunk_files(array_dir)
    assert len(files) == 1, files
    num_batches = json.loads((ds / "samples/zarr.json").read_bytes())["attributes"]["num_batches"]
    if array.startswith("groups/g000001/"):
        batches = range(GROUP_SIZE, 2 * GROUP_SIZE)
    elif array in ("batch_rows", "batch_packed", "slot_offsets", "slots"):
        batches = range(num_batches)  # one chunk holds every batch's entries
    else:
        batches = None
    return files[0], batches


def _flip(path: Path, at: int | None = None) -> None:
    """Flip one bit of one byte of ``path`` (default: the middle of its data; in a shard of
    packed rows, of the chunk of :func:`helpers.rows_chunk`)."""
    data = bytearray(path.read_bytes())
    if at is None and path.parent.name == "rows":
        at = rows_chunk(path.parents[2])[1] + 5
    at = (len(data) - 4) // 2 if at is None else at
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


ALL_ARRAYS = [*DATASET_ARRAYS, "access_counts", *(f"groups/g000001/{a}" for a in GROUP_ARRAYS),
              *PACKED_ARRAYS]


def _checked_bytes(path: Path) -> int:
    """The bytes verify reads of a chunk file: all; of a shard: its index and its chunks."""
    if path.parent.name != "rows":
        return path.stat().st_size
    meta = json.loads((path.parent / "zarr.json").read_bytes())
    inner = meta["codecs"][0]["configuration"]["chunk_shape"]
    chunk_bytes = inner[0] * inner[1] * 4 + 4
    index = 16 * (meta["chunk_grid"]["configuration"]["chunk_shape"][0] // inner[0]) + 4
    chunks = (path.stat().st_size - index) // (-(-chunk_bytes // 4096) * 4096)
    return index + chunks * chunk_bytes


def _verify_cli(ds: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["verify", str(ds), "--no-progress", *extra])
    return code, capsys.readouterr().out


def test_clean(prepared, capsys):
    report = verify(prepared)
    assert report.clean and report.problems == []
    assert report.stores == ["dataset", "sample store", "packed store", "val sample store",
                             "val packed store", "test sample store", "test packed store"]
    num_groups = len(list((prepared / "samples/groups").glob("g*")))
    assert num_groups == 5
    roots = [prepared, prepared / "eval/val", prepared / "eval/test"]
    groups = sum(len(list((root / "samples/groups").glob("g*"))) for root in roots)
    assert report.arrays == len(DATASET_ARRAYS) + 3 * (1 + len(PACKED_ARRAYS)) + 6 * groups
    chunk_files = [p for p in prepared.rglob("*")
                   if p.is_file() and p.name not in ("zarr.json", LOCK)]
    assert report.chunks == len(chunk_files)
    assert report.bytes == sum(_checked_bytes(p) for p in chunk_files)
    assert report.seconds > 0 and report.gb_per_s > 0

    code, out = _verify_cli(prepared, capsys)
    assert code == 0
    assert out.splitlines()[0] == f"{prepared}: clean"
    assert out.splitlines()[-1].startswith("checked dataset, sample store, packed store, val ")
    code, out = _verify_cli(prepared, capsys, "--json")
    assert code == 0
    got = json.loads(out)
    assert got["clean"] is True and got["problems"] == [] and got["chunks"] == report.chunks


def test_zero_size_array(prepared):
    """An empty split (shape (0,), chunk shape (0,)) has no chunk file and is fine."""
    group = zarr.open_group(prepared, mode="r+")
    del group["test"]
    write_small_array(group, "test", np.zeros(0, np.int64))
    assert not (prepared / "test" / "c").exists()
    report = verify(prepared)
    assert report.clean, [p.message for p in report.problems]


@pytest.mark.parametrize("array", ALL_ARRAYS)
def test_one_flipped_byte(prepared, capsys, array):
    path, batches = _target(prepared, array)
    _flip(path)
    report = verify(prepared)
    problem = "failed its crc32c check (corrupted)"
    if array == "rows":
        chunk, at = rows_chunk(prepared)
        problem = f"holds chunk {chunk} (at byte {at}), which {problem}"
    assert [(p.array, p.file, p.problem, p.batches) for p in report.problems] == [
        (array, str(path), problem, batches)]
    kind, store = _store(array)
    problem = report.problems[0]
    assert (problem.store, problem.store_path) == (kind, str(prepared / store))
    rerun = {"dataset": "re-create the dataset", "sample store": f"remove {prepared}/samples",
             "packed store": f"remove {prepared}/packed"}[kind]
    assert problem.rerun.startswith(rerun)

    code, out = _verify_cli(prepared, capsys)
    assert code == 1
    assert out.splitlines()[0] == f"{prepared}: DAMAGED (1 problem(s))"
    assert f"array {array!r}" in out and str(path) in out and problem.rerun in out
    if batches is not None and len(batches) == 1:
        assert f"(batch {batches.start})" in out
    elif batches is not None:
        assert f"(batches {batches.start}..{batches.stop - 1})" in out
    code, out = _verify_cli(prepared, capsys, "--json")
    assert code == 1
    got = json.loads(out)["problems"]
    assert [(p["array"], p["file"]) for p in got] == [(array, str(path))]
    assert got[0]["batches"] == (None if batches is None else [batches.start, batches.stop - 1])


def test_flipped_crc_bytes(prepared):
    path, _ = _target(prepared, "features")
    _flip(path, at=path.stat().st_size - 1)
    assert [p.problem for p in verify(prepared).problems] == [
        "failed its crc32c check (corrupted)"]


def _shard_batches(ds: Path) -> range:
    """The batches of the (single) shard of packed rows: every batch with packed rows."""
    batch_rows = np.frombuffer((ds / "packed/batch_rows/c/0").read_bytes()[:-4], "<i8")
    return range(int(np.searchsorted(batch_rows, 0, side="right")) - 1, len(batch_rows) - 1)


@pytest.mark.parametrize("array", ["features", "groups/g000001/edge_dst", "rows", "slots"])
def test_missing_chunk_file(prepared, array):
    path, batches = _target(prepared, array)
    batches = _shard_batches(prepared) if array == "rows" else batches
    path.unlink()
    assert [(p.array, p.file, p.problem, p.batches) for p in verify(prepared).problems] == [
        (array, str(path), "is missing", batches)]


@pytest.mark.parametrize("array", ["indices", "access_counts", "rows", "cache_rows"])
def test_truncated_chunk_file(prepared, array):
    path, batches = _target(prepared, array)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 3)
    problem = f"has {size - 3} bytes, expected {size} (truncated or overwritten)"
    batches = _shard_batches(prepared) if array == "rows" else batches
    assert [(p.array, p.file, p.problem, p.batches) for p in verify(prepared).problems] == [
        (array, str(path), problem, batches)]


def test_missing_array(prepared):
    shutil.rmtree(prepared / "packed" / "gpu_nodes")
    assert [(p.array, p.problem) for p in verify(prepared).problems] == [
        ("gpu_nodes", f"is missing (no {prepared / 'packed/gpu_nodes/zarr.json'})")]


def test_samples_resampled_under_a_packed_store(prepared):
    """A sample store re-made after packing: same config, another store_id."""
    config = json.loads((prepared / "samples/zarr.json").read_bytes())["attributes"]["config"]
    shutil.rmtree(prepared / "samples")
    sample_dataset(prepared, SampleConfig(**config), progress=False)
    samples_id = json.loads((prepared / "samples/zarr.json").read_bytes())["attributes"][
        "store_id"]
    problems = verify(prepared).problems
    assert len(problems) == 1
    assert problems[0].store == "packed store" and problems[0].array is None
    assert problems[0].problem.startswith("was made from another sample store: its samples_id '")
    assert problems[0].problem.endswith(
        f"is not the store_id '{samples_id}' of sample store {prepared / 'samples'}")


def test_samples_of_another_run_under_a_packed_store(prepared, capsys):
    """Samples re-made with another batch size: the packed store no longer fits them."""
    config = json.loads((prepared / "samples/zarr.json").read_bytes())["attributes"]["config"]
    shutil.rmtree(prepared / "samples")
    sample_dataset(prepared, SampleConfig(**{**config, "batch_size": 64}), progress=False)
    problems = verify(prepared).problems
    assert {p.store for p in problems} == {"packed store"}
    messages = "\n".join(p.message for p in problems)
    assert "its samples_id" in messages and "its sample_config" in messages
    for array in ("batch_rows", "slot_offsets", "batch_packed", "slots"):
        assert any(p.array == array and p.problem.startswith("has shape") for p in problems)
    code, out = _verify_cli(prepared, capsys)
    assert code == 1 and out.count(f"remove {prepared / 'packed'} and rerun") >= 2


def test_dataset_id_changed(prepared):
    """Stores made from another dataset (here: the dataset's id edited)."""
    meta_path = prepared / "zarr.json"
    meta = json.loads(meta_path.read_bytes())
    old = meta["attributes"]["dataset_id"]
    meta["attributes"]["dataset_id"] = "0" * 32
    meta_path.write_text(json.dumps(meta))
    problems = verify(prepared).problems
    expected = (f"was made from another dataset: its dataset_id '{old}' is not the "
                f"dataset_id '{'0' * 32}' of dataset {prepared}")
    # the training root's stores, then the val and test roots'
    assert [(p.store, p.problem) for p in problems] == [
        ("sample store", expected), ("packed store", expected)] * 3


def test_packed_without_samples(prepared):
    shutil.rmtree(prepared / "samples")
    problems = verify(prepared).problems
    assert [(p.store, p.problem) for p in problems] == [
        ("packed store", f"has no sample store ({prepared / 'samples'} is missing)")]


def test_array_without_checksums(prepared):
    """An array as an older disktrain wrote it (raw bytes, no crc32c) is unverifiable."""
    meta_path = prepared / "labels" / "zarr.json"
    meta = json.loads(meta_path.read_bytes())
    meta["codecs"] = meta["codecs"][:1]
    meta_path.write_text(json.dumps(meta))
    chunk = prepared / "labels" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-4])
    problems = verify(prepared).problems
    assert [(p.array, p.problem) for p in problems] == [
        ("labels", ("has codecs ['bytes'], not ['bytes', 'crc32c']: unverifiable (written by "
                    "an older disktrain or another tool)"))]
    assert problems[0].rerun.startswith("re-create the dataset")


def test_incomplete_store(prepared):
    meta_path = prepared / "packed" / "zarr.json"
    meta = json.loads(meta_path.read_bytes())
    meta["attributes"]["complete"] = False
    meta_path.write_text(json.dumps(meta))
    assert [(p.store, p.problem) for p in verify(prepared).problems] == [
        ("packed store", "is incomplete (the run writing it did not finish)")]


def test_reads_in_bounded_slices(prepared, monkeypatch):
    """Files larger than a slice are read slice by slice; the crc may straddle two slices."""
    monkeypatch.setattr(verify_module, "SLICE_BYTES", 7)
    assert verify(prepared).clean
    path, _ = _target(prepared, "features")
    _flip(path, at=path.stat().st_size - 9)
    assert [(p.array, p.file) for p in verify(prepared).problems] == [("features", str(path))]


def test_not_a_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"disktrain: error: {tmp_path}: not a dataset directory "
                                       "(no zarr.json)\n")


def test_progress_on_stderr(prepared, capsys):
    assert main(["verify", str(prepared), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["clean"] is True
    assert "verify" in captured.err


def test_evaluation_and_fresh_epoch_stores(prepared):
    """The val/test stores and a fresh epoch's are checked like the training stores, and
    must use the training store's caches."""
    from disktrain.pack.prepare import prepare_epoch
    from disktrain.storage.roots import new_run

    root = prepare_epoch(prepared, new_run(prepared), 1)
    assert f"{root.parent.name} epoch 1 packed store" in verify(prepared).stores
    rows = min((root / "packed" / "rows").glob("c.*"))
    rows.write_bytes(rows.read_bytes()[:-1])
    evaluation = prepared / "eval/val/packed"
    meta = json.loads((evaluation / "zarr.json").read_text())
    meta["attributes"]["tiers_from"] = "0" * 32
    (evaluation / "zarr.json").write_text(json.dumps(meta))
    report = verify(prepared)
    assert len(report.problems) == 2
    truncated, relinked = sorted(report.problems, key=lambda p: p.array is None)
    assert (truncated.array, truncated.file) == ("rows", str(rows))
    assert truncated.store_path == str(root / "packed")
    assert relinked.store_path == str(evaluation)
    assert "was made from another packed store: its tiers_from '000" in relinked.problem


def test_shard_index_damage_names_the_batches(prepared):
    """A shard index rewritten (valid crc) without batch 3's first chunk, then a store of
    the older format: each reported with what it concerns."""
    path, _ = _target(prepared, "rows")
    chunk, _ = rows_chunk(prepared)
    raw = path.read_bytes()
    meta = json.loads((path.parent / "zarr.json").read_bytes())
    per_shard = (meta["chunk_grid"]["configuration"]["chunk_shape"][0]
                 // meta["codecs"][0]["configuration"]["chunk_shape"][0])
    index_bytes = 16 * per_shard + 4
    entries = np.frombuffer(raw[-index_bytes:-4], "<u8").copy()
    entries[2 * chunk:2 * chunk + 2] = 2**64 - 1
    path.write_bytes(raw[:-index_bytes] + entries.tobytes() + crc32c(entries).to_bytes(4, "little"))
    problem = "has a shard index that does not match the store's layout (overwritten)"
    assert [(p.array, p.file, p.problem, p.batches) for p in verify(prepared).problems] == [
        ("rows", str(path), problem, _shard_batches(prepared))]
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    assert [p.problem for p in verify(prepared).problems] == [
        "has a shard index that failed its crc32c check (corrupted)"]
    path.write_bytes(raw)
    meta_path = prepared / "packed" / "zarr.json"
    meta = json.loads(meta_path.read_bytes())
    meta["attributes"]["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    assert [(p.store, p.problem) for p in verify(prepared).problems] == [
        ("packed store", "has format version 1, not 2 (written by another disktrain version)")]
