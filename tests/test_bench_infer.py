"""scripts/bench_infer.py: attributing the infer child's time and bytes to its layers, and one
tiny run end to end with the PyG peer's outputs equal to `disktrain infer`'s (with the `bench`
extra installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_infer as bench

FIELDS = ("seconds", "read_bytes", "write_bytes", "min_read_bytes", "min_write_bytes",
          "peak_rss_sampled_bytes")


def io(read, write):
    return {"read_bytes": read, "write_bytes": write, "cancelled_write_bytes": 0}


def test_phases_attribute_the_samples_between_the_layers_and_the_totals_to_finish(tmp_path):
    watch = bench.LayerWatch(tmp_path / "emb", 3, 0.5)
    watch.marks += [("startup", 1.0, io(10, 0)), ("layer 0", 3.0, io(110, 50)),
                    ("layer 1", 6.0, io(410, 150)), ("layer 2", 6.0, io(410, 150))]
    phases = watch.phases({"read_bytes": 500, "written_bytes": 160, "wall_s": 7.5}, ok=True)
    assert list(phases) == ["startup", "layer 0", "layer 1", "layer 2", "finish"]
    assert (phases["layer 0"]["seconds"], phases["layer 0"]["read_bytes"],
            phases["layer 0"]["write_bytes"]) == (2.0, 100, 50)
    assert (phases["layer 1"]["seconds"], phases["layer 1"]["read_bytes"]) == (3.0, 300)
    assert phases["layer 2"]["seconds"] == 0  # done within the same sample: merged
    assert (phases["finish"]["seconds"], phases["finish"]["read_bytes"],
            phases["finish"]["write_bytes"]) == (1.5, 90, 10)
    sizes = {"num_nodes": 10, "feature_dim": 4, "num_classes": 2, "feature_itemsize": 2,
             "csr_bytes": 20}
    table = bench.layer_table(phases, bench.minimum_bytes(sizes, hidden=8))
    assert table["layer 0"]["min_read_bytes"] == 20 + 10 * 4 * 2
    assert table["layer 1"]["min_read_bytes"] == 20 + 10 * 8 * 4
    assert table["layer 1"]["min_write_bytes"] == 10 * 8 * 4
    assert table["layer 1"]["moved_over_min"] == (300 + 100) / (340 + 320)
    assert table["layer 2"]["merged_into_previous"] and "moved_over_min" not in table["layer 2"]


def test_a_killed_run_ends_in_the_layer_it_was_computing(tmp_path):
    watch = bench.LayerWatch(tmp_path / "emb", 3, 0.5)
    watch.marks += [("startup", 1.0, io(10, 0)), ("layer 0", 3.0, io(110, 50))]
    watch.done = 0
    phases = watch.phases({"read_bytes": 200, "written_bytes": 60, "wall_s": 4.0}, ok=False)
    assert list(phases) == ["startup", "layer 0", "layer 1 (unfinished)"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None,
                    reason="needs the `bench` extra (torch-geometric)")
def test_end_to_end_tiny_and_pyg_equals_disktrain_infer(tmp_path, capsys):
    from pyg_infer_peer import main as peer

    from disktrain.infer import infer

    out, png, pyg_out = tmp_path / "r.json", tmp_path / "layers.png", tmp_path / "pyg.npy"
    rc = bench.main(["--scale", "10", "--train-fraction", "0.3", "--val-fraction", "0.05",
                     "--memory-limit", "2G", "--sample-interval", "0.05",
                     "--pyg-batch-size", "128", "--pyg-save", str(pyg_out),
                     "--workdir", str(tmp_path), "--keep", "--out", str(out),
                     "--plot", str(png)])
    assert rc == 0 and png.stat().st_size > 0
    result = json.loads(out.read_text())
    assert list(result["steps"]) == ["synth", "prepare", "train", "infer", "evaluate", "pyg"]
    assert all(s["ok"] and 0 < s["peak_rss_bytes"] <= 8 << 30 for s in result["steps"].values())
    assert result["sizes"]["num_nodes"] == 1024
    layers = result["layers"]
    assert list(layers) == ["startup", "layer 0", "layer 1", "layer 2", "finish"]
    for lay in range(3):
        assert all(k in layers[f"layer {lay}"] for k in FIELDS)
    assert sum(r["seconds"] for r in layers.values()) == pytest.approx(
        result["steps"]["infer"]["wall_s"])
    assert sum(r["read_bytes"] for r in layers.values()) == result["steps"]["infer"]["read_bytes"]
    s = result["summary"]
    assert s["failed"] == {} and s["disktrain"]["peak_rss_within_8gib"]
    assert s["pyg"]["extrapolated"] is False and s["pyg_over_disktrain"]["whole"] > 0
    ds = next(tmp_path.glob("bench-infer-*")) / "ds"
    ours = infer(dataset=ds, checkpoint=ds / "checkpoints", out=tmp_path / "ours",
                 format="npy", progress=False)
    np.testing.assert_allclose(np.load(pyg_out), np.load(ours / "embeddings.npy"), atol=1e-4)
    # the peer's loop is PyG's BasicGNN.inference; capped, it extrapolates every layer
    features = ds.parent / "features.npy"
    assert peer([str(ds), "--features", str(features), "--checkpoint", str(ds / "checkpoints"),
                 "--batch-size", "128", "--check-api"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["api_max_abs_diff"] < 1e-5
    assert peer([str(ds), "--features", str(features), "--checkpoint", str(ds / "checkpoints"),
                 "--batch-size", "128", "--max-s", "1e-9"]) == 0
    capped = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert capped["extrapolated"] and [r["extrapolated"] for r in capped["layers"]] == [True] * 3
    assert capped["layers"][0]["batches"] == 1 and capped["layers"][0]["total_batches"] == 8
