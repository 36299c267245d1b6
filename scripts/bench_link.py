"""Link prediction benchmarks (issue 28). ``--accuracy``: disktrain's SAGE + dot decoder
against the same model trained with PyG's ``LinkNeighborLoader`` (scripts/pyg_link_peer.py),
same split, fanouts, batch size, negatives per positive and epochs, over several seeds.

Usage: python scripts/bench_link.py --accuracy [--cora DIR] [--graphs cora,synth]
           [--synth-nodes 10000] [--synth-avg-degree 5] [--synth-classes 10]
           [--synth-feature-dim 64] [--edge-split 0.85,0.05,0.10] [--split-seed 0]
           [--eval-negatives 1000] [--seeds 3] [--fanouts 10,10] [--batch-size 512]
           [--num-negatives 1] [--epochs 20] [--hidden 128]
           [--systems disktrain,disktrain-pairs,pyg-triplet,pyg]
           [--prebuilt GRAPH=DIR ...]
           [--step-timeout-s 1800] [--workdir /tmp/linkpeer] [--keep]
           [--out docs/perf/link_accuracy.json]

Needs the `bench` extra (torch-geometric, torch-sparse) for the PyG peer. Steps, each a child
process (scripts/_benchlib.py's ``run_measured``):
  1. the datasets, split once (``--split-seed``): Cora ingested with ``--undirected --dedup
     --edge-split``, and a ``disktrain synth`` graph (R-MAT with planted homophilous classes:
     nodes link mostly within their class, whose centroid their features carry) with
     ``--edge-split``; ``--eval-negatives`` stored negatives per val/test edge (or, with
     ``--prebuilt GRAPH=DIR``, a dataset already split);
  2. per seed ``S`` and graph, twice (``disktrain``: ``--negative-mode source``, each
     positive's source kept with K drawn destinations; ``disktrain-pairs``: ``pairs``, drawn
     sources and destinations): ``disktrain prepare --task link --num-negatives K
     --negative-sampling uniform --fanouts F --batch-size B --seed S``, then ``disktrain train
     --task link --decoder dot --model sage --hidden H --epochs E --seed S`` (evaluated after
     the last epoch, on exact full-neighbourhood embeddings); lr, weight decay and dropout are
     both systems' defaults;
  3. per seed and graph: the PyG peer with the same flags, twice: ``pyg`` with
     ``NegativeSampling("binary")`` (random (src, dst) pairs, PyG's usual setup) and
     ``pyg-triplet`` with ``"triplet"`` (each positive's source kept and K random
     destinations, as ``disktrain`` draws them; still BCE over every pair).
Per graph, system, split and metric (MRR, Hits@10/50/100, AUC) the mean and sample standard
deviation over the seeds and the difference of the means (disktrain - peer, each peer against
the disktrain run drawing the same kind of negatives: pyg-triplet against disktrain, pyg against
disktrain-pairs); the goal (AUC and MRR within 1 point of PyG's) is judged on the test split's
means, per pair. Written
to ``--out`` and printed as a table; the work directory is deleted unless ``--keep``. The figures are
accuracies: wall seconds are recorded per step but are no timing claim.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from _benchlib import last_json, run_header, run_measured, stderr_tail, write_json

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
OURS = {"disktrain": "source", "disktrain-pairs": "pairs"}
"""disktrain's runs and their ``--negative-mode``: ``source`` each positive's source kept
with drawn destinations, ``pairs`` a drawn source and destination."""
PEERS = {"pyg-triplet": "triplet", "pyg": "binary"}
"""The PyG peers and their ``NegativeSampling`` mode, the same negatives as ``MATCH``'s."""
MATCH = {"pyg-triplet": "disktrain", "pyg": "disktrain-pairs"}
"""Each peer and the disktrain run drawing its kind of negatives, the pair compared."""
SYSTEMS = (*OURS, *PEERS)
METRICS = ("mrr", "hits@10", "hits@50", "hits@100", "auc")
"""The metrics summarized (disktrain.train.linkmetrics.link_metrics')."""
GOAL_METRICS = ("auc", "mrr")
GOAL_POINTS = 0.01
"""disktrain's test AUC and MRR means may be at most this far below PyG's."""


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accuracy", action="store_true", required=True,
                    help="disktrain against the PyG peer, accuracy over seeds")
    ap.add_argument("--cora", type=Path, default=ROOT.parent / "shared" / "datasets" / "cora")
    ap.add_argument("--graphs", default="cora,synth")
    ap.add_argument("--prebuilt", action="append", default=[], metavar="GRAPH=DIR",
                    help="use this dataset, already split for link prediction, as GRAPH "
                    "instead of making it (repeatable)")
    ap.add_argument("--synth-nodes", type=int, default=10000)
    ap.add_argument("--synth-avg-degree", type=float, default=5.0)
    ap.add_argument("--synth-classes", type=int, default=10)
    ap.add_argument("--synth-feature-dim", type=int, default=64)
    ap.add_argument("--edge-split", default="0.85,0.05,0.10")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--eval-negatives", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fanouts", default="10,10")
    ap.add_argument("--batch-size", type=int, default=512, help="positive edges per batch")
    ap.add_argument("--num-negatives", type=int, default=1, help="negatives per positive")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--step-timeout-s", type=float, default=1800.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/linkpeer"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "perf" / "link_accuracy.json")
    ap.set_defaults(memory_limit=None)  # run_header's field: no memory limit here
    args = ap.parse_args(argv)
    for name, allowed in (("graphs", ("cora", "synth")), ("systems", SYSTEMS)):
        values = getattr(args, name).split(",")
        if not values or any(v not in allowed for v in values):
            ap.error(f"--{name} must be a comma-separated subset of {allowed}, got "
                     f"{getattr(args, name)!r}")
        setattr(args, name, values)
    try:
        args.prebuilt = dict(p.split("=", 1) for p in args.prebuilt)
    except ValueError:
        ap.error(f"--prebuilt takes GRAPH=DIR, got {args.prebuilt}")
    return args


