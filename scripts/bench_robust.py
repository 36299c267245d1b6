"""Worst-case test accuracy of every aggregation rule under Byzantine attacks (ByzFL's protocol),
through real attacking workers under torchrun (gloo, CPU).

Usage: python scripts/bench_robust.py [--datasets cora,synth] [--workers 8] [--f 1,2,3]
           [--seeds 0,1,2] [--epochs 25] [--sampled-epochs 8] [--eval-every 5]
           [--optimizer sgd] [--lr 1.0] [--momentum 0] [--worker-momentum 0.9]
           [--rules mean,trimmed-mean,...] [--pre-aggregate ,nnm] [--attacks sign-flip,ipm,...]
           [--out DIR]
       python scripts/bench_robust.py --merge DIR1,DIR2 --out DIR   (one summary of parts)

The defaults are ByzFL's benchmark as run for the README: honest workers send the running
average of their gradients (beta 0.9) and the server's SGD has no momentum of its own; Cora's
140 training nodes in batches of 4 give 8 workers 4 steps an epoch, 100 in 25 epochs.
`--worker-momentum 0 --momentum 0.9 --lr 0.2 --epochs 8 --sampled-epochs 0 --eval-every 0`
is the earlier protocol (server momentum, 32 steps).

For each dataset and seed, one torchrun job of n = --workers processes (OMP_NUM_THREADS=1, one
torch thread each) trains GraphSAGE once per (rule, pre-aggregation, f, attack) with
`disktrain.train.train`: the last f ranks are ByzantineWorkers that send the attack (or train on
flipped labels) through the real all-gather, and the rule tolerates f. Each job also trains the
attack-free baseline (the plain mean, no attacker), per f ByzFL's attack-free baseline (the last
f ranks send nothing: the mean of the n - f honest workers, on the honest data alone) and, with
--attack-free, every rule without attackers. Steps whose aggregate is not finite are skipped
(the mean under a NaN attack then never updates). A (rule, f) the rule cannot tolerate among n
(e.g. Bulyan's n >= 4f + 3) is left out and listed; the mean is run without NNM (its f is 0, so
NNM would mix all n rows).

Datasets: cora (../shared/datasets/cora, the public split, ingested as in the README) and
synth (a small planted-class graph of disktrain.ingest.synth). Accuracy per attack is the mean over
seeds, in two measures: "final" (after the last epoch) and "best" (ByzFL's: the maximum over
the evaluation points, every --eval-every epochs, of the seed-mean accuracy); a rule's worst
case is the minimum of those over the attacks (ByzFL's "worst-case accuracy"). Writes
DIR/runs.jsonl (one record per training run, with its accuracy curve), DIR/bench_robust.json
(the summary, also printed), DIR/bench_robust.png (heatmaps of worst-case accuracy, rules x f,
a row per measure, a column per dataset) and DIR/bench_robust.md (the same as Markdown tables).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORA = ROOT.parent / "shared" / "datasets" / "cora"
DEFAULT_RULES = "mean,trimmed-mean,geomed,flag"
DEFAULT_ATTACKS = "sign-flip,alie,inf,label-flip"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def prepare(name: str, work: Path, epochs: int, batch_size: int) -> Path:
    """Dataset ``name`` ingested or generated under ``work``, sampled for ``epochs`` epochs and
    packed (val and test too)."""
    from disktrain.pack import PackConfig
    from disktrain.pack.prepare import prepare_dataset
    from disktrain.sample import SampleConfig

    path = work / name
    if name == "cora":
        from disktrain.ingest import IngestConfig, ingest

        if not CORA.exists():
            raise SystemExit(f"{CORA}: the Cora files are missing (drop cora from --datasets)")
        ingest(IngestConfig(edges=CORA / "edges.parquet", out=path,
                            features=CORA / "features.npy", labels=CORA / "labels.npy",
                            train=CORA / "train_idx.npy", val=CORA / "val_idx.npy",
                            test=CORA / "test_idx.npy", progress=False))
    elif name == "synth":
        from disktrain.ingest.synth import SynthConfig, synthesize

        synthesize(SynthConfig(out=path, num_nodes=3000, avg_degree=8, feature_dim=32,
                               num_classes=6, seed=0, train_fraction=0.05, val_fraction=0.2,
                               test_fraction=0.3, progress=False))
    else:
        raise SystemExit(f"--datasets: unknown {name!r}; choose from cora, synth")
    prepare_dataset(path, SampleConfig(fanouts=(10, 10), batch_size=batch_size, epochs=epochs,
                                       seed=0), PackConfig(), progress=False)
    return path


def robust_config(rule: str, f: int, chain):
    """The RobustConfig of rule spec ``rule`` ("flag", or "flag/r=8" for Flag with subspace
    dimension 8: r = n makes its projection the identity, leaving the normalized mean) under
    ``f`` attackers, after the pre-aggregators ``chain`` (the mean tolerates f = 0)."""
    from disktrain.robust import RobustConfig

    name, _, sub = rule.partition("/r=")
    return RobustConfig(aggregator=name, f=0 if name == "mean" else f,
                        pre_aggregate=tuple(chain), subspace=int(sub) if sub else 0)


def jobs(args) -> tuple[list[dict], list[dict]]:
    """(the training runs of one dataset and seed, the (rule, f) left out and why)."""
    from disktrain.errors import ConfigError
    from disktrain.robust import AttackConfig
    from disktrain.train import TrainConfig

    n = args.workers
    runs = [{"rule": "mean", "pre_aggregate": [], "f": 0, "attack": "none"}]
    runs += [{"rule": "mean", "pre_aggregate": [], "f": f, "attack": ABSENT} for f in args.f]
    skipped = []
    for f in args.f:
        ranks = tuple(range(n - f, n))
        for rule in args.rules:
            for chain in args.pre_aggregate:
                if rule == "mean" and chain:
                    continue
                robust = robust_config(rule, f, chain)
                try:
                    TrainConfig(dataset="-", robust=robust,
                                attack=AttackConfig(attack="nan", ranks=ranks)
                                ).check_world_size(n)
                except ConfigError as e:
                    skipped.append({"rule": rule, "pre_aggregate": list(chain), "f": f,
                                    "why": str(e)})
                    continue
                for attack in (["none"] if args.attack_free else []) + args.attacks:
                    runs.append({"rule": rule, "pre_aggregate": list(chain), "f": f,
                                 "attack": attack})
    return runs, skipped


ABSENT = "absent"
"""The baseline "attack" of ByzFL's attack-free runs: the last f ranks train but send nothing;
the step is the mean of the n - f honest workers' vectors (the honest data alone)."""


