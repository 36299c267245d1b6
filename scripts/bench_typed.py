"""A typed (IGBH-like) graph out of core on one machine: synth + prepare + a 3-layer R-GAT epoch
and evaluation, against PyG's hetero NeighborLoader on the same graph and model.

Usage: python scripts/bench_typed.py [--papers 7000000] [--feature-dim 512]
           [--memory-limit 8G] [--pyg-memory-limit BYTES] [--fanouts 15,10,5] [--batch-size 1024] [--hidden 128]
           [--heads 4] [--train-fraction 0.002] [--val-fraction 0.0002]
           [--test-fraction 0.0002] [--prepare-args "..."] [--pyg-max-phase-s 600]
           [--skip-pyg] [--step-timeout 14400] [--workdir DIR] [--keep]
           [--out result.json] [--plot steps.png]

Needs the `bench` extra (torch-geometric, torch-sparse, torch-scatter, matplotlib).

Steps, each a child process with every file of the work directory dropped from the page cache
first (``sync``, ``posix_fadvise(DONTNEED)``) and run in a cgroup-v1 memory group of its own
limited to ``--memory-limit`` (page cache included; made inside this process's memory cgroup
and removed after the step; where none can be made, the files are evicted every
``--evict-interval`` seconds instead and ``out_of_core_method`` says so):
  1. ``disktrain synth --typed igbh``: papers, authors, institutes, fields of study in
     IGBH-full's ratios, their four relations and the reverses (about 43 stored edges per
     paper: the default 7M papers give about 302M), ``--feature-dim`` float16 features on
     every type (default 512: 14.6 GB, beyond the default 8 GiB limit), 19 classes;
  2. ``disktrain prepare`` with 3-layer fanouts 15,10,5 for every relation (MLPerf GNN's
     shape), one epoch and the val/test batches packed (``--prepare-args``: more flags);
  3. ``disktrain train --model rgat`` for one epoch, then val/test on the packed batches;
  4. PyG (scripts/pyg_hetero_peer.py): the same R-GAT with ``NeighborLoader`` over a
     ``HeteroData`` holding a ``SparseTensor`` ``adj_t`` per relation (the stored CSRs as they
     are), each type's features memory-mapped from a ``.npy`` exported beforehand (not timed,
     ``export_s``; the packed store, measured, is deleted first to make room for it);
     each phase capped at ``--pyg-max-phase-s`` and extrapolated from its batch rate. A
     failure (an OOM kill in the group, a timeout) is recorded with its exit status.
Per step: wall, user and sys CPU seconds, peak RSS (``ru_maxrss``, resident mapped file pages
included) and whether it is within 8 GiB, bytes read and written (rusage of the child and its
reaped descendants), machine-wide disk reads, the group's peak usage, limit hits and OOM
kills, the work directory's footprint after it and the step's own JSON result. The whole job
is synth + prepare + train (one epoch and evaluation); the ratios are PyG's over disktrain's
(epoch, evaluation, and the job after synth: prepare + train against PyG's whole run).
Checks the free disk first (the dataset and the .npy export); ``prepare`` checks its own
needs. A 1024-paper batch at the default size needs about 0.9M distinct input rows (a numpy
Monte Carlo of the sampling on the default graph): 0.9 GB packed per batch at 512-d, so
``--train-fraction 0.002`` (14 batches) and 2 val/test batches each pack about 16 GB. Writes
the JSON to ``--out`` after every step and prints it; ``--plot`` draws seconds and peak RSS
per step. Everything written is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import (
    Regime,
    device_of,
    footprint,
    in_child,
    last_json,
    parse_bytes,
    run_header,
    run_measured,
    stderr_tail,
    write_json,
)

DISKTRAIN = [sys.executable, "-m", "disktrain"]
PEER = [sys.executable, str(Path(__file__).resolve().parent / "pyg_hetero_peer.py")]
PREPARED = ("samples", "packed", "eval", "epochs", "checkpoints")
GiB = 1 << 30
RSS_GOAL = 8 * GiB


def planned_sizes(papers: int, feature_dim: int, classes: int) -> dict:
    """Node counts, stored edges and feature bytes ``synth --typed igbh`` will write."""
    from disktrain.ingest.typed_synth import RELATIONS, TypedSynthConfig

    cfg = TypedSynthConfig(out="-", num_papers=papers, feature_dim=feature_dim,
                           feature_dtype="float16", num_classes=classes)
    counts = cfg.node_counts
    edges = sum(counts[src] * getattr(cfg, f"{rel}_degree") for src, rel, _ in RELATIONS)
    return {"node_counts": counts, "stored_edges": round(2 * edges),
            "feature_bytes": sum(counts.values()) * feature_dim * 2}


def dataset_sizes(path: Path) -> dict:
    """What synth wrote: node types, relations, split sizes and feature bytes."""
    import numpy as np

    from disktrain.storage.dataset import Dataset

    ds = Dataset(path)
    types = {t.name: {"num_nodes": t.num_nodes, "feature_dim": t.feature_dim,
                      "feature_dtype": t.feature_dtype,
                      "feature_bytes": t.num_nodes * t.feature_dim
                      * np.dtype(t.feature_dtype).itemsize} for t in ds.types}
    return {"node_types": types, "num_nodes": int(ds.meta.num_nodes),
            "stored_edges": int(ds.meta.num_edges), "relations": ds.info()["relations"],
            "feature_bytes": sum(t["feature_bytes"] for t in types.values()),
            "splits": {s: len(ds.split(s)) for s in ("train", "val", "test")}}


def export_features(dataset: Path, out: Path) -> list[str]:
    """The peer's export (imported in the child: torch never in this process)."""
    from pyg_hetero_peer import export_typed_features

    return export_typed_features(dataset, out)


