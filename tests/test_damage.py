"""Damaged checkpoints and metadata, and small faults: each a clear error naming the file or
option and the step that fixes it (exit 2 from the CLI, no traceback), never a silent restart,
a wrong batch or a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_user_error

from disktrain.cli import main
from disktrain.errors import CheckpointError
from disktrain.loader.dist import DistEnv
from disktrain.models import ModelConfig
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
    assert sorted(p.name for p in ck.iterdir()) == sorted([older.name, newest.name, aside.name])


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