class HonestMean:
    """Grad-sync step of the ABSENT baseline: every rank gathers the flat gradients and averages
    the rows of ``honest`` ranks."""

    def __init__(self, honest: list[int]) -> None:
        self.honest = honest

    def __call__(self, params) -> None:
        from disktrain.robust.grads import flat_grads, set_flat_grads
        from disktrain.robust.sync import gather

        set_flat_grads(params, gather(flat_grads(params))[self.honest].mean(dim=0))


def worker(spec_path: str) -> None:
    """One rank of a torchrun job: train every run of the spec; rank 0 appends the records."""
    from disktrain.models import ModelConfig
    from disktrain.robust import AttackConfig
    from disktrain.train import EvalConfig, OptimizerConfig, TrainConfig, train
    from disktrain.train.checkpoint import CheckpointConfig

    spec = json.loads(Path(spec_path).read_text())
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    for i, run in enumerate(spec["runs"]):
        f = run["f"]
        attack = None if run["attack"] in ("none", ABSENT) else AttackConfig(
            attack=run["attack"], ranks=tuple(range(n - f, n)), seed=spec["seed"])
        cfg = TrainConfig(
            dataset=spec["dataset"], epochs=spec["epochs"], seed=spec["seed"],
            optimizer=OptimizerConfig(optimizer=spec["optimizer"], lr=spec["lr"],
                                      momentum=spec["momentum"],
                                      weight_decay=spec["weight_decay"]),
            model=ModelConfig(model="sage", hidden=spec["hidden"], dropout=0.5),
            robust=robust_config(run["rule"], f, run["pre_aggregate"]),
            worker_momentum=spec["worker_momentum"], attack=attack, plan_reuse="cycle",
            evaluation=EvalConfig(every=spec["eval_every"]),
            on_nonfinite="skip", compute_threads=1, progress=False,
            metrics=os.path.join(spec["scratch"], f"metrics{i}.jsonl"),
            checkpoint=CheckpointConfig(dir=os.path.join(spec["scratch"], f"ck{i}")))
        t0 = time.perf_counter()
        summary = train(cfg, grad_sync=HonestMean(list(range(n - f)))
                        if run["attack"] == ABSENT else None)
        if rank == 0:
            metrics = Path(cfg.metrics)
            curve = [[r["epoch"] + 1, r["test_acc"]] for r in map(
                json.loads, metrics.read_text().splitlines()) if "test_acc" in r]
            record = {**run, "dataset": spec["name"], "seed": spec["seed"],
                      "test_acc": summary["test_acc"], "val_acc": summary["val_acc"],
                      "loss": summary["loss"], "steps": summary["steps"],
                      "skipped_steps": summary["skipped_steps"], "curve": curve,
                      "seconds": time.perf_counter() - t0}
            with open(spec["records"], "a") as out:
                out.write(json.dumps(record) + "\n")
            shutil.rmtree(os.path.join(spec["scratch"], f"ck{i}"), ignore_errors=True)
            metrics.unlink()
            print(f"{spec['name']} seed {spec['seed']} f={f} {run['rule']}"
                  f"{'+' + '+'.join(run['pre_aggregate']) if run['pre_aggregate'] else ''} "
                  f"{run['attack']}: test {summary['test_acc']:.3f} "
                  f"({record['seconds']:.1f} s)", flush=True)


