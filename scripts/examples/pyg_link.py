"""Link prediction with PyG's GraphSAGE on disktrain's edge batches.

    python scripts/examples/pyg_link.py [--cora ../shared/datasets/cora] [--epochs 20]

Cora's edges are ingested with 5% / 10% of them held out for validation and test (both
directions, ``disktrain ingest --edge-split``), ``disktrain prepare --task link`` samples
edge batches with one negative per positive, and ``torch_geometric.nn.GraphSAGE`` with a
dot-product decoder trains on ``disktrain.Loader``'s batches, which carry
``edge_label_index`` and ``edge_label`` as PyG's ``LinkNeighborLoader`` does. The test edges
are then ranked against their fixed negatives on full-graph embeddings. Prints one JSON line
(MRR, Hits@K, AUC). Needs torch_geometric (``pip install 'disktrain[bench]'``). Works in a
temporary directory, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.nn import GraphSAGE

import disktrain
from disktrain.storage.dataset import Dataset
from disktrain.train.linkmetrics import link_metrics

CORA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cora"


def disktrain_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "disktrain", *args, "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)


@torch.no_grad()
def test_metrics(model: torch.nn.Module, dataset: Dataset) -> dict:
    """The test edges ranked against their negatives on full-graph embeddings (the graph is
    the training edges only: the held-out ones are not in it)."""
    model.eval()
    indptr, indices = np.asarray(dataset.indptr), np.asarray(dataset.indices)
    dst = np.repeat(np.arange(dataset.num_nodes), np.diff(indptr))
    edge_index = torch.from_numpy(np.stack((indices.astype(np.int64), dst)))
    x = torch.from_numpy(dataset.feature_rows(0, dataset.num_nodes)).float()
    h = model(x, edge_index)
    edges = torch.from_numpy(dataset.link_edges("test"))
    negatives = torch.from_numpy(dataset.link_negatives("test"))
    pos = (h[edges[:, 0]] * h[edges[:, 1]]).sum(-1)
    neg = (h[edges[:, 0]].unsqueeze(1) * h[negatives]).sum(-1)
    return link_metrics(pos, neg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cora", type=Path, default=CORA, help="Cora's files (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=20, help="(default: %(default)s)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="pyg-link-") as work:
        path = Path(work) / "cora"
        disktrain_cli("ingest", "--edges", str(args.cora / "edges.parquet"), "--out", str(path),
                      "--features", str(args.cora / "features.npy"), "--undirected", "--dedup",
                      "--edge-split", "0.85,0.05,0.10")
        disktrain_cli("prepare", str(path), "--task", "link", "--fanouts", "10,10",
                      "--batch-size", "512", "--num-negatives", "1")
        train = disktrain.Loader(path, split="train", epochs=args.epochs)
        model = GraphSAGE(in_channels=train.dataset.meta.feature_dim, hidden_channels=128,
                          num_layers=2, dropout=0.5)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        for epoch in range(args.epochs):
            train.set_epoch(epoch)
            model.train()
            for batch in train:
                optimizer.zero_grad()
                h = model(batch.x, batch.edge_index)
                src, dst = batch.edge_label_index
                score = (h[src] * h[dst]).sum(-1)
                F.binary_cross_entropy_with_logits(score, batch.edge_label).backward()
                optimizer.step()
        train.close()
        metrics = test_metrics(model, Dataset(path))
    print(json.dumps({"model": "torch_geometric.nn.GraphSAGE", "decoder": "dot",
                      **{k: round(v, 4) for k, v in metrics.items()}}))


if __name__ == "__main__":
    main()
