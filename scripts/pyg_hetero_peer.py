"""The peer of scripts/bench_typed.py: a typed graph's R-GAT trained with PyTorch Geometric's
hetero NeighborLoader.

Usage: python scripts/pyg_hetero_peer.py DATASET --features-dir DIR [--fanouts 15,10,5]
                                         [--batch-size 1024] [--eval-batch-size 1024]
                                         [--epochs 1] [--hidden 128] [--heads 4] [--lr 0.01]
                                         [--weight-decay 0] [--dropout 0.5]
                                         [--embedding-dim 64] [--seed 0] [--workers 0]
                                         [--max-batches N] [--max-phase-s T]
       python scripts/pyg_hetero_peer.py DATASET --features-dir DIR --export

What a PyG user whose features exceed memory would write, on a typed disktrain dataset:
  - graph: a ``HeteroData`` with, per relation ``(src, rel, dst)``, the dataset's CSR by
    destination handed over as ``adj_t = SparseTensor(rowptr=indptr, col=indices,
    sparse_sizes=(n_dst, n_src))`` (PyG's ``adj_t`` layout exactly: ``is_sorted=True``, no
    re-sorting; the hetero NeighborLoader samples it as it is (``adj_t.csr()``, no copy),
    where an ``edge_index`` of 2 x E per relation would be sorted into a second CSC copy).
    ``indptr`` stays memory-mapped, ``indices`` become int64 in memory; each batch gets an
    ``adj_t`` per relation;
  - features: one ``DIR/<type>.npy`` per featured type (exported beforehand with
    ``--export``, not timed) memory-mapped read-only as ``x``; a featureless type gets a
    learnt ``nn.Embedding`` indexed by the batch's ``n_id``;
  - model: per layer a ``HeteroConv`` (sum) of ``GATConv((-1, -1), hidden // heads, heads,
    add_self_loops=False)`` per relation (the last layer ``num_classes`` per head, heads
    averaged), ReLU and dropout between layers: disktrain's ``rgat``, built over the same
    relations (those whose outputs reach the papers' logits,
    ``HeteroGNNConfig.layer_relations``); lazy shapes set by one forward on a first batch
    (counted in ``setup_s``). As a PyG user's model, each layer computes every sampled node of a
    type, not only those the next layer reads;
  - Adam; cross-entropy on the target type's ``batch_size`` seed rows; after each epoch val and
    test accuracy with the same fanouts.
Caps (``--max-batches``, ``--max-phase-s``) and the extrapolation of a capped phase from its
batch rate are scripts/pyg_peer.py's. Prints one JSON object as the last line of stdout.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pyg_peer import Phase, add_evaluation, export_features, job_estimate, open_features

from disktrain.models.hetero import HeteroGNNConfig
from disktrain.storage.dataset import Dataset


def export_typed_features(dataset: Path, out: Path) -> list[str]:
    """Every featured type's features as ``out/<type>.npy``; the types written."""
    ds = Dataset(dataset)
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for t in ds.types:
        if t.feature_dim:
            export_features(ds.path / "types" / t.name, out / f"{t.name}.npy")
            done.append(t.name)
    return done


def build_data(dataset: Path, features_dir: Path):
    """The typed dataset as a ``HeteroData`` (``x`` mapped per featured type, ``adj_t`` per
    relation, ``y`` on the target type), its target type's split ids and its schema."""
    from torch_geometric.data import HeteroData
    from torch_sparse import SparseTensor

    ds = Dataset(dataset)
    data = HeteroData()
    for t in ds.types:
        data[t.name].num_nodes = t.num_nodes
        if t.feature_dim:
            npy = features_dir / f"{t.name}.npy"
            x = open_features(npy, "normal")
            if tuple(x.shape) != (t.num_nodes, t.feature_dim):
                raise ValueError(f"{npy}: shape {tuple(x.shape)}, node type {t.name!r} of "
                                 f"{dataset} has ({t.num_nodes}, {t.feature_dim})")
            data[t.name].x = x
    sizes = {t.name: t.num_nodes for t in ds.types}
    for rel in ds.relations:
        indptr, indices = ds.relation_csr(rel)
        data[rel].adj_t = SparseTensor(
            rowptr=torch.from_numpy(np.asarray(indptr, np.int64)),
            col=torch.from_numpy(np.asarray(indices, np.int64)),
            sparse_sizes=(sizes[rel[2]], sizes[rel[0]]), is_sorted=True, trust_data=True)
    target = ds.meta.target_type
    data[target].y = torch.from_numpy(np.asarray(ds.labels, np.int64))
    splits = {s: torch.from_numpy(np.asarray(ds.split(s), np.int64))
              for s in ("train", "val", "test")}
    return data, splits, ds


class RGAT(torch.nn.Module):
    """disktrain's ``rgat`` in PyG: a ``HeteroConv`` of ``GATConv`` per layer."""

    def __init__(self, cfg: HeteroGNNConfig):
        from torch_geometric.nn import GATConv, HeteroConv

        super().__init__()
        self.target, self.dropout = cfg.target_type, cfg.dropout
        layers = cfg.layer_relations()
        first = {t for r in layers[0] for t in (r[0], r[2])}
        self.embeddings = torch.nn.ModuleDict({
            t: torch.nn.Embedding(cfg.num_nodes[t], cfg.embedding_dim)
            for t, dim in cfg.feature_dims.items() if not dim and t in first})
        self.convs = torch.nn.ModuleList()
        for i, rels in enumerate(layers):
            last = i == len(layers) - 1
            out = cfg.num_classes if last else cfg.hidden // cfg.heads
            self.convs.append(HeteroConv({
                tuple(r): GATConv((-1, -1), out, cfg.heads, concat=not last,
                                  add_self_loops=False) for r in rels}, aggr=cfg.aggr))

    def forward(self, batch) -> torch.Tensor:
        h = {t: x.float() for t, x in batch.x_dict.items()}  # float16 features
        h.update({t: emb(batch[t].n_id) for t, emb in self.embeddings.items()})
        for i, conv in enumerate(self.convs):
            h = conv(h, batch.adj_t_dict)
            if i < len(self.convs) - 1:
                h = {t: F.dropout(F.relu(v), p=self.dropout, training=self.training)
                     for t, v in h.items()}
        return h[self.target][:batch[self.target].batch_size]