def launch(spec: dict, work: Path, n: int) -> None:
    """Run ``spec`` as one torchrun job of ``n`` processes."""
    spec_path = work / f"spec-{spec['name']}-{spec['seed']}.json"
    spec_path.write_text(json.dumps(spec))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(TORCHRUN), "--nnodes=1", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(Path(__file__).resolve()), "--worker", str(spec_path)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def variant(record: dict) -> str:
    """A rule and its pre-aggregators, e.g. "flag+nnm"."""
    return "+".join([record["rule"], *record["pre_aggregate"]])


MEASURES = {"final": "test accuracy after the last epoch",
            "best": "best test accuracy over the evaluations (ByzFL's measure: the maximum, "
                    "over evaluation points, of the seed-mean accuracy)"}


def accuracy(records: list[dict]) -> dict[str, float]:
    """The seed-mean final test accuracy of ``records`` (one per seed) and the best over the
    evaluation points of the seed-mean curve (a record without a curve: its final one)."""
    curves: dict[int, list[float]] = {}
    for r in records:
        for epoch, acc in r.get("curve") or [[-1, r["test_acc"]]]:
            curves.setdefault(epoch, []).append(acc)
    return {"final": sum(r["test_acc"] for r in records) / len(records),
            "best": max(sum(v) / len(v) for v in curves.values())}


