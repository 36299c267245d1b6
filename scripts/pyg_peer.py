"""The peer of scripts/bench_vs_pyg.py: PyTorch Geometric's NeighborLoader training run.

Usage: python scripts/pyg_peer.py DATASET --features F.npy [--fanouts 10,10] [--batch-size 1024]
                                  [--eval-batch-size 1024] [--epochs 5] [--hidden 128]
                                  [--lr 0.01] [--weight-decay 0] [--dropout 0.5] [--seed 0]
                                  [--workers 0] [--advice normal|random]
                                  [--max-batches N] [--max-phase-s T]
       python scripts/pyg_peer.py DATASET --features F.npy --export

What a PyG user whose features exceed memory would write, on a disktrain dataset:
  - graph: the dataset's CSR of in-neighbours is already PyG's ``adj_t`` layout (row = target,
    columns = its sources), so it is handed over as a ``torch_sparse.SparseTensor(rowptr=indptr,
    col=indices)`` (``is_sorted=True``: no re-sorting, no edge_index of 2 x E is ever built);
    NeighborLoader samples it with ``torch.ops.torch_sparse.neighbor_sample`` and gives each
    batch a SparseTensor ``adj_t``;
  - features: ``F.npy`` (exported from the dataset beforehand) memory-mapped read-only, as
    ``np.load(mmap_mode="r")`` does, wrapped by ``torch.from_numpy``; NeighborLoader gathers
    each batch's rows from the map (page faults). ``--advice random`` calls
    ``madvise(MADV_RANDOM)`` on the map first (no readahead);
  - model: ``torch_geometric.nn.GraphSAGE`` (mean SAGEConv layers, ReLU and dropout between),
    Adam; ``model(x, adj_t)[:batch_size]`` trained with cross-entropy on the seeds;
  - after each epoch, val and test accuracy with NeighborLoader at the same fanouts.

``--export`` writes the dataset's features to ``F.npy`` (via a temporary name) and exits: the
one-off step such a user takes first (not part of the timed job).
``--max-batches N`` / ``--max-phase-s T`` cap every phase (a training epoch, the val or test
pass) at N batches / T seconds; the first epoch in which a phase is capped is the last one run,
and the phase's full time is extrapolated from its per-batch rate (marked ``extrapolated``).
Prints one JSON object as the last line of standard output.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def open_features(path: Path, advice: str) -> torch.Tensor:
    """The .npy at ``path`` memory-mapped read-only (as ``np.load(mmap_mode="r")``) as a
    tensor; ``advice="random"`` turns the map's readahead off with ``madvise(MADV_RANDOM)``."""
    header = np.load(path, mmap_mode="r")  # np.memmap: shape, dtype, data offset
    if not header.flags.c_contiguous:
        raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
    shape, dtype, offset = header.shape, header.dtype, header.offset
    del header
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    if advice == "random":
        mapped.madvise(mmap.MADV_RANDOM)
    array = np.frombuffer(mapped, dtype, int(np.prod(shape)), offset).reshape(shape)
    with warnings.catch_warnings():  # read-only on purpose: nothing writes the features
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def export_features(dataset: Path, npy: Path) -> None:
    """Write ``dataset``'s features to ``npy`` (via a temporary name), chunk by chunk."""
    from disktrain.storage.dataset import Dataset

    ds = Dataset(dataset)
    tmp = npy.with_name(npy.name + f".tmp-{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=ds.features.dtype,
                                    shape=ds.features.shape)
    step = ds.features.chunks[0] * 16
    for a in range(0, ds.num_nodes, step):
        out[a:a + step] = ds.feature_rows(a, min(a + step, ds.num_nodes))
    out.flush()
    del out
    tmp.rename(npy)


