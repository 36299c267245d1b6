"""Same results before and after a change: prepared stores and trained parameters, bit for bit.

Usage: python scripts/same_results.py run CHECKOUT OUT [--cora DIR]
       python scripts/same_results.py compare OUT_BEFORE OUT_AFTER

``run`` uses CHECKOUT's own environment (``CHECKOUT/.venv/bin/disktrain``, so each checkout
runs its own code) to make, under OUT: ``disktrain demo --out OUT/demo`` (synth, prepare, SAGE
and MLP, fresh epochs), and on Cora (``../shared/datasets/cora``) ingest, ``prepare --fanouts
10,5 --batch-size 32 --epochs 2``, SAGE for 4 epochs (two of them fresh) and GCN for 3 (plan
reused), with checkpoints. ``compare`` decodes every Zarr array of both outputs with
``zarr.open`` (so a change of the file format still compares the data) and compares dtype,
shape and bytes; compares the final checkpoints' model tensors; and the summaries' accuracies,
steps and parameter digests. Prints SAME or what differs (exit 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CORA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cora"
CHECKPOINTS = ("demo/ckpt-sage", "demo/ckpt-mlp", "ck_sage", "ck_gcn")


def run(checkout: Path, out: Path, cora: Path) -> None:
    cli = str(checkout.resolve() / ".venv" / "bin" / "disktrain")
    out.mkdir(parents=True, exist_ok=False)

    def call(*args: str, log: str | None = None) -> None:
        result = subprocess.run([cli, *args, "--no-progress"], cwd=out, check=True,
                                capture_output=True, text=True)
        if log:
            (out / log).write_text(result.stdout)

    call("demo", "--out", "demo", log="demo.json")
    call("ingest", "--edges", str(cora / "edges.parquet"), "--out", "cora",
         "--features", str(cora / "features.npy"), "--labels", str(cora / "labels.npy"),
         *(a for s in ("train", "val", "test") for a in (f"--{s}", str(cora / f"{s}_idx.npy"))))
    call("prepare", "cora", "--fanouts=10,5", "--batch-size", "32", "--epochs", "2")
    call("train", "cora", "--model", "sage", "--epochs", "4", "--hidden", "16", "--seed", "3",
         "--checkpoint-dir", "ck_sage", log="sage.json")
    call("train", "cora", "--model", "gcn", "--epochs", "3", "--hidden", "16", "--seed", "1",
         "--plan-reuse", "cycle", "--checkpoint-dir", "ck_gcn", log="gcn.json")


def arrays(root: Path) -> dict[str, Path]:
    """Every Zarr array under ``root`` (checkpoint directories aside), by relative path."""
    found = {}
    for meta in root.rglob("zarr.json"):
        rel = meta.parent.relative_to(root)
        if not any(p.startswith("ck") for p in rel.parts) and \
                json.loads(meta.read_text()).get("node_type") == "array":
            found[str(rel)] = meta.parent
    return found


def model_state(directory: Path) -> dict:
    import torch

    newest = max(directory.glob("ckpt-*.pt"))
    return torch.load(newest, weights_only=True, map_location="cpu")["model"]


def compare(before: Path, after: Path) -> list[str]:
    import torch
    import zarr

    bad = []
    for name in ("demo", "cora"):
        a, b = arrays(before / name), arrays(after / name)
        bad += [f"{name}/{k}: only in one output" for k in sorted(set(a) ^ set(b))]
        for key in sorted(set(a) & set(b)):
            x, y = (zarr.open_array(d[key], mode="r")[...] for d in (a, b))
            if (x.dtype, x.shape) != (y.dtype, y.shape) or x.tobytes() != y.tobytes():
                bad.append(f"{name}/{key}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}, differ")
        print(f"{name}: {len(set(a) & set(b))} arrays compared")
    for ck in CHECKPOINTS:
        x, y = model_state(before / ck), model_state(after / ck)
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            bad.append(f"{ck}: model parameters differ")
    for log in ("sage.json", "gcn.json"):
        x, y = (json.loads((d / log).read_text().splitlines()[-1]) for d in (before, after))
        bad += [f"{log}: {k} {x.get(k)} vs {y.get(k)}"
                for k in ("val_acc", "test_acc", "steps", "params_sha256") if x.get(k) != y.get(k)]
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("checkout", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--cora", type=Path, default=CORA)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args(argv)
    if args.command == "run":
        run(args.checkout, args.out, args.cora)
        return 0
    bad = compare(args.before, args.after)
    print("SAME" if not bad else "DIFFERENT:\n" + "\n".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
