"""Damaged checkpoints and metadata, and small faults: each a clear error naming the file or
option and the step that fixes it (exit 2 from the CLI, no traceback), never a silent restart,
a wrong batch or a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import assert_user_error, prepare
from tinygraphs import make_dataset

import disktrain
from disktrain.cli import main
from disktrain.errors import CheckpointError, DataError
from disktrain.loader.dist import DistEnv
from disktrain.models import ModelConfig
from disktrain.storage.dataset import RERUN_DATASET, Dataset
from disktrain.train import TrainConfig, checkpoint, train
from disktrain.train.checkpoint import CheckpointConfig, CheckpointWriter, checkpoint_name


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    """``disktrain ARGV``: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _train_argv(ds: Path, ck: Path, epochs: int = 1, *more: str) -> list:
    """`disktrain train` for ``epochs`` epochs of 2 batches, checkpointing into ``ck``."""
    return ["train", ds, "--epochs", epochs, "--hidden", "8", "--max-batches", "2",
            "--checkpoint-dir", ck, "--no-progress", *more]


# checkpoints

def _checkpoints(ds: Path, ck: Path) -> list[Path]:
    """The checkpoints of a 2-epoch run on ``ds``, newest first."""
    train(TrainConfig(dataset=str(ds), epochs=2, max_batches=2, progress=False,
                      model=ModelConfig(hidden=8), checkpoint=CheckpointConfig(dir=str(ck))))
    return [ck / checkpoint_name(2, 0), ck / checkpoint_name(1, 0)]


def test_all_checkpoints_damaged_is_an_error_naming_them(prepared, tmp_path, capsys):
    """Was: a warning per file, then a silent restart from epoch 0 that overwrote them."""
    ck = tmp_path / "ck"
    files = _checkpoints(prepared, ck)
    for path in files:
        path.write_bytes(path.read_bytes()[:100])
    before = {p: p.read_bytes() for p in ck.iterdir()}
    code, out, err = _run(capsys, *_train_argv(prepared, ck, 2, "--resume"))
    assert_user_error(code, err, f"{ck}: every checkpoint fails its check", *map(str, files),
                      "restore a good checkpoint there, or start a new run without --resume")
    assert '"loss"' not in out
    assert {p: p.read_bytes() for p in ck.iterdir()} == before


def test_a_damaged_checkpoint_is_moved_aside_not_overwritten(prepared, tmp_path, capsys):
    ck = tmp_path / "ck"
    newest, older = _checkpoints(prepared, ck)
    damaged = newest.read_bytes()[:100]
    newest.write_bytes(damaged)
    code, out, err = _run(capsys, *_train_argv(prepared, ck, 2, "--resume"))
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["resumed_at"] == [1, 0]
    assert f"disktrain: warning: {newest}: cannot load the checkpoint" in err
    aside = ck / (newest.name + ".damaged")
    assert f"moved the damaged checkpoint {newest.name} aside to {aside}" in err
    assert aside.read_bytes() == damaged
    assert sorted(p.name for p in ck.iterdir() if p.name != ".lock") == sorted(
        [older.name, newest.name, aside.name])  # .lock: the run held the directory


def test_every_rank_stops_when_rank_0_finds_only_damaged_checkpoints(monkeypatch, tmp_path):
    """Rank 0 broadcasts an empty checkpoint before raising; the other ranks raise on it."""
    sent = []
    monkeypatch.setattr(checkpoint, "broadcast_bytes", lambda data, device: sent.append(data)
                        or b"")
    (tmp_path / checkpoint_name(1, 0)).write_bytes(b"not a checkpoint")
    writer, cpu = CheckpointWriter(tmp_path, 1), torch.device("cpu")
    with pytest.raises(CheckpointError, match="every checkpoint fails its check"):
        checkpoint.resume({}, tmp_path, writer, DistEnv(0, 0, 2), cpu)
    assert sent == [b""]
    with pytest.raises(CheckpointError, match="rank 0's checkpoints in .* all fail their"):
        checkpoint.resume({}, tmp_path, writer, DistEnv(1, 1, 2), cpu)


# metadata

@pytest.fixture
def prepared_eval(tiny_dataset) -> Path:
    """:func:`tiny_dataset` prepared with its evaluation batches."""
    prepare(tiny_dataset, evaluation=True)
    return tiny_dataset


def _not_json(path: Path) -> None:
    path.write_text(path.read_text()[:-7])


def _drop(key: str):
    def edit(path: Path) -> None:
        meta = json.loads(path.read_bytes())
        del meta["attributes"][key]
        path.write_text(json.dumps(meta))
    return edit


