"""scripts/bench_typed.py: its summary of the steps, and one tiny run end to end (every step
in a memory cgroup; with the `bench` extra installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import _benchlib
import bench_typed as bench


def fake_step(wall, rss_gib=1.0, rc=0, result=None, **extra):
    return {"returncode": rc, "ok": rc == 0, "timed_out": False, "wall_s": wall,
            "peak_rss_gib": rss_gib, "peak_rss_within_8gib": rss_gib <= 8,
            "cgroup_oom_kills": 1 if rc == -9 else 0, "result": result, **extra}


def test_summary_gives_the_whole_job_the_peaks_and_pyg_over_disktrain():
    steps = {"synth": fake_step(100.0), "prepare": fake_step(50.0, 7.5),
             "train": fake_step(80.0, 4.0, result={"epoch_time_s": 60.0, "eval_time_s": 10.0,
                                                   "test_acc": 0.7}),
             "pyg": fake_step(700.0, 9.0, result={
                 "setup_s": 30.0, "job_est_s": 1300.0, "extrapolated": True,
                 "per_epoch": [{"epoch_est_s": 1200.0, "eval_est_s": 70.0, "batches": 5,
                                "total_batches": 100}]})}
    s = bench.summarize(steps)
    assert s["disktrain"]["whole_job_s"] == 230.0 and s["disktrain"]["after_synth_s"] == 130.0
    assert s["pyg"]["job_s"] == 1300.0  # capped: the estimate, not the child's wall
    assert s["pyg_over_disktrain"] == {"epoch": 20.0, "eval": 7.0, "job_after_synth": 10.0}
    assert s["all_within_8gib"] is False and s["peak_rss_gib"]["prepare"] == 7.5
    assert s["failed"] == {}


def test_summary_records_a_failed_step_without_a_ratio():
    steps = {"synth": fake_step(100.0), "prepare": fake_step(50.0),
             "train": fake_step(80.0, result={"epoch_time_s": 60.0, "eval_time_s": 10.0}),
             "pyg": fake_step(20.0, 8.0, rc=-9)}
    s = bench.summarize(steps)
    assert s["failed"] == {"pyg": {"exit_status": -9, "timed_out": False, "oom_kills": 1}}
    assert "pyg" not in s and "pyg_over_disktrain" not in s
    assert s["all_within_8gib"] is True and s["disktrain"]["epoch_s"] == 60.0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None,
                    reason="needs the `bench` extra (torch-geometric)")
def test_end_to_end_tiny(tmp_path):
    group = _benchlib.MemoryCgroup.create(f"test-bench-typed-{tmp_path.name}", 1 << 30)
    if group is None:
        pytest.skip(f"no memory cgroup here: {_benchlib.MemoryCgroup.unavailable}")
    group.remove()
    out, png = tmp_path / "r.json", tmp_path / "steps.png"
    rc = bench.main(["--papers", "3000", "--feature-dim", "16", "--memory-limit", "2G",
                     "--train-fraction", "0.7", "--val-fraction", "0.05",
                     "--test-fraction", "0.05", "--hidden", "32", "--workdir", str(tmp_path),
                     "--pyg-max-phase-s", "0.001",  # PyG's epoch: 1 of 3 batches, extrapolated
                     "--out", str(out), "--plot", str(png)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert list(result["steps"]) == ["synth", "prepare", "train", "pyg"]
    for step in result["steps"].values():
        assert step["ok"] and step["out_of_core_method"] == "cgroup-v1"
        assert step["memory_limit_bytes"] == 2 << 30 and step["cgroup_oom_kills"] == 0
        assert 0 < step["peak_rss_bytes"] <= 8 << 30 and step["wall_s"] > 0
    sizes = result["sizes"]
    assert sizes["stored_edges"] > 100_000 and sizes["splits"]["train"] == 2100
    assert sizes["features_exceed_memory_limit"] is False  # tiny: the check, not the goal
    assert sizes["feature_bytes"] == sizes["num_nodes"] * 16 * 2
    assert result["planned"]["node_counts"] == {t: v["num_nodes"]
                                                for t, v in sizes["node_types"].items()}
    s = result["summary"]
    assert s["all_within_8gib"] and s["failed"] == {}
    assert s["pyg"]["extrapolated"] is True and s["pyg"]["test_acc"] is None
    assert (s["pyg"]["batches"], s["pyg"]["total_batches"]) == (1, 3)
    assert s["pyg"]["job_s"] == result["steps"]["pyg"]["result"]["job_est_s"]
    assert 0 <= s["disktrain"]["test_acc"] <= 1
    assert s["pyg_over_disktrain"]["epoch"] > 0
    assert png.stat().st_size > 0
    assert not Path(result["workdir"]).exists()  # everything written deleted
