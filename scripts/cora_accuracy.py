"""Cora through the full disktrain path (CLI: ingest, prepare, train), mean test accuracy.

Usage: python scripts/cora_accuracy.py [--cora ../shared/datasets/cora] [--seeds 5]
                                       [--first-hop]

Public split (140/500/1000), full neighborhoods (fanouts -1,-1), one batch of all 140 train
nodes, 200 epochs; per model the settings below. Prints one JSON line with the per-seed and
mean test accuracy of each model, its mean epoch time and per-stage split. With
``--first-hop``, each model twice without input dropout (which a pre-aggregated first layer
cannot take): on plain packed batches and on batches prepared with ``--aggregate-first-hop``
(mean for sage, gcn for gcn). Works in a temporary directory, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SETTINGS = {
    "sage": ["--hidden", "16", "--weight-decay", "5e-3", "--input-dropout", "0.5"],
    "gcn": ["--hidden", "16", "--weight-decay", "2e-3", "--input-dropout", "0.5"],
}
AGGREGATE = {"sage": "mean", "gcn": "gcn"}
"""The first-hop aggregation each model takes (``--first-hop``)."""


def disktrain(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "disktrain", *args], check=False,
                         capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"disktrain {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cora", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cora")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--first-hop", action="store_true",
                    help="compare plain and first-hop aggregated batches (no input dropout)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cora-acc-"))
    try:
        ds = work / "cora"
        c = args.cora
        disktrain("ingest", "--edges", str(c / "edges.parquet"), "--out", str(ds),
                  "--features", str(c / "features.npy"), "--labels", str(c / "labels.npy"),
                  "--train", str(c / "train_idx.npy"), "--val", str(c / "val_idx.npy"),
                  "--test", str(c / "test_idx.npy"), "--no-progress")
        report = {}
        runs = [(m, extra, "off") for m, extra in SETTINGS.items()]
        if args.first_hop:
            runs = [(f"{m}/{agg}", [*extra[:-2], "--input-dropout", "0"], agg)
                    for m, extra in SETTINGS.items() for agg in ("off", AGGREGATE[m])]
        for name, extra, aggregate in runs:
            model = name.split("/")[0]
            disktrain("prepare", str(ds), "--fanouts=-1,-1", "--batch-size", "140",
                      "--aggregate-first-hop", aggregate, "--no-progress")
            accs, times, stages = [], [], []
            for seed in range(args.seeds):
                ckpt = work / f"ck-{name.replace('/', '-')}-{seed}"
                out = disktrain("train", str(ds), "--model", model, "--epochs",
                                str(args.epochs), "--seed", str(seed), "--eval-every",
                                str(args.epochs), "--checkpoint-dir", str(ckpt),
                                "--no-progress", *extra)
                result = json.loads(out.strip().splitlines()[-1])
                accs.append(result["test_acc"])
                times.append(result["epoch_time_s"])
                stages.append(result["stage_s"])
            report[name] = {"mean_test_acc": round(float(np.mean(accs)), 4),
                             "std": round(float(np.std(accs)), 4), "per_seed": accs,
                             "epoch_time_s": round(float(np.mean(times)), 4),
                             "stage_s": {k: round(float(np.mean([s[k] for s in stages])), 4)
                                         for k in stages[0]}}
        print(json.dumps(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
