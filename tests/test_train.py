"""The single-worker trainer: runs, schedules, resumes to the same result, reports."""

import functools
import json
import operator

import numpy as np
import pytest
import torch
from helpers import newest_checkpoint
from tinygraphs import make_dataset

from disktrain.loader.schedule import epoch_batches, worker_share
from disktrain.models import ModelConfig
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.train import TrainConfig, train
from disktrain.train.checkpoint import CheckpointConfig


def test_epoch_batches_table():
    cyc = [epoch_batches(e, 0, 2, 3, "cycle") for e in range(4)]
    assert [sorted(c.tolist()) for c in cyc] == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]
    pool = epoch_batches(0, 0, 2, 3, "pool")
    assert len(pool) == 3 and len(set(pool.tolist())) == 3 and pool.max() < 6
    assert np.array_equal(epoch_batches(1, 5, 2, 3, "pool"), epoch_batches(1, 5, 2, 3, "pool"))
    fresh = [epoch_batches(e, 0, 2, 3, "fresh") for e in range(4)]
    assert [f.tolist() for f in fresh[:2]] == [c.tolist() for c in cyc[:2]]
    assert [f.tolist() for f in fresh[2:]] == [(c - 3 * (e % 2)).tolist()
                                              for e, c in enumerate(cyc[2:], start=2)]
    with pytest.raises(ValueError):
        epoch_batches(0, 0, 1, 3, "lru")


@pytest.mark.parametrize("n,world,expect", [
    (7, 2, [[0, 2, 4], [1, 3, 5]]),
    (6, 3, [[0, 3], [1, 4], [2, 5]]),
    (5, 1, [[0, 1, 2, 3, 4]]),
    (2, 4, [[], [], [], []]),
])
def test_worker_share_table(n, world, expect):
    ids = np.arange(n)
    shares = [worker_share(ids, r, world).tolist() for r in range(world)]
    assert shares == expect
    flat = functools.reduce(operator.iadd, shares, [])
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize("model", ["sage", "gcn", "gat"])
def test_train_runs_and_reports(prepared, tmp_path, model):
    metrics = tmp_path / "m.jsonl"
    out = train(TrainConfig(dataset=str(prepared), model=ModelConfig(model=model, hidden=16),
                            epochs=2, metrics=str(metrics), progress=False,
                            checkpoint=CheckpointConfig(dir=str(tmp_path / "ck"))))
    assert out["epochs"] == 2 and 0.0 <= out["test_acc"] <= 1.0 and out["epoch_time_s"] > 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for key in ("read_s", "assemble_s", "copy_s", "compute_s", "val_acc", "loss"):
        assert key in records[0]


def test_compute_threads_apply_to_the_run_only(prepared, tmp_path):
    before = torch.get_num_threads()
    out = train(TrainConfig(dataset=str(prepared), epochs=1, model=ModelConfig(hidden=16),
                            progress=False, compute_threads=before + 1,
                            checkpoint=CheckpointConfig(dir=str(tmp_path / "ck"))))
    assert out["compute_threads"] == before + 1
    assert torch.get_num_threads() == before


def _params(directory):
    return newest_checkpoint(directory)["model"]


@pytest.mark.slow
def test_resume_mid_epoch_matches_uninterrupted(prepared, tmp_path):
    base = {"dataset": str(prepared), "epochs": 3, "seed": 3, "progress": False,
            "model": ModelConfig(model="sage", hidden=16, dropout=0.3)}
    train(TrainConfig(**base, checkpoint=CheckpointConfig(dir=str(tmp_path / "full"))))

    class Stop(Exception):
        pass

    # run until the middle of epoch 1, checkpointing every 2 batches, then die
    seen = {"n": 0}

    def dying_sync(params):
        seen["n"] += 1
        if seen["n"] == 14:
            raise Stop

    with pytest.raises(Stop):
        train(TrainConfig(**base, checkpoint=CheckpointConfig(dir=str(tmp_path / "cut"),
                                                              every=2)),
              grad_sync=dying_sync)
    state = newest_checkpoint(tmp_path / "cut")
    assert state["epoch"] == 1 and state["cursor"] > 0
    train(TrainConfig(**base, checkpoint=CheckpointConfig(dir=str(tmp_path / "cut"), every=2,
                                                          resume=True)))
    full, cut = _params(tmp_path / "full"), _params(tmp_path / "cut")
    for k in full:
        assert torch.equal(full[k], cut[k]), k


def test_resume_refuses_a_changed_run_naming_the_checkpoint(prepared, tmp_path):
    """A checkpoint of the earlier format (fields side by side), or one whose part does not fit
    the run (another seed: the loader's batches would differ), is refused by its file."""
    from disktrain.errors import CheckpointError
    from disktrain.train.checkpoint import CheckpointWriter, checkpoint_files

    base = {"dataset": str(prepared), "progress": False, "model": ModelConfig(hidden=16)}
    ck = CheckpointConfig(dir=str(tmp_path / "ck"), resume=True)
    train(TrainConfig(**base, epochs=1, checkpoint=CheckpointConfig(dir=ck.dir)))
    newest = checkpoint_files(ck.dir)[0]
    with pytest.raises(CheckpointError, match=f"{newest}: its loader state does not fit this "
                       "run: loader state has seed 0, this loader 1"):
        train(TrainConfig(**base, epochs=2, seed=1, checkpoint=ck))
    state = newest_checkpoint(ck.dir)
    old = {"model": state["model"], "epoch": 1, "cursor": 0, "steps": 3}
    CheckpointWriter(ck.dir, keep=1).save(old)  # the same name: replaces it
    with pytest.raises(CheckpointError, match=f"{newest}: a checkpoint of format 1"):
        train(TrainConfig(**base, epochs=2, checkpoint=ck))


def test_float16_features_train(tmp_path):
    path = make_dataset(tmp_path / "f16", dtype=np.float16)
    sample_dataset(path, SampleConfig(fanouts=(3, 2), batch_size=32, seed=0), progress=False)
    pack_dataset(path, PackConfig(cpu_cache_bytes=512), progress=False)
    out = train(TrainConfig(dataset=str(path), model=ModelConfig(model="gcn", hidden=8),
                            epochs=1, progress=False))
    assert 0.0 <= out["test_acc"] <= 1.0


def test_batches_of_one_seed_and_one_hop(tmp_path):
    path = make_dataset(tmp_path / "one")
    sample_dataset(path, SampleConfig(fanouts=(3,), batch_size=1, seed=0, group_size=64),
                   progress=False)
    pack_dataset(path, PackConfig(), progress=False)
    out = train(TrainConfig(dataset=str(path), epochs=1, model=ModelConfig(hidden=8),
                            max_batches=20, progress=False))
    assert out["steps"] == 20


def test_dataset_without_features_is_refused_by_name(tmp_path):
    from disktrain.errors import DataError

    path = make_dataset(tmp_path / "nofeat", dim=0)
    sample_dataset(path, SampleConfig(fanouts=(2,), batch_size=64), progress=False)
    pack_dataset(path, PackConfig(), progress=False)
    with pytest.raises(DataError, match="nofeat.*no node features"):
        train(TrainConfig(dataset=str(path), epochs=1, progress=False))