def mapped_data(dataset: Path, features: Path, advice: str):
    """A PyG ``Data`` of the dataset's stored CSR as ``adj_t`` (a ``torch_sparse``
    ``SparseTensor``) and the features mapped from ``features`` (:func:`open_features`), and
    the ``Dataset``."""
    from torch_geometric.data import Data
    from torch_sparse import SparseTensor

    from disktrain.storage.dataset import Dataset

    ds = Dataset(dataset)
    n = ds.num_nodes
    x = open_features(features, advice)
    if x.shape[0] != n:
        raise ValueError(f"{features}: {x.shape[0]} rows, dataset {dataset} has {n} nodes")
    adj_t = SparseTensor(rowptr=torch.from_numpy(np.asarray(ds.indptr, np.int64)),
                         col=torch.from_numpy(np.asarray(ds.indices, np.int64)),
                         sparse_sizes=(n, n), is_sorted=True, trust_data=True)
    return Data(x=x, adj_t=adj_t, num_nodes=n), ds


def build_data(dataset: Path, features: Path, advice: str):
    """:func:`mapped_data` with the labels, and the train/val/test node ids."""
    data, ds = mapped_data(dataset, features, advice)
    data.y = torch.from_numpy(np.asarray(ds.labels, np.int64))
    splits = {s: torch.from_numpy(np.asarray(ds.split(s), np.int64))
              for s in ("train", "val", "test")}
    return data, splits, ds.meta.num_classes


def input_rows(batch) -> int:
    """A homogeneous batch's distinct input rows."""
    return int(batch.n_id.numel())


class Phase:
    """Batches of one pass (an epoch or an evaluation) under the caps; its timing, and the sum
    of ``needed(batch)`` over its batches in ``needed_rows`` (default: their input rows)."""

    def __init__(self, loader, max_batches: int, max_s: float, needed=input_rows):
        self.loader, self.max_batches, self.max_s = loader, max_batches, max_s
        self.needed = needed
        self.total = len(loader)
        self.batches = 0
        self.seconds = 0.0
        self.needed_rows = 0

    def __iter__(self):
        t0 = time.perf_counter()
        for batch in self.loader:
            yield batch
            self.batches += 1
            self.needed_rows += self.needed(batch)
            self.seconds = time.perf_counter() - t0
            if self.batches < self.total and (
                    (self.max_batches and self.batches >= self.max_batches)
                    or (self.max_s and self.seconds >= self.max_s)):
                break
        self.seconds = time.perf_counter() - t0

    @property
    def capped(self) -> bool:
        return self.batches < self.total

    @property
    def estimate_s(self) -> float:
        """Seconds of the whole pass: measured, or extrapolated from the batches run."""
        if not self.capped:
            return self.seconds
        return self.seconds / max(1, self.batches) * self.total


def train_epoch(model, opt, phase: Phase) -> float:
    model.train()
    loss_sum = 0.0
    for batch in phase:
        opt.zero_grad(set_to_none=True)
        out = model(batch.x.float(), batch.adj_t)[:batch.batch_size]  # float16 features
        loss = F.cross_entropy(out, batch.y[:batch.batch_size])
        loss.backward()
        opt.step()
        loss_sum += loss.item()
    return loss_sum / max(1, phase.batches)


@torch.no_grad()
def add_evaluation(record: dict, phase: Phase, evals: dict, accuracy, needed: str) -> None:
    """Run the eval ``evals`` (split -> Phase) with ``accuracy(phase)`` and add their figures
    to the epoch ``record`` of training ``phase`` (``needed``: the key counting what they
    need)."""
    for s, ev in evals.items():
        record[f"{s}_acc"] = accuracy(ev)
    record["eval_s"] = sum(ev.seconds for ev in evals.values())
    record["eval_est_s"] = sum(ev.estimate_s for ev in evals.values())
    record["eval_batches"] = sum(ev.batches for ev in evals.values())
    record["eval_total_batches"] = sum(ev.total for ev in evals.values())
    record[needed] += sum(ev.needed_rows for ev in evals.values())
    record["extrapolated"] = phase.capped or any(ev.capped for ev in evals.values())


