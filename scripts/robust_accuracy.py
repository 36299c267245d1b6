"""Test accuracy under Byzantine attacks, per aggregation rule (simulated workers, one process).

Usage: python scripts/robust_accuracy.py [--nodes 20000] [--workers 7] [--f 2] [--epochs 4]
                                         [--rules mean,median,...] [--attacks none,sign-flip,...]

n workers train GraphSAGE on the pre-sampled batches of a synthetic graph (the demo's
generator). Each step, the n - f honest workers each compute a gradient on their own batch;
the f Byzantine rows are what `disktrain.robust.craft` sends for the attack; the rule
(`disktrain.robust.aggregate`) combines the n rows into the step: the arithmetic of
attacking workers (`ByzantineWorker`) and `RobustAggregate` after its all-gather, without the
processes. Attacks: sign-flip (the
negated honest mean), ipm (eps 4: more than enough to turn the mean around at f=2 of 7),
alie (the standard z), gaussian (std 1). Prints one JSON line: test accuracy per rule and
attack, and each rule's worst case. Works in a temporary directory, deleted at the end.
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
from disktrain.loader.pipeline import PackedLoader
from disktrain.models.gnn import GNNConfig, build_model
from disktrain.pack import PackConfig, pack_dataset
from disktrain.robust import RobustConfig, aggregate, craft
from disktrain.robust.grads import flat_grads, set_flat_grads
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.train.evaluate import evaluate

ATTACK_PARAMS = {"sign-flip": {}, "ipm": {"eps": 4.0}, "alie": {}, "gaussian": {"std": 1.0}}


def run(loader: PackedLoader, rule: str, attack: str, args) -> float:
    torch.manual_seed(0)
    meta = loader.dataset.meta
    fanouts = loader.samples.config.fanouts
    model = build_model(GNNConfig(model="sage", in_dim=meta.feature_dim, hidden=64,
                                  num_classes=meta.num_classes, num_layers=len(fanouts)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    params = list(model.parameters())
    cfg = RobustConfig(aggregator=rule, f=args.f)
    honest_n = args.workers - (0 if attack == "none" else args.f)
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(0)
    for _ in range(args.epochs):
        order = rng.permutation(loader.num_batches)
        for at in range(0, len(order) - honest_n + 1, honest_n):
            rows = []
            for mb in loader(order[at:at + honest_n]):
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(mb.x, mb.blocks), mb.labels).backward()
                rows.append(flat_grads(params))
            honest = torch.stack(rows)
            if attack != "none":
                bad = craft(attack, honest, n_total=args.workers, f=args.f, generator=gen,
                            **ATTACK_PARAMS[attack])
                honest = torch.cat([honest, bad.expand(args.f, -1)])
            set_flat_grads(params, aggregate(honest, cfg))
            opt.step()
    return evaluate(model, loader.dataset, "test", fanouts, 4096, 0, torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=7)
    ap.add_argument("--f", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rules", default="mean,median,trimmed-mean,krum,geomed,flag")
    ap.add_argument("--attacks", default="none,sign-flip,ipm,alie,gaussian")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="robust-acc-"))
    try:
        path = work / "ds"
        synthesize(SynthConfig(out=path, num_nodes=args.nodes, avg_degree=10, feature_dim=64,
                               num_classes=8, seed=0, progress=False))
        sample_dataset(path, SampleConfig(fanouts=(10, 10), batch_size=args.batch_size,
                                          epochs=1, seed=0), progress=False)
        pack_dataset(path, PackConfig(), progress=False)
        loader = PackedLoader(path)
        acc = {rule: {attack: round(run(loader, rule, attack, args), 4)
                      for attack in args.attacks.split(",")}
               for rule in args.rules.split(",")}
        print(json.dumps({"nodes": args.nodes, "workers": args.workers, "f": args.f,
                          "epochs": args.epochs, "test_acc": acc,
                          "worst_under_attack": {
                              r: min(v for k, v in a.items() if k != "none")
                              for r, a in acc.items()}}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
