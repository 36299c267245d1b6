"""Fault injection: damage one stored array, and `disktrain verify` and `disktrain train` both
stop with an error naming it (exit 1 and 2), never a silent wrong result or a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import rows_chunk

from disktrain.cli import main
from disktrain.sample import SampleConfig, sample_dataset

GROUP = "groups/g000001"
"""The sample group damaged: batches 2 and 3, both read in epoch 0."""
READ_BY_TRAIN = ("indptr", "indices", "features", "labels", "val", "test",
                 *(f"{GROUP}/{a}" for a in ("nodes", "node_offsets", "hop_counts", "edge_src",
                                            "edge_dst", "edge_offsets")),
                 "rows", "batch_rows", "batch_packed", "slot_offsets", "slots", "cache_rows",
                 "gpu_nodes", "cpu_nodes")
"""Every array training reads: the dataset's for online evaluation and the labels, the sample
groups and the packed store for the batches."""
ONLINE_EVAL_ONLY = ("indptr", "indices", "features")
"""Read by training only when it evaluates online (packed evaluation reads the eval stores)."""
NOT_READ_BY_TRAIN = ("train", "access_counts")
"""Read only by `disktrain prepare` (the train split, the access counts that rank rows)."""


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory) -> Path:
    """A synthetic dataset, prepared with non-empty GPU and CPU caches and packed rows in
    many chunks (one epoch of 10 batches, groups of 2)."""
    path = tmp_path_factory.mktemp("faults") / "ds"
    assert main(["synth", "--out", str(path), "--nodes", "500", "--feature-dim", "8",
                 "--no-progress"]) == 0
    assert main(["prepare", str(path), "--fanouts", "3,2", "--batch-size", "32",
                 "--group-size", "2", "--gpu-cache-bytes", "512", "--cpu-cache-bytes", "1K",
                 "--chunk-bytes", "256", "--no-progress"]) == 0
    return path


@pytest.fixture
def prepared(prepared_once, tmp_path, capsys) -> Path:
    path = tmp_path / "ds"
    shutil.copytree(prepared_once, path)
    capsys.readouterr()
    return path


def _chunk(ds: Path, array: str) -> Path:
    """The chunk file a test damages: for packed rows, the shard file."""
    if array.startswith("groups/") or array == "access_counts":
        store = ds / "samples"
    else:
        store = ds / "packed" if (ds / "packed" / array).exists() else ds
    if array == "rows":
        return store / "rows" / "c.0.0"
    (path,) = [p for p in (store / array / "c").rglob("*") if p.is_file()]
    return path


def _flip(path: Path, count: int = 1) -> None:
    """Flip a bit in ``count`` bytes from the middle of the chunk's data (for packed rows:
    of the first chunk of batch 3)."""
    data = bytearray(path.read_bytes())
    at = (len(data) - 4) // 2
    if path.parent.name == "rows":
        at = rows_chunk(path.parents[2])[1] + 5
    for i in range(at, min(at + count, len(data) - 4)):
        data[i] ^= 0x10
    path.write_bytes(bytes(data))


def _train(ds: Path, tmp_path: Path, capsys, online: bool = False) -> tuple[int, str, str]:
    """Run `disktrain train` for one epoch: (exit status, stdout, stderr)."""
    argv = ["train", str(ds), "--epochs", "1", "--hidden", "8", "--read-threads", "1",
            "--prefetch", "1", "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress",
            "--eval", "online" if online else "packed"]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _verify(ds: Path, capsys) -> tuple[int, str]:
    code = main(["verify", str(ds), "--no-progress"])
    return code, capsys.readouterr().out


def _assert_both_stop(ds: Path, tmp_path: Path, capsys, array: str, path: Path,
                      problem: str) -> None:
    code, out = _verify(ds, capsys)
    assert code == 1
    assert f"array {array!r}" in out and f"chunk file {path} {problem}" in out
    code, out, err = _train(ds, tmp_path, capsys, online=array in ONLINE_EVAL_ONLY)
    assert code == 2, (out, err)
    assert err.startswith("disktrain: error: ") and err.count("\n") == 1, err
    assert f"array {array!r}" in err and f"chunk file {path} {problem}" in err
    assert '"loss"' not in out


@pytest.mark.parametrize("array", READ_BY_TRAIN)
def test_flipped_byte(prepared, tmp_path, capsys, array):
    path = _chunk(prepared, array)
    _flip(path)
    problem = "failed its crc32c check (corrupted)"
    if array == "rows":
        chunk, at = rows_chunk(prepared)
        problem = f"holds chunk {chunk} (at byte {at}), which {problem}"
    _assert_both_stop(prepared, tmp_path, capsys, array, path, problem)


def test_sixteen_bytes_of_cache_rows(prepared, tmp_path, capsys):
    """The issue's case: trained to a NaN loss with exit status 0."""
    path = _chunk(prepared, "cache_rows")
    _flip(path, 16)
    _assert_both_stop(prepared, tmp_path, capsys, "cache_rows", path,
                      "failed its crc32c check (corrupted)")


