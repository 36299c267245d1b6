"""scripts/bench_robust.py: rule specs, the grid of runs and what it leaves out, the summary's
worst case over attacks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_robust as bench

from disktrain.robust import RobustConfig


def test_rule_specs_set_flags_subspace_and_the_means_f():
    assert bench.robust_config("flag/r=8", 2, ["nnm"]) == RobustConfig(
        aggregator="flag", f=2, subspace=8, pre_aggregate=("nnm",))
    assert bench.robust_config("flag", 3, []) == RobustConfig(aggregator="flag", f=3)
    assert bench.robust_config("mean", 2, []) == RobustConfig()


def test_the_grid_leaves_out_what_a_rule_cannot_tolerate():
    args = bench.parse_args(["--rules", "mean,bulyan,flag/r=8", "--f", "1,2",
                             "--attacks", "alie,inf", "--pre-aggregate", ",nnm"])
    runs, skipped = bench.jobs(args)
    assert runs[0] == {"rule": "mean", "pre_aggregate": [], "f": 0, "attack": "none"}
    # ByzFL's attack-free baseline per f: the honest workers alone
    assert runs[1:3] == [{"rule": "mean", "pre_aggregate": [], "f": f, "attack": "absent"}
                         for f in (1, 2)]
    keys = {(r["rule"], tuple(r["pre_aggregate"]), r["f"]) for r in runs[3:]}
    # the mean runs without NNM only; Bulyan needs n >= 4f + 3 (8 workers: f = 1 only)
    assert keys == {("mean", (), 1), ("mean", (), 2), ("bulyan", (), 1), ("bulyan", ("nnm",), 1),
                    ("flag/r=8", (), 1), ("flag/r=8", ("nnm",), 1), ("flag/r=8", (), 2),
                    ("flag/r=8", ("nnm",), 2)}
    assert len(runs) == 3 + 2 * len(keys)
    assert {(s["rule"], s["f"]) for s in skipped} == {("bulyan", 2)}


def test_unknown_rules_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--rules", "flagg/r=3"])
    assert "--rules: unknown flagg" in capsys.readouterr().err


def run(rule: str, f: int, attack: str, acc: float, pre=(), seed: int = 0, **extra) -> dict:
    """A runs.jsonl record on Cora."""
    return {"dataset": "cora", "rule": rule, "pre_aggregate": list(pre), "f": f,
            "attack": attack, "test_acc": acc, "seed": seed, **extra}


BASELINE = run("mean", 0, "none", 0.8)


def test_the_worst_case_is_the_least_seed_mean_over_attacks():
    args = bench.parse_args(["--datasets", "cora", "--f", "1", "--seeds", "0,1"])
    records = [BASELINE]
    for seed, accs in enumerate(({"alie": 0.7, "inf": 0.5}, {"alie": 0.5, "inf": 0.6})):
        records += [run("flag", 1, a, acc, ["nnm"], seed) for a, acc in accs.items()]
    cell = bench.summarize(records, [], args)["datasets"]["cora"]["rules"]["flag+nnm"]["1"]
    assert cell["final"]["worst_attack"] == "inf" and cell["final"]["worst"] == pytest.approx(0.55)
    assert cell["final"]["accuracy"]["alie"] == pytest.approx(0.6)


def test_the_best_measure_is_the_peak_of_the_seed_mean_curve():
    args = bench.parse_args(["--datasets", "cora", "--f", "1", "--seeds", "0,1"])
    # seed-mean curve under alie: 0.5, 0.7, 0.6 (the peak, 0.7, is no seed's own peak pair)
    curves = ([[1, 0.4], [2, 0.8], [3, 0.6]], [[1, 0.6], [2, 0.6], [3, 0.6]])
    records = [run("mean", 0, "none", 0.8, curve=[[1, 0.7], [3, 0.8]])]
    records += [run("flag", 1, "alie", c[-1][1], seed=i, curve=c) for i, c in enumerate(curves)]
    data = bench.summarize(records, [], args)["datasets"]["cora"]
    assert data["attack_free_mean"] == {"final": 0.8, "best": 0.8}
    cell = data["rules"]["flag"]["1"]
    assert cell["best"]["worst"] == pytest.approx(0.7)
    assert cell["final"]["worst"] == pytest.approx(0.6)


def test_the_markdown_table_names_the_worst_attack():
    args = bench.parse_args(["--datasets", "cora", "--f", "1,2"])
    records = [BASELINE, run("flag", 1, "alie", 0.75), run("flag", 1, "inf", 0.5)]
    table = bench.markdown(bench.summarize(records, [], args)).splitlines()
    assert table[0].startswith("Worst case over attacks, test accuracy after the last")
    assert table[2] == "| rule | cora f=1 | cora f=2 |"
    assert table[4] == "| attack-free mean | 0.800 | 0.800 |"
    assert table[5] == "| flag | 0.500 (inf) | n/a |"
    assert table[7].startswith("Worst case over attacks, best test accuracy")


def test_the_honest_only_baseline_is_apart_from_the_attacks():
    args = bench.parse_args(["--datasets", "cora", "--f", "1,2"])
    records = [BASELINE, run("mean", 2, "absent", 0.78), run("mean", 2, "inf", 0.1)]
    summary = bench.summarize(records, [], args)
    data = summary["datasets"]["cora"]
    assert data["honest_only_mean"]["2"]["final"] == pytest.approx(0.78)
    assert data["rules"]["mean"]["2"]["final"]["accuracy"] == {"inf": pytest.approx(0.1)}
    table = bench.markdown(summary).splitlines()
    assert table[5] == "| attack-free mean, honest workers only | n/a | 0.780 |"
    assert table[6] == "| mean | n/a | 0.100 (inf) |"


def fake_output(path: Path, f: int, lr: float) -> Path:
    """A bench output directory: its settings and two runs (baseline, flag under alie)."""
    import json

    path.mkdir()
    settings = {k: 0 for k in bench.SETTINGS}
    (path / "bench_robust.json").write_text(json.dumps({**settings, "workers": 8, "lr": lr,
                                                        "wall_s": 10.0}))
    runs = [BASELINE, run("flag", f, "alie", 0.7 - f / 10, ["nnm"])]
    (path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return path


def test_outputs_run_in_parts_merge_into_one_summary(tmp_path, capsys):
    import json

    a, b = fake_output(tmp_path / "f2", 2, 0.5), fake_output(tmp_path / "f3", 3, 0.5)
    bench.merge(bench.parse_args(["--merge", f"{a},{b}", "--out", str(tmp_path / "all")]))
    summary = json.loads((tmp_path / "all" / "bench_robust.json").read_text())
    assert summary["lr"] == 0.5 and summary["epochs"] == 0  # the parts' settings, not defaults
    # the baseline both parts ran is counted once
    assert summary["f"] == [2, 3] and summary["runs"] == 3 and summary["wall_s"] == 20.0
    cells = summary["datasets"]["cora"]["rules"]["flag+nnm"]
    assert cells["2"]["final"]["worst"] == pytest.approx(0.5)
    assert cells["3"]["final"]["worst"] == pytest.approx(0.4)
    assert (tmp_path / "all" / "bench_robust.png").stat().st_size > 0
    assert len((tmp_path / "all" / "runs.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()


def test_outputs_of_other_settings_are_not_merged(tmp_path):
    a, b = fake_output(tmp_path / "f2", 2, 1.0), fake_output(tmp_path / "f3", 3, 0.5)
    with pytest.raises(SystemExit, match="other settings than .*f2 \\(lr 0.5 vs 1.0\\)"):
        bench.merge(bench.parse_args(["--merge", f"{a},{b}", "--out", str(tmp_path / "all")]))
