"""Two processes under torchrun (gloo, CPU): disjoint shares, one all-reduce, equal replicas,
resuming from rank 0's checkpoint alone, and refusing a changed world size."""

import json
import textwrap
from pathlib import Path

import pytest
from helpers import newest_checkpoint, prepare, torchrun
from tinygraphs import make_dataset, make_link_dataset, make_typed_dataset

from disktrain.errors import CheckpointError
from disktrain.loader.schedule import epoch_batches, worker_share
from disktrain.models import ModelConfig
from disktrain.pack import PackConfig
from disktrain.pack.prepare import prepare_dataset
from disktrain.sample import SampleConfig, SampleStore
from disktrain.train import TrainConfig, train
from disktrain.train.checkpoint import CheckpointConfig, checkpoint_name
from disktrain.train.loop import params_digest

pytestmark = [pytest.mark.dist, pytest.mark.slow]  # torchrun jobs: seconds each

WORKER = textwrap.dedent("""
    import json, os, sys
    from disktrain.models import ModelConfig
    from disktrain.train import EvalConfig, OptimizerConfig, TrainConfig, train
    from disktrain.train.checkpoint import CheckpointConfig

    dataset, out = sys.argv[1], sys.argv[2]
    summary = train(TrainConfig(dataset=dataset, epochs=3, seed=1, progress=False,
                                optimizer=OptimizerConfig(lr=0.02),
                                model=ModelConfig(model="sage", hidden=16, dropout=0.0),
                                evaluation=EvalConfig(every=3),
                                checkpoint=CheckpointConfig(dir=os.path.join(out, "ck")),
                                metrics=os.path.join(out, "metrics.jsonl")))
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(summary, f)
""")
RESUME_WORKER = textwrap.dedent("""
    import json, os, sys
    from disktrain.models import ModelConfig
    from disktrain.train import TrainConfig, train
    from disktrain.train.checkpoint import CheckpointConfig as Ck

    dataset, out = sys.argv[1], sys.argv[2]
    rank = os.environ["RANK"]
    base = dict(dataset=dataset, model=ModelConfig(model="sage", hidden=16, dropout=0.3),
                seed=1, progress=False, max_batches=3)
    own = os.path.join(out, f"ck-rank{rank}")  # node-local storage: only rank 0 writes
    train(TrainConfig(**base, epochs=1, checkpoint=Ck(dir=own)))
    listing = sorted(f for f in os.listdir(own) if f != ".lock") if os.path.isdir(own) else []
    resumed = train(TrainConfig(**base, epochs=2, checkpoint=Ck(dir=own, resume=True)))
    straight = train(TrainConfig(**base, epochs=2,
                                 checkpoint=Ck(dir=os.path.join(out, f"straight-rank{rank}"))))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"listing": listing, "resumed": resumed, "straight": straight}, f)
""")

NAN_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch.nn.functional as F
    from disktrain.errors import NonFiniteError
    from disktrain.models import ModelConfig
    from disktrain.train import TrainConfig, train
    from disktrain.train.checkpoint import CheckpointConfig

    dataset, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    ce, calls = F.cross_entropy, [0]

    def cross_entropy(*args, **kwargs):  # rank 1's 3rd loss is NaN, its gradient finite
        calls[0] += 1
        loss = ce(*args, **kwargs)
        return loss + float("nan") if rank == 1 and calls[0] == 3 else loss

    F.cross_entropy = cross_entropy
    base = dict(dataset=dataset, model=ModelConfig(model="sage", hidden=16), seed=1,
                progress=False, epochs=1, max_batches=3,
                checkpoint=CheckpointConfig(dir=os.path.join(out, f"ck{rank}")))
    skipped = train(TrainConfig(**base, on_nonfinite="skip"))
    calls[0] = 0
    try:
        train(TrainConfig(**base))
        stopped = None
    except NonFiniteError as e:
        stopped = str(e)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"skipped": skipped, "stopped": stopped}, f)
""")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    path = make_dataset(tmp_path_factory.mktemp("dist") / "tiny")
    prepare(path)
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
    state = newest_checkpoint(tmp_path / "ck")
    assert state["trainer"]["steps"] == steps and state["epoch"] == 3
    assert params_digest(state["model"]) == ranks[1]["params_sha256"]
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_torchrun_module_entry_point_trains_with_a_robust_aggregator(prepared, tmp_path):
    torchrun("-m", "disktrain.train", str(prepared), "--model", "sage", "--epochs", "1",
             "--hidden", "16", "--max-batches", "2", "--aggregator", "flag",
             "--checkpoint-dir", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m.jsonl"))
    state = newest_checkpoint(tmp_path / "ck")
    assert state["epoch"] == 1 and state["trainer"]["steps"] == 2
    assert all(t.isfinite().all() for t in state["model"].values())
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1


def test_cli_aggregator_choices_match_the_registry():
    from disktrain.cli import build_parser
    from disktrain.robust import AGGREGATORS

    parser = build_parser()
    for name in AGGREGATORS:
        args = parser.parse_args(["train", "x", "--aggregator", name])
        assert getattr(args, "robust.aggregator") == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "x", "--aggregator", "average"])


@pytest.fixture(scope="module")
def resumed_pair(prepared, tmp_path_factory) -> Path:
    """Two ranks train 1 epoch (rank 0 alone checkpoints, into its own directory), resume to
    2 epochs, then train 2 epochs straight; each rank's results in rank{r}.json."""
    out = tmp_path_factory.mktemp("resume")
    script = out / "worker.py"
    script.write_text(RESUME_WORKER)
    torchrun(str(script), str(prepared), str(out))
    return out


