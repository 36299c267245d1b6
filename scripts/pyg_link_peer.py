"""The peer of scripts/bench_link.py: link prediction trained with PyTorch Geometric's
``LinkNeighborLoader``, evaluated as ``disktrain train --task link`` evaluates.

Usage: python scripts/pyg_link_peer.py DATASET [--fanouts 15,10,5] [--batch-size 1024]
           [--num-negatives 1] [--negative-mode binary|triplet]
           [--negative-sampling uniform|degree] [--epochs 10] [--hidden 128] [--lr 0.01]
           [--weight-decay 5e-4] [--dropout 0.5] [--seed 0] [--eval-chunk-rows 4096]
           [--edges-per-epoch M] [--features F.npy [--advice normal|random]
                                   [--eval-batch-size 4096] [--scratch DIR]]
           [--max-phase-s T]

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
``--edges-per-epoch M``: each epoch trains on M training edges drawn at random (without
replacement, another subset every epoch), as ``disktrain prepare --edges-per-epoch``.
``--features F.npy`` (scripts/bench_link_scale.py, features larger than memory): the features
memory-mapped from the .npy (scripts/pyg_peer.py's ``open_features``; ``--advice random``:
``madvise(MADV_RANDOM)`` on the map, no readahead), the graph the stored CSR
as a ``torch_sparse.SparseTensor`` ``adj_t`` (no 2 x E ``edge_index``), the training edges
read from their memory map one epoch's subset at a time, and the evaluation's embeddings
computed layer-wise as ``BasicGNN.inference`` does (``NeighborLoader(num_neighbors=[-1])``
over every node, ``eval-batch-size`` targets a batch, ``x_all[batch.n_id]`` per layer) with
each layer's output (N x hidden float32) written to a .npy under ``--scratch`` (default: a
temporary directory beside F.npy, removed at the end) and memory-mapped back (with
``--advice``) rather than held in memory; the last one scored against the negatives reading it
once in order, block by block (the negatives spread over every node: gathering them edge by
edge from a map larger than the page cache would reread it for every chunk of edges).
``--max-phase-s T`` cuts a training epoch or an inference layer short after T seconds and
extrapolates its time from its batch rate; the first capped epoch is the last one trained (the
epochs left are estimated at its pace), the layers after a capped one at its rate, and the
metrics are then None (``extrapolated``; ``job_est_s`` the whole job's estimate).
Prints one JSON object as the last line of standard output: the settings, per-epoch loss and
seconds, the phases' seconds, and ``link`` = {"val": metrics, "test": metrics}.
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
    """A PyG ``Data`` of the dataset's CSR graph and features; the training edges (E, 2)
    (memory-mapped); the ``Dataset`` (its val/test edges are read by :func:`eval_splits`
    once training is done, out of its memory)."""
    from torch_geometric.data import Data

    from disktrain.storage.dataset import Dataset

    ds = Dataset(dataset)
    n = ds.num_nodes
    indptr = np.asarray(ds.indptr, np.int64)
    dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    edge_index = torch.from_numpy(np.stack((np.asarray(ds.indices, np.int64), dst)))
    x = torch.from_numpy(np.asarray(ds.feature_rows(0, n), np.float32))
    data = Data(x=x, edge_index=edge_index, num_nodes=n)
    return data, ds.link_edges("train"), ds


def load_mapped(dataset: Path, features: Path, advice: str = "normal"):
    """As :func:`load`, with the features memory-mapped from ``features`` (the exported .npy;
    ``advice="random"``: ``madvise(MADV_RANDOM)``, no readahead) and the graph the stored CSR
    as ``adj_t`` (``pyg_peer.mapped_data``)."""
    from pyg_peer import mapped_data

    data, ds = mapped_data(dataset, features, advice)
    return data, ds.link_edges("train"), ds


def eval_splits(ds) -> dict:
    """Per val/test split its (P, 2) edges and (P, K) negatives."""
    return {s: (torch.from_numpy(np.asarray(ds.link_edges(s), np.int64)),
                torch.from_numpy(np.asarray(ds.link_negatives(s), np.int64)))
            for s in ("val", "test")}


def epoch_edges(train: np.ndarray, count: int, rng: np.random.Generator) -> torch.Tensor:
    """(2, count) training edges of the (E, 2) ``train`` drawn without replacement (all of
    them, in order, when ``count`` is 0 or at least E)."""
    pick = slice(None)
    if 0 < count < len(train):
        pick = np.sort(rng.choice(len(train), count, replace=False))
    return torch.from_numpy(np.asarray(train[pick], np.int64).T.copy())


def graph_of(batch):
    """A batch's (or the data's) graph: ``adj_t`` where it has one, else ``edge_index``."""
    return batch.adj_t if "adj_t" in batch else batch.edge_index


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
    """One epoch over ``loader`` (or a ``pyg_peer.Phase`` of it); the mean batch loss."""
    model.train()
    total = batches = 0
    for batch in loader:
        opt.zero_grad(set_to_none=True)
        score, label = scores_and_labels(batch, model(batch.x.float(), graph_of(batch)))
        loss = F.binary_cross_entropy_with_logits(score, label)
        loss.backward()
        opt.step()
        total += loss.item()
        batches += 1
    return total / max(1, batches)


@torch.no_grad()
def score(h: torch.Tensor, evals: dict, chunk_rows: int) -> dict:
    """Per split, ``link_metrics`` of each edge's score against its negatives' on the
    embeddings ``h``, ``chunk_rows`` edges at a time."""
    from disktrain.train.linkmetrics import link_metrics

    out = {}
    for split, (edges, neg) in evals.items():
        pos = dot(h, edges[:, 0], edges[:, 1])
        negs = torch.cat([dot(h, edges[a:a + chunk_rows, :1], neg[a:a + chunk_rows])
                          for a in range(0, len(edges), chunk_rows)])
        out[split] = link_metrics(pos, negs)
    return out


@torch.no_grad()
def evaluate(model, data, evals: dict, chunk_rows: int) -> dict:
    """Full-graph embeddings in eval mode (in memory), scored by :func:`score`."""
    model.eval()
    return score(model(data.x, data.edge_index), evals, chunk_rows)


@torch.no_grad()
def score_streamed(h: torch.Tensor, evals: dict, block_rows: int = 1 << 15) -> dict:
    """:func:`score`'s metrics with ``h`` (memory-mapped, larger than the page cache) read
    once per split, ``block_rows`` rows at a time in order: the negatives spread over every
    node, so gathering them edge by edge would reread the whole map for each chunk of edges."""
    from disktrain.train.linkmetrics import link_metrics

    out = {}
    for split, (edges, neg) in evals.items():
        src = h[edges[:, 0]]
        pos = (src * h[edges[:, 1]]).sum(-1)
        flat, order = torch.sort(neg.reshape(-1))
        starts = torch.arange(0, len(h) + block_rows, block_rows)
        bounds = torch.searchsorted(flat, starts).tolist()
        scores = torch.empty(flat.shape)
        for j, a in enumerate(starts[:-1].tolist()):
            lo, hi = bounds[j], bounds[j + 1]
            if lo < hi:
                block = h[a:a + block_rows].clone()  # one sequential read
                ids = order[lo:hi]
                scores[ids] = (src[ids // neg.shape[1]] * block[flat[lo:hi] - a]).sum(-1)
        out[split] = link_metrics(pos, scores.view(neg.shape))
    return out


@torch.no_grad()
def layerwise(model, data, batch_size: int, scratch: Path, max_s: float,
              advice: str = "normal"):
    """``BasicGNN.inference``'s loop, each layer's output written to ``scratch/layer-<i>.npy``
    and read back as the next layer's input memory-mapped (with ``advice``) instead of kept
    in memory; a layer stops once ``max_s`` seconds (0: no cap) have passed. The last output
    written (partial where capped), whether every layer completed, and a record per layer
    run."""
    from pyg_peer import Phase, open_features
    from torch_geometric.data import Data
    from torch_geometric.loader import NeighborLoader

    model.eval()
    loader = NeighborLoader(Data(adj_t=data.adj_t, num_nodes=data.num_nodes),
                            input_nodes=None, num_neighbors=[-1], batch_size=batch_size,
                            shuffle=False)  # no x: each layer gathers its own input rows
    x_all, layers = data.x, []
    for i, conv in enumerate(model.convs):
        path = scratch / f"layer-{i}.npy"
        out = np.lib.format.open_memmap(path, "w+", np.float32,
                                        (data.num_nodes, conv.out_channels))
        phase = Phase(loader, 0, max_s)
        for batch in phase:
            h = model.inference_per_layer(i, x_all[batch.n_id].float(), batch.adj_t,
                                          batch.batch_size)
            out[batch.n_id[:batch.batch_size].numpy()] = h.numpy()
        out.flush()
        del out
        x_all = open_features(path, advice)
        layers.append({"layer": i, "batches": phase.batches, "total_batches": phase.total,
                       "seconds": phase.seconds})
        if phase.capped:
            return path, False, layers
    return path, True, layers


def evaluate_mapped(model, data, evals: dict, args) -> dict:
    """:func:`layerwise` embeddings under ``args.scratch`` (a temporary directory beside the
    features by default, removed after), scored by :func:`score_streamed` even where capped
    (for its time; the metrics are then None); the phases' seconds."""
    import tempfile

    from pyg_infer_peer import estimate
    from pyg_peer import open_features

    scratch = args.scratch or args.features.parent
    with tempfile.TemporaryDirectory(prefix="pyg-link-peer-", dir=scratch) as tmp:
        last, complete, layers = layerwise(model, data, args.eval_batch_size, Path(tmp),
                                           args.max_phase_s, args.advice)
        t0 = time.perf_counter()
        link = score_streamed(open_features(last, "normal"), evals)  # read in order
        score_s = time.perf_counter() - t0
    est = estimate(layers, model.num_layers)
    return {"link": link if complete else None, "embed_layers": est, "score_s": score_s,
            "eval_extrapolated": not complete, "extrapolated_extra_s":
            sum(r["est_seconds"] for r in est) - sum(r["seconds"] for r in layers)}


