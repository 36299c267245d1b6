"""Offline sampling loses nothing: disktrain's pre-sampled training against online sampling.

Usage: python scripts/offline_vs_online.py [--nodes 30000] [--epochs 5] [--seeds 3]

On one synthetic graph, the same model (2-layer SAGE, hidden 64), fanouts 10,10, batch 512,
epochs and seeds, trained three ways:
  online         every batch sampled afresh while training (a new RNG key per batch), features
                 gathered from the raw array: what an online sampler does;
  offline-reuse  disktrain: one pre-sampled epoch reused every epoch (as DiskGNN);
  offline-cover  disktrain: every epoch pre-sampled.
Prints one JSON line with mean final test accuracy of each and the differences in points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.kernels.sampling import sample_batches
from disktrain.loader.block import Block
from disktrain.models.gnn import GNNConfig, ModelConfig, build_model
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.sample.plan import sampling_key
from disktrain.storage.dataset import Dataset
from disktrain.train import EvalConfig, TrainConfig, train
from disktrain.train.checkpoint import CheckpointConfig
from disktrain.train.evaluate import evaluate

FANOUTS, BATCH, HIDDEN = (10, 10), 512, 64


def train_online(path: Path, epochs: int, seed: int) -> float:
    ds = Dataset(path)
    raw = torch.from_numpy(ds.feature_rows(0, ds.num_nodes))
    labels = torch.from_numpy(np.asarray(ds.labels))
    torch.manual_seed(seed)
    model = build_model(GNNConfig(model="sage", in_dim=ds.meta.feature_dim, hidden=HIDDEN,
                                  num_classes=ds.meta.num_classes, num_layers=len(FANOUTS)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    train_ids = np.asarray(ds.split("train"), np.int64)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(train_ids)
        model.train()
        for i in range(0, len(order), BATCH):
            seeds = order[i:i + BATCH]
            out = sample_batches(ds.indptr, ds.indices, seeds, np.array([0, len(seeds)]),
                                 np.asarray(FANOUTS), sampling_key(seed, epoch * 100_003 + i))
            batch = out.batch(0)
            deg = ds.in_degrees(batch.input_nodes)
            blocks = [Block.from_numpy(s, d, ns, nd, deg) for s, d, ns, nd in batch.blocks]
            x = raw[torch.from_numpy(batch.input_nodes)]
            opt.zero_grad()
            F.cross_entropy(model(x, blocks), labels[torch.from_numpy(seeds)]).backward()
            opt.step()
    return evaluate(model, ds, "test", FANOUTS, 4096, seed, torch.device("cpu"))


def train_offline(path: Path, epochs: int, seed: int, sampled_epochs: int, work: Path) -> float:
    for store in ("samples", "packed"):
        shutil.rmtree(path / store, ignore_errors=True)
    sample_dataset(path, SampleConfig(fanouts=FANOUTS, batch_size=BATCH,
                                      epochs=sampled_epochs, seed=seed), progress=False)
    pack_dataset(path, PackConfig(), progress=False)
    ckpt = CheckpointConfig(dir=str(work / f"ck-{seed}-{sampled_epochs}"))
    out = train(TrainConfig(dataset=str(path), model=ModelConfig(model="sage", hidden=HIDDEN),
                            epochs=epochs, seed=seed, evaluation=EvalConfig(every=epochs),
                            progress=False,
                            checkpoint=ckpt))
    return out["test_acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=30_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offline-online-"))
    try:
        path = work / "ds"
        synthesize(SynthConfig(out=path, num_nodes=args.nodes, avg_degree=10, feature_dim=64,
                               num_classes=8, seed=0, noise=1.0, progress=False))
        acc = {"online": [], "offline-reuse": [], "offline-cover": []}
        for seed in range(args.seeds):
            acc["online"].append(train_online(path, args.epochs, seed))
            acc["offline-reuse"].append(train_offline(path, args.epochs, seed, 1, work))
            acc["offline-cover"].append(train_offline(path, args.epochs, seed, args.epochs,
                                                      work))
        mean = {k: float(np.mean(v)) for k, v in acc.items()}
        print(json.dumps({
            "nodes": args.nodes, "epochs": args.epochs, "seeds": args.seeds,
            "mean_test_acc": {k: round(v, 4) for k, v in mean.items()},
            "per_seed": acc,
            "reuse_minus_online_points": round(100 * (mean["offline-reuse"] - mean["online"]), 2),
            "cover_minus_online_points": round(100 * (mean["offline-cover"] - mean["online"]), 2),
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
