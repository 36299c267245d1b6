"""Ray Train on a cluster whose nodes share no filesystem: two Ray nodes simulated on this
machine, each with a stage directory and a temporary directory of its own, the dataset and
Ray's storage on an S3 API server (moto) on 127.0.0.1, as test_ray.py starts its Ray."""

from dataclasses import replace

import pytest
from test_ray import _expected_steps, dying_rank

from disktrain.cluster.head import LOOPBACK
from disktrain.cluster.ray_train import RayTrainConfig, fit_on_ray
from disktrain.models import ModelConfig
from disktrain.storage.objstore import Remote
from disktrain.storage.remote import MARKER, publish, staged_path
from disktrain.train import TrainConfig
from disktrain.train.checkpoint import CheckpointConfig


@pytest.fixture
def nodes(ray_env, s3_server, tmp_path):
    """Two Ray nodes of one CPU each (two one-CPU workers: one on each), each with its own
    DISKTRAIN_STAGE_DIR and TMPDIR and the object store's endpoint and (fake) credentials in
    its environment; this process connected. Yields the nodes' directories."""
    import ray
    from ray.cluster_utils import Cluster

    dirs = [tmp_path / f"node{i}" for i in range(2)]

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
