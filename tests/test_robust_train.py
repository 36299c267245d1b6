"""Real attacking workers in training: three processes under torchrun (gloo, CPU) train through
the CLI's options with ranks that attack; replicas stay identical, a robust rule holds where
the mean is turned around, label flipping changes only the attacker's labels, and a rank
outside the world fails before any data loads."""

import json
import textwrap
from pathlib import Path

import pytest
from helpers import prepare, torchrun

from disktrain.cli import build_parser, configs, main
from disktrain.errors import ConfigError
from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.pack import PackConfig
from disktrain.robust import AttackConfig, RobustConfig
from disktrain.sample import SampleConfig
from disktrain.train import TrainConfig

pytestmark = pytest.mark.dist

WORLD = 3
COMMON = ["--model", "sage", "--hidden", "16", "--dropout", "0", "--lr", "0.02", "--epochs", "3",
          "--eval-every", "3", "--no-progress", "--seed", "1"]
RUNS = {  # name -> train options after COMMON
    "sign-flip": ["--attack", "sign-flip", "--byzantine-ranks", "1",
                  "--aggregator", "trimmed-mean", "--byzantine-f", "1"],
    # ipm with eps=4 sends -4 times the honest mean: the mean of the 3 rows is -2/3 of it
    # (sign flip itself, eps=1, leaves 1/3 of it, which Adam's scale invariance undoes)
    "mean-ipm": ["--attack", "ipm", "--attack-param", "eps=4", "--byzantine-ranks", "1"],
    "trimmed-ipm": ["--attack", "ipm", "--attack-param", "eps=4", "--byzantine-ranks", "1",
                    "--aggregator", "trimmed-mean", "--byzantine-f", "1"],
    "nnm-gaussian": ["--attack", "gaussian", "--attack-param", "std=10", "--byzantine-ranks",
                     "2", "--pre-aggregate", "nnm", "--aggregator", "median", "--byzantine-f",
                     "1"],
    "label-flip": ["--attack", "label-flip", "--byzantine-ranks", "1"],  # the mean: DDP
    # rank 2's first loss is made infinite (WORKER): median drops its poisoned row, so every
    # rank steps on the same finite aggregate (rank 2 must not skip on its own loss)
    "inf-loss": ["--aggregator", "median", "--byzantine-f", "1", "--on-nonfinite", "skip"],
}
WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.nn.functional as F
    from disktrain.cli import build_parser, configs
    from disktrain.robust import ByzantineWorker
    from disktrain.train import train
    from disktrain.train.loop import params_digest

    dataset, out, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rank = int(os.environ["RANK"])
    seen = {"true": [], "trained": []}  # labels before ByzantineWorker.labels, and the loss's
    ce, labels = F.cross_entropy, ByzantineWorker.labels

    poison = {"next": False}  # make the next loss infinite

    def spy_ce(logits, target, *args, **kwargs):
        seen["trained"].append(target.tolist())
        loss = ce(logits, target, *args, **kwargs)
        if poison["next"]:
            poison["next"] = False
            return loss * float("inf")
        return loss

    def spy_labels(self, y):
        seen["true"].append(y.tolist())
        return labels(self, y)

    F.cross_entropy, ByzantineWorker.labels = spy_ce, spy_labels
    results = {}
    for name, argv in runs.items():
        seen["true"].clear(), seen["trained"].clear()
        poison["next"] = name == "inf-loss" and rank == 2
        args = build_parser("train").parse_args(["train", dataset, *argv])
        summary = train(configs(args)[""])
        results[name] = {**summary, "true": list(seen["true"]),
                         "trained": list(seen["trained"])}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
