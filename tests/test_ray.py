"""Ray tier: preprocessing as Ray tasks and training on Ray Train, on a two-node cluster
simulated on this machine, and a real ``ray job submit`` to a head started here.

Every Ray instance here binds to 127.0.0.1, keeps its files under one temporary directory
(RAY_TMPDIR), uses token authentication with a token of its own, and is stopped at the
end; the fixtures check that none of its processes remain.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_no_ray_left, newest_checkpoint, prepare
from tinygraphs import make_dataset, make_link_dataset, make_typed_dataset

from disktrain.cluster.head import (
    LOOPBACK,
    LOOPBACK_ENV,
    Head,
    HeadConfig,
    free_port,
    head_command,
    init_ray,
    session_pids,
)
from disktrain.cluster.job import job_argv
from disktrain.cluster.ray_prepare import prepare_on_ray, split_runs
from disktrain.cluster.ray_train import RayTrainConfig, fit_on_ray
from disktrain.loader.schedule import epoch_batches, worker_share
from disktrain.models import ModelConfig
from disktrain.pack import PackConfig, PackedStore
from disktrain.sample import SampleConfig, SampleStore
from disktrain.train import TrainConfig
from disktrain.train.checkpoint import CheckpointConfig
from disktrain.train.loop import params_digest

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
SAMPLE = SampleConfig(fanouts=(4, 3), batch_size=16, epochs=2, seed=0, group_size=3)
PACK = PackConfig(cpu_cache_bytes=1024, chunk_bytes=256, group_bytes=2000)


# no Ray: the pure pieces

@pytest.mark.parametrize("n,tasks,expect", [
    (7, 3, [[0, 1, 2], [3, 4], [5, 6]]),
    (2, 4, [[0], [1]]),
    (5, 1, [[0, 1, 2, 3, 4]]),
    (0, 3, []),
])
def test_split_runs_table(n, tasks, expect):
    assert split_runs(list(range(n)), tasks) == expect


@pytest.mark.parametrize("argv,expect", [
    (["train", "D", "--workers", "2"], ["train", "D", "--workers", "2", "--ray-address", "auto"]),
    (["prepare", "D", "--ray-address=10.0.0.1:6379"], ["prepare", "D",
                                                       "--ray-address=10.0.0.1:6379"]),
    (["info", "D"], ["info", "D"]),
    (["prepare", "s3://b/d"], ["prepare", "s3://b/d", "--ray-address", "auto"]),
    (["train", "s3://b/d"], ["train", "s3://b/d", "--ray-address", "auto"]),
])
def test_job_argv_table(argv, expect):
    assert job_argv(argv) == expect


def test_job_argv_needs_a_command():
    with pytest.raises(ValueError, match="usage"):
        job_argv([])


def test_configs_validate():
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        RayTrainConfig(workers=0)
    with pytest.raises(ValueError, match="gpus_per_worker"):
        RayTrainConfig(gpus_per_worker=-1)
    with pytest.raises(ValueError, match="dashboard_port"):
        HeadConfig(dashboard_port=70000)


def test_head_binds_loopback():
    head = head_command(HeadConfig(num_cpus=4, dashboard_port=0))
    argv = head.argv
    assert argv[argv.index("--node-ip-address") + 1] == LOOPBACK
    assert argv[argv.index("--dashboard-host") + 1] == LOOPBACK
    assert int(argv[argv.index("--port") + 1]) == head.port > 0 and head.dashboard_port > 0
    assert head.env == LOOPBACK_ENV
    multi = head_command(HeadConfig(host="10.1.2.3"))
    assert multi.argv[multi.argv.index("--node-ip-address") + 1] == "10.1.2.3"
    assert multi.env == {}


@pytest.mark.parametrize("address,env_address,expect", [
    (None, None, "local"),  # never the cluster of the last `ray start` (maybe dead)
    (None, "127.0.0.1:6379", None),  # RAY_ADDRESS: Ray reads it
    ("auto", None, "auto"),
])
def test_init_ray_starts_a_local_instance_without_an_address(ray_env, monkeypatch, address,
                                                              env_address, expect):
    """(ray_env: Ray reads its settings, token auth included, when first imported.)"""
    if env_address:
        monkeypatch.setenv("RAY_ADDRESS", env_address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    assert init_ray(address, num_cpus=3)
    assert len(calls) == 1 and calls[0]["address"] == expect
    assert calls[0].get("num_cpus") == (3 if expect == "local" else None)


# Ray

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny dataset prepared in this process (the reference for Ray's preparation)."""
    path = make_dataset(tmp_path_factory.mktemp("ray") / "tiny")
    prepare(path, SAMPLE, PACK)
    return path