def test_every_rank_resumes_from_rank_0s_checkpoint(resumed_pair):
    ranks = [json.loads((resumed_pair / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["listing"] == [checkpoint_name(1, 0)] and ranks[1]["listing"] == []
    for r in ranks:
        assert r["resumed"]["resumed_at"] == [1, 0] and r["straight"]["resumed_at"] is None
        assert r["resumed"]["steps"] == r["straight"]["steps"] == 6
    digests = {r[run]["params_sha256"] for r in ranks for run in ("resumed", "straight")}
    assert len(digests) == 1


def test_a_changed_world_size_is_refused_on_every_rank(prepared, resumed_pair, tmp_path):
    # 2 ranks' checkpoint, 1 process
    with pytest.raises(CheckpointError, match="written by 2 worker\\(s\\); resuming with 1"):
        train(TrainConfig(dataset=str(prepared), model=ModelConfig(hidden=16), epochs=2,
                          max_batches=3, progress=False,
                          checkpoint=CheckpointConfig(dir=str(resumed_pair / "ck-rank0"),
                                                      resume=True)))
    # 1 process's checkpoint, 2 ranks: both stop with the error, neither hangs
    ck = tmp_path / "ck"
    train(TrainConfig(dataset=str(prepared), model=ModelConfig(hidden=16), epochs=1,
                      max_batches=3, progress=False, checkpoint=CheckpointConfig(dir=str(ck))))
    proc = torchrun("-m", "disktrain.train", str(prepared), "--hidden", "16", "--epochs", "2",
                    "--max-batches", "3", "--resume", "--checkpoint-dir", str(ck), ok=False)
    said = "checkpoint written by 1 worker(s); resuming with 2 would change the run"
    assert proc.stderr.count("disktrain: error: ") == 2 and proc.stderr.count(said) == 2
    assert "exitcode: 2" in proc.stderr  # a user error, not a crash or a hang
    assert proc.stderr.count("Traceback (most recent call last)") == 1  # torchrun's own


def test_one_ranks_nan_loss_stops_or_skips_on_every_rank(prepared, tmp_path):
    """Rank 1 alone sees a NaN loss (with a finite gradient): no rank may go on alone, or its
    next collective would hang."""
    script = tmp_path / "worker.py"
    script.write_text(NAN_WORKER)
    torchrun(str(script), str(prepared), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["skipped"]["skipped_steps"] == 1 and r["skipped"]["steps"] == 2
    assert ranks[0]["skipped"]["params_sha256"] == ranks[1]["skipped"]["params_sha256"]
    assert "epoch 0, batch 2 " in ranks[0]["stopped"] and "non-finite gradient" in \
        ranks[0]["stopped"]
    assert "epoch 0, batch 2 " in ranks[1]["stopped"] and "non-finite loss (nan)" in \
        ranks[1]["stopped"]


def test_torchrun_trains_on_first_hop_aggregated_batches(tmp_path):
    path = make_dataset(tmp_path / "agg")
    prepare(path, pack=PackConfig(cpu_cache_bytes=1024, chunk_bytes=256,
                                  aggregate_first_hop="gcn"), evaluation=True)
    torchrun("-m", "disktrain.train", str(path), "--model", "gcn", "--epochs", "1",
             "--hidden", "16", "--checkpoint-dir", str(tmp_path / "ck"),
             "--metrics", str(tmp_path / "m.jsonl"))
    record = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    assert record["eval"] == {"val": "packed", "test": "packed"}
    assert all(t.isfinite().all() for t in newest_checkpoint(tmp_path / "ck")["model"].values())


def test_torchrun_trains_a_typed_graph(tmp_path):
    path = make_typed_dataset(tmp_path / "typed")
    prepare_dataset(path, SampleConfig(fanouts=(3, 2), batch_size=4),
                    PackConfig(cpu_cache_bytes=600, chunk_bytes=256), progress=False)
    torchrun("-m", "disktrain.train", str(path), "--model", "rgat", "--epochs", "1",
             "--hidden", "8", "--heads", "2", "--checkpoint-dir", str(tmp_path / "ck"),
             "--metrics", str(tmp_path / "m.jsonl"))
    record = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    assert record["eval"] == {"val": "packed", "test": "packed"} and record["batches"] > 1
    assert all(t.isfinite().all() for t in newest_checkpoint(tmp_path / "ck")["model"].values())


def test_torchrun_trains_link_prediction(tmp_path):
    path = make_link_dataset(tmp_path / "link")
    prepare(path, SampleConfig(fanouts=(3, 2), batch_size=32, task="link", num_negatives=2))
    done = torchrun("-m", "disktrain.train", str(path), "--task", "link", "--epochs", "2",
                    "--hidden", "16", "--plan-reuse", "cycle", "--no-progress",
                    "--checkpoint-dir", str(tmp_path / "ck"))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["steps"] == expected_steps(path, 2, 0, 2) > 0
    assert set(result["link"]) == {"val", "test"} and 0 < result["link"]["test"]["mrr"] <= 1
    assert newest_checkpoint(tmp_path / "ck")["model_record"]["task"] == "link"