@pytest.mark.parametrize("file,edit,problem", [
    ("zarr.json", _not_json, "is unreadable (JSONDecodeError: "),
    ("features/zarr.json", _not_json, "is unreadable (JSONDecodeError: "),
    ("samples/zarr.json", _not_json, "is unreadable (JSONDecodeError: "),
    ("packed/zarr.json", _not_json, "is unreadable (JSONDecodeError: "),
    ("packed/rows/zarr.json", _not_json, "is unreadable (JSONDecodeError: "),
    ("eval/val/packed/zarr.json", _not_json, "is unreadable (JSONDecodeError: "),
    ("zarr.json", _drop("num_nodes"), "lacks the attribute(s) num_nodes"),
    ("samples/zarr.json", _drop("num_batches"), "lacks the attribute(s) num_batches"),
    ("packed/zarr.json", _drop("n_gpu"), "lacks the attribute(s) n_gpu"),
])
def test_damaged_metadata_is_a_data_error_naming_it(prepared_eval, tmp_path, capsys, file,
                                                   edit, problem):
    """Was: a JSONDecodeError or KeyError traceback from `info` and `train`."""
    path = prepared_eval / file
    edit(path)
    store = path.parent.parent if path.parent.name == "rows" else path.parent
    rerun = RERUN_DATASET if store == prepared_eval or path.parent.name == "features" else \
        f"remove {store} and rerun disktrain prepare"
    needles = (f"metadata {path} {problem}", rerun)
    if not file.startswith("eval/"):  # (info does not open the evaluation stores)
        code, out, err = _run(capsys, "info", prepared_eval)
        assert_user_error(code, err, *needles)
    code, out, err = _run(capsys, *_train_argv(prepared_eval, tmp_path / "ck"))
    assert_user_error(code, err, *needles)
    assert '"loss"' not in out


@pytest.mark.parametrize("key,value,problem", [
    ("shape", 302, "has shape (302,), expected (301,)"),
    ("chunk_shape", 300, "has chunks (300,), not one chunk"),
])
def test_csr_shape_disagreeing_with_its_file(tiny_dataset, capsys, key, value, problem):
    """Was: "mmap length is greater than file size" (a recorded shape larger than the file)."""
    path = tiny_dataset / "indptr" / "zarr.json"
    meta = json.loads(path.read_bytes())
    where = meta if key == "shape" else meta["chunk_grid"]["configuration"]
    where[key] = [value]
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=re.escape(problem)):
        _ = Dataset(tiny_dataset).indptr
    code, _, err = _run(capsys, "prepare", tiny_dataset, "--no-progress")
    assert_user_error(code, err, f"array 'indptr' {problem} (metadata {path})", RERUN_DATASET)


# small ones

@pytest.mark.parametrize("option", ["--cpu-cache-bytes", "--gpu-cache-bytes",
                                    "--max-packed-bytes", "--chunk-bytes", "--shard-bytes",
                                    "--group-bytes"])
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e400", "-inf"])
def test_byte_options_refuse_inf_nan_and_negatives(tiny_dataset, capsys, option, value):
    """Was: an OverflowError traceback for inf."""
    code, _, err = _run(capsys, "prepare", tiny_dataset, f"{option}={value}")
    assert code == 2 and "Traceback" not in err
    assert f"error: argument {option}: " in err and repr(value) in err


def test_sharing_a_loader_of_another_dataset(tmp_path):
    """Was: an error telling the user to delete a valid store."""
    a, b = make_dataset(tmp_path / "a"), make_dataset(tmp_path / "b", seed=1)
    prepare(a)
    prepare(b, evaluation=True)
    with disktrain.Loader(a) as shared, pytest.raises(
            ValueError, match=rf"share: the loader shared reads dataset {a} "
            rf"\({shared.dataset.dataset_id}\), this one dataset {b} "):
        disktrain.Loader(b, "val", share=shared)


def test_pyg_data_without_a_val_mask_prepares_and_trains(tmp_path, capsys):
    """Was: `prepare` with defaults failed with "dataset has no 'val' array"."""
    n, rng = 200, np.random.default_rng(0)
    data = SimpleNamespace(x=rng.standard_normal((n, 8)).astype(np.float32),
                           edge_index=rng.integers(0, n, (2, 1600)),
                           y=rng.integers(0, 3, n), train_mask=np.arange(n) < 120,
                           test_mask=np.arange(n) >= 160)
    ds = disktrain.from_pyg(data, tmp_path / "ds", progress=False)
    code, _, err = _run(capsys, "prepare", ds, "--fanouts", "3,2", "--batch-size", "32",
                        "--no-progress")
    assert code == 0, err
    assert f"disktrain: notice: {ds} has no val split: no val evaluation batches" in err
    assert (ds / "eval" / "test").exists() and not (ds / "eval" / "val").exists()
    code, out, err = _run(capsys, *_train_argv(ds, tmp_path / "ck"))
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["val_acc"] is None or np.isnan(summary["val_acc"])
    assert 0 <= summary["test_acc"] <= 1


def test_a_loader_of_damaged_evaluation_metadata_names_the_file(tmp_path):
    """`Loader(DS, "val")` reads whether the val store is prepared through the one metadata
    reader: invalid JSON is a DataError naming the file, not a JSONDecodeError."""
    from helpers import prepare
    from tinygraphs import make_dataset

    from disktrain import Loader
    from disktrain.errors import DataError
    from disktrain.storage.roots import eval_root

    path = make_dataset(tmp_path / "ds")
    prepare(path, evaluation=True)
    meta = eval_root(path, "val") / "packed" / "zarr.json"
    meta.write_text("{not json")
    with pytest.raises(DataError, match=f"metadata {meta} is unreadable"):
        Loader(path, "val")
