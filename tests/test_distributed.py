"""Two processes under torchrun (gloo, CPU): disjoint shares, one all-reduce, equal replicas."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tinygraphs import make_dataset

from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, SampleStore, sample_dataset
from disktrain.train.checkpoint import load_checkpoint
from disktrain.train.loop import params_digest
from disktrain.train.schedule import epoch_batches, worker_share

pytestmark = pytest.mark.dist

TORCHRUN = Path(sys.executable).with_name("torchrun")
WORKER = textwrap.dedent("""
    import json, os, sys
    from disktrain.train import TrainConfig, train

    dataset, out = sys.argv[1], sys.argv[2]
    summary = train(TrainConfig(dataset=dataset, model="sage", epochs=3, hidden=16, seed=1,
                                dropout=0.0, lr=0.02, progress=False, eval_every=3,
                                checkpoint_dir=os.path.join(out, "ck"),
                                metrics=os.path.join(out, "metrics.jsonl")))
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(summary, f)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    path = make_dataset(tmp_path_factory.mktemp("dist") / "tiny")
    sample_dataset(path, SampleConfig(fanouts=(4, 3), batch_size=16, epochs=2, seed=0),
                   progress=False)
    pack_dataset(path, PackConfig(cpu_cache_bytes=1024, chunk_bytes=256), progress=False)
    return path


def expected_steps(dataset: Path, epochs: int, seed: int, world_size: int) -> int:
    """Optimizer steps of one rank: its share of every epoch's batches."""
    s = SampleStore(dataset)
    sampled = s.num_batches // s.batches_per_epoch
    return sum(len(worker_share(epoch_batches(e, seed, sampled, s.batches_per_epoch, "cycle"),
                                0, world_size)) for e in range(epochs))


def test_two_ranks_train_identical_replicas(prepared, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun(str(script), str(prepared), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    steps = expected_steps(prepared, 3, 1, 2)
    assert steps > 0
    for r in ranks:
        assert r["world_size"] == 2 and r["steps"] == steps
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    # rank 0 alone checkpoints, and its checkpoint holds what rank 1 holds
    state = load_checkpoint(tmp_path / "ck")
    assert state["steps"] == steps and state["epoch"] == 3
    assert params_digest(state["model"]) == ranks[1]["params_sha256"]
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_torchrun_module_entry_point(prepared, tmp_path):
    torchrun("-m", "disktrain.train", str(prepared), "--model", "sage", "--epochs", "1",
             "--hidden", "16", "--max-batches", "2", "--checkpoint-dir", str(tmp_path / "ck"),
             "--metrics", str(tmp_path / "m.jsonl"))
    state = load_checkpoint(tmp_path / "ck")
    assert state["epoch"] == 1 and state["steps"] == 2
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1


def test_torchrun_trains_with_a_robust_aggregator(prepared, tmp_path):
    torchrun("-m", "disktrain.train", str(prepared), "--model", "sage", "--epochs", "1",
             "--hidden", "16", "--max-batches", "2", "--aggregator", "flag",
             "--checkpoint-dir", str(tmp_path / "ck"))
    state = load_checkpoint(tmp_path / "ck")
    assert state["steps"] == 2
    assert all(t.isfinite().all() for t in state["model"].values())


def test_cli_aggregator_choices_match_the_registry():
    from disktrain.cli import build_parser
    from disktrain.robust import AGGREGATORS

    parser = build_parser()
    for name in AGGREGATORS:
        assert parser.parse_args(["train", "x", "--aggregator", name]).aggregator == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "x", "--aggregator", "average"])