def _cli_has_train() -> bool:
    from disktrain.cli import build_parser

    try:
        build_parser().parse_args(["train", "x", "--workers", "2"])
    except SystemExit:
        return False
    return True


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit(ray_env, prepared, tmp_path):
    """A head started like cluster/head.py does, then the documented job submission."""
    root = ray_env / "head"
    root.mkdir()
    with Head(HeadConfig(num_cpus=4, dashboard_port=0, temp_dir=str(root)),
              log=tmp_path / "head.log") as head:
        head.wait_ready()
        if _cli_has_train():
            args = ["train", str(prepared), "--workers", "2", "--epochs", "1", "--hidden", "16",
                    "--max-batches", "2", "--checkpoint-dir", str(tmp_path / "ck")]
        else:  # until `disktrain train` exists: the job still connects and runs the CLI
            args = ["info", str(prepared), "--json"]
        cmd = [str(RAY), "job", "submit", "--address", head.dashboard_url,
               "--working-dir", str(REPO), "--", sys.executable, "-m",
               "disktrain.cluster.job", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False,
                              env={**os.environ, "RAY_AUTH_MODE": "token"})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "succeeded" in out, out[-4000:]
        if args[0] == "train":
            state = newest_checkpoint(tmp_path / "ck")
            assert state["epoch"] == 1 and state["trainer"]["steps"] == 2  # --max-batches: per worker
        else:
            assert '"num_nodes": 300' in out
        # a client without the token is refused
        bad = subprocess.run([str(RAY), "job", "list", "--address", head.dashboard_url],
                             capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "RAY_AUTH_TOKEN": "wrong"})
        assert bad.returncode != 0
    assert_no_ray_left(root)