""")


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    """A small graph whose planted classes a GNN learns in a few epochs."""
    path = tmp_path_factory.mktemp("robust") / "synth"
    synthesize(SynthConfig(out=path, num_nodes=1200, avg_degree=8, feature_dim=16,
                           num_classes=4, seed=0, progress=False))
    prepare(path, SampleConfig(fanouts=(5, 5), batch_size=32, epochs=3, seed=0), PackConfig())
    return path


@pytest.fixture(scope="module")
def runs(learnable, tmp_path_factory) -> list[dict]:
    """Every rank's results of RUNS, trained in one torchrun job."""
    out = tmp_path_factory.mktemp("robust-out")
    script = out / "worker.py"
    script.write_text(WORKER)
    torchrun(str(script), str(learnable), str(out),
             json.dumps({name: [*COMMON, *argv] for name, argv in RUNS.items()}),
             nproc=WORLD, timeout=600)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.slow
def test_a_sign_flipping_rank_under_trimmed_mean_trains_identical_replicas(runs):
    summary = runs[0]["sign-flip"]
    assert summary["world_size"] == WORLD and summary["steps"] > 0
    assert summary["loss"] == pytest.approx(summary["loss"])  # finite: not NaN
    assert summary["loss"] < 10 and summary["test_acc"] > 0.5
    assert summary["attack"] == {"attack": "sign-flip", "ranks": [1], "params": {}, "seed": 0}
    assert summary["robust"]["aggregator"] == "trimmed-mean" and summary["robust"]["f"] == 1
    for name in RUNS:
        assert len({r[name]["params_sha256"] for r in runs}) == 1, name


@pytest.mark.slow
def test_the_mean_is_turned_around_where_trimmed_mean_holds(runs):
    mean, trimmed = runs[0]["mean-ipm"], runs[0]["trimmed-ipm"]
    assert trimmed["test_acc"] > 0.5
    assert mean["test_acc"] < trimmed["test_acc"] - 0.2
    assert mean["loss"] > trimmed["loss"]


@pytest.mark.slow
def test_a_ranks_non_finite_loss_is_a_dropped_row_not_a_skipped_step(runs):
    summaries = [r["inf-loss"] for r in runs]
    assert [s["skipped_steps"] for s in summaries] == [0] * WORLD
    assert len({s["steps"] for s in summaries}) == 1
    assert len({s["params_sha256"] for s in summaries}) == 1


@pytest.mark.slow
def test_nnm_before_median_survives_loud_noise(runs):
    summary = runs[0]["nnm-gaussian"]
    assert summary["robust"]["pre_aggregate"] == ["nnm"]
    assert summary["test_acc"] > 0.5


@pytest.mark.slow
def test_label_flip_changes_only_the_attacking_ranks_labels(runs):
    for rank, results in enumerate(runs):
        seen = results["label-flip"]
        assert seen["true"] and len(seen["trained"]) >= len(seen["true"])
        trained = seen["trained"][:len(seen["true"])]  # training's losses come first
        expected = [[3 - y for y in ys] for ys in seen["true"]] if rank == 1 else seen["true"]
        assert trained == expected, rank


@pytest.mark.slow
def test_attacking_ranks_outside_the_world_fail_before_data_loads(tmp_path):
    proc = torchrun("-m", "disktrain", "train", str(tmp_path / "nowhere"), "--attack",
                    "sign-flip", "--byzantine-ranks", "5", "--aggregator", "median",
                    "--byzantine-f", "1", nproc=WORLD, ok=False, timeout=120)
    assert "disktrain: error: byzantine ranks (--byzantine-ranks, attack.ranks) 5: " \
           "attacking ranks [5] need world size > 5" in proc.stderr
    assert "nowhere" not in proc.stderr


def test_world_size_check_names_the_option():
    cfg = TrainConfig(dataset="DS", attack=AttackConfig(attack="nan", ranks=(0, 1)))
    with pytest.raises(ConfigError, match="--byzantine-ranks.*0,1.*with an honest rank"):
        cfg.check_world_size(2)
    cfg.check_world_size(3)


def test_flag_lambda_applies_to_flag_only():
    with pytest.raises(ValueError, match="flag_lambda=0.5 applies to aggregator 'flag' only"):
        TrainConfig(dataset="DS", robust=RobustConfig(aggregator="median", flag_lambda=0.5))