class Steps:
    """Runs the benchmark's child processes, logging to ``logs/``, and records each one's
    outcome in ``result["steps"]`` (a failed one also in ``result["failed"]``)."""

    def __init__(self, result: dict, logs: Path, timeout_s: float):
        self.result, self.logs, self.timeout_s = result, logs, timeout_s
        logs.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, argv: list) -> dict | None:
        """Run ``argv`` as step ``name``; its last JSON line (``{}`` if none), None if it
        failed."""
        argv = [str(a) for a in argv]
        log = self.logs / f"{name.replace('/', '-')}.log"
        rec = run_measured(argv, stderr_path=log, timeout_s=self.timeout_s)
        ok = rec["returncode"] == 0
        self.result["steps"][name] = {"argv": argv, "ok": ok, "wall_s": rec["wall_s"]}
        if not ok:
            self.result.setdefault("failed", {})[name] = {
                "returncode": rec["returncode"], "timed_out": rec["timed_out"],
                "stderr_tail": stderr_tail(log)}
            print(f"bench_link: {name} failed (exit {rec['returncode']}):\n"
                  f"{stderr_tail(log)}", file=sys.stderr)
            return None
        return last_json(rec["stdout"]) or {}

    def disktrain(self, name: str, *args) -> dict | None:
        return self.run(name, [sys.executable, "-m", "disktrain", *args])


def build_datasets(args, steps: Steps, work: Path) -> dict[str, Path]:
    """The benchmark's graphs, split for link prediction (those whose step succeeded)."""
    split = ["--edge-split", args.edge_split, "--split-seed", args.split_seed,
             "--eval-negatives", args.eval_negatives, "--no-progress"]
    made = {}
    for graph in args.graphs:
        ds = work / graph
        if graph in args.prebuilt:
            made[graph] = Path(args.prebuilt[graph])
            continue
        if graph == "cora":
            argv = ["ingest", "--edges", args.cora / "edges.parquet", "--features",
                    args.cora / "features.npy", "--undirected", "--dedup", "--out", ds]
        else:
            argv = ["synth", "--out", ds, "--nodes", args.synth_nodes, "--avg-degree",
                    args.synth_avg_degree, "--classes", args.synth_classes, "--feature-dim",
                    args.synth_feature_dim, "--seed", args.split_seed]
        if steps.disktrain(f"{graph}/dataset", *argv, *split) is not None:
            made[graph] = ds
    return made


def dataset_sizes(ds: Path) -> dict:
    from disktrain.storage.dataset import Dataset

    d = Dataset(ds)
    sizes = {"num_nodes": d.num_nodes, "graph_edges": d.meta.num_edges,
             "feature_dim": d.meta.feature_dim}
    sizes.update({f"link_{s}": len(d.link_edges(s)) for s in ("train", "val", "test")})
    sizes["eval_negatives"] = int(d.link_negatives("test").shape[1])
    return sizes


