"""Ray Train on a cluster whose nodes share no filesystem: two Ray nodes simulated on this
machine, each with a stage directory and a temporary directory of its own, the dataset and
Ray's storage on an S3 API server (moto) on 127.0.0.1, as test_ray.py starts its Ray."""

import json
from dataclasses import replace

import numpy as np
import pytest
from test_ray import PACK, SAMPLE, _content, _same_samples
from test_ray_train import _expected_steps, dying_rank
from tinygraphs import make_dataset

from disktrain.cluster.head import LOOPBACK
from disktrain.cluster.ray_prepare import ToObjectStore, prepare_on_ray
from disktrain.cluster.ray_train import RayTrainConfig, fit_on_ray
from disktrain.models import ModelConfig
from disktrain.pack import PackedStore
from disktrain.pack.prepare import prepare_dataset
from disktrain.storage.objstore import MANIFEST, Remote
from disktrain.storage.remote import MARKER, publish, stage, staged_path
from disktrain.storage.roots import eval_root
from disktrain.train import TrainConfig
from disktrain.train.checkpoint import CheckpointConfig


@pytest.fixture(scope="module")
def nodes(ray_env, s3_server, tmp_path_factory):
    """Two Ray nodes of one CPU each (two one-CPU workers: one on each), each with its own
    DISKTRAIN_STAGE_DIR and TMPDIR and the object store's endpoint and (fake) credentials in
    its environment; this process connected. Yields the nodes' directories."""
    import ray
    from ray.cluster_utils import Cluster

    dirs = [tmp_path_factory.mktemp("nodes") / f"node{i}" for i in range(2)]

    def node(d):
        (d / "tmp").mkdir(parents=True)
        return {"num_cpus": 1, "node_ip_address": LOOPBACK, "env_vars": {
            **s3_server.env(), "DISKTRAIN_STAGE_DIR": str(d / "stage"), "TMPDIR": str(d / "tmp"),
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}  # Ray Train's controller: see dying_rank

    c = Cluster(initialize_head=True, head_node_args={**node(dirs[0]), "include_dashboard": False})
    try:
        c.add_node(**node(dirs[1]))
        ray.init(address=c.address)
        yield dirs
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_train_resumes_from_the_object_store(nodes, prepared, s3, tmp_path):
    """A run on a dataset URL (each node stages its own copy; Ray keeps the run under
    URL/ray_results), then a run continuing it (--resume, from the driver's copy) where a
    worker dies in the third epoch: the workers resume from the checkpoint Ray reported to the
    object store after the second."""
    url = f"{s3}/tiny"
    publish(prepared, url)
    cfg = TrainConfig(dataset=url, epochs=1, seed=1, progress=False, plan_reuse="cycle",
                      model=ModelConfig(model="sage", hidden=16, dropout=0.0))
    first = fit_on_ray(cfg, RayTrainConfig(workers=2))
    assert first["ray_result_path"].startswith(f"{url}/ray_results/disktrain-sage-")
    ours = cfg.writes_to / "checkpoints"  # beside the driver's staged copy (the s3 fixture's)
    assert first["checkpoint"] == str(ours / "ckpt-e000001-b00000000.pt")

    per_epoch = _expected_steps(prepared, cfg, 2)
    marker = tmp_path / "died"
    s = fit_on_ray(replace(cfg, epochs=3, checkpoint=CheckpointConfig(resume=True)),
                   RayTrainConfig(workers=2, max_failures=1, storage_path=f"{s3}/ray"),
                   grad_sync=dying_rank(1, per_epoch + per_epoch // 2 + 1, marker, pause_s=2))
    assert marker.exists(), "the injected failure did not happen"
    # the first attempt resumed at epoch 1 (driver's checkpoint), so died in epoch 2
    assert s["resumed_at"] == [2, 0] and s["steps"] == 3 * per_epoch
    assert s["replicas_identical"] and s["checkpoint"] == str(ours / "ckpt-e000003-b00000000.pt")
    import pyarrow.fs

    run = Remote.of(s["ray_result_path"])
    reported = [i.path for i in run.fs.get_file_info(pyarrow.fs.FileSelector(run.base,
                                                                             recursive=True))]
    assert any("/checkpoint_" in p and p.endswith("ckpt-e000003-b00000000.pt")
               for p in reported), reported
    for d in nodes:
        assert (staged_path(url, d / "stage") / MARKER).is_file(), d  # staged on every node
        assert not any((d / "tmp").glob("disktrain-*")), d  # no worker's scratch left


def _listing(url: str) -> list[str]:
    import pyarrow.fs

    remote = Remote.of(url)
    infos = remote.fs.get_file_info(pyarrow.fs.FileSelector(remote.base, recursive=True))
    return sorted(i.path[len(remote.base) + 1:] for i in infos if i.type.name == "File")


@pytest.mark.ray
@pytest.mark.slow
def test_prepare_on_ray_writes_the_stores_to_the_object_store(nodes, s3, tmp_path):
    """`prepare URL --ray-address`: sampling and packing tasks on both nodes stage the dataset
    and write their groups and shard files straight to the prefix (a shard two tasks share
    from pieces); interrupted once the training store is packed, then run again with larger
    shards; the stores published decode as one local process's, the first run's extra shards
    are gone, and the nodes keep neither scratch files nor packed shards."""
    pack = replace(PACK, shard_bytes=6 * 4096)  # 6 chunks of 256 bytes (a 4 KiB stride) each
    local = make_dataset(tmp_path / "local")
    prepare_dataset(local, SAMPLE, pack, progress=False)
    url = f"{s3}/ds"
    publish(make_dataset(tmp_path / "published"), url)
    sample = ToObjectStore.sample

    def interrupted(self, dataset_path, cfg, groups, groups_dir):
        if "eval" in str(groups_dir):
            raise KeyboardInterrupt
        sample(self, dataset_path, cfg, groups, groups_dir)

    with pytest.MonkeyPatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(ToObjectStore, "sample", interrupted)  # with more, smaller shards
        prepare_on_ray(url, SAMPLE, replace(pack, shard_bytes=3 * 4096), progress=False)
    packed, evaluation = prepare_on_ray(url, SAMPLE, pack, progress=False)
    assert sorted(evaluation) == ["test", "val"] and packed.remote_files is not None

    objects = _listing(url)
    manifest = Remote.of(url).manifest()["files"]
    assert sorted(manifest) == [o for o in objects if o != MANIFEST]  # nothing else left
    shards = [o for o in objects if o.startswith("packed/rows/c.")]
    assert len(shards) == packed.layout.num_shards > 4  # more shards than the 4 tasks
    assert not any(".pieces/" in o or ".partial/" in o for o in objects)

    fresh = stage(url, tmp_path / "fresh")
    _same_samples(local, fresh)
    for root in ("", "eval/val", "eval/test"):
        a, b = PackedStore(local, root=local / root), PackedStore(fresh, root=fresh / root)
        assert _content(a.info()) == _content(b.info()), root
        assert np.array_equal(a.cache_rows(), b.cache_rows()), root
        for i in range(a.num_batches):
            assert np.array_equal(a.slots(i), b.slots(i)), (root, i)
            assert np.array_equal(a.read_packed(i), b.read_packed(i)), (root, i)
    assert eval_root(fresh, "val").is_dir()
    for d in nodes:
        copy = staged_path(url, d / "stage")
        assert (copy / MARKER).is_file(), d  # every node staged it: tasks ran on both
        assert not list(copy.glob("**/rows/c.*")), d  # no packed shard kept
        assert not list((d / "stage").glob(".disktrain-task-*")), d


@pytest.mark.ray
@pytest.mark.slow
def test_cli_prepare_url_with_ray(nodes, s3, tmp_path, capsys):
    """`disktrain prepare URL --ray-address auto` (one packing group: every shard written
    whole by one task): what is published opens and reads everywhere."""
    from disktrain.cli import main

    url = f"{s3}/cli"
    publish(make_dataset(tmp_path / "ds"), url)
    assert main(["prepare", url, "--ray-address", "auto", "--fanouts", "4,3", "--batch-size",
                 "16", "--epochs", "1", "--shard-bytes", "40K", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fresh = stage(url, tmp_path / "fresh")
    for root in (fresh, eval_root(fresh, "val")):
        store = PackedStore(fresh, root=root)  # every shard's index checked
        assert store.layout.num_shards > 1 and store.remote_files is not None
        for i in range(store.num_batches):  # every chunk's crc32c checked
            store.read_packed(i)
    assert out["packed"]["packed_rows"] == PackedStore(fresh).info()["packed_rows"] > 0
    assert not any(".pieces/" in o for o in _listing(url))
