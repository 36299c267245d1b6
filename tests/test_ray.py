"""Ray tier: preprocessing and inference as Ray tasks on a two-node cluster simulated on this
machine (``ray_cluster``, conftest.py), the head script, and a real ``ray job submit`` to a
head started here. Training on Ray Train: test_ray_train.py; without a shared filesystem:
test_ray_s3.py.

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
from helpers import (
    RAY_PACK,
    RAY_SAMPLE,
    assert_no_ray_left,
    assert_same_rows,
    newest_checkpoint,
    prepare,
)
from tinygraphs import make_dataset

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
from disktrain.cluster.ray_train import RayTrainConfig
from disktrain.pack import PackedStore
from disktrain.sample import SampleStore

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
SAMPLE, PACK = RAY_SAMPLE, RAY_PACK


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

def _cli_has_train() -> bool:
    from disktrain.cli import build_parser

    try:
        build_parser().parse_args(["train", "x", "--workers", "2"])
    except SystemExit:
        return False
    return True


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit(ray_env, ray_prepared, tmp_path):
    """A head started like cluster/head.py does, then the documented job submission."""
    root = ray_env / "head"
    root.mkdir()
    with Head(HeadConfig(num_cpus=4, dashboard_port=0, temp_dir=str(root)),
              log=tmp_path / "head.log") as head:
        head.wait_ready()
        if _cli_has_train():
            args = ["train", str(ray_prepared), "--workers", "2", "--epochs", "1", "--hidden", "16",
                    "--max-batches", "2", "--checkpoint-dir", str(tmp_path / "ck")]
        else:  # until `disktrain train` exists: the job still connects and runs the CLI
            args = ["info", str(ray_prepared), "--json"]
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
def test_prepare_on_ray_matches_single_process(ray_cluster, ray_prepared, tmp_path):
    path = make_dataset(tmp_path / "tiny")
    prepare_on_ray(path, SAMPLE, PACK, ray_cluster.address, progress=False)
    assert not (path / "samples.partial").exists() and not (path / "packed.partial").exists()
    _same_samples(ray_prepared, path)
    _same_packed(ray_prepared, path)


@pytest.mark.ray
@pytest.mark.slow
def test_prepare_on_ray_aggregates_the_first_hop_as_one_process(ray_cluster, tmp_path):
    pack = replace(PACK, aggregate_first_hop="mean")
    local, remote = make_dataset(tmp_path / "local"), make_dataset(tmp_path / "ray")
    prepare(local, SAMPLE, pack)
    prepare_on_ray(remote, SAMPLE, pack, ray_cluster.address, progress=False)
    assert PackedStore(remote).aggregate == "mean"
    _same_samples(local, remote)
    _same_packed(local, remote)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("model,nodes", [("sage", "all"), ("gat", "val")])
def test_infer_on_ray_writes_the_single_process_rows(ray_cluster, tmp_path, model, nodes):
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
    for name, run in (("one", infer), ("ray", lambda c: infer_on_ray(c, ray_cluster.address))):
        out = run(InferConfig(dataset=path, checkpoint=ckpt, out=tmp_path / name, nodes=nodes,
                              chunk_rows=64, progress=False))
        group = zarr.open_group(out, mode="r")
        runs[name] = {k: group[k][:] for k in group.array_keys()}
    assert runs["one"]["embeddings"].shape[0] == (600 if nodes == "all" else len(ds.split(nodes)))
    assert sorted(runs["one"]) == sorted(runs["ray"]) == ["embeddings", "nodes"]
    assert np.array_equal(runs["one"]["nodes"], runs["ray"]["nodes"])
    assert_same_rows(runs["ray"]["embeddings"], runs["one"]["embeddings"])  # other cuts
    assert not (tmp_path / "ray.layers").exists()
    if model == "sage":  # the command line's --workers, on the cluster this process joined
        from disktrain.cli import main

        assert main(["infer", str(path), "--checkpoint", str(ckpt), "--out",
                     str(tmp_path / "cli"), "--workers", "2", "--no-progress"]) == 0
        got = zarr.open_group(tmp_path / "cli", mode="r")["embeddings"][:]
        assert_same_rows(got, runs["one"]["embeddings"])


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
@pytest.mark.slow
def test_head_script_stops_its_cluster_on_signal(ray_env, tmp_path):
    """``python -m disktrain.cluster.head`` stopped by ``kill`` stops every process it
    started (gcs_server, raylet, dashboard, ...). A closed terminal (SIGHUP) and Ctrl-C take
    the same handler: tests/test_head_signals.py."""
    signum = signal.SIGTERM
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