def run_disktrain(args, steps: Steps, graph: str, ds: Path, seed: int, work: Path,
                  system: str = "disktrain"):
    """``disktrain prepare`` + ``train --task link`` at ``seed`` with ``system``'s negatives
    (:data:`OURS`): the summary's ``link``."""
    name = f"{graph}/seed{seed}/{system}"
    if steps.disktrain(f"{name}-prepare", "prepare", ds, "--task", "link", "--num-negatives",
                       args.num_negatives, "--negative-mode", OURS[system],
                       "--negative-sampling", "uniform", "--fanouts",
                       args.fanouts, "--batch-size", args.batch_size, "--seed", seed,
                       "--no-progress") is None:
        return None
    out = steps.disktrain(f"{name}-train", "train", ds, "--task", "link", "--decoder", "dot",
                          "--model", "sage", "--hidden", args.hidden, "--epochs", args.epochs,
                          "--seed", seed, "--run-dir",
                          work / "runs" / f"{graph}-{seed}-{system}", "--no-progress")
    return None if out is None else out.get("link")


def run_pyg(args, steps: Steps, graph: str, ds: Path, seed: int, peer: str):
    """PyG peer ``peer`` at ``seed`` with the same settings: its ``link``."""
    out = steps.run(f"{graph}/seed{seed}/{peer}", [
        sys.executable, SCRIPTS / "pyg_link_peer.py", ds, "--fanouts", args.fanouts,
        "--batch-size", args.batch_size, "--num-negatives", args.num_negatives,
        "--negative-mode", PEERS[peer], "--hidden", args.hidden,
        "--epochs", args.epochs, "--seed", seed])
    return None if out is None else out.get("link")




def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per split and metric: each system's mean and sample std over its seeds' ``link``
    metrics and, per PyG peer, the difference of the means ``diff_vs_<peer>`` (disktrain -
    peer, for the disktrain run of the peer's negatives, :data:`MATCH`) where both ran."""
    out = {}
    for split in ("val", "test"):
        for metric in METRICS:
            row = {}
            for system, seeds in runs.items():
                vals = np.asarray([r[split][metric] for r in seeds if metric in r[split]],
                                  np.float64)
                if len(vals):
                    row[system] = {"mean": float(vals.mean()), "n": len(vals),
                                   "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
            for peer, ours in MATCH.items():
                if peer in row and ours in row:
                    row[f"diff_vs_{peer}"] = row[ours]["mean"] - row[peer]["mean"]
            if row:
                out.setdefault(split, {})[metric] = row
    return out


def goal(summary: dict) -> dict:
    """Per PyG peer, whether the test AUC and MRR means of the disktrain run with its
    negatives are within ``GOAL_POINTS`` of its (or above them); None where either has no
    runs."""
    test = summary.get("test", {})
    return {peer: {m: None if (d := test.get(m, {}).get(f"diff_vs_{peer}")) is None
                   else d >= -GOAL_POINTS - 1e-12 for m in GOAL_METRICS}  # 1 point: met
            for peer in PEERS}


def table(graphs: dict, systems) -> str:
    """The summaries of ``systems`` and disktrain's differences to the peers, as text."""
    peers = [p for p in PEERS if p in systems]
    head = [f"{s:>18}" for s in systems] + [f"{'vs ' + p:>14}" for p in peers]
    lines = [f"{'graph':<7}{'split':<6}{'metric':<9}" + "".join(head)]

    def cell(row, system):
        s = row.get(system)
        return "-" if s is None else f"{s['mean']:.4f} ± {s['std']:.4f}"

    for graph, rec in graphs.items():
        for split, metrics in rec["summary"].items():
            for metric, row in metrics.items():
                diffs = [f"{row[k]:+.4f}" if (k := f"diff_vs_{p}") in row else "-"
                         for p in peers]
                lines.append(f"{graph:<7}{split:<6}{metric:<9}"
                             + "".join(f"{cell(row, s):>18}" for s in systems)
                             + "".join(f"{d:>14}" for d in diffs))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-link-", dir=args.workdir))
    result = run_header("link_accuracy", __file__, args, argv, work)
    steps = Steps(result, work / "logs", args.step_timeout_s)
    try:
        graphs = {}
        for graph, ds in build_datasets(args, steps, work).items():
            runs = {s: [] for s in args.systems}
            for seed in range(args.seeds):
                for system in args.systems:
                    link = run_disktrain(args, steps, graph, ds, seed, work, system) \
                        if system in OURS else run_pyg(args, steps, graph, ds, seed, system)
                    if link is not None:
                        runs[system].append(link)
            summary = summarize(runs)
            graphs[graph] = {"dataset": dataset_sizes(ds), "runs": runs, "summary": summary,
                             "goal_within_1_point": goal(summary)}
        result["graphs"] = graphs
        write_json(result, args.out)
        print(table(graphs, args.systems))
        print({g: rec["goal_within_1_point"] for g, rec in graphs.items()})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