def summarize(records: list[dict], skipped: list[dict], args) -> dict:
    """Per dataset: the attack-free baseline, and per rule variant and f the seed-mean accuracy
    under each attack and the worst case over the attacks, in both MEASURES."""
    out = {}
    for name in args.datasets:
        mine = [r for r in records if r["dataset"] == name]
        base = [r for r in mine if r["attack"] == "none" and r["rule"] == "mean" and r["f"] == 0]
        honest = {}
        for r in mine:
            if r["attack"] == ABSENT:
                honest.setdefault(str(r["f"]), []).append(r)
        table: dict[str, dict[str, dict]] = {}
        for r in mine:
            if r["f"] == 0 or r["attack"] == ABSENT:
                continue
            cell = table.setdefault(variant(r), {}).setdefault(str(r["f"]), {})
            cell.setdefault(r["attack"], []).append(r)
        for cells in table.values():
            for f, cell in cells.items():
                acc = {a: accuracy(v) for a, v in cell.items()}
                cells[f] = {}
                for m in MEASURES:
                    attacked = {a: v[m] for a, v in acc.items() if a != "none"}
                    worst = min(attacked, key=attacked.get) if attacked else None
                    cells[f][m] = {"accuracy": {a: v[m] for a, v in acc.items()},
                                   "worst": attacked.get(worst), "worst_attack": worst}
        out[name] = {"attack_free_mean": accuracy(base) if base else None,
                     "honest_only_mean": {f: accuracy(v) for f, v in honest.items()},
                     "rules": table}
    return {"workers": args.workers, "f": args.f, "seeds": args.seeds, "epochs": args.epochs,
            "sampled_epochs": args.sampled_epochs, "eval_every": args.eval_every,
            "optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
            "worker_momentum": args.worker_momentum, "weight_decay": args.weight_decay,
            "batch_size": args.batch_size, "rules": args.rules,
            "pre_aggregate": [list(c) for c in args.pre_aggregate], "attacks": args.attacks,
            "measures": MEASURES, "datasets": out, "left_out": skipped}


def rule_rows(summary: dict) -> list[str]:
    """The rule variants of ``summary``, the mean first."""
    return sorted({v for d in summary["datasets"].values() for v in d["rules"]},
                  key=lambda v: (v.split("+")[0] != "mean", v))


