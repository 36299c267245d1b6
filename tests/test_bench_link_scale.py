"""scripts/bench_link_scale.py: its arguments, run records, summary (medians, ratios, goals)
and table; scripts/pyg_link_peer.py's memory-mapped mode and edge subsets; one tiny run end to
end without the cgroup (with the `bench` extra installed)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from tinygraphs import make_link_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_link_scale as bench
import pyg_link_peer

needs_pyg = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None
        for m in ("torch_geometric", "torch_sparse", "matplotlib")),
    reason="needs the `bench` extra (torch-geometric, torch-sparse, matplotlib)")


def link(mrr: float) -> dict:
    return {s: {"mrr": mrr, "hits@10": mrr, "hits@50": mrr, "hits@100": mrr, "auc": mrr}
            for s in ("val", "test")}


def fake(system: str, job: float, epoch: float, *, ok=True, extrapolated=False,
         amp: float | None = None, setting: str = "random") -> dict:
    return {"system": system, "setting": "default" if system == "disktrain" else setting,
            "ok": ok, "extrapolated": extrapolated,
            "extrapolated_figures": {"job": extrapolated, "epoch": False,
                                     "eval": extrapolated}, "job_s": job,
            "epoch_s": epoch, "eval_s": job / 10, "prepare_s": 1.0 if system == "disktrain"
            else None, "read_bytes": 100, "peak_rss_bytes": 10, "cgroup_oom_kills": 0,
            "epoch_io_amplification": amp, "read_over_needed": None,
            "link": link(0.5) if ok else None}


def test_summary_medians_ratios_to_the_fastest_peer_setting_and_goals():
    runs = [fake("disktrain", 10.0, 2.0, amp=1.02), fake("disktrain", 14.0, 4.0, amp=1.04),
            fake("disktrain", 99.0, 99.0, ok=False),  # not counted
            fake("pyg", 120.0, 30.0), fake("pyg", 240.0, 50.0, extrapolated=True),
            fake("pyg", 150.0, 20.0, setting="normal")]
    scale = bench.SETTINGS["full"]
    s = bench.summarize(runs, scale, {"csr_edges": 99_990_000, "link_val": 5_000,
                                      "link_test": 5_000})
    d, p = s["systems"]["disktrain"], s["systems"]["pyg/random"]
    assert list(s["systems"]) == ["disktrain", "pyg/random", "pyg/normal"]
    assert (d["runs"], d["ok_runs"], d["job_s"], d["epoch_s"]) == (3, 2, 12.0, 3.0)
    assert p["job_s"] == 180.0 and p["extrapolated"]
    assert s["peer_best"] == {"job": "pyg/normal", "epoch": "pyg/normal", "eval": "pyg/normal"}
    assert s["ratios_peer_over_disktrain"] == {"job": 12.5, "epoch": 20.0 / 3, "eval": 12.5}
    assert not s["peer_extrapolated"]  # the fastest setting was measured throughout
    assert d["link"]["test"]["mrr"] == 0.5
    assert s["goals"]["epoch_io_amplification"] == {"value": 1.03, "goal": 1.05, "met": True}
    assert s["goals"]["scale"]["graph_edges"] == 100_010_000 and s["goals"]["scale"]["met"]
    text = bench.table(s)
    assert "| job s | 12.0 | 180.0* | 150.0 | 12.50x (pyg/normal) |" in text
    assert "| epoch s | 3.00 | 40.00 | 20.00 | 6.67x (pyg/normal) |" in text
    assert "mmap random |" in text and "* extrapolated" in text
    slow = bench.summarize(runs[:5], scale)  # the extrapolated setting the only one
    assert slow["peer_extrapolated"] and slow["peer_best"]["job"] == "pyg/random"


def test_summary_judges_nothing_without_runs_and_fails_the_goals_it_misses():
    s = bench.summarize([fake("disktrain", 10.0, 2.0, amp=1.2)], bench.SETTINGS["quick"])
    assert s["ratios_peer_over_disktrain"] == {"job": None, "epoch": None, "eval": None}
    assert s["goals"]["epoch_io_amplification"]["met"] is False
    assert s["goals"]["scale"]["met"] is False  # 2M edges, features under the limit
    assert "| job s | 10.0 |  |" in bench.table(s)


def step(wall: float, rc: int = 0, stdout: str = "") -> dict:
    return {"returncode": rc, "wall_s": wall, "read_bytes": 1000, "written_bytes": 5,
            "peak_rss_bytes": 7, "stdout": stdout}


def test_disktrain_record_amplification_from_the_epochs_packed_bytes():
    epochs = [{"epoch_time_s": 2.0, "packed_bytes": {"needed": 100, "read": 104}},
              {"epoch_time_s": 4.0, "packed_bytes": {"needed": 300, "read": 306}}]
    train = step(20.0, stdout="noise\n" + json.dumps({"link": link(0.4)}))
    r = bench.disktrain_record(step(5.0), train, epochs, 3.5)
    assert r["ok"] and (r["job_s"], r["prepare_s"], r["epoch_s"], r["eval_s"]) == (
        25.0, 5.0, 3.0, 3.5)
    assert r["epoch_io_amplification"] == pytest.approx(410 / 400)
    assert r["read_over_needed"] == pytest.approx(2000 / 400) and r["link"] == link(0.4)
    failed = bench.disktrain_record(step(5.0), step(1.0, rc=1), [], 1.0)
    assert not failed["ok"] and failed["eval_s"] is None
    assert failed["epoch_io_amplification"] is None
    assert not bench.disktrain_record(step(5.0, rc=2), None, [], None)["ok"]


def test_peer_record_takes_the_estimate_only_where_extrapolated():
    epoch = {"epoch_est_s": 30.0, "batches": 3, "total_batches": 3,
             "needed_bytes": 500}
    result = {"per_epoch": [epoch], "extrapolated": True, "job_est_s": 400.0, "setup_s": 1.0,
              "eval_est_s": 50.0, "link": None}
    r = bench.peer_record(step(100.0), {**result, "eval_extrapolated": True})
    assert r["ok"] and r["extrapolated"] and r["job_s"] == 400.0 and r["job_wall_s"] == 100.0
    assert r["extrapolated_figures"] == {"job": True, "epoch": False, "eval": True}
    assert r["read_over_needed"] == 2.0 and r["eval_s"] == 50.0
    r = bench.peer_record(step(100.0), {**result, "extrapolated": False, "link": link(0.3)})
    assert r["job_s"] == 100.0 and r["link"] == link(0.3)
    assert not bench.peer_record(step(1.0, rc=137), None)["ok"]


def test_arguments_take_the_setting_and_its_overrides(capsys):
    args, scale = bench.parse_args(["--setting", "full"])
    assert scale == bench.SETTINGS["full"] and args.memory_limit == int(2.5 * bench.GiB)
    assert scale.feature_bytes > scale.mem_limit and scale.csr_edges >= 100_000_000
    args, scale = bench.parse_args(["--nodes", "500", "--mem-limit", "3G", "--epochs", "4",
                                    "--fanouts", "5,5,5", "--no-cgroup"])
    assert (scale.nodes, scale.mem_limit, scale.epochs) == (500, 3 << 30, 4)
    assert args.fanouts == [5, 5, 5] and args.memory_limit is None
    assert args.peer_settings == ["random"]
    assert bench.parse_args(["--peer-settings", "random,normal"])[0].peer_settings == [
        "random", "normal"]
    for bad, said in ((["--epochs", "0"], "--epochs must be >= 1, got 0"),
                      (["--fanouts", "10,x"], "--fanouts: expected integers"),
                      (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                      (["--peer-settings", "fast"], "--peer-settings: random, normal or both")):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
        assert said in capsys.readouterr().err


def test_disk_need_counts_the_dataset_the_npy_the_packed_epochs_and_the_layers():
    args, full = bench.parse_args(["--setting", "full"])
    need = bench.disk_need(full, args)
    assert 2 * full.feature_bytes + 2 * full.nodes * 128 * 4 * 2 < need < 40e9
    more = bench.disk_need(bench.dataclasses.replace(full, edges_per_epoch=40_960), args)
    assert more > need


def test_epoch_edges_a_distinct_random_subset_or_all_in_order():
    train = np.arange(40).reshape(20, 2)
    rng = np.random.default_rng(0)
    sub = pyg_link_peer.epoch_edges(train, 5, rng)
    assert sub.shape == (2, 5) and len({tuple(e) for e in sub.T.tolist()}) == 5
    assert all((sub[1] - sub[0] == 1).tolist()) and all(sub[0] % 2 == 0)  # rows of train
    assert not np.array_equal(sub.numpy(), pyg_link_peer.epoch_edges(train, 5, rng).numpy())
    np.testing.assert_array_equal(pyg_link_peer.epoch_edges(train, 0, rng).numpy(), train.T)
    np.testing.assert_array_equal(pyg_link_peer.epoch_edges(train, 99, rng).numpy(), train.T)


def test_streamed_scores_equal_the_gathered_ones_across_blocks():
    import torch

    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 4, generator=g)
    edges = torch.randint(0, 50, (9, 2), generator=g)
    neg = torch.randint(0, 50, (9, 6), generator=g)
    neg[0] = 49  # the last block's last row
    evals = {"val": (edges, neg), "test": (edges[:4], neg[:4])}
    want = pyg_link_peer.score(h, evals, 4)
    for block_rows in (1, 7, 50, 64):
        got = pyg_link_peer.score_streamed(h, evals, block_rows)
        for split in evals:
            assert got[split] == pytest.approx(want[split])


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    from pyg_peer import export_features

    root = tmp_path_factory.mktemp("mapped")
    ds = make_link_dataset(root / "ds")
    export_features(ds, root / "f.npy")
    return ds, root / "f.npy"


def run_peer(capsys, ds: Path, *flags) -> dict:
    assert pyg_link_peer.main([str(ds), "--fanouts", "5,5", "--batch-size", "64",
                               "--hidden", "16", "--epochs", "2", "--eval-batch-size", "50",
                               "--edges-per-epoch", "256", *map(str, flags)]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


@needs_pyg
def test_mapped_peer_trains_on_edge_subsets_and_ranks_layerwise(mapped, capsys, tmp_path):
    ds, npy = mapped
    r = run_peer(capsys, ds, "--features", npy, "--scratch", tmp_path,
                 "--negative-mode", "triplet")
    assert not r["extrapolated"] and r["batches_per_epoch"] == 4  # 256 edges of 64
    assert [e["batches"] for e in r["per_epoch"]] == [4, 4]
    assert all(e["needed_bytes"] > 0 for e in r["per_epoch"])
    assert [(x["batches"], x["total_batches"]) for x in r["embed_layers"]] == [(4, 4)] * 2
    assert all(math.isfinite(v) for v in r["link"]["test"].values())
    assert r["link"]["test"]["auc"] > 0.6 and list(tmp_path.iterdir()) == []  # scratch gone
    # the layer-wise embeddings are the in-memory full-graph ones: same seed, same metrics
    in_ram = run_peer(capsys, ds, "--negative-mode", "triplet")["link"]
    for split in ("val", "test"):
        assert in_ram[split] == pytest.approx(r["link"][split])


@needs_pyg
def test_mapped_peer_capped_extrapolates_and_gives_no_metrics(mapped, capsys, tmp_path):
    ds, npy = mapped
    r = run_peer(capsys, ds, "--features", npy, "--scratch", tmp_path,
                 "--max-phase-s", "1e-9", "--epochs", "3")
    assert r["extrapolated"] and r["link"] is None
    (epoch,) = r["per_epoch"]  # the first capped epoch is the last run
    assert epoch["batches"] == 1 and epoch["epoch_est_s"] > epoch["epoch_s"]
    layers = r["embed_layers"]
    assert layers[0]["batches"] == 1 and layers[1]["extrapolated"]
    assert r["job_est_s"] >= r["setup_s"] + 3 * epoch["epoch_est_s"] + r["eval_est_s"] - 1e-9
    assert r["eval_est_s"] > r["eval_s"]


@pytest.mark.slow
@needs_pyg
def test_tiny_run_end_to_end_without_the_cgroup(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert bench.main(["--nodes", "2000", "--avg-degree", "6", "--feature-dim", "16",
                       "--edge-split", "0.9,0.05,0.05", "--eval-negatives", "20",
                       "--edges-per-epoch", "512", "--batch-size", "128", "--epochs", "2",
                       "--hidden", "16", "--no-cgroup", "--workdir", str(tmp_path / "w"),
                       "--out", str(out), "--plots", str(png)]) == 0
    result = json.loads(out.read_text())
    assert [(bench.label(r), r["ok"]) for r in result["runs"]] == [("disktrain", True),
                                                                    ("pyg/random", True)]
    d = result["runs"][0]
    assert len(d["per_epoch"]) == 2 and d["epoch_io_amplification"] >= 1.0
    assert d["eval_s"] > 0 and d["out_of_core_method"] == "evict-only"
    assert result["dataset"]["num_nodes"] == 2000 and result["dataset"]["link_val"] > 0
    ratios = result["summary"]["ratios_peer_over_disktrain"]
    assert all(v is not None and v > 0 for v in ratios.values())
    assert png.exists() and out.with_suffix(".md").read_text().startswith("| |")
    assert "| test mrr |" in capsys.readouterr().out
    assert list((tmp_path / "w").iterdir()) == []  # the work directory removed


def test_failure_names_the_signal_and_the_oom_kills(tmp_path):
    log = tmp_path / "run.err"
    log.write_text("line one\nTraceback: boom\n")
    assert bench.failure(-9, {"cgroup_oom_kills": 1}, log) == (
        "killed by signal 9 (1 OOM kill(s) in the memory cgroup)\nline one\nTraceback: boom")
    assert bench.failure(2, {}, log).startswith("exit 2\nline one")
