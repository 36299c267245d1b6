"""scripts/pyg_link_peer.py: PyG's LinkNeighborLoader training on a tiny dataset split for link
prediction, evaluated with finite metrics (with the `bench` extra installed); how
scripts/bench_link.py summarizes the seeds of both systems."""

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
import bench_link as bench

needs_pyg = pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None,
                               reason="needs the `bench` extra (torch-geometric)")


def metrics(auc: float, mrr: float) -> dict:
    return {"val": {"auc": auc + 0.01, "mrr": mrr}, "test": {"auc": auc, "mrr": mrr}}


def test_summary_means_stds_and_the_goal_on_the_test_means_per_peer():
    runs = {"disktrain": [metrics(0.905, 0.30), metrics(0.925, 0.34)],
            "disktrain-pairs": [metrics(0.905, 0.30), metrics(0.925, 0.34)],
            "pyg": [metrics(0.91, 0.36), metrics(0.93, 0.36)],
            "pyg-triplet": [metrics(0.95, 0.33)]}
    s = bench.summarize(runs)
    auc = s["test"]["auc"]
    assert auc["disktrain"]["mean"] == pytest.approx(0.915)
    assert auc["disktrain"]["std"] == pytest.approx(np.std([0.905, 0.925], ddof=1))
    assert auc["disktrain"]["n"] == 2 and auc["pyg"]["std"] == pytest.approx(0.01 * 2 ** 0.5)
    assert auc["pyg-triplet"] == {"mean": 0.95, "n": 1, "std": 0.0}
    assert auc["diff_vs_pyg"] == pytest.approx(-0.005)
    assert auc["diff_vs_pyg-triplet"] == pytest.approx(-0.035)
    assert s["test"]["mrr"]["diff_vs_pyg"] == pytest.approx(-0.04)
    assert s["test"]["mrr"]["diff_vs_pyg-triplet"] == pytest.approx(-0.01)
    assert s["val"]["auc"]["diff_vs_pyg"] == pytest.approx(-0.005)
    assert bench.goal(s) == {"pyg": {"auc": True, "mrr": False},  # 0.5 point below; 4
                             "pyg-triplet": {"auc": False, "mrr": True}}  # 3.5; 1 (rounded)
    text = bench.table({"cora": {"summary": s}}, bench.SYSTEMS)
    assert "-0.0400" in text and "-0.0350" in text


def test_summary_without_the_other_systems_runs_judges_nothing():
    s = bench.summarize({"disktrain-pairs": [], "pyg": [metrics(0.9, 0.3)]})
    assert set(s["test"]["auc"]) == {"pyg"} and s["test"]["auc"]["pyg"]["std"] == 0.0
    assert bench.goal(s)["pyg"] == {"auc": None, "mrr": None}
    assert "-" in bench.table({"synth": {"summary": s}},
                              ["disktrain-pairs", "pyg"]).splitlines()[-1]


@pytest.fixture(scope="module")
def link_ds(tmp_path_factory):
    return make_link_dataset(tmp_path_factory.mktemp("link") / "ds")


def run_peer(ds: Path, capsys, *flags: str) -> dict:
    from pyg_link_peer import main as peer

    assert peer([str(ds), "--fanouts", "5,5", "--batch-size", "256", "--hidden", "16",
                 "--epochs", "3", *flags]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


@needs_pyg
@pytest.mark.parametrize("flags", [(), ("--negative-mode", "triplet", "--num-negatives", "3",
                                        "--negative-sampling", "degree")])
def test_peer_trains_and_ranks_the_held_out_edges_with_finite_metrics(link_ds, capsys, flags):
    result = run_peer(link_ds, capsys, *flags)
    assert [e["epoch"] for e in result["per_epoch"]] == [0, 1, 2]
    assert all(math.isfinite(e["loss"]) and e["epoch_s"] > 0 for e in result["per_epoch"])
    assert result["batches_per_epoch"] == -(-result["train_edges"] // 256)
    assert result["graph_edges"] == result["train_edges"]  # the CSR's edges, once each
    for split in ("val", "test"):
        m = result["link"][split]
        assert set(m) == {"mrr", "hits@10", "hits@50", "hits@100", "auc"}
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in m.values())
    # the planted groups make held-out edges rank above random destinations
    assert result["link"]["test"]["auc"] > 0.6


@needs_pyg
def test_peer_refuses_zero_negatives(link_ds, capsys):
    from pyg_link_peer import main as peer

    with pytest.raises(SystemExit):
        peer([str(link_ds), "--num-negatives", "0"])
    assert "--num-negatives must be >= 1, got 0" in capsys.readouterr().err


@needs_pyg
def test_peer_model_is_disktrains_sage_on_the_full_graph(link_ds):
    """The peer's GraphSAGE, its weights copied into disktrain's SAGE, gives the same
    embeddings: the same layers, widths and activation (eval mode: no dropout)."""
    import torch
    from pyg_link_peer import load
    from torch_geometric.nn import GraphSAGE

    from disktrain.loader.block import Block
    from disktrain.models.gnn import GNNConfig, build_model

    data, _, _ = load(link_ds)
    theirs = GraphSAGE(data.num_features, 16, num_layers=2, out_channels=16).eval()
    ours = build_model(GNNConfig(in_dim=data.num_features, hidden=16, num_classes=16,
                                 num_layers=2)).eval()
    with torch.no_grad():
        for conv, pyg in zip(ours.convs, theirs.convs, strict=True):
            conv.lin_neigh.weight.copy_(pyg.lin_l.weight)  # PyG: lin_l neighbours + bias,
            conv.lin_self.bias.copy_(pyg.lin_l.bias)  # lin_r the root without
            conv.lin_self.weight.copy_(pyg.lin_r.weight)
        n = data.num_nodes
        block = Block(data.edge_index[0], data.edge_index[1], n, n)
        np.testing.assert_allclose(ours(data.x, [block, block]).numpy(),
                                   theirs(data.x, data.edge_index).numpy(), atol=1e-5)


@pytest.mark.slow
@needs_pyg
def test_accuracy_driver_runs_the_peer_per_seed_and_writes_the_summary(link_ds, tmp_path,
                                                                        capsys):
    out = tmp_path / "acc.json"
    assert bench.main(["--accuracy", "--graphs", "synth", "--prebuilt", f"synth={link_ds}",
                       "--systems", "pyg", "--seeds", "2",
                       "--fanouts", "5,5", "--batch-size", "256", "--hidden", "16",
                       "--epochs", "2", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rec = result["graphs"]["synth"]
    assert rec["dataset"]["eval_negatives"] == 20 and len(rec["runs"]["pyg"]) == 2
    assert list(result["steps"]) == ["synth/seed0/pyg", "synth/seed1/pyg"]
    assert "--seed" in result["steps"]["synth/seed1/pyg"]["argv"]
    assert rec["summary"]["test"]["mrr"]["pyg"]["n"] == 2
    assert rec["goal_within_1_point"]["pyg"] == {"auc": None, "mrr": None}
    assert "synth  test  auc" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["acc.json"]  # the work dir removed
