"""PyG's GraphSAGE on Cora, fed by disktrain's loader.

    python scripts/examples/pyg_sage.py [--cora ../shared/datasets/cora] [--seeds 5]

Cora's files become a ``torch_geometric.data.Data``, ``disktrain.from_pyg`` writes it as a
dataset, ``disktrain prepare`` pre-samples full 2-hop neighborhoods (one batch of the 140
training nodes), and ``torch_geometric.nn.GraphSAGE`` trains on ``disktrain.Loader``'s
batches for 200 epochs per seed. Prints one JSON line: the test accuracy of each seed and
their mean. Needs torch_geometric (``pip install 'disktrain[bench]'``). Works in a temporary
directory, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.nn import GraphSAGE

import disktrain

CORA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cora"


def cora_data(cora: Path) -> Data:
    """Cora's plain files (see its README) as a PyG ``Data`` with the public split's masks."""
    edges = pq.read_table(cora / "edges.parquet")
    data = Data(x=torch.from_numpy(np.load(cora / "features.npy")),
                edge_index=torch.from_numpy(np.stack([edges["src"].to_numpy(),
                                                      edges["dst"].to_numpy()])),
                y=torch.from_numpy(np.load(cora / "labels.npy")))
    for split in ("train", "val", "test"):
        mask = torch.zeros(data.num_nodes, dtype=torch.bool)
        mask[torch.from_numpy(np.load(cora / f"{split}_idx.npy"))] = True
        data[f"{split}_mask"] = mask
    return data


def accuracy(model: torch.nn.Module, loader: disktrain.Loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            out = model(batch.x, batch.edge_index)[:batch.batch_size]
            correct += int((out.argmax(1) == batch.y[:batch.batch_size]).sum())
            total += batch.batch_size
    return correct / total


def train_one(dataset: Path, seed: int, epochs: int, num_classes: int) -> float:
    torch.manual_seed(seed)
    # Full neighborhoods: every epoch samples the same batch, so reuse it ("cycle").
    train = disktrain.Loader(dataset, split="train", plan_reuse="cycle", seed=seed)
    test = disktrain.Loader(dataset, split="test", share=train)
    model = GraphSAGE(in_channels=train.dataset.meta.feature_dim, hidden_channels=16,
                      num_layers=2, out_channels=num_classes, dropout=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-3)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        model.train()
        for batch in train:
            optimizer.zero_grad()
            x = F.dropout(batch.x, p=0.5, training=True)
            out = model(x, batch.edge_index)[:batch.batch_size]
            F.cross_entropy(out, batch.y[:batch.batch_size]).backward()
            optimizer.step()
    return accuracy(model, test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cora", type=Path, default=CORA, help="Cora's files (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=200, help="(default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="pyg-sage-") as work:
        dataset = Path(work) / "cora"
        data = cora_data(args.cora)
        disktrain.from_pyg(data, dataset, progress=False)
        subprocess.run([sys.executable, "-m", "disktrain", "prepare", str(dataset),
                        "--fanouts=-1,-1", "--batch-size", "140", "--eval-batch-size", "1000",
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        num_classes = int(data.y.max()) + 1
        accs = [train_one(dataset, seed, args.epochs, num_classes) for seed in range(args.seeds)]
    print(json.dumps({"model": "torch_geometric.nn.GraphSAGE", "test_acc": accs,
                      "mean_test_acc": round(float(np.mean(accs)), 4),
                      "std": round(float(np.std(accs)), 4)}))


if __name__ == "__main__":
    main()
