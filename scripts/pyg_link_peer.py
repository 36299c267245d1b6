"""The peer of scripts/bench_link.py: link prediction trained with PyTorch Geometric's
``LinkNeighborLoader``, evaluated as ``disktrain train --task link`` evaluates.

Usage: python scripts/pyg_link_peer.py DATASET [--fanouts 15,10,5] [--batch-size 1024]
           [--num-negatives 1] [--negative-mode binary|triplet]
           [--negative-sampling uniform|degree] [--epochs 10] [--hidden 128] [--lr 0.01]
           [--weight-decay 5e-4] [--dropout 0.5] [--seed 0] [--eval-chunk-rows 4096]

DATASET is a disktrain dataset split for link prediction (``link_train``, ``link_val``,
``link_test`` and their stored eval negatives). The defaults are disktrain's (`disktrain
prepare` / `disktrain train`), so the same flags give the same model and settings:
  - graph: the dataset's CSR edges as ``edge_index`` (row ``v`` of the in-neighbour CSR lists
    the sources of ``u -> v``; sorted by destination, so ``is_sorted=True``); the val/test
    edges are not in it. Features read into memory as float32;
  - loader: ``LinkNeighborLoader`` over ``edge_label_index`` = ``link_train``, ``batch_size``
    positive edges a batch, shuffled, ``num_neighbors`` = the fanouts, and
    ``NegativeSampling(mode, amount=num_negatives)``: ``binary`` draws random (src, dst)
    pairs, ``triplet`` keeps each positive's source and draws its destinations (disktrain's
    scheme); ``--negative-sampling degree`` draws destinations by in-degree ** 0.75;
  - model: ``torch_geometric.nn.GraphSAGE`` (mean ``SAGEConv`` layers with a root weight, ReLU
    and dropout between, the last layer ``hidden`` wide with no activation), as disktrain's
    SAGE; one layer per fanout; a dot decoder ``sum(h_src * h_dst)``; binary cross-entropy
    with logits over every positive and negative pair; Adam with ``lr`` and ``weight_decay``;
  - evaluation after the last epoch: every node's embedding from the full graph in eval mode,
    each val/test edge's score against those of its stored negatives (its source kept),
    ``disktrain.train.linkmetrics.link_metrics`` (MRR, Hits@K, AUC).
Prints one JSON object as the last line of standard output: the settings, per-epoch loss and
seconds, and ``link`` = {"val": metrics, "test": metrics}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEGREE_POWER = 0.75


def load(dataset: Path):
    """A PyG ``Data`` of the dataset's CSR graph and features; the training edges (2, E);
    per val/test split its (P, 2) edges and (P, K) negatives."""
    from torch_geometric.data import Data

    from disktrain.storage.dataset import Dataset

    ds = Dataset(dataset)
    n = ds.num_nodes
    indptr = np.asarray(ds.indptr, np.int64)
    dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    edge_index = torch.from_numpy(np.stack((np.asarray(ds.indices, np.int64), dst)))
    x = torch.from_numpy(np.asarray(ds.feature_rows(0, n), np.float32))
    data = Data(x=x, edge_index=edge_index, num_nodes=n)
    train = torch.from_numpy(np.asarray(ds.link_edges("train"), np.int64).T.copy())
    evals = {s: (torch.from_numpy(np.asarray(ds.link_edges(s), np.int64)),
                 torch.from_numpy(np.asarray(ds.link_negatives(s), np.int64)))
             for s in ("val", "test")}
    return data, train, evals


def dot(h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The dot decoder: ``sum(h[src] * h[dst])`` along the last dimension."""
    return (h[src] * h[dst]).sum(-1)


