"""Ray tier, training: Ray Train workers on the two-node cluster of test_ray.py (a module of
its own, so a parallel test run trains here while test_ray.py prepares and submits jobs)."""

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import newest_checkpoint, prepare
from test_ray import PACK, _same_packed
from tinygraphs import make_link_dataset, make_typed_dataset

from disktrain.cluster.ray_prepare import prepare_on_ray
from disktrain.cluster.ray_train import RayTrainConfig, fit_on_ray
from disktrain.loader.schedule import epoch_batches, worker_share
from disktrain.models import ModelConfig
from disktrain.sample import SampleConfig, SampleStore
from disktrain.train import TrainConfig
from disktrain.train.checkpoint import CheckpointConfig
from disktrain.train.loop import params_digest


def _train_cfg(dataset: Path, ckpt: Path) -> TrainConfig:
    return TrainConfig(dataset=str(dataset), epochs=2, seed=1, progress=False,
                       model=ModelConfig(model="sage", hidden=16, dropout=0.0),
                       checkpoint=CheckpointConfig(dir=str(ckpt)))


def _expected_steps(dataset: Path, cfg: TrainConfig, world_size: int) -> int:
    s = SampleStore(dataset)
    sampled = s.num_batches // s.batches_per_epoch
    return sum(len(worker_share(epoch_batches(e, cfg.seed, sampled, s.batches_per_epoch,
                                              cfg.plan_reuse), 0, world_size))
               for e in range(cfg.epochs))


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, ray_prepared, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fit")
    return fit_on_ray(_train_cfg(ray_prepared, out / "ck"),
                      RayTrainConfig(workers=2, storage_path=str(out / "ray")))


@pytest.mark.ray
@pytest.mark.slow
def test_fit_on_ray_workers_hold_identical_parameters(uninterrupted, ray_prepared):
    s = uninterrupted
    cfg = _train_cfg(ray_prepared, Path("unused"))
    assert s["world_size"] == 2 and s["steps"] == _expected_steps(ray_prepared, cfg, 2) > 0
    assert s["replicas_identical"] and len(s["replica_sha256"]) == 2
    assert set(s["replica_sha256"]) == {s["params_sha256"]}
    state = newest_checkpoint(Path(s["checkpoint"]).parent)
    assert state["epoch"] == 2 and state["trainer"]["steps"] == s["steps"]
    assert params_digest(state["model"]) == s["params_sha256"]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_prepares_a_typed_graph_as_one_process_does(ray_cluster, tmp_path):
    """Ray tasks sample and pack a typed graph as one process does. (A Ray Train worker runs
    the trainer torchrun runs, whatever the graph: typed graphs train on two ranks in
    test_distributed.py, and Ray Train's path in test_fit_on_ray_workers_hold_identical_parameters.)"""
    sample = SampleConfig(fanouts=(3, 2), batch_size=4, group_size=2)
    local, remote = make_typed_dataset(tmp_path / "local"), make_typed_dataset(tmp_path / "ray")
    prepare(local, sample, PACK)
    prepare_on_ray(remote, sample, PACK, ray_cluster.address, progress=False)
    _same_packed(local, remote)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_prepares_link_prediction_batches_as_one_process_does(ray_cluster, tmp_path):
    """Ray tasks sample edge batches as one process does, their negatives included (the
    packing of their rows is a node batch's: test_prepare_on_ray_matches_single_process).
    (Link prediction trains on two ranks in test_distributed.py.)"""
    sample = SampleConfig(fanouts=(3, 2), batch_size=32, group_size=2, task="link",
                          num_negatives=2)
    local, remote = make_link_dataset(tmp_path / "local"), make_link_dataset(tmp_path / "ray")
    prepare(local, sample, PACK)
    prepare_on_ray(remote, sample, PACK, ray_cluster.address, progress=False)
    a, b = SampleStore(local), SampleStore(remote)
    for i in range(a.num_batches):
        x, y = a.link_labels(i), b.link_labels(i)
        assert np.array_equal(x.label_src, y.label_src) and np.array_equal(x.label_dst,
                                                                           y.label_dst)


def dying_rank(fail_rank: int, fail_step: int, marker: Path, pause_s: float = 0.0):
    """A per-rank gradient sync for ``fit_on_ray``: rank ``fail_rank`` exits abruptly at its
    ``fail_step``-th step, once (while ``marker`` does not exist; it creates it). Until then
    every rank syncs with the flat all-reduce (the same on every rank), afterwards with the
    configured sync. It waits ``pause_s`` before exiting: Ray Train's controller collects an
    epoch's reports when it polls the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so a
    worker dying sooner after a report loses its checkpoint. A closure, so Ray pickles it by
    value to workers that cannot import this test module."""

    def grad_sync(rank: int):
        if marker.exists():
            return None
        from disktrain.train.gradsync import AllReduceMean

        sync, seen = AllReduceMean(), [0]
        if rank != fail_rank:
            return sync

        def dying_sync(params) -> None:
            seen[0] += 1
            if seen[0] == fail_step:
                marker.touch()
                time.sleep(pause_s)
                os._exit(1)
            sync(params)

        return dying_sync

    return grad_sync


@pytest.mark.ray
@pytest.mark.slow
def test_worker_killed_mid_epoch_restarts_from_checkpoint(uninterrupted, ray_prepared, tmp_path):
    cfg = _train_cfg(ray_prepared, tmp_path / "ck")
    per_epoch = _expected_steps(ray_prepared, replace(cfg, epochs=1), 2)
    marker = tmp_path / "died"
    # rank 1 dies in the middle of epoch 1, after the epoch-0 checkpoint was reported
    s = fit_on_ray(cfg, RayTrainConfig(workers=2, max_failures=1,
                                       storage_path=str(tmp_path / "ray")),
                   grad_sync=dying_rank(1, per_epoch + per_epoch // 2 + 1, marker))
    assert marker.exists(), "the injected failure did not happen"
    assert s["steps"] == uninterrupted["steps"] and s["replicas_identical"]
    # resumed from the epoch-end checkpoint: the same model as the uninterrupted run
    assert s["params_sha256"] == uninterrupted["params_sha256"]