def negative_sampling(args, data):
    from torch_geometric.sampler import NegativeSampling

    weight = None
    if args.negative_sampling == "degree":
        degree = (data.adj_t.storage.rowcount() if "adj_t" in data
                  else torch.bincount(data.edge_index[1], minlength=data.num_nodes))
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
    ap.add_argument("--edges-per-epoch", type=int, default=0,
                    help="train each epoch on this many random training edges (0: all)")
    ap.add_argument("--features", type=Path,
                    help="the features as one .npy, memory-mapped (graph as adj_t, layer-wise "
                    "evaluation)")
    ap.add_argument("--advice", choices=("normal", "random"), default="normal",
                    help="with --features: madvise on the feature map (normal: the kernel's "
                    "readahead; random: none)")
    ap.add_argument("--eval-batch-size", type=int, default=4096,
                    help="with --features: target nodes per batch of layer-wise inference")
    ap.add_argument("--scratch", type=Path, help="with --features: where the layer outputs "
                    "go (default: beside the features)")
    ap.add_argument("--max-phase-s", type=float, default=0.0,
                    help="cap each training epoch and inference layer, extrapolate (0: none)")
    args = ap.parse_args(argv)
    for name in ("num_negatives", "eval_batch_size", "eval_chunk_rows", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.edges_per_epoch < 0 or args.max_phase_s < 0:
        ap.error(f"--edges-per-epoch and --max-phase-s must be >= 0, got "
                 f"{args.edges_per_epoch}, {args.max_phase_s}")
    return args


def job_estimate(setup_s: float, epochs: list[dict], num_epochs: int,
                 eval_s: float) -> float:
    """Whole-job seconds: setup, the epochs run (measured or extrapolated), the epochs not run
    at the pace of the last one, and the evaluation's (measured or extrapolated)."""
    run = sum(e["epoch_est_s"] for e in epochs)
    if epochs:
        run += (num_epochs - len(epochs)) * epochs[-1]["epoch_est_s"]
    return setup_s + run + eval_s


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    try:
        from pyg_peer import Phase
        from torch_geometric.loader import LinkNeighborLoader
        from torch_geometric.nn import GraphSAGE
    except ImportError as e:
        print(f"pyg_link_peer: error: PyTorch Geometric is not installed ({e}); pip install "
              "torch-geometric torch-sparse torch-scatter (the `bench` extra)", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    data, train, ds = (load(args.dataset) if args.features is None
                          else load_mapped(args.dataset, args.features, args.advice))
    neg = negative_sampling(args, data)
    model = GraphSAGE(data.num_features, args.hidden, num_layers=len(fanouts),
                      out_channels=args.hidden, dropout=args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    row_bytes = data.x.shape[1] * data.x.element_size()

    def loader_of(edges: torch.Tensor):
        return LinkNeighborLoader(data, num_neighbors=fanouts, neg_sampling=neg,
                                  edge_label_index=edges, batch_size=args.batch_size,
                                  shuffle=True, is_sorted=True)

    # every training edge: one loader, made in the setup; else each epoch's subset, drawn
    # and loaded in its epoch (its time counted there)
    loader = None if args.edges_per_epoch else loader_of(epoch_edges(train, 0, rng))
    setup_s = time.perf_counter() - t_start
    epochs = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        if args.edges_per_epoch:
            loader = loader_of(epoch_edges(train, args.edges_per_epoch, rng))
        phase = Phase(loader, 0, args.max_phase_s)
        loss = train_epoch(model, opt, phase)
        seconds = time.perf_counter() - t0
        epochs.append({"epoch": epoch, "loss": loss, "epoch_s": seconds,
                       "epoch_est_s": seconds + phase.estimate_s - phase.seconds,
                       "batches": phase.batches, "total_batches": phase.total,
                       "needed_bytes": phase.needed_rows * row_bytes})
        print(json.dumps(epochs[-1]), file=sys.stderr)
        if phase.capped:  # the epochs left are estimated at this one's pace
            break
    t0 = time.perf_counter()
    evals = eval_splits(ds)
    if args.features is None:
        evaluated = {"link": evaluate(model, data, evals, args.eval_chunk_rows)}
    else:
        evaluated = evaluate_mapped(model, data, evals, args)
    eval_s = time.perf_counter() - t0
    eval_est_s = eval_s + evaluated.pop("extrapolated_extra_s", 0.0)
    extrapolated = len(epochs) < args.epochs or any(e["batches"] < e["total_batches"]
                                                    for e in epochs)
    extrapolated = extrapolated or evaluated.get("eval_extrapolated", False)
    print(json.dumps({
        "system": "pyg", "settings": {k: str(v) if isinstance(v, Path) else v
                                      for k, v in vars(args).items()},
        "num_nodes": data.num_nodes,
        "graph_edges": data.adj_t.nnz() if "adj_t" in data else data.num_edges,
        "train_edges": len(train), "batches_per_epoch": len(loader) if loader else 0,
        "setup_s": setup_s, "eval_s": eval_s, "eval_est_s": eval_est_s, "per_epoch": epochs,
        "extrapolated": extrapolated,
        "job_est_s": job_estimate(setup_s, epochs, args.epochs, eval_est_s),
        **{k: v for k, v in evaluated.items() if k != "link"},
        "link": None if extrapolated else evaluated["link"],
        "torch_threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
