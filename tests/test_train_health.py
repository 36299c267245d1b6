"""Training health: non-finite steps stop (or are skipped), checkpoints stay good, the newest
k are kept, a damaged newest falls back to an older one, and user mistakes are user errors."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
import zarr
from helpers import assert_user_error, newest_checkpoint, prepare
from tinygraphs import make_dataset

from disktrain.cli import main
from disktrain.errors import ConfigError, NonFiniteError
from disktrain.loader.config import LoaderConfig
from disktrain.loader.schedule import epoch_batches
from disktrain.models import ModelConfig
from disktrain.robust import RobustConfig
from disktrain.sample import SampleStore
from disktrain.train import TrainConfig, train, trainer
from disktrain.train.checkpoint import (
    CheckpointConfig,
    CheckpointWriter,
    checkpoint_files,
    checkpoint_name,
)

BATCHES = 4  # max_batches: each epoch trains the first 4 of its batches


def _cfg(dataset, ckpt, checkpoint_every=0, keep_checkpoints=2, resume=False, **kw):
    base = {"dataset": str(dataset), "epochs": 2, "seed": 3, "progress": False,
            "model": ModelConfig(model="sage", hidden=16, dropout=0.3), "max_batches": BATCHES,
            "checkpoint": CheckpointConfig(dir=str(ckpt), every=checkpoint_every,
                                           keep=keep_checkpoints, resume=resume)}
    return TrainConfig(**{**base, **kw})


def _names(directory):
    return [p.name for p in checkpoint_files(directory)]


def _nan_at(monkeypatch, calls: set[int]):
    """Make the model's output NaN at these training forward calls (0-based, all epochs)."""
    seen = [0]

    def hook(module, args, out):
        if not module.training:
            return out  # evaluation
        seen[0] += 1
        return out * float("nan") if seen[0] - 1 in calls else out

    def build(cfg):
        model = loop_build(cfg)
        model.register_forward_hook(hook)
        return model

    loop_build = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", build)


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_the_last_checkpoint(
        prepared, tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    _nan_at(monkeypatch, {BATCHES + 2})  # epoch 1, batch 2
    with pytest.raises(NonFiniteError, match=r"epoch 1, batch 2 \(pre-sampled batch \d+\): "
                       r"non-finite loss \(nan\); stopped before the optimizer step"):
        train(_cfg(prepared, ck, checkpoint_every=2))
    # checkpoints at (0,2) (0,4) (1,0) (1,2); the NaN at batch 2 came before (1,4)
    assert _names(ck) == [checkpoint_name(1, 2), checkpoint_name(1, 0)]
    state = newest_checkpoint(ck)
    assert (state["epoch"], state["cursor"]) == (1, 2)
    assert all(t.isfinite().all() for t in state["model"].values())


def test_nan_gradient_stops(prepared, tmp_path):
    def nan_sync(params):
        params[0].grad[0] = float("inf")

    with pytest.raises(NonFiniteError, match=r"epoch 0, batch 0 .*non-finite gradient"):
        train(_cfg(prepared, tmp_path / "ck"), grad_sync=nan_sync)
    assert _names(tmp_path / "ck") == []


def test_skip_drops_the_steps_and_counts_them(prepared, tmp_path, monkeypatch):
    bad = {1, BATCHES + 0, BATCHES + 3}
    _nan_at(monkeypatch, bad)
    metrics = tmp_path / "m.jsonl"
    out = train(_cfg(prepared, tmp_path / "ck", on_nonfinite="skip", metrics=str(metrics)))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [1, 2]
    assert out["skipped_steps"] == 3 and out["steps"] == 2 * BATCHES - 3
    assert np.isfinite(out["loss"])
    state = newest_checkpoint(tmp_path / "ck")  # no NaN reached the parameters
    assert all(t.isfinite().all() for t in state["model"].values())


def test_features_with_nan_are_skipped_batch_by_batch(tmp_path):
    path = make_dataset(tmp_path / "nan")
    node = 7
    zarr.open_group(path, mode="r+")["features"][node] = np.nan
    prepare(path)
    samples = SampleStore(path)
    sampled = samples.num_batches // samples.batches_per_epoch
    expect = [sum(node in samples.input_nodes(b)
                  for b in epoch_batches(e, 3, sampled, samples.batches_per_epoch, "cycle"))
              for e in range(2)]
    assert sum(expect) > 0
    metrics = tmp_path / "m.jsonl"
    train(_cfg(path, tmp_path / "ck", max_batches=None, on_nonfinite="skip",
               metrics=str(metrics)))
    got = [json.loads(line)["skipped_steps"] for line in metrics.read_text().splitlines()]
    assert got == expect
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        train(_cfg(path, tmp_path / "ck2", max_batches=None))


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_the_newest_k(prepared, tmp_path, keep):
    ck = tmp_path / "ck"
    train(_cfg(prepared, ck, checkpoint_every=1, keep_checkpoints=keep))
    positions = [(2, 0), (1, 4), (1, 3)][:keep]  # (1, 4) is the end of epoch 1, before (2, 0)
    assert _names(ck) == [checkpoint_name(*p) for p in positions]


@pytest.mark.slow
def test_a_fresh_run_removes_an_older_runs_checkpoints(prepared, tmp_path):
    ck = tmp_path / "ck"
    train(_cfg(prepared, ck, epochs=3))
    train(_cfg(prepared, ck, epochs=1))
    assert _names(ck) == [checkpoint_name(1, 0)]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.slow
def test_a_damaged_newest_falls_back_to_the_previous(prepared, tmp_path, capsys, damage):
    full, cut = tmp_path / "full", tmp_path / "cut"
    straight = train(_cfg(prepared, full, epochs=3))
    train(_cfg(prepared, cut, epochs=2))
    newest = cut / checkpoint_name(2, 0)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:  # one bit of the largest tensor's bytes
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
            member = max(archive.infolist(), key=lambda i: i.file_size)
            data[bytes(data).index(archive.read(member)) + 5] ^= 0x01
    newest.write_bytes(bytes(data))
    assert newest_checkpoint(cut)["epoch"] == 1
    err = capsys.readouterr().err
    assert f"disktrain: warning: {newest}" in err
    assert damage == "truncate" or "fails its CRC-32 check" in err  # torch.load would not see it
    resumed = train(_cfg(prepared, cut, epochs=3, resume=True))
    assert resumed["resumed_at"] == [1, 0]
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert _names(cut) == [checkpoint_name(3, 0), checkpoint_name(2, 0)]


def test_a_model_with_nan_is_never_written(tmp_path):
    writer = CheckpointWriter(tmp_path, keep=2)
    good = {"model": {"w": torch.ones(3)}, "epoch": 1, "cursor": 0}
    writer.save(good)
    bad = {"model": {"w": torch.tensor([1.0, float("nan"), 2.0])}, "epoch": 2, "cursor": 0}
    with pytest.raises(NonFiniteError, match=r"parameters w are not finite; the last good "
                       r"one, .*ckpt-e000001-b00000000\.pt, is kept"):
        writer.save(bad)
    assert _names(tmp_path) == [checkpoint_name(1, 0)]
    assert torch.equal(newest_checkpoint(tmp_path)["model"]["w"], torch.ones(3))


@pytest.mark.parametrize("make,match", [
    (lambda: TrainConfig(dataset="x", on_nonfinite="ignore"), "on_nonfinite must be one of"),
    (lambda: CheckpointConfig(keep=0), "keep must be >= 1, got 0"),
    (lambda: LoaderConfig(device="gpu"), "device must be cpu, cuda or cuda:N, got 'gpu'"),
    (lambda: LoaderConfig(device="cpu:1"), "device must be cpu, cuda or cuda:N, got 'cpu:1'"),
    (lambda: TrainConfig(dataset="x", robust=RobustConfig(f=1)),
     "f=1 .* needs a robust aggregator"),
    (lambda: TrainConfig(dataset="x", robust=RobustConfig(subspace=2, aggregator="median")),
     "subspace=2 applies to aggregator"),
    (lambda: LoaderConfig(prefetch=0), "prefetch must be >= 1, got 0"),
    (lambda: TrainConfig(dataset="x", max_batches=0), "max_batches must be >= 1, got 0"),
    (lambda: ModelConfig(model="gat", hidden=10, heads=4), "hidden must be divisible by heads"),
])
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_world_size_checks():
    def cfg(**kw):
        return TrainConfig(dataset="x", robust=RobustConfig(**kw))

    cfg(aggregator="median", f=1).check_world_size(3)
    with pytest.raises(ConfigError, match="aggregator 'median' .* needs >= 2"):
        cfg(aggregator="median").check_world_size(1)
    with pytest.raises(ConfigError, match="on 2 workers: .*krum needs n > 2f \\+ 2"):
        cfg(aggregator="krum").check_world_size(2)


def _cli_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    err = capsys.readouterr().err
    assert_user_error(exit_info.value.code, err)
    return err


@pytest.mark.parametrize("argv,says", [
    (["--device", "junk"], "device must be cpu, cuda or cuda:N, got 'junk'"),
    (["--workers", "0"], "workers must be >= 1, got 0"),
    (["--workers", "-2"], "workers must be >= 1, got -2"),
    (["--aggregator", "median"], "several workers and needs >= 2 (torchrun"),
    (["--aggregator", "krum", "--workers", "2"], "'krum' with f=0 on 2 workers"),
    (["--byzantine-f", "1"], "f=1 (byzantine workers) needs a robust aggregator"),
    (["--keep-checkpoints", "0"], "CheckpointConfig.keep must be >= 1, got 0"),
    (["--epochs", "0"], "epochs must be >= 1, got 0"),
    (["--read-threads", "0"], "read_threads must be >= 1, got 0"),
    (["--remote-window", "0"], "remote_window must be >= 1, got 0"),
    (["--device", "cuda", "--workers", "2"], "'cuda' with --workers needs --gpus-per-worker"),
])
def test_cli_train_user_errors(tmp_path, capsys, argv, says):
    assert says in _cli_error(capsys, str(tmp_path / "nowhere"), "--no-progress", *argv)


def test_cli_cuda_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = _cli_error(capsys, str(tmp_path), "--device", "cuda", "--no-progress")
    assert "device 'cuda': no CUDA GPU is available" in err


def test_cli_nonfinite_is_a_user_error(tmp_path, capsys):
    path = make_dataset(tmp_path / "inf")
    zarr.open_group(path, mode="r+")["features"][:] = np.inf
    prepare(path)
    err = _cli_error(capsys, str(path), "--no-progress", "--epochs", "1", "--hidden", "8",
                     "--checkpoint-dir", str(tmp_path / "ck"))
    assert "epoch 0, batch 0 (pre-sampled batch" in err and "non-finite loss" in err
    assert _names(tmp_path / "ck") == []