@pytest.mark.parametrize(("argv", "says"), [
    (["--byzantine-ranks", "1"], "--byzantine-ranks apply only with --attack NAME"),
    (["--attack-param", "eps=2"], "--attack-param apply only with --attack NAME"),
    (["--attack", "ipm"], "--attack ipm needs --byzantine-ranks"),
    (["--attack", "sign-flip", "--byzantine-ranks", "1", "--attack-param", "eps=2"],
     "attack 'sign-flip' takes no parameter eps"),
    (["--pre-aggregate", "nnm,sort"], "pre_aggregate 'sort' is unknown"),
])
def test_attack_options_are_checked(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_attack_options_build_the_attack_config():
    args = build_parser("train").parse_args(
        ["train", "DS", "--attack", "ipm", "--byzantine-ranks", "0,3", "--attack-param",
         "eps=4", "--attack-param", "eps=2", "--attack-seed", "7"])
    assert configs(args)[""].attack == AttackConfig(attack="ipm", ranks=(0, 3),
                                                    params={"eps": 2.0}, seed=7)
    with pytest.raises(SystemExit):
        build_parser("train").parse_args(["train", "DS", "--attack-param", "eps"])


def test_a_diverged_replica_is_a_user_error(monkeypatch, tmp_path, capsys):
    from disktrain.robust import ReplicaDivergenceError

    def diverged(cfg):
        raise ReplicaDivergenceError("epoch 0: parameter replicas diverged: rank(s) 2 differ")

    monkeypatch.setattr("disktrain.train.train", diverged)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == \
        "disktrain: error: epoch 0: parameter replicas diverged: rank(s) 2 differ\n"


MOMENTUM_WORKER = textwrap.dedent("""
    import json, os, sys
    from disktrain.cli import build_parser, configs
    from disktrain.train import train
    from disktrain.train.checkpoint import load_bytes, read_newest

    dataset, out = sys.argv[1], sys.argv[2]
    rank = os.environ["RANK"]
    base = ["train", dataset, "--model", "sage", "--hidden", "16", "--dropout", "0",
            "--optimizer", "sgd", "--lr", "0.5", "--worker-momentum", "0.9",
            "--pre-aggregate", "bucketing", "--aggregator", "centered-clipping",
            "--byzantine-f", "0", "--attack", "gaussian", "--byzantine-ranks", "2",
            "--eval-every", "9",
            "--max-batches", "3", "--no-progress", "--seed", "1"]
    run = lambda *argv: train(configs(build_parser("train").parse_args([*base, *argv]))[""])
    ck = os.path.join(out, "ck")
    run("--epochs", "1", "--checkpoint-dir", ck)
    saved = load_bytes(*read_newest(ck)[::-1])["worker_momentum"]["average"] \
        if rank == "0" else None
    resumed = run("--epochs", "2", "--checkpoint-dir", ck, "--resume")
    straight = run("--epochs", "2", "--checkpoint-dir", os.path.join(out, f"straight{rank}"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"resumed": resumed, "straight": straight,
                   "saved": None if saved is None else saved.tolist()}, f)
""")


@pytest.mark.slow
def test_a_resumed_robust_run_goes_on_where_it_stopped(learnable, tmp_path):
    """Three ranks train with worker momentum, bucketing, centered clipping and a gaussian
    attacker, resume mid-run from rank 0's checkpoint, and end where a straight run ends:
    every rank's average, the aggregator's step (bucketing's permutation) and center, and the
    attack's step (its noise) were saved and restored; restarting any changes the run."""
    script = tmp_path / "worker.py"
    script.write_text(MOMENTUM_WORKER)
    torchrun(str(script), str(learnable), str(tmp_path), nproc=WORLD, timeout=600)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    saved = ranks[0]["saved"]
    assert len(saved) == WORLD and len({tuple(row) for row in saved}) == WORLD
    assert all(any(row) for row in saved)
    for r in ranks:
        assert r["resumed"]["resumed_at"] == [1, 0] and r["resumed"]["worker_momentum"] == 0.9
        assert r["resumed"]["steps"] == r["straight"]["steps"] == 6
    assert len({r[run]["params_sha256"] for r in ranks for run in ("resumed", "straight")}) == 1