class Bench:
    """The steps of one run in one work directory, each measured in its own memory group."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.logs = work / "logs"
        self.logs.mkdir()
        self.device = device_of(work)

    def step(self, name: str, argv: list[str], limit: int | None = None) -> dict:
        log = self.logs / f"{name}.err"
        tag = f"bench-typed-{os.getpid()}-{name}"
        limit = limit or self.args.memory_limit
        with Regime("out_of_core", [self.work], limit,
                    self.args.evict_interval, tag) as env:
            rec = run_measured(argv, cgroup=env.cgroup, stderr_path=log, device=self.device,
                               timeout_s=self.args.step_timeout)
            info = env.info
        result = last_json(rec.pop("stdout"))  # None for synth (its last line is text)
        wall, cpu = rec["wall_s"], rec["user_s"] + rec["sys_s"]
        del rec["argv"]
        record = {"step": name, "command": shlex.join(argv), **rec,
                  "ok": rec["returncode"] == 0,
                  "peak_rss_gib": rec["peak_rss_bytes"] / GiB,
                  "peak_rss_within_8gib": rec["peak_rss_bytes"] <= RSS_GOAL,
                  "footprint_bytes": footprint(self.work),
                  "bound_by": "CPU (both cores)" if cpu > 1.6 * wall else
                  "CPU (one core)" if cpu > 0.8 * wall else "waiting (disk)",
                  **info, "result": result}
        if not record["ok"]:
            record["error"] = stderr_tail(log)
        print(f"bench_typed: {name}: exit {rec['returncode']}, {wall:.1f} s, peak RSS "
              f"{record['peak_rss_gib']:.2f} GiB", file=sys.stderr)
        return record


def summarize(steps: dict) -> dict:
    """The whole job, per-step peaks against 8 GiB, and PyG's times over disktrain's."""
    ok = {k: s for k, s in steps.items() if s["ok"]}
    out = {"peak_rss_gib": {k: s["peak_rss_gib"] for k, s in steps.items()},
           "all_within_8gib": all(s["peak_rss_within_8gib"] for s in steps.values()),
           "failed": {k: {"exit_status": s["returncode"], "timed_out": s["timed_out"],
                          "oom_kills": s.get("cgroup_oom_kills")}
                      for k, s in steps.items() if not s["ok"]}}
    if all(k in ok for k in ("synth", "prepare", "train")):
        train = ok["train"]["result"] or {}
        out["disktrain"] = {
            "synth_s": ok["synth"]["wall_s"], "prepare_s": ok["prepare"]["wall_s"],
            "train_s": ok["train"]["wall_s"], "epoch_s": train.get("epoch_time_s"),
            "eval_s": train.get("eval_time_s"), "test_acc": train.get("test_acc"),
            "after_synth_s": ok["prepare"]["wall_s"] + ok["train"]["wall_s"],
            "whole_job_s": sum(ok[k]["wall_s"] for k in ("synth", "prepare", "train"))}
    if "pyg" in ok:
        res = ok["pyg"]["result"] or {}
        first = (res.get("per_epoch") or [{}])[0]
        out["pyg"] = {"setup_s": res.get("setup_s"), "epoch_s": first.get("epoch_est_s"),
                      "eval_s": first.get("eval_est_s"),
                      # its child's wall, or where capped its estimate (as bench_vs_pyg's)
                      "job_s": res.get("job_est_s") if res.get("extrapolated")
                      else ok["pyg"]["wall_s"],
                      "extrapolated": res.get("extrapolated"), "batches": first.get("batches"),
                      "total_batches": first.get("total_batches"),
                      "test_acc": res.get("test_acc"), "run_wall_s": ok["pyg"]["wall_s"]}
    if "disktrain" in out and "pyg" in out:
        d, p = out["disktrain"], out["pyg"]
        out["pyg_over_disktrain"] = {
            "epoch": p["epoch_s"] / d["epoch_s"] if p["epoch_s"] and d["epoch_s"] else None,
            "eval": p["eval_s"] / d["eval_s"] if p["eval_s"] and d["eval_s"] else None,
            "job_after_synth": p["job_s"] / d["after_synth_s"] if p["job_s"] else None}
    return out


def plot(result: dict, path: Path) -> None:
    """Seconds per step, disktrain against PyG (log; hatched: extrapolated), and every step's
    peak RSS against 8 GiB and the memory limit."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s = result["summary"]
    d, p = s.get("disktrain", {}), s.get("pyg", {})
    labels = ["synth (one dataset)", "prepare / PyG setup", "epoch", "evaluation", "whole job"]
    ours = [d.get("synth_s"), d.get("prepare_s"), d.get("epoch_s"), d.get("eval_s"),
            d.get("whole_job_s")]
    whole = p["job_s"] + d["synth_s"] if p.get("job_s") and d.get("synth_s") else None
    peer = [d.get("synth_s") if p else None, p.get("setup_s"), p.get("epoch_s"),
            p.get("eval_s"), whole]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), width_ratios=(3, 2))
    x = np.arange(len(labels))
    for k, (name, values, hatch) in enumerate((
            ("disktrain", ours, ""), ("PyG NeighborLoader", peer,
                                      "//" if p.get("extrapolated") else ""))):
        xs = x + (k - 0.5) * 0.38
        ax.bar(xs, [v or 0 for v in values], 0.38, color=f"C{k}", hatch=hatch, label=name)
        for xi, v in zip(xs, values):
            if v:
                ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.3g}", (xi, v), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")
    sizes = result.get("sizes", {})
    ax.set_title(f"IGBH-like, {sizes.get('stored_edges', 0) / 1e6:,.1f}M stored edges, "
                 f"{sizes.get('feature_bytes', 0) / 2**30:.3g} GiB features, 3-layer R-GAT"
                 + (" (PyG hatched: extrapolated)" if p.get("extrapolated") else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    steps = result["steps"]
    ax2.bar(range(len(steps)), [st["peak_rss_gib"] for st in steps.values()],
            color=["C1" if k == "pyg" else "C0" for k in steps])
    ax2.axhline(8, color="k", ls="--", lw=1, label="8 GiB")
    ax2.axhline(result["config"]["memory_limit_bytes"] / GiB, color="r", ls=":", lw=1,
                label="memory limit")
    ax2.set_xticks(range(len(steps)), list(steps), fontsize=8)
    ax2.set_ylabel("peak RSS (GiB)")
    ax2.set_title("peak RSS per step", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_steps(args, bench: Bench, result: dict, out: Path | None) -> None:
    """synth, prepare, train and the PyG peer into ``result["steps"]`` (what a failed step
    leaves nothing to run on is skipped); the JSON rewritten after each."""
    work, steps = bench.work, result["steps"]
    ds, npy = work / "ds", work / "npy"
    common = ["--seed", str(args.seed), "--no-progress"]
    steps["synth"] = bench.step("synth", DISKTRAIN + [
        "synth", "--typed", "igbh", "--out", str(ds), "--papers", str(args.papers),
        "--feature-dim", str(args.feature_dim), "--feature-dtype", "float16",
        "--classes", str(args.classes), "--train-fraction", repr(args.train_fraction),
        "--val-fraction", repr(args.val_fraction),
        "--test-fraction", repr(args.test_fraction), *common])
    write_json(result, out)
    if not steps["synth"]["ok"]:
        return
    sizes = result["sizes"] = in_child(dataset_sizes, ds)
    sizes["memory_limit_bytes"] = args.memory_limit
    sizes["features_exceed_memory_limit"] = sizes["feature_bytes"] > args.memory_limit
    steps["prepare"] = bench.step("prepare", DISKTRAIN + [
        "prepare", str(ds), "--fanouts", args.fanouts, "--batch-size", str(args.batch_size),
        "--eval-batch-size", str(args.batch_size), "--epochs", "1",
        *shlex.split(args.prepare_args), *common])
    write_json(result, out)
    if steps["prepare"]["ok"]:
        steps["train"] = bench.step("train", DISKTRAIN + [
            "train", str(ds), "--model", "rgat", "--epochs", "1",
            "--hidden", str(args.hidden), "--heads", str(args.heads),
            "--lr", str(args.lr), "--weight-decay", "0", "--dropout", str(args.dropout),
            "--checkpoint-dir", str(ds / "checkpoints"), *common])
        write_json(result, out)
    if not args.skip_pyg:
        for name in PREPARED:  # measured already: the export takes their room
            shutil.rmtree(ds / name, ignore_errors=True)
        t0 = time.perf_counter()
        result["pyg_exported_types"] = in_child(export_features, ds, npy)
        result["export_s"] = time.perf_counter() - t0
        steps["pyg"] = bench.step("pyg", PEER + [
            str(ds), "--features-dir", str(npy), "--fanouts", args.fanouts,
            "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.batch_size),
            "--epochs", "1", "--hidden", str(args.hidden), "--heads", str(args.heads),
            "--lr", str(args.lr), "--weight-decay", "0", "--dropout", str(args.dropout),
            "--seed", str(args.seed), "--max-phase-s", str(args.pyg_max_phase_s)],
            args.pyg_memory_limit)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--papers", type=int, default=7_000_000,
                    help="papers; about 43 stored edges each (default: 302M edges)")
    ap.add_argument("--feature-dim", type=int, default=512, help="float16, every node type")
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--train-fraction", type=float, default=0.002)
    ap.add_argument("--val-fraction", type=float, default=0.0002)
    ap.add_argument("--test-fraction", type=float, default=0.0002)
    ap.add_argument("--memory-limit", type=parse_bytes, default=8 * GiB,
                    help="each step's memory cgroup limit, page cache included (default: 8G)")
    ap.add_argument("--pyg-memory-limit", type=parse_bytes, default=None,
                    help="the PyG step's limit, where it needs more room than ours (default: "
                    "--memory-limit)")
    ap.add_argument("--fanouts", default="15,10,5", help="per hop, every relation")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prepare-args", default="", help="extra `disktrain prepare` flags")
    ap.add_argument("--skip-pyg", action="store_true")
    ap.add_argument("--pyg-max-phase-s", type=float, default=600.0,
                    help="cap each PyG phase at this many seconds, extrapolate (0: none)")
    ap.add_argument("--step-timeout", type=float, default=4 * 3600,
                    help="kill a step after this many seconds (recorded as failed)")
    ap.add_argument("--evict-interval", type=float, default=1.0,
                    help="seconds between evictions where no cgroup can be made")
    ap.add_argument("--workdir", type=Path, help="parent of the temporary work directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    ap.add_argument("--plot", type=Path, help="write the PNG plot here")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # a TERM unwinds like Ctrl-C: the running step's session and cgroup go, the work dir too
    term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bench-typed-", dir=args.workdir))
    result = run_header("bench_typed", __file__, args, argv, work)
    try:
        planned = in_child(planned_sizes, args.papers, args.feature_dim, args.classes)
        copies = 1 if args.skip_pyg else 2  # the dataset's features, the PyG export's
        need = copies * planned["feature_bytes"] + 16 * planned["stored_edges"] + 2 * GiB
        free = shutil.disk_usage(work).free
        result["planned"] = {**planned, "disk_need_bytes": need, "disk_free_bytes": free}
        if free < need:
            raise SystemExit(f"bench_typed: error: {work} has {free / 1e9:.1f} GB free, "
                             f"this run needs about {need / 1e9:.1f} GB (the dataset and the "
                             "PyG export; prepare checks its own): --workdir elsewhere, fewer "
                             "--papers or a smaller --feature-dim")
        run_steps(args, Bench(args, work), result, args.out)
        result["summary"] = summarize(result["steps"])
        if args.plot:
            in_child(plot, result, args.plot)  # matplotlib never in this process
            result["plot"] = str(args.plot)
        write_json(result, args.out)
        print(json.dumps(result, indent=1))
        return 0 if all(s["ok"] for s in result["steps"].values()) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, term)


if __name__ == "__main__":
    sys.exit(main())