def test_permuted_edge_src(prepared, tmp_path, capsys):
    """The issue's case: permuting a group's edge_src values was accepted silently."""
    array = f"{GROUP}/edge_src"
    path = _chunk(prepared, array)
    raw = path.read_bytes()
    values = np.frombuffer(raw[:-4], "<i4")
    permuted = np.random.default_rng(0).permutation(values)
    assert not np.array_equal(permuted, values)
    path.write_bytes(permuted.tobytes() + raw[-4:])
    _assert_both_stop(prepared, tmp_path, capsys, array, path,
                      "failed its crc32c check (corrupted)")


@pytest.mark.parametrize("array", ["features", f"{GROUP}/edge_dst", "rows", "slots"])
def test_missing_chunk_file(prepared, tmp_path, capsys, array):
    path = _chunk(prepared, array)
    path.unlink()
    _assert_both_stop(prepared, tmp_path, capsys, array, path, "is missing")


@pytest.mark.parametrize("array", ["indices", f"{GROUP}/nodes", "cache_rows", "labels"])
def test_truncated_chunk_file(prepared, tmp_path, capsys, array):
    path = _chunk(prepared, array)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 3)
    _assert_both_stop(prepared, tmp_path, capsys, array, path,
                      f"has {size - 3} bytes, expected {size}")


def test_packed_store_of_other_samples(prepared, tmp_path, capsys):
    """Samples re-made (same settings) under an existing packed store: both refuse the mix."""
    config = json.loads((prepared / "samples/zarr.json").read_bytes())["attributes"]["config"]
    shutil.rmtree(prepared / "samples")
    sample_dataset(prepared, SampleConfig(**config), progress=False)
    code, out = _verify(prepared, capsys)
    assert code == 1
    assert (f"packed store {prepared / 'packed'} was made from another sample store: its "
            "samples_id ") in out
    assert f"remove {prepared / 'packed'} and rerun disktrain prepare" in out
    code, out, err = _train(prepared, tmp_path, capsys)
    assert code == 2
    assert err.startswith(f"disktrain: error: packed store {prepared / 'packed'} was made "
                          "from sample store ")
    assert str(prepared / "samples") in err


@pytest.mark.parametrize("array", NOT_READ_BY_TRAIN)
def test_damage_training_does_not_read(prepared_once, prepared, tmp_path, capsys, array):
    """Arrays only `prepare` reads: verify reports them; training, which never reads them,
    trains exactly as on the undamaged copy."""
    code, out, _ = _train(prepared_once, tmp_path / "clean", capsys)
    assert code == 0
    clean = json.loads(out.splitlines()[-1])
    path = _chunk(prepared, array)
    _flip(path)
    code, out = _verify(prepared, capsys)
    assert code == 1 and f"chunk file {path} failed its crc32c check" in out
    code, out, _ = _train(prepared, tmp_path / "damaged", capsys)
    assert code == 0
    assert json.loads(out.splitlines()[-1])["params_sha256"] == clean["params_sha256"]