def train_epoch(model, opt, phase: Phase, target: str) -> float:
    model.train()
    loss_sum = 0.0
    for batch in phase:
        opt.zero_grad(set_to_none=True)
        seeds = batch[target]
        loss = F.cross_entropy(model(batch), seeds.y[:seeds.batch_size])
        loss.backward()
        opt.step()
        loss_sum += loss.item()
    return loss_sum / max(1, phase.batches)


@torch.no_grad()
def accuracy(model, phase: Phase, target: str) -> float:
    model.eval()
    correct = total = 0
    for batch in phase:
        seeds = batch[target]
        correct += int((model(batch).argmax(-1) == seeds.y[:seeds.batch_size]).sum())
        total += seeds.batch_size
    return correct / total if total else float("nan")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--features-dir", type=Path, required=True,
                    help="one <type>.npy per featured node type")
    ap.add_argument("--export", action="store_true",
                    help="write DATASET's features to --features-dir, then exit")
    ap.add_argument("--fanouts", default="15,10,5", help="per hop, every relation")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--eval-batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--embedding-dim", type=int, default=64,
                    help="width of a featureless type's learnt embeddings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="NeighborLoader num_workers")
    ap.add_argument("--max-batches", type=int, default=0, help="cap per phase (0: none)")
    ap.add_argument("--max-phase-s", type=float, default=0.0,
                    help="cap per phase in seconds (0: none)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.export:
        export_typed_features(args.dataset, args.features_dir)
        return 0
    try:
        from torch_geometric.loader import NeighborLoader
    except ImportError as e:
        print(f"pyg_hetero_peer: error: PyTorch Geometric is not installed ({e}); pip install "
              "torch-geometric torch-sparse torch-scatter (the `bench` extra)", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    data, splits, ds = build_data(args.dataset, args.features_dir)
    target = ds.meta.target_type
    cfg = HeteroGNNConfig(
        model="rgat", feature_dims={t.name: t.feature_dim for t in ds.types},
        num_nodes={t.name: t.num_nodes for t in ds.types}, relations=ds.relations,
        target_type=target, num_classes=ds.meta.num_classes, num_layers=len(fanouts),
        hidden=args.hidden, heads=args.heads, dropout=args.dropout,
        embedding_dim=args.embedding_dim)
    common = {"num_neighbors": fanouts, "num_workers": args.workers,
              "persistent_workers": args.workers > 0}
    train_loader = NeighborLoader(data, input_nodes=(target, splits["train"]),
                                  batch_size=args.batch_size, shuffle=True, **common)
    eval_loaders = {s: NeighborLoader(data, input_nodes=(target, splits[s]),
                                      batch_size=args.eval_batch_size, **common)
                    for s in ("val", "test") if splits[s].numel()}
    row_bytes = {t: x.shape[1] * x.element_size() for t, x in data.x_dict.items()}

    def needed(batch) -> int:  # bytes of the batch's feature rows (Phase sums them)
        return sum(batch[t].n_id.numel() * b for t, b in row_bytes.items())

    model = RGAT(cfg)
    with torch.no_grad():  # the lazy (-1, -1) shapes, from a first batch
        model(next(iter(train_loader)))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    setup_s = time.perf_counter() - t_start

    epochs = []
    for epoch in range(args.epochs):
        phase = Phase(train_loader, args.max_batches, args.max_phase_s, needed)
        loss = train_epoch(model, opt, phase, target)
        record = {"epoch": epoch, "loss": loss, "batches": phase.batches,
                  "total_batches": phase.total, "epoch_s": phase.seconds,
                  "epoch_est_s": phase.estimate_s, "needed_bytes": phase.needed_rows}
        evals = {s: Phase(loader, args.max_batches, args.max_phase_s, needed)
                 for s, loader in eval_loaders.items()}
        add_evaluation(record, phase, evals, lambda ev: accuracy(model, ev, target),
                       "needed_bytes")
        epochs.append(record)
        print(json.dumps(record), file=sys.stderr)
        if record["extrapolated"]:
            break

    extrapolated = any(e["extrapolated"] for e in epochs)
    last = epochs[-1] if epochs else {}
    print(json.dumps({
        "system": "pyg-hetero", "graph": "adj_t (SparseTensor per relation)",
        "workers": args.workers, "epochs": args.epochs, "epochs_run": len(epochs),
        "setup_s": setup_s, "extrapolated": extrapolated,
        "job_est_s": job_estimate(setup_s, epochs, args.epochs),
        "val_acc": None if extrapolated else last.get("val_acc"),
        "test_acc": None if extrapolated else last.get("test_acc"),
        "needed_bytes": sum(e["needed_bytes"] for e in epochs),
        "torch_threads": torch.get_num_threads(), "per_epoch": epochs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
