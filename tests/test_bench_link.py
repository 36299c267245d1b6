"""scripts/pyg_link_peer.py: PyG's LinkNeighborLoader training on a tiny dataset split for link
prediction, evaluated with finite metrics (with the `bench` extra installed)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import zarr

from disktrain.ingest.csr import CSRConfig, build_csr
from disktrain.storage.atomic import atomic_dir
from disktrain.storage.dataset import DatasetMeta, create_features, write_small_array

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None,
                                reason="needs the `bench` extra (torch-geometric)")


def make_link_dataset(path: Path, num_nodes: int = 200, num_edges: int = 2000, dim: int = 8,
                      eval_negatives: int = 20, seed: int = 0) -> Path:
    """10% of random edges held out (half val, half test, ``eval_negatives`` random
    destinations each), the rest the CSR and ``link_train``; 4 planted groups that link
    mostly within themselves, visible in the features."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, num_nodes)
    src = rng.integers(0, num_nodes, num_edges)
    members = [np.flatnonzero(group == k) for k in range(4)]
    same = np.array([rng.choice(members[group[v]]) for v in src])
    dst = np.where(rng.random(num_edges) < 0.8, same, rng.integers(0, num_nodes, num_edges))
    pairs = np.unique(np.stack((src, dst), 1)[src != dst], axis=0)
    held = rng.random(len(pairs)) < 0.1
    train, held = pairs[~held], pairs[held]
    with atomic_dir(path) as tmp:
        g = zarr.open_group(tmp, mode="w")
        e = build_csr(g, lambda: [(train[:, 0], train[:, 1])], num_nodes, len(train),
                      CSRConfig(progress=False))
        create_features(g, num_nodes, dim, np.float32)[...] = (
            np.eye(4, dim)[group] + 0.3 * rng.standard_normal((num_nodes, dim)))
        indptr, indices = g["indptr"][:], g["indices"][:]
        rows = np.repeat(np.arange(num_nodes), np.diff(indptr))
        write_small_array(g, "link_train", np.stack((indices, rows), 1).astype(np.int32))
        for name, part in (("link_val", held[::2]), ("link_test", held[1::2])):
            write_small_array(g, name, part.astype(np.int64))
            write_small_array(g, f"{name}_neg",
                              rng.integers(0, num_nodes, (len(part), eval_negatives)))
        g.attrs.update(asdict(DatasetMeta(num_nodes=num_nodes, num_edges=e, feature_dim=dim,
                                          num_classes=0)))
    return path


@pytest.fixture(scope="module")
def link_ds(tmp_path_factory):
    return make_link_dataset(tmp_path_factory.mktemp("link") / "ds")


def run_peer(ds: Path, capsys, *flags: str) -> dict:
    from pyg_link_peer import main as peer

    assert peer([str(ds), "--fanouts", "5,5", "--batch-size", "256", "--hidden", "16",
                 "--epochs", "3", *flags]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


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


def test_peer_refuses_zero_negatives(link_ds, capsys):
    from pyg_link_peer import main as peer

    with pytest.raises(SystemExit):
        peer([str(link_ds), "--num-negatives", "0"])
    assert "--num-negatives must be >= 1, got 0" in capsys.readouterr().err


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
