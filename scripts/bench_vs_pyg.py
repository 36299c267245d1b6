"""The whole job against PyTorch Geometric's NeighborLoader, in memory and out of core.

Usage: python scripts/bench_vs_pyg.py [--setting quick|full] [--repeats 1]
           [--regimes in_ram,out_of_core] [--peer-settings default,random-w0,random-w1,random-w4]
           [--epochs 5] [--mem-limit 2.5G] [--peer-max-batches N] [--peer-max-phase-s T]
           [--prepare-args "..."] [--train-args "..."] [--variants "NAME=FLAGS;..."]
           [--workdir DIR | --keep DIR]
           [--out results.json] [--plots DIR]

Needs the `bench` extra (torch-geometric, torch-sparse, torch-scatter, matplotlib).

One synthetic graph (``disktrain synth``, R-MAT, avg in-degree 10, 16 classes, float32
features; ``full``: 4M nodes, 256-d (4.1 GB of features), splits 204,800 / 20,000 / 20,000;
``quick``: 3M nodes, 256-d (3.1 GB), 20,480 / 4,096 / 4,096), and on it the same training job
both ways: 2-layer mean GraphSAGE, hidden 128, dropout 0.5, fanouts 10,10, batch 1024, Adam lr
0.01, ``--epochs`` epochs, val and test accuracy after each:
  disktrain   ``disktrain prepare`` (one epoch pre-sampled and packed, val/test packed once)
              then ``disktrain train`` (later epochs prepared afresh in the background where the
              CLI does so); whole job = wall of prepare + wall of train;
  pyg         scripts/pyg_peer.py (NeighborLoader over the same CSR, features memory-mapped
              from a .npy exported once, untimed, next to the dataset) at each setting:
              ``default`` (0 workers, the kernel's readahead) and ``random-wN`` (madvise
              MADV_RANDOM on the feature map, N workers); whole job = the child's wall.
``--variants NAME=FLAGS;...`` runs several disktrain configurations (extra ``prepare`` flags,
e.g. ``--aggregate-first-hop mean``) one after the other, each against the same peer runs.
Each command is a child process; the systems alternate (disktrain, every peer setting,
disktrain, ...) ``--repeats`` times in each regime:
  in_ram        no memory limit; every data file read once (untimed) before each run;
  out_of_core   ``sync`` and ``posix_fadvise(DONTNEED)`` on every file of the dataset and the
                .npy, then the run in a cgroup-v1 memory group limited to ``--mem-limit``
                (page cache included; disktrain's prepare and train share one group, as on
                one machine), made for the run inside this process's memory cgroup under
                /sys/fs/cgroup/memory and removed after it. Where no cgroup can be made,
                the files are evicted every ``--evict-interval`` seconds during the run instead
                (``out_of_core_method`` says which; a process's mapped pages survive that).
A peer phase (a training epoch, a val or test pass) that hits ``--peer-max-batches`` or
``--peer-max-phase-s`` is cut short and its time extrapolated from its per-batch rate; that
run then stops and its job time is extrapolated too (``extrapolated: true``, with the batches
measured).

Per run (medians over repeats in the summary):
  job_s             whole job: disktrain prepare + train walls; the peer's wall (or the
                    extrapolation);
  epoch_s           mean training epoch: disktrain's ``epoch_time_s`` (without the wait for the
                    epoch's fresh samples, ``prepare_wait_s``, and evaluation); the peer's loop
                    over the epoch's batches;
  eval_s, prepare_s mean seconds of one val+test evaluation; disktrain's prepare wall;
  read_bytes        bytes read from storage by the child and its reaped descendants (rusage,
                    see scripts/_benchlib.py); ``disk_read_bytes``: the device's machine-wide
                    count over the same time (every process's reads);
  needed_bytes      bytes of the feature rows the batches needed, over every batch trained and
                    evaluated (each batch's distinct input rows; disktrain: ``packed_bytes`` and
                    ``eval_packed_bytes`` ``needed`` of its metrics, the rows no cache holds; the
                    peer: the rows of each batch's ``n_id``);
  io_amplification  read_bytes / needed_bytes: for disktrain this includes prepare's (and the
                    background preparation's) reads of the raw features; the peer's reads that
                    the page cache serves do not count (in RAM its ratio is about 0);
                    ``loader_read_over_needed`` (disktrain): what its loader's chunk reads take
                    over the rows they need, from the store's layout;
  peak_rss_bytes    the largest ru_maxrss of the child or a reaped descendant (resident pages
                    of mapped files included, e.g. the peer's feature map);
  cgroup_*          the group's ``memory.max_usage_in_bytes`` (anonymous memory and the page
                    cache charged to it: files the bench warmed are charged to the bench),
                    ``memory.failcnt`` (times the limit was hit) and OOM kills;
  test_acc          after the last epoch (None where extrapolated).
The summary gives, per regime, disktrain's speed-up over the peer's best setting (whole job and
epoch) against the goals (10x / 2x whole job, 15x / 4x epoch, out of core / in RAM). Writes the
JSON to ``--out`` after every run and, with ``--plots``, epoch_time.png, job_time.png and
disktrain_timeline.png. Everything written goes to a temporary directory removed at the end
(also on error), unless ``--keep DIR``, which keeps it there and reuses a dataset made there by
the same setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import (
    Regime,
    device_of,
    last_json,
    parse_bytes,
    run_measured,
    stderr_tail,
)

DISKTRAIN = [sys.executable, "-m", "disktrain"]
PEER = [sys.executable, str(Path(__file__).resolve().parent / "pyg_peer.py")]
PEER_SETTINGS = {"default": (0, "normal"), "random-w0": (0, "random"),
                 "random-w1": (1, "random"), "random-w4": (4, "random")}
REGIMES = ("in_ram", "out_of_core")
GOALS = {"out_of_core": {"job": 10.0, "epoch": 15.0}, "in_ram": {"job": 2.0, "epoch": 4.0}}
PREPARED = ("samples", "packed", "eval", "epochs", "checkpoints")  # what prepare/train write
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Scale:
    """The graph and the defaults that go with it."""
    nodes: int
    feature_dim: int
    train: int
    val: int
    test: int
    mem_limit: int
    """out-of-core memory limit in bytes (page cache included)"""
    peer_max_phase_s: float
    """a peer phase longer than this is cut short and extrapolated"""
    avg_degree: float = 10.0
    classes: int = 16

    @property
    def feature_bytes(self) -> int:
        return self.nodes * self.feature_dim * 4


SETTINGS = {
    "quick": Scale(nodes=3_000_000, feature_dim=256, train=20_480, val=4_096, test=4_096,
                   mem_limit=int(2.5 * GiB), peer_max_phase_s=30.0),
    "full": Scale(nodes=4_000_000, feature_dim=256, train=204_800, val=20_000, test=20_000,
                  mem_limit=int(2.5 * GiB), peer_max_phase_s=600.0),
}


@dataclasses.dataclass(frozen=True)
class Job:
    """The training job both systems run."""
    epochs: int = 5
    fanouts: tuple[int, ...] = (10, 10)
    batch_size: int = 1024
    hidden: int = 128
    lr: float = 0.01
    weight_decay: float = 0.0
    dropout: float = 0.5
    seed: int = 0

    @property
    def fanout_arg(self) -> str:
        return ",".join(map(str, self.fanouts))


def split_fraction(count: int, nodes: int) -> float:
    """The synth fraction that gives exactly ``count`` nodes (synth floors the cumulative
    fractions: a quarter node over keeps the floors exact)."""
    return (count + 0.25) / nodes


def disk_need(scale: Scale, job: Job) -> int:
    """About the most bytes the work directory holds at once: the dataset, the .npy, and three
    epochs' and the evaluation's packed rows (a batch's distinct input rows taken as a third of
    its fanout bound, as measured on R-MAT graphs), plus 1 GiB."""
    bound = 1
    for f in reversed(job.fanouts):
        bound = 1 + f * bound
    row = scale.feature_dim * 4
    per_seed = min(scale.nodes, bound // 3 + 1) * row
    packed = (3 * scale.train + scale.val + scale.test) * per_seed
    return 2 * scale.feature_bytes + packed + GiB


# ---------------------------------------------------------------- the data


def build_dataset(work: Path, scale: Scale, job: Job, log: Path) -> tuple[Path, Path]:
    """The dataset (``work/ds``) and its features as one .npy (``work/ds.features.npy``, the
    peer's export), reused when ``work`` holds them for the same scale."""
    ds, npy, stamp = work / "ds", work / "ds.features.npy", work / "bench_scale.json"
    want = json.dumps({k: v for k, v in dataclasses.asdict(scale).items()
                       if k not in ("mem_limit", "peer_max_phase_s")}, sort_keys=True)
    if ds.exists() and npy.exists() and stamp.exists() and stamp.read_text() == want:
        print(f"bench: reusing {ds}", file=sys.stderr)
        return ds, npy
    shutil.rmtree(ds, ignore_errors=True)
    npy.unlink(missing_ok=True)
    argv = DISKTRAIN + [
        "synth", "--out", str(ds), "--nodes", str(scale.nodes),
        "--avg-degree", str(scale.avg_degree), "--feature-dim", str(scale.feature_dim),
        "--classes", str(scale.classes), "--feature-dtype", "float32", "--seed", str(job.seed),
        "--train-fraction", repr(split_fraction(scale.train, scale.nodes)),
        "--val-fraction", repr(split_fraction(scale.val, scale.nodes)),
        "--test-fraction", repr(split_fraction(scale.test, scale.nodes)), "--no-progress"]
    print(f"bench: {shlex.join(argv[2:])}", file=sys.stderr)
    # children only: a child's ru_maxrss starts from its parent's peak RSS at the fork
    for step in (argv, PEER + [str(ds), "--features", str(npy), "--export"]):
        rec = run_measured(step, stderr_path=log)
        if rec["returncode"] != 0:
            raise SystemExit(f"bench: {shlex.join(step[1:])} failed ({rec['returncode']}):\n"
                             f"{stderr_tail(log)}")
    stamp.write_text(want)
    return ds, npy


def clean_prepared(ds: Path) -> None:
    for name in PREPARED:
        shutil.rmtree(ds / name, ignore_errors=True)


# ---------------------------------------------------------------- running


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def step_summary(rec: dict) -> dict:
    """A child's measurements without its stdout."""
    return {k: v for k, v in rec.items() if k != "stdout"}


def disktrain_record(prepare: dict, train: dict | None, per_epoch: list[dict],
                     result: dict | None) -> dict:
    """One disktrain run from its two steps and train's per-epoch records."""
    steps = [s for s in (prepare, train) if s is not None]
    ok = all(s["returncode"] == 0 for s in steps) and train is not None
    needed = [e.get("packed_bytes", {}).get("needed") for e in per_epoch]
    evaluated = [e for e in per_epoch if "val_acc" in e]
    eval_needed = [e.get("eval_packed_bytes", {}).get("needed") if e.get("eval") == {
        "val": "packed", "test": "packed"} else None for e in evaluated]
    complete = per_epoch and None not in needed and None not in eval_needed
    needed_bytes = sum(needed) + sum(eval_needed) if complete else None
    packed_read = [e.get("packed_bytes", {}).get("read") for e in per_epoch]
    read_bytes = sum(s["read_bytes"] for s in steps)
    job = sum(s["wall_s"] for s in steps)
    last = evaluated[-1] if evaluated else {}
    return {
        "system": "disktrain", "ok": ok, "extrapolated": False,
        "job_s": job, "job_wall_s": job, "prepare_s": prepare["wall_s"],
        "epoch_s": mean(e["epoch_time_s"] for e in per_epoch),
        "epoch_times_s": [e["epoch_time_s"] for e in per_epoch],
        "eval_s": mean(e.get("eval_time_s") for e in evaluated),
        "eval_times_s": [e.get("eval_time_s") for e in evaluated],
        "prepare_wait_s": [e.get("prepare_wait_s") for e in per_epoch],
        "read_bytes": read_bytes, "written_bytes": sum(s["written_bytes"] for s in steps),
        "disk_read_bytes": sum(s["disk_read_bytes"] or 0 for s in steps)
        if all(s["disk_read_bytes"] is not None for s in steps) else None,
        "needed_bytes": needed_bytes, "io_amplification": ratio(read_bytes, needed_bytes),
        # per training epoch: the packed bytes its batches need and their reads take
        "epoch_packed_needed_bytes": mean(needed), "epoch_packed_read_bytes": mean(packed_read),
        # what the loader's chunk reads take over the rows they need (from the store's
        # layout, not measured): the training epochs' share of the job's reads
        "loader_read_over_needed": ratio(sum(packed_read), sum(needed))
        if None not in packed_read and None not in needed and needed else None,
        "peak_rss_bytes": max(s["peak_rss_bytes"] for s in steps),
        "user_s": sum(s["user_s"] for s in steps), "sys_s": sum(s["sys_s"] for s in steps),
        "val_acc": last.get("val_acc") if ok else None,
        "test_acc": last.get("test_acc") if ok else None,
        "steps": {"prepare": step_summary(prepare),
                  "train": step_summary(train) if train else None},
        "per_epoch": per_epoch, "result": result}


def peer_record(rec: dict, result: dict | None) -> dict:
    """One peer run from its child's measurements and its JSON result."""
    ok = rec["returncode"] == 0 and result is not None
    epochs = result["per_epoch"] if ok else []
    needed = result["needed_bytes"] if ok else None
    return {
        "system": "pyg", "ok": ok, "extrapolated": bool(ok and result["extrapolated"]),
        "batches_measured": sum(e["batches"] for e in epochs),
        "eval_batches_measured": sum(e["eval_batches"] for e in epochs),
        "job_s": result["job_est_s"] if ok and result["extrapolated"] else rec["wall_s"],
        "job_wall_s": rec["wall_s"], "prepare_s": None,
        "setup_s": result["setup_s"] if ok else None,
        "epoch_s": mean(e["epoch_est_s"] for e in epochs),
        "epoch_times_s": [e["epoch_est_s"] for e in epochs],
        "s_per_batch": mean(e["epoch_s"] / e["batches"] for e in epochs if e["batches"]),
        "eval_s": mean(e["eval_est_s"] for e in epochs),
        "eval_times_s": [e["eval_est_s"] for e in epochs],
        "read_bytes": rec["read_bytes"], "written_bytes": rec["written_bytes"],
        "disk_read_bytes": rec["disk_read_bytes"],
        "needed_bytes": needed, "io_amplification": ratio(rec["read_bytes"], needed),
        "peak_rss_bytes": rec["peak_rss_bytes"], "user_s": rec["user_s"],
        "sys_s": rec["sys_s"],
        "val_acc": result.get("val_acc") if ok else None,
        "test_acc": result.get("test_acc") if ok else None,
        "steps": {"peer": step_summary(rec)}, "per_epoch": epochs, "result": result}


class Bench:
    """The runs of one invocation, in one work directory."""

    def __init__(self, args, scale: Scale, job: Job, work: Path, ds: Path, npy: Path):
        self.args, self.scale, self.job = args, scale, job
        self.work, self.ds, self.npy = work, ds, npy
        self.logs = work / "logs"
        self.device = device_of(ds)

    def regime(self, name: str, label: str, warm_files: list[Path]) -> Regime:
        return Regime(name, [self.ds, self.npy], self.args.mem_limit, self.args.evict_interval,
                      f"bench-vs-pyg-{os.getpid()}-{label}", warm_files)

    def disktrain(self, regime: str, repeat: int, variant: str = "default",
                  variant_args: str = "") -> dict:
        job, label = self.job, f"disktrain-{variant}-{regime}-{repeat}"
        clean_prepared(self.ds)
        metrics = self.logs / f"{label}.jsonl"
        metrics.unlink(missing_ok=True)
        prepare_argv = DISKTRAIN + [
            "prepare", str(self.ds), "--fanouts", job.fanout_arg,
            "--batch-size", str(job.batch_size), "--epochs", "1", "--seed", str(job.seed),
            "--no-progress", *shlex.split(self.args.prepare_args), *shlex.split(variant_args)]
        train_argv = DISKTRAIN + [
            "train", str(self.ds), "--model", "sage", "--epochs", str(job.epochs),
            "--hidden", str(job.hidden), "--lr", str(job.lr),
            "--weight-decay", str(job.weight_decay), "--dropout", str(job.dropout),
            "--seed", str(job.seed), "--metrics", str(metrics),
            "--checkpoint-dir", str(self.ds / "checkpoints"), "--no-progress",
            *shlex.split(self.args.train_args)]
        log = self.logs / f"{label}.err"
        with self.regime(regime, label, [self.ds]) as env:
            prepare = run_measured(prepare_argv, cgroup=env.cgroup, stderr_path=log,
                                   device=self.device, timeout_s=self.args.run_timeout)
            train = None
            if prepare["returncode"] == 0:
                train = run_measured(train_argv, cgroup=env.cgroup, stderr_path=log,
                                     device=self.device, timeout_s=self.args.run_timeout)
            info = env.info
            if env.cgroup is not None:  # both steps under one group: its figures at the end
                info.update(env.cgroup.stats())
        per_epoch = ([json.loads(line) for line in metrics.read_text().splitlines()]
                     if metrics.exists() else [])
        record = disktrain_record(prepare, train, per_epoch,
                                  last_json(train["stdout"]) if train else None)
        record.update(setting=variant, regime=regime, repeat=repeat, **info,
                      prepare_args=f"{self.args.prepare_args} {variant_args}".strip(),
                      train_args=self.args.train_args)
        if not record["ok"]:
            record["error"] = stderr_tail(log)
        clean_prepared(self.ds)
        return record

    def peer(self, setting: str, regime: str, repeat: int) -> dict:
        job, label = self.job, f"pyg-{setting}-{regime}-{repeat}"
        workers, advice = PEER_SETTINGS[setting]
        argv = PEER + [
            str(self.ds), "--features", str(self.npy), "--fanouts", job.fanout_arg,
            "--batch-size", str(job.batch_size), "--eval-batch-size", str(job.batch_size),
            "--epochs", str(job.epochs), "--hidden", str(job.hidden), "--lr", str(job.lr),
            "--weight-decay", str(job.weight_decay), "--dropout", str(job.dropout),
            "--seed", str(job.seed), "--workers", str(workers), "--advice", advice,
            "--max-batches", str(self.args.peer_max_batches),
            "--max-phase-s", str(self.args.peer_max_phase_s)]
        log = self.logs / f"{label}.err"
        with self.regime(regime, label, [self.ds, self.npy]) as env:
            rec = run_measured(argv, cgroup=env.cgroup, stderr_path=log, device=self.device,
                               timeout_s=self.args.run_timeout)
            info = env.info
            if env.cgroup is not None:
                info.update(env.cgroup.stats())
        record = peer_record(rec, last_json(rec["stdout"]))
        record.update(setting=setting, regime=regime, repeat=repeat, workers=workers,
                      advice=advice, **info)
        if not record["ok"]:
            record["error"] = stderr_tail(log)
        return record


# ---------------------------------------------------------------- summary


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def summarize(runs: list[dict], goals: dict = GOALS) -> dict:
    """Per regime: medians over the ok runs of each system/setting, those with failed runs
    (OOM kills counted), the peer's best setting (by whole job and by epoch, among those with
    an ok run) and disktrain's speed-ups over it against the goals."""
    out = {}
    for regime in dict.fromkeys(r["regime"] for r in runs):
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in runs:
            if r["regime"] == regime:
                groups.setdefault((r["system"], r["setting"]), []).append(r)
        med = {}
        for (system, setting), rs in groups.items():
            ok = [r for r in rs if r["ok"]]
            med[f"{system}/{setting}"] = {
                "system": system, "setting": setting, "runs": len(rs), "ok_runs": len(ok),
                "oom_kills": sum(r.get("cgroup_oom_kills") or 0 for r in rs),
                "extrapolated": any(r["extrapolated"] for r in ok),
                **{k: median(r.get(k) for r in ok)
                   for k in ("job_s", "epoch_s", "eval_s", "prepare_s", "test_acc",
                             "read_bytes", "written_bytes", "io_amplification",
                             "epoch_packed_needed_bytes", "epoch_packed_read_bytes",
                             "peak_rss_bytes", "cgroup_max_usage_bytes")}}
        ours = [m for m in med.values() if m["system"] == "disktrain" and m["job_s"]]
        peers = {k: m for k, m in med.items() if m["system"] == "pyg" and m["job_s"]}
        entry: dict = {"systems": med,
                       "failed": {k: {"failed_runs": m["runs"] - m["ok_runs"],
                                      "oom_kills": m["oom_kills"]}
                                  for k, m in med.items() if m["ok_runs"] < m["runs"]}}
        for d in ours if peers else ():  # the first variant's at the top, each one's under it
            at = entry if d is ours[0] else {}
            for metric, key in (("job", "job_s"), ("epoch", "epoch_s")):
                best = min((k for k in peers if peers[k][key]), key=lambda k: peers[k][key],
                           default=None)
                speedup = ratio(peers[best][key], d[key]) if best else None
                goal = goals.get(regime, {}).get(metric)
                at[metric] = {
                    "disktrain_s": d[key], "peer_best": best,
                    "peer_best_s": peers[best][key] if best else None,
                    "peer_best_extrapolated": peers[best]["extrapolated"] if best else None,
                    "speedup": speedup, "goal": goal,
                    "goal_met": None if speedup is None or goal is None else speedup >= goal}
            entry.setdefault("variants", {})[d["setting"]] = {m: at[m] for m in ("job", "epoch")}
        out[regime] = entry
    return out


# ---------------------------------------------------------------- plots


def bar_chart(summary: dict, key: str, path: Path, title: str, ylabel: str) -> None:
    """Grouped bars (one group per regime, one bar per system/setting), log scale; hatched
    where extrapolated, "failed" where no run of that setting succeeded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(summary)
    labels = list(dict.fromkeys(k for r in regimes for k in summary[r]["systems"]))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(regimes) * max(1, len(labels)) / 2, 4.6))
    rotate = 90 if len(labels) > 3 else 0
    values = [m[key] for r in regimes for m in summary[r]["systems"].values() if m[key]]
    labelled: set[str] = set()
    for i, label in enumerate(labels):
        for j, regime in enumerate(regimes):
            m = summary[regime]["systems"].get(label)
            if m is None:
                continue
            x = j + (i - (len(labels) - 1) / 2) * width
            y = m[key]
            if not y:
                ax.annotate(f"{label} failed", (x, min(values, default=1)), ha="center",
                            va="bottom", fontsize=7, rotation=rotate, color=f"C{i}")
                continue
            ax.bar([x], [y], width, color=f"C{i}", hatch="//" if m["extrapolated"] else "",
                   label=None if label in labelled else label)
            labelled.add(label)
            text = f"{y:,.0f}" if y >= 100 else f"{y:.3g}"
            ax.annotate(text + (" (extrap.)" if m["extrapolated"] else ""), (x, y),
                        ha="center", va="bottom", fontsize=7, rotation=rotate)
    ax.set_xticks(range(len(regimes)), [r.replace("_", " ") for r in regimes])
    ax.set_yscale("log")
    if values:  # room above the tallest bar for its label
        ax.set_ylim(min(values) / 2, max(values) * 12)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def timeline_chart(runs: list[dict], path: Path) -> None:
    """disktrain's job per regime (its first ok run): prepare, then per epoch the main thread's
    wall split into compute, waiting for the loader, the rest of ``epoch_time_s``, waiting for
    the epoch's fresh samples and evaluation (stacked), then the rest of train's wall; the
    loader threads' read and assembly seconds (summed over batches and overlapped with compute,
    so not stacked) as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {}
    for r in runs:
        if r["system"] == "disktrain" and r["ok"] and r["per_epoch"]:
            chosen.setdefault(r["regime"], r)
    if not chosen:
        return
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.5 * len(chosen), 4.2), squeeze=False)
    stack = (("compute_s", "compute"), ("wait_s", "wait for loader"),
             ("unattributed_s", "rest of the epoch"),
             ("prepare_wait_s", "wait for fresh samples"), ("eval_time_s", "evaluation"))
    for ax, (regime, r) in zip(axes[0], chosen.items()):
        epochs = [{**e, "unattributed_s": max(0.0, e["epoch_time_s"] - e.get("compute_s", 0.0)
                                              - e.get("wait_s", 0.0))}
                  for e in r["per_epoch"]]
        xs = np.arange(len(epochs) + 2)
        ax.bar([0], [r["prepare_s"]], 0.7, color="C7", label="prepare (one-off)")
        bottom = np.zeros(len(epochs))
        for i, (key, name) in enumerate(stack):
            vals = np.array([e.get(key) or 0.0 for e in epochs])
            ax.bar(xs[1:-1], vals, 0.7, bottom=bottom, color=f"C{i}", label=name)
            bottom += vals
        other = r["job_s"] - r["prepare_s"] - bottom.sum()
        ax.bar([xs[-1]], [other], 0.7, color="C5",
               label="rest of train (start-up, loading, checkpoints)")
        for key, name, style in (("read_s", "read (loader threads)", "k--o"),
                                 ("assemble_s", "assemble (loader threads)", "k:s")):
            ax.plot(xs[1:-1], [e.get(key) or 0.0 for e in epochs], style, markersize=3,
                    label=name)
        ax.set_xticks(xs, ["prepare"] + [f"e{e['epoch']}" for e in epochs] + ["rest"])
        ax.set_ylabel("seconds")
        ax.set_title(f"disktrain, {regime.replace('_', ' ')} (job {r['job_s']:.1f} s)",
                     fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(result: dict, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    s = result["summary"]
    bar_chart(s, "epoch_s", out_dir / "epoch_time.png", "Training epoch (median; hatched: "
              "extrapolated)", "seconds per epoch (log)")
    bar_chart(s, "job_s", out_dir / "job_time.png",
              f"Whole job: {result['config']['job']['epochs']} epochs + evaluation after each"
              " (disktrain: prepare + train)", "seconds (log)")
    timeline_chart(result["runs"], out_dir / "disktrain_timeline.png")
    return sorted(str(p) for p in out_dir.glob("*.png"))


# ---------------------------------------------------------------- main


def machine() -> dict:
    mem = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"host": platform.node(), "kernel": platform.release(), "cpu": model,
            "cores": os.cpu_count(), "mem_total_kb": int(mem["MemTotal"].split()[0])}


def write_json(result: dict, path: Path | None) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(path)


def require_bench_extra() -> None:
    missing = [m for m in ("torch_geometric", "torch_sparse", "torch_scatter", "matplotlib")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"bench_vs_pyg: error: {', '.join(missing)} not installed; "
                         "pip install -e '.[bench]' (PyTorch Geometric's NeighborLoader is the "
                         "peer)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=SETTINGS, default="quick")
    ap.add_argument("--nodes", type=int, help="override the setting's node count")
    ap.add_argument("--feature-dim", type=int, help="override the setting's feature dim")
    ap.add_argument("--splits", help="override the setting's train,val,test sizes")
    ap.add_argument("--epochs", type=int, default=Job.epochs)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--regimes", default=",".join(REGIMES))
    ap.add_argument("--peer-settings", default=",".join(PEER_SETTINGS))
    ap.add_argument("--mem-limit", type=parse_bytes,
                    help="out-of-core memory limit, page cache included (default: 2.5G)")
    ap.add_argument("--evict-interval", type=float, default=0.1,
                    help="seconds between evictions where no cgroup can be made")
    ap.add_argument("--peer-max-batches", type=int, default=0,
                    help="cap each peer phase at this many batches, extrapolate (0: none)")
    ap.add_argument("--peer-max-phase-s", type=float,
                    help="cap each peer phase at this many seconds, extrapolate (default: "
                    "quick 30, full 600; 0: none)")
    ap.add_argument("--run-timeout", type=float, default=4 * 3600,
                    help="kill a child after this many seconds (recorded as failed)")
    ap.add_argument("--prepare-args", default="", help="extra `disktrain prepare` flags")
    ap.add_argument("--train-args", default="", help="extra `disktrain train` flags")
    ap.add_argument("--variants", default="default=",
                    help="disktrain configurations run side by side: NAME=PREPARE-FLAGS;... "
                    "(e.g. 'plain=;aggregated=--aggregate-first-hop mean'); each run after "
                    "the other, before the peer, in every regime and repeat")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--workdir", help="parent of the temporary work directory")
    where.add_argument("--keep", help="work in this directory and keep it (reuses its dataset)")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    ap.add_argument("--plots", type=Path, help="write the PNG plots into this directory")
    args = ap.parse_args(argv)
    base = SETTINGS[args.setting]
    over = {}
    if args.nodes:
        over["nodes"] = args.nodes
    if args.feature_dim:
        over["feature_dim"] = args.feature_dim
    if args.splits:
        try:
            over.update(zip(("train", "val", "test"), map(int, args.splits.split(","))))
        except ValueError:
            ap.error(f"--splits: expected train,val,test counts, got {args.splits!r}")
    scale = dataclasses.replace(base, **over)
    if args.mem_limit is None:
        args.mem_limit = scale.mem_limit
    if args.peer_max_phase_s is None:
        args.peer_max_phase_s = scale.peer_max_phase_s
    for name, allowed in (("regimes", REGIMES), ("peer_settings", PEER_SETTINGS)):
        values = [v for v in getattr(args, name).split(",") if v]
        if bad := [v for v in values if v not in allowed]:
            ap.error(f"--{name.replace('_', '-')}: unknown {bad}; choose from {list(allowed)}")
        setattr(args, name, values)
    args.variants = [tuple(v.split("=", 1)) for v in args.variants.split(";") if v]
    if bad := [v for v in args.variants if len(v) != 2 or not v[0]]:
        ap.error(f"--variants: expected NAME=PREPARE-FLAGS;..., got {bad}")
    if args.repeats < 1 or args.epochs < 1:
        ap.error(f"--repeats and --epochs must be >= 1, got {args.repeats}, {args.epochs}")
    return args, scale


def main(argv=None) -> int:
    args, scale = parse_args(argv)
    require_bench_extra()
    # a TERM unwinds like Ctrl-C: the running child's session and cgroup go, the work dir too
    term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    job = Job(epochs=args.epochs)
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-vs-pyg-", dir=args.workdir))
    try:
        need, free = disk_need(scale, job), shutil.disk_usage(work).free
        if free < need:
            raise SystemExit(f"bench_vs_pyg: error: {work} has {free / 1e9:.1f} GB free, the "
                             f"{args.setting} setting needs about {need / 1e9:.1f} GB "
                             "(--workdir elsewhere)")
        (work / "logs").mkdir(exist_ok=True)
        t0 = time.perf_counter()
        ds, npy = build_dataset(work, scale, job, work / "logs" / "synth.err")
        bench = Bench(args, scale, job, work, ds, npy)
        result = {"benchmark": "bench_vs_pyg", "setting": args.setting,
                  "command": shlex.join([sys.executable, __file__,
                                         *(sys.argv[1:] if argv is None else argv)]),
                  "machine": machine(),
                  "config": {"scale": dataclasses.asdict(scale), "job": dataclasses.asdict(job),
                             "repeats": args.repeats, "regimes": args.regimes,
                             "peer_settings": {s: dict(zip(("workers", "advice"),
                                                           PEER_SETTINGS[s]))
                                               for s in args.peer_settings},
                             "mem_limit_bytes": args.mem_limit,
                             "peer_max_batches": args.peer_max_batches,
                             "peer_max_phase_s": args.peer_max_phase_s,
                             "prepare_args": args.prepare_args, "train_args": args.train_args,
                             "variants": dict(args.variants),
                             "disk_device": bench.device,
                             "feature_bytes": scale.feature_bytes},
                  "goals": GOALS, "runs": [], "summary": {}}
        for regime in args.regimes:
            for repeat in range(args.repeats):
                for setting in [*args.variants, *args.peer_settings]:
                    ours = isinstance(setting, tuple)  # (variant, its prepare args)
                    name = f"disktrain/{setting[0]}" if ours else f"pyg/{setting}"
                    print(f"bench: {regime} #{repeat} {name} ...", file=sys.stderr)
                    rec = (bench.disktrain(regime, repeat, *setting) if ours
                           else bench.peer(setting, regime, repeat))
                    result["runs"].append(rec)
                    print(f"bench: {regime} #{repeat} {name}: ok={rec['ok']} job "
                          f"{rec['job_s']:.1f} s, epoch {rec['epoch_s'] or float('nan'):.2f} s"
                          f"{' (extrapolated)' if rec['extrapolated'] else ''}, test acc "
                          f"{rec['test_acc']}", file=sys.stderr)
                    result["summary"] = summarize(result["runs"])
                    result["bench_wall_s"] = time.perf_counter() - t0
                    write_json(result, args.out)
        if args.plots:
            result["plots"] = plot_all(result, args.plots)
            write_json(result, args.out)
        print(json.dumps({"setting": args.setting, "summary": {
            regime: {m: v for m, v in entry.items() if m != "systems"}
            for regime, entry in result["summary"].items()}}))
        failed = [r for r in result["runs"] if not r["ok"]]
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, term)


if __name__ == "__main__":
    sys.exit(main())