def scores_and_labels(batch, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's pair scores and their 0/1 labels, from either negative sampling mode."""
    if "edge_label_index" in batch:  # binary: positives and negatives labelled
        return dot(h, *batch.edge_label_index), batch.edge_label
    src = batch.src_index
    pos = dot(h, src, batch.dst_pos_index)
    neg = dot(h, src.unsqueeze(1), batch.dst_neg_index.view(len(src), -1))
    return torch.cat((pos, neg.reshape(-1))), torch.cat(
        (torch.ones_like(pos), torch.zeros(neg.numel())))


def train_epoch(model, opt, loader) -> float:
    """One epoch; the mean batch loss."""
    model.train()
    total = batches = 0
    for batch in loader:
        opt.zero_grad(set_to_none=True)
        score, label = scores_and_labels(batch, model(batch.x, batch.edge_index))
        loss = F.binary_cross_entropy_with_logits(score, label)
        loss.backward()
        opt.step()
        total += loss.item()
        batches += 1
    return total / max(1, batches)


@torch.no_grad()
def evaluate(model, data, evals: dict, chunk_rows: int) -> dict:
    """Full-graph embeddings in eval mode; per split, ``link_metrics`` of each edge's score
    against its negatives', ``chunk_rows`` edges at a time."""
    from disktrain.train.linkmetrics import link_metrics

    model.eval()
    h = model(data.x, data.edge_index)
    out = {}
    for split, (edges, neg) in evals.items():
        pos = dot(h, edges[:, 0], edges[:, 1])
        negs = torch.cat([dot(h, edges[a:a + chunk_rows, :1], neg[a:a + chunk_rows])
                          for a in range(0, len(edges), chunk_rows)])
        out[split] = link_metrics(pos, negs)
    return out


def negative_sampling(args, data):
    from torch_geometric.sampler import NegativeSampling

    weight = None
    if args.negative_sampling == "degree":
        degree = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
        weight = degree.double() ** DEGREE_POWER
    return NegativeSampling(args.negative_mode, amount=args.num_negatives, dst_weight=weight)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--fanouts", default="15,10,5")
    ap.add_argument("--batch-size", type=int, default=1024, help="positive edges per batch")
    ap.add_argument("--num-negatives", type=int, default=1, help="negatives per positive")
    ap.add_argument("--negative-mode", choices=("binary", "triplet"), default="binary",
                    help="binary: random (src, dst) pairs; triplet: the positive's source kept")
    ap.add_argument("--negative-sampling", choices=("uniform", "degree"), default="uniform")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-chunk-rows", type=int, default=4096,
                    help="val/test edges scored against their negatives at a time")
    args = ap.parse_args(argv)
    if args.num_negatives < 1:
        ap.error(f"--num-negatives must be >= 1, got {args.num_negatives}")
    return args


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    try:
        from torch_geometric.loader import LinkNeighborLoader
        from torch_geometric.nn import GraphSAGE
    except ImportError as e:
        print(f"pyg_link_peer: error: PyTorch Geometric is not installed ({e}); pip install "
              "torch-geometric torch-sparse torch-scatter (the `bench` extra)", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    data, train, evals = load(args.dataset)
    loader = LinkNeighborLoader(data, num_neighbors=fanouts, edge_label_index=train,
                                neg_sampling=negative_sampling(args, data),
                                batch_size=args.batch_size, shuffle=True, is_sorted=True)
    model = GraphSAGE(data.num_features, args.hidden, num_layers=len(fanouts),
                      out_channels=args.hidden, dropout=args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    setup_s = time.perf_counter() - t_start
    epochs = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        loss = train_epoch(model, opt, loader)
        epochs.append({"epoch": epoch, "loss": loss, "epoch_s": time.perf_counter() - t0})
        print(json.dumps(epochs[-1]), file=sys.stderr)
    t0 = time.perf_counter()
    link = evaluate(model, data, evals, args.eval_chunk_rows)
    print(json.dumps({
        "system": "pyg", "settings": {k: str(v) if isinstance(v, Path) else v
                                      for k, v in vars(args).items()},
        "num_nodes": data.num_nodes, "graph_edges": data.num_edges,
        "train_edges": train.shape[1], "batches_per_epoch": len(loader),
        "setup_s": setup_s, "eval_s": time.perf_counter() - t0, "per_epoch": epochs,
        "link": link, "torch_threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
