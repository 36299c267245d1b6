"""scripts/bench_vs_pyg.py and its helpers: the summary maths, the run records, the
measurement of a child (exit, timeout, leftovers, storage reads), the cgroup and its fallback,
and one tiny run end to end (with the `bench` extra installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import _benchlib
import bench_vs_pyg as bench
import pyg_peer

from disktrain.ingest.synth import SynthConfig


def fake_run(system, setting, regime, job, epoch, *, ok=True, extrapolated=False, acc=0.8):
    return {"system": system, "setting": setting, "regime": regime, "ok": ok,
            "extrapolated": extrapolated, "job_s": job, "epoch_s": epoch, "eval_s": 1.0,
            "prepare_s": 2.0 if system == "disktrain" else None, "test_acc": acc,
            "read_bytes": 100, "io_amplification": 1.0, "peak_rss_bytes": 10,
            "cgroup_max_usage_bytes": 20}


def test_summary_takes_medians_and_the_peers_best_setting_per_metric():
    runs = [
        fake_run("disktrain", "default", "out_of_core", 10.0, 2.0),
        fake_run("disktrain", "default", "out_of_core", 14.0, 3.0),
        fake_run("disktrain", "default", "out_of_core", 99.0, 99.0, ok=False),  # not counted
        fake_run("pyg", "default", "out_of_core", 1000.0, 190.0, extrapolated=True),
        fake_run("pyg", "random-w4", "out_of_core", 130.0, 25.0),
        fake_run("pyg", "random-w0", "out_of_core", 120.0, 30.0),
        fake_run("disktrain", "default", "in_ram", 8.0, 1.0),
        fake_run("pyg", "default", "in_ram", 12.0, 5.0),
    ]
    runs[2]["cgroup_oom_kills"] = 0
    s = bench.summarize(runs)
    ooc, ram = s["out_of_core"], s["in_ram"]
    assert ooc["systems"]["disktrain/default"]["job_s"] == 12.0  # median of the ok runs
    assert ooc["systems"]["disktrain/default"]["ok_runs"] == 2
    assert ooc["systems"]["pyg/default"]["extrapolated"] is True
    assert ooc["failed"] == {"disktrain/default": {"failed_runs": 1, "oom_kills": 0}}
    assert ram["failed"] == {}
    assert ooc["job"]["peer_best"] == "pyg/random-w0"
    assert ooc["job"]["speedup"] == pytest.approx(10.0)
    assert ooc["job"]["goal"] == 10.0 and ooc["job"]["goal_met"] is True
    assert ooc["epoch"]["peer_best"] == "pyg/random-w4"
    assert ooc["epoch"]["speedup"] == pytest.approx(10.0)
    assert ooc["epoch"]["goal"] == 15.0 and ooc["epoch"]["goal_met"] is False
    assert ram["job"]["speedup"] == pytest.approx(1.5) and ram["job"]["goal_met"] is False
    assert ram["epoch"]["speedup"] == pytest.approx(5.0) and ram["epoch"]["goal_met"] is True


def test_summary_without_a_successful_side_has_no_ratio():
    runs = [fake_run("disktrain", "default", "in_ram", 8.0, 1.0, ok=False),
            fake_run("pyg", "default", "in_ram", 12.0, 5.0)]
    s = bench.summarize(runs)
    assert "job" not in s["in_ram"] and s["in_ram"]["systems"]["disktrain/default"]["job_s"] is None


def step(wall, read, rss=100, rc=0):
    return {"returncode": rc, "wall_s": wall, "read_bytes": read, "written_bytes": 5,
            "disk_read_bytes": read + 1, "peak_rss_bytes": rss, "user_s": 1.0, "sys_s": 0.5,
            "stdout": "x"}


def epoch_record(e, needed, evaluated=True):
    r = {"epoch": e, "epoch_time_s": 2.0 + e, "compute_s": 1.5, "wait_s": 0.5,
         "read_s": 1.0, "prepare_wait_s": 0.1, "packed_bytes": {"needed": needed,
                                                                "read": needed + 10}}
    if evaluated:
        r.update(val_acc=0.5, test_acc=0.6 + e / 10, eval_time_s=0.3,
                 eval={"val": "packed", "test": "packed"},
                 eval_packed_bytes={"needed": 50, "read": 60})
    return r


def test_disktrain_record_adds_its_steps_and_the_needed_bytes():
    per_epoch = [epoch_record(0, 1000), epoch_record(1, 1000)]
    r = bench.disktrain_record(step(3.0, 400, rss=7), step(9.0, 2000, rss=9), per_epoch, {})
    assert r["ok"] and r["job_s"] == 12.0 and r["prepare_s"] == 3.0
    assert r["epoch_s"] == 2.5 and r["epoch_times_s"] == [2.0, 3.0]
    assert r["eval_s"] == pytest.approx(0.3)
    assert r["needed_bytes"] == 2 * 1000 + 2 * 50
    assert r["io_amplification"] == pytest.approx(2400 / 2100)
    assert r["loader_read_over_needed"] == pytest.approx(2020 / 2000)
    assert r["peak_rss_bytes"] == 9 and r["disk_read_bytes"] == 2402
    assert r["test_acc"] == pytest.approx(0.7)
    assert "stdout" not in r["steps"]["train"]


def test_disktrain_record_without_byte_figures_or_with_online_eval():
    old = [{k: v for k, v in epoch_record(0, 1000).items()
            if k not in ("packed_bytes", "eval", "eval_packed_bytes", "prepare_wait_s")}]
    r = bench.disktrain_record(step(3.0, 400), step(9.0, 2000), old, {})
    assert r["needed_bytes"] is None and r["io_amplification"] is None
    assert r["loader_read_over_needed"] is None and r["prepare_wait_s"] == [None]
    online = [epoch_record(0, 1000)]
    online[0]["eval"] = {"val": "online", "test": "online"}
    assert bench.disktrain_record(step(1, 1), step(1, 1), online, {})["needed_bytes"] is None


def test_disktrain_record_of_a_failed_prepare():
    r = bench.disktrain_record(step(3.0, 400, rc=2), None, [], None)
    assert not r["ok"] and r["test_acc"] is None and r["epoch_s"] is None
    assert r["steps"]["train"] is None


def peer_result(extrapolated):
    epoch = {"epoch": 0, "batches": 4, "total_batches": 200, "epoch_s": 8.0,
             "epoch_est_s": 400.0 if extrapolated else 8.0, "eval_s": 2.0,
             "eval_est_s": 2.0, "eval_batches": 40, "eval_total_batches": 40,
             "needed_rows": 10, "val_acc": 0.5, "test_acc": 0.5,
             "extrapolated": extrapolated}
    return {"extrapolated": extrapolated, "job_est_s": 2011.0, "setup_s": 1.0,
            "val_acc": None if extrapolated else 0.5, "test_acc": None if extrapolated else 0.5,
            "needed_bytes": 1000, "per_epoch": [epoch]}


def test_peer_record_uses_the_extrapolated_job_when_capped():
    r = bench.peer_record(step(20.0, 3000), peer_result(True))
    assert r["extrapolated"] and r["job_s"] == 2011.0 and r["job_wall_s"] == 20.0
    assert r["epoch_s"] == 400.0 and r["s_per_batch"] == 2.0 and r["batches_measured"] == 4
    assert r["io_amplification"] == 3.0 and r["test_acc"] is None
    full = bench.peer_record(step(20.0, 3000), peer_result(False))
    assert not full["extrapolated"] and full["job_s"] == 20.0 and full["test_acc"] == 0.5
    failed = bench.peer_record(step(20.0, 3000, rc=1), None)
    assert not failed["ok"] and failed["epoch_s"] is None


def test_peer_job_estimate():
    e = {"epoch_est_s": 10.0, "eval_est_s": 2.0}
    assert pyg_peer.job_estimate(1.0, [e] * 5, 5) == pytest.approx(61.0)
    assert pyg_peer.job_estimate(1.0, [e], 5) == pytest.approx(61.0)  # the rest at its pace
    assert pyg_peer.job_estimate(1.0, [], 5) == 1.0


class FakeBatch:
    def __init__(self, n):
        import torch
        self.n_id = torch.arange(n)


@pytest.mark.parametrize("max_batches,max_s,expect", [(0, 0, 10), (3, 0, 3), (0, 1e-9, 1)])
def test_peer_phase_caps_and_extrapolates(max_batches, max_s, expect):
    phase = pyg_peer.Phase([FakeBatch(7) for _ in range(10)], max_batches, max_s)
    assert sum(1 for _ in phase) == expect
    assert phase.batches == expect and phase.needed_rows == 7 * expect
    assert phase.capped == (expect < 10)
    assert phase.estimate_s == pytest.approx(phase.seconds * 10 / expect)


def test_peer_features_map_the_npy(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "f.npy", x)
    for advice in ("normal", "random"):
        t = pyg_peer.open_features(tmp_path / "f.npy", advice)
        assert np.array_equal(t.numpy(), x)
    np.save(tmp_path / "g.npy", np.asfortranarray(x))
    with pytest.raises(ValueError, match="Fortran"):
        pyg_peer.open_features(tmp_path / "g.npy", "normal")


def test_split_fraction_gives_the_exact_split_sizes():
    for n, counts in ((4_000_000, (204_800, 20_000, 20_000)), (400_000, (20_480, 4_096, 4_096)),
                      (3_001, (1_024, 256, 256))):
        fr = [bench.split_fraction(c, n) for c in counts]
        cfg = SynthConfig(out="x", num_nodes=n, train_fraction=fr[0], val_fraction=fr[1],
                          test_fraction=fr[2])
        assert cfg.split_sizes() == counts


def test_parse_bytes():
    assert bench.parse_bytes("2.5G") == int(2.5 * 2**30)
    assert bench.parse_bytes("800MiB") == 800 * 2**20
    assert bench.parse_bytes("4096") == 4096
    with pytest.raises(Exception, match="2.5x"):
        bench.parse_bytes("2.5x")


def test_parsers_of_proc_files():
    cg = "12:cpu,cpuacct:/a\n4:memory:/process_api/abc\n0::/\n"
    assert _benchlib.own_memory_cgroup(cg) == "/process_api/abc"
    assert _benchlib.own_memory_cgroup("0::/\n") is None
    stats = ("   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0\n"
             " 254       0 vda 5000 10 2048 300 7 0 56 9 0 400 700\n")
    assert _benchlib.diskstats_read_bytes(stats, "vda") == 2048 * 512
    assert _benchlib.diskstats_read_bytes(stats, "sdz") is None


def test_cgroup_falls_back_where_it_cannot_be_made(tmp_path, monkeypatch):
    assert _benchlib.MemoryCgroup.create("x", 1 << 30, root=tmp_path / "absent") is None
    assert "cannot create" in _benchlib.MemoryCgroup.unavailable
    own = _benchlib.own_memory_cgroup(Path("/proc/self/cgroup").read_text()) or "/"
    (tmp_path / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    assert _benchlib.MemoryCgroup.create("x", 1 << 30, root=tmp_path) is None  # not cgroupfs
    assert "not a cgroup" in _benchlib.MemoryCgroup.unavailable
    assert list(tmp_path.rglob("x")) == []
    monkeypatch.setattr(_benchlib, "CGROUP_V1", tmp_path / "absent")
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 8192)
    calls = []
    monkeypatch.setattr(_benchlib, "evict", lambda paths: calls.append(list(paths)))
    with bench.Regime("out_of_core", [data], 1 << 30, 0.01, "t") as env:
        assert env.cgroup is None and env.method == "periodic-eviction"
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        info = env.info
    assert len(calls) >= 2 and info["memory_limit_bytes"] is None
    assert info["out_of_core_method"] == "periodic-eviction" and "cannot create" in info[
        "cgroup_note"]
    with bench.Regime("in_ram", [data], 1 << 30, 0.01, "t") as env:
        assert env.method == "none" and env.evictor is None


def test_cgroup_limits_a_child_and_is_removed(tmp_path):
    group = _benchlib.MemoryCgroup.create(f"bench-test-{os.getpid()}", 256 << 20)
    if group is None:
        pytest.skip(f"no memory cgroup here: {_benchlib.MemoryCgroup.unavailable}")
    try:
        assert int((group.path / "memory.limit_in_bytes").read_text()) == 256 << 20
        rec = _benchlib.run_measured(
            [sys.executable, "-c", "print(open('/proc/self/cgroup').read())"],
            cgroup=group, stderr_path=tmp_path / "err")
        assert rec["returncode"] == 0 and group.path.name in rec["stdout"]
        assert rec["cgroup_max_usage_bytes"] > 0 and rec["cgroup_oom_kills"] == 0
    finally:
        group.remove()
    assert not group.path.exists()


def test_run_measured_reports_exit_output_and_kills_leftovers(tmp_path):
    code = ("import subprocess, sys; p = subprocess.Popen(['sleep', '60']); "
            "print(p.pid); sys.exit(3)")
    rec = _benchlib.run_measured([sys.executable, "-c", code], stderr_path=tmp_path / "err")
    assert rec["returncode"] == 3 and not rec["timed_out"] and rec["wall_s"] > 0
    orphan = int(rec["stdout"].split()[0])
    deadline = time.monotonic() + 5
    while not gone(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(orphan)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init to reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_run_measured_times_out(tmp_path):
    rec = _benchlib.run_measured(["sleep", "30"], stderr_path=tmp_path / "err", timeout_s=0.3)
    assert rec["timed_out"] and rec["returncode"] == -9 and rec["wall_s"] < 10


def test_run_measured_counts_a_grandchilds_storage_reads(uncached_tmp, tmp_path):
    if _benchlib.device_of(uncached_tmp) is None:
        pytest.skip(f"{uncached_tmp} is not on a block device")
    f = uncached_tmp / "blob"
    f.write_bytes(os.urandom(4 << 20))
    _benchlib.evict([f])
    inner = f"open({str(f)!r}, 'rb').read()"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {inner!r}])"
    rec = _benchlib.run_measured([sys.executable, "-c", code], stderr_path=tmp_path / "err")
    assert rec["returncode"] == 0 and rec["read_bytes"] >= 4 << 20
    _benchlib.warm([f])
    rec = _benchlib.run_measured([sys.executable, "-c", code], stderr_path=tmp_path / "err")
    assert rec["read_bytes"] < 1 << 20  # served by the page cache


@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None
                    or importlib.util.find_spec("matplotlib") is None,
                    reason="the bench extra (torch_geometric, matplotlib) is not installed")
@pytest.mark.slow
def test_end_to_end_tiny(tmp_path):
    out, plots = tmp_path / "r.json", tmp_path / "plots"
    rc = bench.main(["--nodes", "3000", "--feature-dim", "16", "--splits", "1024,256,256",
                     "--epochs", "1", "--regimes", "in_ram", "--peer-settings", "default",
                     "--workdir", str(tmp_path), "--out", str(out), "--plots", str(plots)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert [(r["system"], r["ok"]) for r in result["runs"]] == [("disktrain", True),
                                                                 ("pyg", True)]
    for r in result["runs"]:
        assert r["job_s"] > 0 and len(r["epoch_times_s"]) == 1 and 0 <= r["test_acc"] <= 1
    entry = result["summary"]["in_ram"]
    assert entry["job"]["speedup"] > 0 and entry["epoch"]["goal"] == 4.0
    assert sorted(p.name for p in plots.iterdir()) == [
        "disktrain_timeline.png", "epoch_time.png", "job_time.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("bench-vs-pyg")] == []


def test_summary_gives_each_disktrain_variant_its_speedups():
    runs = [fake_run("disktrain", "plain", "in_ram", 20.0, 4.0),
            fake_run("disktrain", "aggregated", "in_ram", 10.0, 2.0),
            fake_run("pyg", "random-w0", "in_ram", 40.0, 8.0)]
    ram = bench.summarize(runs)["in_ram"]
    assert ram["job"]["speedup"] == pytest.approx(2.0)  # the first variant at the top
    assert ram["variants"]["plain"]["job"]["speedup"] == pytest.approx(2.0)
    assert ram["variants"]["aggregated"]["job"]["speedup"] == pytest.approx(4.0)
    assert ram["variants"]["aggregated"]["epoch"]["speedup"] == pytest.approx(4.0)
    assert bench.parse_args(["--variants", "a=;b=--aggregate-first-hop mean"])[0].variants == \
        [("a", ""), ("b", "--aggregate-first-hop mean")]
