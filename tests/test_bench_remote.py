"""scripts/bench_remote.py: the chunk layout's bytes, the summary's goals, and one tiny run end
to end against moto's S3 server (with the `dev` extra installed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_remote as bench


def test_chunk_layout_pads_each_batch_to_chunks_of_a_block_more():
    # rows of 512 B, chunks of 8 rows (4 KiB data + 4 B crc: 8 KiB apart)
    got = bench.chunk_layout(np.array([1, 8, 9, 16]), 512, 4096)
    assert (got["chunk_rows"], got["fetched_bytes"]) == (8, (1 + 1 + 2 + 2) * 8192)
    assert got["needed_bytes"] == 6 * 4096 and got["real_bytes"] == 34 * 512
    assert got["fetched_over_needed"] == 2.0
    # 7 rows of 512 B a chunk: 3,588 B with the crc, one block apart
    got = bench.chunk_layout(np.array([7, 7]), 512, 4000)
    assert got["fetched_bytes"] == 2 * 4096 and got["fetched_over_real"] == 4096 / 3584


def epochs(seconds: float, requests=1.0) -> dict:
    return {k: {"seconds": seconds, "batches": 10, "fetched_bytes": 1050, "requests": 10,
                "requests_per_batch": requests, "http_requests": 10,
                "http_requests_per_batch": 1.0} for k in bench.PASSES}


def test_summary_ratios_and_goals_at_the_chosen_window():
    runs = [{"setting": "local", "window": None, "epochs": epochs(1.0)},
            {"setting": "s3", "window": 1, "epochs": epochs(2.0)},
            {"setting": "s3", "window": 8, "epochs": epochs(2.0, 2.5)},
            {"setting": "s3+lat", "window": 1, "epochs": epochs(8.0)},
            {"setting": "s3+lat", "window": 8, "epochs": epochs(2.2)}]
    s = bench.summarize(runs, {"needed_bytes": 1000, "real_bytes": 500}, chosen=8)
    assert [r["window"] for r in s["by_window"]] == [1, 8]
    assert s["by_window"][0]["warm"]["latency_ratio"] == 4.0
    assert s["by_window"][1]["train"]["s3_over_local"] == 2.0
    assert s["goals"]["latency_ratio"]["value"] == pytest.approx(1.1)
    assert s["goals"]["latency_ratio"]["met"] and s["smallest_window_hiding_latency"] == 8
    assert s["goals"]["fetched_over_needed"] == {"value": 1.05, "goal": 1.05, "met": True}
    assert s["goals"]["requests_per_batch"] == {"value": 2.5, "goal": 2.0, "met": False}
    assert s["reads"][0]["fetched_over_real"] == 2.1


def test_arguments(capsys):
    args = bench.parse_args(["--windows", "8,1,4,4", "--chunk-bytes", "64K"])
    assert args.windows == [1, 4, 8] and args.chunk_bytes == 64 << 10
    for bad, said in ((["--windows", "0,4"], "--windows and --repeats must be >= 1"),
                      (["--repeats", "0"], "--repeats must be >= 1"),
                      (["--windows", "a"], "--windows: expected integers")):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
        assert said in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is not installed")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert bench.main(["--setting", "tiny", "--windows", "1,4", "--latency-ms", "20",
                       "--repeats", "2",
                       "--workdir", str(tmp_path / "w"), "--out", str(out),
                       "--plot", str(png)]) == 0
    r = json.loads(out.read_text())
    need = r["needed"]
    assert need["batches"] >= 10 and need["needed_bytes"] >= need["real_bytes"] > 0
    assert [(x["setting"], x["window"]) for x in r["runs"]] == [
        ("local", None), ("s3", 1), ("s3+lat", 1), ("s3", 4), ("s3+lat", 4)]
    for run in r["runs"][1:]:
        for e in run["epochs"].values():
            assert e["batches"] == need["batches"] and e["seconds"] > 0
            # what the layout says an epoch fetches, one GET per batch (one shard file)
            assert e["fetched_bytes"] == need["layout"]["fetched_bytes"]
            assert e["requests_per_batch"] == 1.0
            assert e["http_requests"] >= e["requests"]
    s = r["summary"]
    assert s["window"] == 4 and 1.0 <= s["goals"]["fetched_over_needed"]["value"] < 1.05
    assert all(x["fetched_over_real"] > x["fetched_over_needed"] for x in s["reads"])
    slow, plain = (r["runs"][2]["epochs"]["warm"]["seconds"],
                   r["runs"][1]["epochs"]["warm"]["seconds"])
    assert len(r["runs"][2]["epochs"]["warm"]["seconds_all"]) == 2
    assert slow >= plain and slow >= need["batches"] * 0.02  # one request at a time, 20 ms each
    assert png.stat().st_size > 0
    assert list((tmp_path / "w").iterdir()) == []  # the data, spill and stages removed