@pytest.fixture(scope="module")
def cluster(ray_env):
    """Two Ray nodes of 2 CPUs each on this machine, and this process connected."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": LOOPBACK, "include_dashboard": False})
    try:
        c.add_node(num_cpus=2, node_ip_address=LOOPBACK)
        ray.init(address=c.address)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


IDENTITY = ("store_id", "samples_id", "dataset_id")
"""Provenance ids: new for every store written, so they differ between two preparations."""


def _content(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in IDENTITY}


def _same_samples(a: Path, b: Path) -> None:
    sa, sb = SampleStore(a), SampleStore(b)
    assert _content(sa.info()) == _content(sb.info()) and sa.num_batches > 2 * SAMPLE.group_size
    assert np.array_equal(sa.access_counts, sb.access_counts)
    for i in range(sa.num_batches):
        x, y = sa.batch(i), sb.batch(i)
        assert np.array_equal(x.input_nodes, y.input_nodes) and x.num_seeds == y.num_seeds
        for bx, by in zip(x.blocks, y.blocks, strict=True):
            assert all(np.array_equal(u, v) for u, v in zip(bx, by, strict=True)), i


def _same_packed(a: Path, b: Path) -> None:
    pa, pb = PackedStore(a), PackedStore(b)
    assert _content(pa.info()) == _content(pb.info())
    assert np.array_equal(pa.cache_rows(), pb.cache_rows())
    for i in range(pa.num_batches):
        assert np.array_equal(pa.slots(i), pb.slots(i)), i
        assert np.array_equal(pa.read_packed(i), pb.read_packed(i)), i


@pytest.mark.ray
@pytest.mark.slow
def test_prepare_on_ray_matches_single_process(cluster, prepared, tmp_path):
    path = make_dataset(tmp_path / "tiny")
    prepare_on_ray(path, SAMPLE, PACK, cluster.address, progress=False)
    assert not (path / "samples.partial").exists() and not (path / "packed.partial").exists()
    _same_samples(prepared, path)
    _same_packed(prepared, path)


@pytest.mark.ray
@pytest.mark.slow
def test_prepare_on_ray_aggregates_the_first_hop_as_one_process(cluster, tmp_path):
    pack = replace(PACK, aggregate_first_hop="mean")
    local, remote = make_dataset(tmp_path / "local"), make_dataset(tmp_path / "ray")
    prepare(local, SAMPLE, pack)
    prepare_on_ray(remote, SAMPLE, pack, cluster.address, progress=False)
    assert PackedStore(remote).aggregate == "mean"
    _same_samples(local, remote)
    _same_packed(local, remote)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("model,nodes", [("sage", "all"), ("gat", "val")])
def test_infer_on_ray_writes_the_single_process_bytes(cluster, tmp_path, model, nodes):
    import zarr

    from disktrain.cluster.ray_infer import infer_on_ray
    from disktrain.infer import InferConfig, infer
    from disktrain.models.gnn import ModelConfig, build_model
    from disktrain.storage.dataset import Dataset
    from disktrain.train.checkpoint import CheckpointWriter, ModelRecord, checkpoint_state

    path = make_dataset(tmp_path / "ds", num_nodes=600, num_edges=3600)
    ds = Dataset(path)
    cfg = ModelConfig(model=model, hidden=8, heads=2).sized(
        in_dim=ds.meta.feature_dim, num_classes=ds.meta.num_classes, num_layers=2)
    ckpt = CheckpointWriter(tmp_path / "ck", 1).save(checkpoint_state(
        {"model": build_model(cfg), "model_record": ModelRecord.of(cfg, ds)}, 1, 0))
    runs = {}
    for name, run in (("one", infer), ("ray", lambda c: infer_on_ray(c, cluster.address))):
        out = run(InferConfig(dataset=path, checkpoint=ckpt, out=tmp_path / name, nodes=nodes,
                              chunk_rows=64, progress=False))
        group = zarr.open_group(out, mode="r")
        runs[name] = {k: group[k][:] for k in group.array_keys()}
    assert runs["one"]["embeddings"].shape[0] == (600 if nodes == "all" else len(ds.split(nodes)))
    for k, v in runs["one"].items():
        assert np.array_equal(v, runs["ray"][k]), k
    assert not (tmp_path / "ray.layers").exists()
    if model == "sage":  # the command line's --workers, on the cluster this process joined
        from disktrain.cli import main

        assert main(["infer", str(path), "--checkpoint", str(ckpt), "--out",
                     str(tmp_path / "cli"), "--workers", "2", "--no-progress"]) == 0
        got = zarr.open_group(tmp_path / "cli", mode="r")["embeddings"][:]
        assert np.array_equal(got, runs["one"]["embeddings"])


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
def uninterrupted(cluster, prepared, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fit")
    return fit_on_ray(_train_cfg(prepared, out / "ck"),
                      RayTrainConfig(workers=2, storage_path=str(out / "ray")))


@pytest.mark.ray
@pytest.mark.slow
def test_fit_on_ray_workers_hold_identical_parameters(uninterrupted, prepared):
    s = uninterrupted
    cfg = _train_cfg(prepared, Path("unused"))
    assert s["world_size"] == 2 and s["steps"] == _expected_steps(prepared, cfg, 2) > 0
    assert s["replicas_identical"] and len(s["replica_sha256"]) == 2
    assert set(s["replica_sha256"]) == {s["params_sha256"]}
    state = newest_checkpoint(Path(s["checkpoint"]).parent)
    assert state["epoch"] == 2 and state["trainer"]["steps"] == s["steps"]
    assert params_digest(state["model"]) == s["params_sha256"]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_prepares_and_trains_a_typed_graph(cluster, tmp_path):
    """Ray tasks sample and pack a typed graph as one process does; two Ray Train workers
    train R-SAGE on it and end with identical parameters."""
    sample = SampleConfig(fanouts=(3, 2), batch_size=4, group_size=2)
    local, remote = make_typed_dataset(tmp_path / "local"), make_typed_dataset(tmp_path / "ray")
    prepare(local, sample, PACK)
    prepare_on_ray(remote, sample, PACK, cluster.address, progress=False)
    _same_packed(local, remote)
    cfg = TrainConfig(dataset=str(remote), epochs=1, seed=1, progress=False,
                      model=ModelConfig(model="rsage", hidden=8, dropout=0.0),
                      checkpoint=CheckpointConfig(dir=str(tmp_path / "ck")))
    s = fit_on_ray(cfg, RayTrainConfig(workers=2, storage_path=str(tmp_path / "ray-out")))
    assert s["world_size"] == 2 and s["steps"] > 0 and s["replicas_identical"]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_prepares_and_trains_link_prediction(cluster, tmp_path):
    """Ray tasks sample edge batches as one process does, their negatives included (the
    packing of their rows is a node batch's: test_prepare_on_ray_matches_single_process); two
    Ray Train workers train a link model on them and end with identical parameters."""
    sample = SampleConfig(fanouts=(3, 2), batch_size=32, group_size=2, task="link",
                          num_negatives=2)
    local, remote = make_link_dataset(tmp_path / "local"), make_link_dataset(tmp_path / "ray")
    prepare(local, sample, PACK)
    prepare_on_ray(remote, sample, PACK, cluster.address, progress=False)
    a, b = SampleStore(local), SampleStore(remote)
    for i in range(a.num_batches):
        x, y = a.link_labels(i), b.link_labels(i)
        assert np.array_equal(x.label_src, y.label_src) and np.array_equal(x.label_dst,
                                                                           y.label_dst)
    cfg = TrainConfig(dataset=str(remote), task="link", epochs=1, seed=1, progress=False,
                      model=ModelConfig(hidden=8, dropout=0.0),
                      checkpoint=CheckpointConfig(dir=str(tmp_path / "ck")))
    s = fit_on_ray(cfg, RayTrainConfig(workers=2, storage_path=str(tmp_path / "ray-out")))
    assert s["world_size"] == 2 and s["steps"] > 0 and s["replicas_identical"]
    assert newest_checkpoint(tmp_path / "ck")["model_record"]["task"] == "link"


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
def test_worker_killed_mid_epoch_restarts_from_checkpoint(uninterrupted, prepared, tmp_path):
    cfg = _train_cfg(prepared, tmp_path / "ck")
    per_epoch = _expected_steps(prepared, replace(cfg, epochs=1), 2)
    marker = tmp_path / "died"
    # rank 1 dies in the middle of epoch 1, after the epoch-0 checkpoint was reported
    s = fit_on_ray(cfg, RayTrainConfig(workers=2, max_failures=1,
                                       storage_path=str(tmp_path / "ray")),
                   grad_sync=dying_rank(1, per_epoch + per_epoch // 2 + 1, marker))
    assert marker.exists(), "the injected failure did not happen"
    assert s["steps"] == uninterrupted["steps"] and s["replicas_identical"]
    # resumed from the epoch-end checkpoint: the same model as the uninterrupted run
    assert s["params_sha256"] == uninterrupted["params_sha256"]


@pytest.mark.ray
@pytest.mark.slow
def test_init_ray_ignores_a_dead_head_named_by_ray_current_cluster(ray_env):
    """A head killed without clean-up leaves ray_current_cluster behind; no address still
    means a new local instance (it used to fail: "When connecting to an existing cluster,
    num_cpus and num_gpus must not be provided")."""
    tmp = ray_env / "stale"
    (tmp / "ray").mkdir(parents=True)
    dead = f"{LOOPBACK}:{free_port()}"
    (tmp / "ray" / "ray_current_cluster").write_text(dead)
    script = ("from disktrain.cluster.head import init_ray\n"
              "assert init_ray(None, num_cpus=1)\n"
              "import ray\n"
              "print('GCS', ray.get_runtime_context().gcs_address)\n"
              "ray.shutdown()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "RAY_TMPDIR": str(tmp)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    gcs = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("GCS"))
    assert gcs != dead and gcs.startswith(LOOPBACK)
    assert_no_ray_left(tmp)


def _head_script_started(out: Path, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Wait for the head script's banner in ``out``; return ``ray start``'s pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in out.read_text().splitlines():
            if line.startswith("Ray head started on"):
                return int(line.split("ray start pid ")[1].split(";")[0])
        time.sleep(0.5)
    raise AssertionError(f"the head did not start (status {proc.poll()}):\n"
                         f"{out.read_text()[-4000:]}")


@pytest.mark.ray
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
@pytest.mark.slow
def test_head_script_stops_its_cluster_on_signal(ray_env, tmp_path, signum):
    """``python -m disktrain.cluster.head`` stopped by ``kill`` or a closed terminal stops
    every process it started (gcs_server, raylet, dashboard, ...), as Ctrl-C does."""
    root = ray_env / f"head-{signum}"
    out = tmp_path / "head.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "disktrain.cluster.head", "--num-cpus",
                                 "1", "--dashboard-port", "0", "--temp-dir", str(root)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    ray_start = None
    try:
        ray_start = _head_script_started(out, proc)
        started = session_pids(ray_start)
        assert len(started) > 3, started  # ray start, gcs_server, raylet, dashboard, ...
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=120) == 0, out.read_text()[-4000:]
        assert f"{signal.Signals(signum).name}: stopping the Ray head" in out.read_text()
        assert session_pids(ray_start) == [], out.read_text()[-4000:]
        assert_no_ray_left(root)
    finally:  # whatever happened, nothing of this head survives the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in session_pids(ray_start) if ray_start else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