def accuracy(model, phase: Phase) -> float:
    model.eval()
    correct = total = 0
    for batch in phase:
        pred = model(batch.x.float(), batch.adj_t)[:batch.batch_size].argmax(-1)
        correct += int((pred == batch.y[:batch.batch_size]).sum())
        total += batch.batch_size
    return correct / total if total else float("nan")


def job_estimate(setup_s: float, epochs: list[dict], num_epochs: int) -> float:
    """Whole-job seconds: setup, the epochs run (their phases measured or extrapolated), and
    the epochs not run at the pace of the last one."""
    run = sum(e["epoch_est_s"] + e["eval_est_s"] for e in epochs)
    if epochs:
        run += (num_epochs - len(epochs)) * (epochs[-1]["epoch_est_s"] + epochs[-1]["eval_est_s"])
    return setup_s + run


def main() -> int:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--features", type=Path, required=True, help="the features as one .npy")
    ap.add_argument("--export", action="store_true",
                    help="write DATASET's features to --features, then exit")
    ap.add_argument("--fanouts", default="10,10")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--eval-batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="NeighborLoader num_workers")
    ap.add_argument("--advice", choices=("normal", "random"), default="normal",
                    help="madvise on the feature map (normal: the kernel's readahead)")
    ap.add_argument("--max-batches", type=int, default=0, help="cap per phase (0: none)")
    ap.add_argument("--max-phase-s", type=float, default=0.0,
                    help="cap per phase in seconds (0: none)")
    args = ap.parse_args()
    if args.export:
        export_features(args.dataset, args.features)
        return 0
    try:
        from torch_geometric.loader import NeighborLoader
        from torch_geometric.nn import GraphSAGE
    except ImportError as e:
        print(f"pyg_peer: error: PyTorch Geometric is not installed ({e}); pip install "
              "torch-geometric torch-sparse torch-scatter (the `bench` extra)", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    data, splits, num_classes = build_data(args.dataset, args.features, args.advice)
    common = {"num_neighbors": fanouts, "num_workers": args.workers,
              "persistent_workers": args.workers > 0}
    train_loader = NeighborLoader(data, input_nodes=splits["train"], batch_size=args.batch_size,
                                  shuffle=True, **common)
    eval_loaders = {s: NeighborLoader(data, input_nodes=splits[s],
                                      batch_size=args.eval_batch_size, **common)
                    for s in ("val", "test") if splits[s].numel()}
    model = GraphSAGE(data.x.shape[1], args.hidden, num_layers=len(fanouts),
                      out_channels=num_classes, dropout=args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    row_bytes = data.x.shape[1] * data.x.element_size()
    setup_s = time.perf_counter() - t_start

    epochs = []
    for epoch in range(args.epochs):
        phase = Phase(train_loader, args.max_batches, args.max_phase_s)
        loss = train_epoch(model, opt, phase)
        record = {"epoch": epoch, "loss": loss, "batches": phase.batches,
                  "total_batches": phase.total, "epoch_s": phase.seconds,
                  "epoch_est_s": phase.estimate_s, "needed_rows": phase.needed_rows}
        evals = {s: Phase(loader, args.max_batches, args.max_phase_s)
                 for s, loader in eval_loaders.items()}
        add_evaluation(record, phase, evals, lambda ev: accuracy(model, ev), "needed_rows")
        epochs.append(record)
        print(json.dumps(record), file=sys.stderr)
        if record["extrapolated"]:
            break

    extrapolated = any(e["extrapolated"] for e in epochs)
    last = epochs[-1] if epochs else {}
    print(json.dumps({
        "system": "pyg", "workers": args.workers, "advice": args.advice,
        "epochs": args.epochs, "epochs_run": len(epochs), "setup_s": setup_s,
        "extrapolated": extrapolated, "job_est_s": job_estimate(setup_s, epochs, args.epochs),
        "val_acc": None if extrapolated else last.get("val_acc"),
        "test_acc": None if extrapolated else last.get("test_acc"),
        "needed_bytes": sum(e["needed_rows"] for e in epochs) * row_bytes,
        "torch_threads": torch.get_num_threads(), "per_epoch": epochs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