def heatmap(summary: dict, path: Path) -> None:
    """Worst-case accuracy, rule variants x f: a row of panels per measure, a column per
    dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary["datasets"])
    fs = [str(f) for f in summary["f"]]
    rows = rule_rows(summary)
    fig, axes = plt.subplots(len(MEASURES), len(names), squeeze=False,
                             figsize=((2.4 + 0.8 * len(fs)) * len(names),
                                      (1.2 + 0.4 * len(rows)) * len(MEASURES)))
    for m, panels in zip(MEASURES, axes, strict=True):
        for ax, name in zip(panels, names, strict=True):
            data = summary["datasets"][name]
            grid = np.full((len(rows), len(fs)), np.nan)
            for i, v in enumerate(rows):
                for j, f in enumerate(fs):
                    worst = data["rules"].get(v, {}).get(f, {}).get(m, {}).get("worst")
                    grid[i, j] = np.nan if worst is None else worst
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for i in range(len(rows)):
                for j in range(len(fs)):
                    text = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if np.isnan(grid[i, j]) or grid[i, j] < 0.6
                            else "black")
            ax.set_xticks(range(len(fs)), [f"f={f}" for f in fs])
            ax.set_yticks(range(len(rows)), rows)
            base = data["attack_free_mean"]
            honest = ", ".join(f"f={f}: {h[m]:.2f}"
                               for f, h in sorted(data.get("honest_only_mean", {}).items()))
            ax.set_title(f"{name}, n={summary['workers']}, {m}\nattack-free mean "
                         f"{'n/a' if base is None else f'{base[m]:.2f}'}"
                         + (f"\nhonest only {honest}" if honest else ""), fontsize=9)
    fig.suptitle("worst-case test accuracy over attacks", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def markdown(summary: dict) -> str:
    """The worst-case tables as Markdown, one per measure: a row per rule variant, per dataset
    and f the worst-case accuracy and the attack that reached it; the attack-free means first
    (all n workers, and the n - f honest ones alone)."""
    names, fs = list(summary["datasets"]), [str(f) for f in summary["f"]]
    head = [f"{name} f={f}" for name in names for f in fs]
    out = []
    for m, says in MEASURES.items():
        lines = [f"Worst case over attacks, {says}:", "",
                 "| rule | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
        base = [summary["datasets"][name]["attack_free_mean"] for name in names]
        lines.append("| attack-free mean | " + " | ".join(
            "n/a" if b is None else f"{b[m]:.3f}" for b in base for _ in fs) + " |")
        honest = [summary["datasets"][name].get("honest_only_mean", {}).get(f)
                  for name in names for f in fs]
        if any(honest):
            lines.append("| attack-free mean, honest workers only | " + " | ".join(
                "n/a" if h is None else f"{h[m]:.3f}" for h in honest) + " |")
        for v in rule_rows(summary):
            cells = []
            for name in names:
                for f in fs:
                    cell = summary["datasets"][name]["rules"].get(v, {}).get(f, {}).get(m)
                    cells.append("n/a" if not cell or cell["worst"] is None else
                                 f"{cell['worst']:.3f} ({cell['worst_attack']})")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from disktrain.robust import AGGREGATORS, PRE_AGGREGATORS, WORKER_ATTACKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="cora,synth")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--f", default="1,2,3", help="attacking workers, each tried (default: "
                    "%(default)s)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--sampled-epochs", type=int, default=8, help="epochs sampled and packed; "
                    "training cycles through them (0: as many as --epochs; default: "
                    "%(default)s)")
    ap.add_argument("--eval-every", type=int, default=5, help="evaluate every this many "
                    "epochs (and after the last); the 'best' measure is the maximum over them "
                    "(0: after the last epoch only; default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=4, help="seeds per batch: Cora trains "
                    "140 nodes, so 8 workers take 4 steps an epoch at 4 (default: %(default)s)")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                    help="sgd (with --momentum), as the robustness literature trains, or adam "
                    "(default: %(default)s)")
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--momentum", type=float, default=0.0, help="the server's SGD momentum "
                    "(default: %(default)s)")
    ap.add_argument("--worker-momentum", type=float, default=0.9, help="each worker sends "
                    "the running average of its gradients with this beta (ByzFL: 0.9, with "
                    "--momentum 0; 0: off) (default: %(default)s)")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--rules", default=DEFAULT_RULES,
                    help=f"from {', '.join(AGGREGATORS)}; flag/r=K sets Flag's subspace "
                    "dimension (default r = f + 1; r = n: the normalized mean alone) "
                    "(default: %(default)s)")
    ap.add_argument("--pre-aggregate", default=",nnm",
                    help="pre-aggregation chains, comma-separated, each a '+'-joined list of "
                    f"{', '.join(PRE_AGGREGATORS)}; empty: none (default: '%(default)s': "
                    "without, and with NNM)")
    ap.add_argument("--attacks", default=DEFAULT_ATTACKS,
                    help=f"from {', '.join(WORKER_ATTACKS)} (default: %(default)s)")
    ap.add_argument("--attack-free", action="store_true",
                    help="also train every rule and f without attackers")
    ap.add_argument("--out", type=Path, default=Path("bench_robust"),
                    help="output directory (default: %(default)s)")
    ap.add_argument("--merge", default="", help="train nothing: summarize these earlier "
                    "--out directories (comma-separated, same settings) as one, in --out")
    args = ap.parse_args(argv)
    args.merge = [Path(d) for d in args.merge.split(",") if d]
    args.datasets = args.datasets.split(",")
    args.sampled_epochs = args.sampled_epochs or args.epochs
    args.eval_every = args.eval_every or args.epochs
    args.f = [int(f) for f in args.f.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.rules = args.rules.split(",")
    args.attacks = [a for a in args.attacks.split(",") if a]
    args.pre_aggregate = [tuple(p for p in chain.split("+") if p)
                          for chain in args.pre_aggregate.split(",")]
    for name, given, known in (("--rules", [r.partition("/r=")[0] for r in args.rules],
                                AGGREGATORS),
                               ("--attacks", args.attacks, WORKER_ATTACKS),
                               ("--pre-aggregate", [p for c in args.pre_aggregate for p in c],
                                PRE_AGGREGATORS)):
        if unknown := [g for g in given if g not in known]:
            ap.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if min(args.f) < 1 or max(args.f) >= args.workers:
        ap.error(f"--f must be in [1, {args.workers}), got {args.f}")
    return args


SETTINGS = ("workers", "epochs", "sampled_epochs", "eval_every", "optimizer", "lr", "momentum",
            "worker_momentum", "weight_decay", "batch_size")
"""What runs merged into one summary must share."""


def merge(args) -> None:
    """Summarize the runs of earlier outputs (``args.merge``: directories with runs.jsonl and
    bench_robust.json) as one, in ``args.out``: a grid run in parts (e.g. f = 2, then f = 3)
    gives one table and heatmap. Refused when their settings (SETTINGS) differ."""
    records, wall, first = [], 0.0, None
    for d in args.merge:
        summary = json.loads((d / "bench_robust.json").read_text())
        settings = {k: summary.get(k) for k in SETTINGS}
        if first is not None and (diff := [k for k in SETTINGS if settings[k] != first[k]]):
            raise SystemExit(f"--merge: {d} was run with other settings than {args.merge[0]} "
                             f"({', '.join(f'{k} {settings[k]} vs {first[k]}' for k in diff)})")
        first = first or settings
        wall += summary.get("wall_s", 0.0)
        records += [json.loads(line) for line in (d / "runs.jsonl").read_text().splitlines()]
    seen, unique = set(), []  # a run two parts share (their baseline) counts once
    for r in records:
        key = json.dumps([r[k] for k in ("dataset", "seed", "rule", "pre_aggregate", "f",
                                         "attack")])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    records = unique
    vars(args).update(first)
    args.datasets = sorted({r["dataset"] for r in records})
    args.f = sorted({r["f"] for r in records if r["f"]})
    args.seeds = sorted({r["seed"] for r in records})
    args.rules = sorted({r["rule"] for r in records})
    args.pre_aggregate = sorted({tuple(r["pre_aggregate"]) for r in records})
    args.attacks = sorted({r["attack"] for r in records} - {"none", ABSENT})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_outputs({**summarize(records, jobs(args)[1], args), "runs": len(records),
                   "wall_s": wall, "threads": os.cpu_count()}, args.out)


def write_outputs(summary: dict, out: Path) -> None:
    """The summary's JSON, heatmap and Markdown tables in ``out``; the JSON printed."""
    write_json(summary, out / "bench_robust.json")
    heatmap(summary, out / "bench_robust.png")
    (out / "bench_robust.md").write_text(markdown(summary))
    print(json.dumps(summary))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
        return
    args = parse_args()
    if args.merge:
        merge(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    records_path = args.out / "runs.jsonl"
    records_path.unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-robust-"))
    t0 = time.perf_counter()
    try:
        runs, skipped = jobs(args)
        for name in args.datasets:
            path = prepare(name, work, args.sampled_epochs, args.batch_size)
            for seed in args.seeds:
                scratch = work / f"scratch-{name}-{seed}"
                launch({"name": name, "dataset": str(path), "seed": seed, "runs": runs,
                        "epochs": args.epochs, "eval_every": args.eval_every,
                        "hidden": args.hidden, "lr": args.lr, "optimizer": args.optimizer,
                        "momentum": args.momentum if args.optimizer == "sgd" else 0.0,
                        "worker_momentum": args.worker_momentum,
                        "weight_decay": args.weight_decay,
                        "records": str(records_path.resolve()), "scratch": str(scratch)},
                       work, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    write_outputs({**summarize(records, skipped, args), "runs": len(records),
                   "wall_s": time.perf_counter() - t0, "threads": os.cpu_count()}, args.out)


if __name__ == "__main__":
    main()
