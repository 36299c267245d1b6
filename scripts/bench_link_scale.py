"""Link prediction at scale, out of core: disktrain's whole job (prepare + epochs + MRR
evaluation) and training epoch against PyTorch Geometric's ``LinkNeighborLoader`` with
memory-mapped features, in the same run (issue 28, goal "Scale, out of core").

Usage: python scripts/bench_link_scale.py [--setting quick|full] [--repeats 1]
           [--nodes N] [--avg-degree D] [--feature-dim F] [--edge-split TR,VA,TE]
           [--eval-negatives K] [--edges-per-epoch M] [--epochs E] [--batch-size P]
           [--fanouts 10,5] [--hidden 128] [--mem-limit 2.5G] [--no-cgroup]
           [--peer-settings random|normal|random,normal] [--peer-max-phase-s T] [--run-timeout S] [--prepare-args "..."] [--train-args "..."]
           [--workdir /tmp/linkscale] [--keep] [--out docs/perf/link_scale.json]
           [--plots docs/perf/link_scale.png]

Needs the `bench` extra (torch-geometric, torch-sparse, matplotlib). The graph (``disktrain
synth``, R-MAT with planted classes, undirected: CSR edges = nodes x avg degree):
  full   4M nodes, avg degree 26 (104M edges before R-MAT's duplicates go, 52M undirected
         pairs; the goal's 100M counts the stored CSR and the held-out pairs), 256-d float32
         features (4.1 GB, larger than the 2.5 GiB limit); edge split 0.9995,0.00025,0.00025
         (about 13,000 val and 13,000 test edges) with 1,000 negatives each (OGB citation2's
         protocol; 26M scored pairs whose negatives touch nearly every node, so both systems
         embed the whole graph either way, and the scoring stays a small part of the
         evaluation); 20,480 training edges an epoch (20 batches of 1,024, about 3 GB of
         packed input rows an epoch), 3 epochs; the peer's phases capped at 300 s. Needs
         about 24 GB of disk and, with the machine to itself, about 25-30 minutes (data 3-5,
         disktrain about 10, most of it the exact evaluation, the peer at most about 13 with
         its caps: its layer-wise inference is what gets capped and extrapolated);
  quick  a smoke run: 200k nodes, avg degree 10, 128-d (102 MB), split 0.99,0.005,0.005,
         100 negatives, 10,240 edges an epoch, 2 epochs, limit 1 GiB (features fit in it:
         no out-of-core claim), phases capped at 60 s.
The flags override the setting. Limits much under about 1.5 GiB OOM-kill the runs of either
system (seen at 0.8-1.25 GiB with 0.5-1M nodes), whatever the graph's size. The same job both ways: GraphSAGE (mean, 2 layers = the
fanouts, hidden 128, dropout 0.5) with a dot decoder, BCE over each positive and its
``--num-negatives`` negative destinations (the positive's source kept), Adam lr 0.01 weight
decay 5e-4, ``--epochs`` epochs of ``--edges-per-epoch`` random training edges each (another
subset every epoch), batches of ``--batch-size`` positives; then MRR, Hits@K and AUC of the
val and test edges against their stored negatives on exact full-neighbourhood embeddings:
  disktrain  ``prepare --task link --edges-per-epoch M --epochs 1`` (later epochs are sampled
             and packed in the background while training runs) then ``train --task link
             --decoder dot --metrics FILE`` (its evaluation is part of its wall);
             job = wall of prepare + wall of train;
  pyg        scripts/pyg_link_peer.py ``--features F.npy --negative-mode triplet``:
             ``LinkNeighborLoader`` over the stored CSR (``adj_t``), features memory-mapped
             from a .npy exported once (untimed) beside the dataset, then layer-wise inference
             of every node (each layer's output a memory-mapped .npy) and the same scoring;
             at each of ``--peer-settings``: ``random`` (``madvise(MADV_RANDOM)`` on the map,
             the default) or ``normal`` (the kernel's readahead: out of core each row's fault
             reads far more than the row, and the cache, too small to keep it, thrashes: at
             1024-d, 500k nodes and a 1.25 GiB limit it read 185 GB in 3 minutes without
             finishing a batch); the ratios take the fastest setting, per figure;
             job = the child's wall, or its estimate where a phase (a training epoch, an
             inference layer) ran past ``--peer-max-phase-s`` and was extrapolated from its
             batch rate (``extrapolated``; its metrics are then None).
Each run is a child process after ``sync`` and ``posix_fadvise(DONTNEED)`` on every file of
the dataset and the .npy, in a cgroup-v1 memory group of ``--mem-limit`` (page cache included;
disktrain's prepare and train share one), as scripts/bench_vs_pyg.py's out_of_core regime
(scripts/_benchlib.py); ``--no-cgroup`` only evicts (tests). The systems alternate
``--repeats`` times. Per run: ``job_s``, ``epoch_s`` (mean training epoch: disktrain's
``epoch_time_s``; the peer's loop over an epoch's batches), ``eval_s`` (disktrain: from its
last epoch record to train's exit, i.e. the exact evaluation and the run's shutdown; the peer:
inference and scoring), ``prepare_s``, ``read_bytes`` (rusage of the child and its reaped
descendants), ``peak_rss_bytes``, the cgroup's peak and OOM kills, the metrics; for disktrain
``epoch_io_amplification`` = the training epochs' packed reads over the packed bytes their
batches need (goal <= 1.05) and ``read_over_needed`` = the whole run's reads over those needed
bytes (prepare's and the evaluation's reads included, as bench_vs_pyg reports it). The summary
gives medians, the ratios peer / disktrain of job, epoch and evaluation seconds, and the goal
checks; the JSON goes to ``--out`` after every run, a markdown table beside it (.md) and the
bar chart to ``--plots``. Checks the free disk first; the work directory (under ``--workdir``)
is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import (
    Regime,
    device_of,
    evict,
    in_child,
    last_json,
    parse_bytes,
    run_header,
    run_measured,
    stderr_tail,
    write_json,
)

SCRIPTS = Path(__file__).resolve().parent
DISKTRAIN = [sys.executable, "-m", "disktrain"]
PEER = [sys.executable, str(SCRIPTS / "pyg_link_peer.py")]
EXPORT = [sys.executable, str(SCRIPTS / "pyg_peer.py")]
PREPARED = ("samples", "packed", "eval", "epochs", "checkpoints")
GiB = 1 << 30
EPOCH_IO_GOAL = 1.05
"""disktrain's training epochs may read at most this many bytes per packed byte needed."""
SCALE_GOAL_EDGES = 100_000_000
METRICS = ("mrr", "hits@10", "hits@50", "hits@100", "auc")


@dataclasses.dataclass(frozen=True)
class Scale:
    """The graph, the job's length and the defaults that go with them."""
    nodes: int
    avg_degree: float
    feature_dim: int
    edge_split: str
    eval_negatives: int
    edges_per_epoch: int
    epochs: int
    mem_limit: int
    peer_max_phase_s: float

    @property
    def feature_bytes(self) -> int:
        return self.nodes * self.feature_dim * 4

    @property
    def csr_edges(self) -> int:
        return int(self.nodes * self.avg_degree)


SETTINGS = {
    "quick": Scale(nodes=200_000, avg_degree=10, feature_dim=128,
                   edge_split="0.99,0.005,0.005", eval_negatives=100, edges_per_epoch=10_240,
                   epochs=2, mem_limit=GiB, peer_max_phase_s=60.0),
    "full": Scale(nodes=4_000_000, avg_degree=26, feature_dim=256,
                  edge_split="0.9995,0.00025,0.00025", eval_negatives=1000,
                  edges_per_epoch=20_480, epochs=3, mem_limit=int(2.5 * GiB),
                  peer_max_phase_s=300.0),
}
SCALE_FLAGS = ("nodes", "avg_degree", "feature_dim", "edge_split", "eval_negatives",
               "edges_per_epoch", "epochs", "mem_limit", "peer_max_phase_s")


def disk_need(scale: Scale, args) -> int:
    """About the most bytes the work directory holds at once: the dataset (features, CSR and
    training pairs as int32) and the .npy; three epochs' packed rows (a batch's distinct input
    rows taken as half its fanout bound, of its 3 x batch-size endpoints); two sets of
    N x hidden float32 layer outputs (the peer's or disktrain's evaluation); plus 1 GiB."""
    bound = 1
    for f in reversed(args.fanouts):
        bound = 1 + f * bound
    rows = min(scale.nodes, 3 * args.batch_size * bound // 2)
    packed = 3 * -(-scale.edges_per_epoch // args.batch_size) * rows * scale.feature_dim * 4
    layers = 2 * scale.nodes * args.hidden * 4 * len(args.fanouts)
    return 2 * scale.feature_bytes + 8 * scale.csr_edges + packed + layers + GiB


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=SETTINGS, default="quick")
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--avg-degree", type=float)
    ap.add_argument("--feature-dim", type=int)
    ap.add_argument("--edge-split", help="train,val,test shares of the edges")
    ap.add_argument("--eval-negatives", type=int, help="negatives per val/test edge")
    ap.add_argument("--edges-per-epoch", type=int, help="training edges per epoch")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--mem-limit", type=parse_bytes, help="page cache included")
    ap.add_argument("--peer-max-phase-s", type=float,
                    help="cap each peer phase at this many seconds, extrapolate (0: none)")
    ap.add_argument("--peer-settings", default="random",
                    help="the peer's madvise on the feature map, each run: random (no "
                    "readahead), normal (the kernel's readahead), or both: random,normal")
    ap.add_argument("--batch-size", type=int, default=1024, help="positive edges per batch")
    ap.add_argument("--fanouts", default="10,5")
    ap.add_argument("--num-negatives", type=int, default=1, help="negatives per positive")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-cgroup", action="store_true",
                    help="evict the files but run without a memory cgroup (tests)")
    ap.add_argument("--evict-interval", type=float, default=0.1,
                    help="seconds between evictions where no cgroup can be made")
    ap.add_argument("--run-timeout", type=float, default=4 * 3600,
                    help="kill a child after this many seconds (recorded as failed)")
    ap.add_argument("--prepare-args", default="", help="extra `disktrain prepare` flags")
    ap.add_argument("--train-args", default="", help="extra `disktrain train` flags")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/linkscale"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, help="the JSON result (and a .md table beside it)")
    ap.add_argument("--plots", type=Path, help="the bar chart (.png, or a directory)")
    args = ap.parse_args(argv)
    try:
        args.fanouts = [int(f) for f in args.fanouts.split(",")]
    except ValueError:
        ap.error(f"--fanouts: expected integers like 10,5, got {args.fanouts!r}")
    args.peer_settings = args.peer_settings.split(",")
    if not set(args.peer_settings) <= {"random", "normal"}:
        ap.error(f"--peer-settings: random, normal or both, got {','.join(args.peer_settings)}")
    over = {k: getattr(args, k) for k in SCALE_FLAGS if getattr(args, k) is not None}
    scale = dataclasses.replace(SETTINGS[args.setting], **over)
    for name in ("nodes", "feature_dim", "eval_negatives", "edges_per_epoch", "epochs",
                 "batch_size", "num_negatives", "hidden", "repeats"):
        value = getattr(scale if name in SCALE_FLAGS else args, name)
        if value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if scale.avg_degree <= 0 or scale.peer_max_phase_s < 0 or min(args.fanouts) < 1:
        ap.error(f"--avg-degree must be > 0, --peer-max-phase-s >= 0 and --fanouts >= 1, got "
                 f"{scale.avg_degree}, {scale.peer_max_phase_s}, {args.fanouts}")
    args.memory_limit = None if args.no_cgroup else scale.mem_limit  # run_header's field
    return args, scale


# ---------------------------------------------------------------- records


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def step_summary(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "stdout"}


def disktrain_record(prepare: dict, train: dict | None, per_epoch: list[dict],
                     eval_s: float | None) -> dict:
    """One disktrain run from its two steps, train's per-epoch records and the seconds from
    its last epoch record to its exit."""
    steps = [s for s in (prepare, train) if s is not None]
    result = last_json(train["stdout"]) if train else None
    ok = (train is not None and all(s["returncode"] == 0 for s in steps)
          and bool(result and result.get("link")))
    needed = [e.get("packed_bytes", {}).get("needed") for e in per_epoch]
    read = [e.get("packed_bytes", {}).get("read") for e in per_epoch]
    complete = bool(per_epoch) and None not in needed and None not in read
    read_bytes = sum(s["read_bytes"] for s in steps)
    return {
        "system": "disktrain", "ok": ok, "extrapolated": False,
        "job_s": sum(s["wall_s"] for s in steps), "prepare_s": prepare["wall_s"],
        "train_s": train["wall_s"] if train else None,
        "epoch_s": mean(e["epoch_time_s"] for e in per_epoch),
        "epoch_times_s": [e["epoch_time_s"] for e in per_epoch],
        "prepare_wait_s": [e.get("prepare_wait_s") for e in per_epoch],
        "eval_s": eval_s if ok else None,
        "read_bytes": read_bytes, "written_bytes": sum(s["written_bytes"] for s in steps),
        "needed_bytes": sum(needed) if complete else None,
        "epoch_io_amplification": ratio(sum(read), sum(needed)) if complete else None,
        "read_over_needed": ratio(read_bytes, sum(needed)) if complete else None,
        "peak_rss_bytes": max(s["peak_rss_bytes"] for s in steps),
        "link": result.get("link") if ok else None,
        "steps": {"prepare": step_summary(prepare),
                  "train": step_summary(train) if train else None},
        "per_epoch": per_epoch}


def peer_record(rec: dict, result: dict | None) -> dict:
    """One peer run from its child's measurements and its JSON result."""
    ok = rec["returncode"] == 0 and result is not None
    epochs = result["per_epoch"] if ok else []
    extrapolated = bool(ok and result["extrapolated"])
    needed = sum(e["needed_bytes"] for e in epochs) if ok else None
    return {
        "system": "pyg", "ok": ok, "extrapolated": extrapolated,
        "extrapolated_figures": {
            "job": extrapolated,
            "epoch": any(e["batches"] < e["total_batches"] for e in epochs),
            "eval": bool(ok and result.get("eval_extrapolated"))},
        "job_s": result["job_est_s"] if extrapolated else rec["wall_s"],
        "job_wall_s": rec["wall_s"], "prepare_s": None,
        "setup_s": result["setup_s"] if ok else None,
        "epoch_s": mean(e["epoch_est_s"] for e in epochs),
        "epoch_times_s": [e["epoch_est_s"] for e in epochs],
        "batches_measured": sum(e["batches"] for e in epochs),
        "eval_s": result["eval_est_s"] if ok else None,
        "embed_layers": result.get("embed_layers") if ok else None,
        "score_s": result.get("score_s") if ok else None,
        "read_bytes": rec["read_bytes"], "written_bytes": rec["written_bytes"],
        "needed_bytes": needed, "read_over_needed": ratio(rec["read_bytes"], needed),
        "peak_rss_bytes": rec["peak_rss_bytes"],
        "link": result.get("link") if ok else None,
        "steps": {"peer": step_summary(rec)}, "per_epoch": epochs}


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


MEDIAN_KEYS = ("job_s", "epoch_s", "eval_s", "prepare_s", "read_bytes", "peak_rss_bytes",
               "cgroup_max_usage_bytes", "epoch_io_amplification", "read_over_needed")


def label(run: dict) -> str:
    """``disktrain``, or ``pyg/<advice>`` for a peer setting."""
    return run["system"] if run["system"] == "disktrain" else f"pyg/{run['setting']}"


def summarize(runs: list[dict], scale: Scale, dataset: dict | None = None) -> dict:
    """Medians over each system's (peer setting's) ok runs (metrics: test and val MRR,
    Hits@K, AUC); per figure (job, epoch, evaluation seconds) the fastest peer setting and its
    ratio to disktrain's; the goal checks (the graph's edges: the ``dataset``'s CSR edges and
    its val/test pairs in both directions, else the setting's nodes x avg degree)."""
    edges = scale.csr_edges if dataset is None else (
        dataset["csr_edges"] + 2 * (dataset["link_val"] + dataset["link_test"]))
    systems = {}
    for name in dict.fromkeys(map(label, runs)):
        rs = [r for r in runs if label(r) == name]
        ok = [r for r in rs if r["ok"]]
        systems[name] = {
            "runs": len(rs), "ok_runs": len(ok),
            "oom_kills": sum(r.get("cgroup_oom_kills") or 0 for r in rs),
            "extrapolated": any(r["extrapolated"] for r in ok),
            "extrapolated_figures": {f: any(r.get("extrapolated_figures", {}).get(f)
                                            for r in ok) for f in ("job", "epoch", "eval")},
            **{k: median(r.get(k) for r in ok) for k in MEDIAN_KEYS},
            "link": {s: {m: median(r["link"][s][m] for r in ok if r["link"])
                         for m in METRICS} for s in ("val", "test")}}
    d = systems.get("disktrain", {})
    peers = {k: m for k, m in systems.items() if k != "disktrain"}
    best = {k.removesuffix("_s"): min((p for p in peers if peers[p][k]),
                                      key=lambda p, k=k: peers[p][k], default=None)
            for k in ("job_s", "epoch_s", "eval_s")}
    amp = d.get("epoch_io_amplification")
    return {"systems": systems, "peer_best": best,
            "ratios_peer_over_disktrain": {
                k: ratio(peers[b][f"{k}_s"], d.get(f"{k}_s")) if b else None
                for k, b in best.items()},
            "peer_extrapolated": any(peers[b]["extrapolated_figures"][f]
                                     for f, b in best.items() if b),
            "goals": {"epoch_io_amplification": {
                          "value": amp, "goal": EPOCH_IO_GOAL,
                          "met": None if amp is None else amp <= EPOCH_IO_GOAL},
                      "scale": {"graph_edges": edges, "goal_edges": SCALE_GOAL_EDGES,
                                "feature_bytes": scale.feature_bytes,
                                "mem_limit_bytes": scale.mem_limit,
                                "met": edges >= SCALE_GOAL_EDGES
                                and scale.feature_bytes > scale.mem_limit}}}


def table(summary: dict) -> str:
    """The summary as a markdown table (for the README): a column per system and peer
    setting, and the fastest peer setting's ratio to disktrain."""
    s, r, best = summary["systems"], summary["ratios_peer_over_disktrain"], summary["peer_best"]
    names = ["disktrain", *(k for k in s if k != "disktrain")]

    def cells(key: str, fmt: str, unit: float = 1.0) -> str:
        figure = s[names[0]]["extrapolated_figures"].keys() & {key.removesuffix("_s")}
        return " | ".join("-" if s[n].get(key) is None else format(s[n][key] / unit, fmt)
                          + ("*" if any(s[n]["extrapolated_figures"][f] for f in figure)
                             else "") for n in names)

    def metric(m: str) -> str:
        return " | ".join("-" if (v := s[n]["link"]["test"][m]) is None else f"{v:.4f}"
                          for n in names)

    def times(k: str | None) -> str:
        return "" if k is None or r[k] is None else f"{r[k]:.2f}x ({best[k]})"

    head = [n if n == "disktrain" else f"PyG LinkNeighborLoader, mmap {n.split('/')[1]}"
            for n in names]
    lines = [f"| | {' | '.join(head)} | fastest PyG / disktrain |",
             "|---" * (len(names) + 2) + "|"]
    rows = [("job s", "job_s", ".1f", "job"), ("epoch s", "epoch_s", ".2f", "epoch"),
            ("evaluation s", "eval_s", ".1f", "eval"), ("prepare s", "prepare_s", ".1f", None)]
    lines += [f"| {name} | {cells(k, f)} | {times(q)} |" for name, k, f, q in rows]
    lines += [f"| {name} GB | {cells(k, '.2f', 1e9)} | |"
              for name, k in (("read", "read_bytes"), ("peak RSS", "peak_rss_bytes"))]
    lines += [f"| test {m} | {metric(m)} | |" for m in ("mrr", "hits@10", "auc")]
    g = summary["goals"]["epoch_io_amplification"]
    lines.append(f"| epoch I/O amplification (goal <= {g['goal']}) | "
                 f"{'-' if g['value'] is None else format(g['value'], '.3f')} |"
                 + " |" * len(names))
    if any(m["extrapolated"] for m in s.values()):
        lines.append("\n\\* extrapolated from the batches run in the time cap")
    return "\n".join(lines)


# ---------------------------------------------------------------- runs


class Bench:
    """The runs of one invocation, in one work directory."""

    def __init__(self, args, scale: Scale, work: Path, ds: Path, npy: Path):
        self.args, self.scale, self.work, self.ds, self.npy = args, scale, work, ds, npy
        self.logs = work / "logs"
        self.device = device_of(ds)

    @contextlib.contextmanager
    def out_of_core(self, label: str):
        """The files dropped from the page cache; the run's memory group (None with
        --no-cgroup) and how the regime was made."""
        if self.args.no_cgroup:
            evict([self.ds, self.npy])
            yield None, {"out_of_core_method": "evict-only"}
            return
        with Regime("out_of_core", [self.ds, self.npy], self.scale.mem_limit,
                    self.args.evict_interval, f"bench-link-scale-{os.getpid()}-{label}") as env:
            info = env.info
            yield env.cgroup, info
            if env.cgroup is not None:
                info.update(env.cgroup.stats())

    def run(self, argv: list, cgroup, log: Path) -> dict:
        return run_measured([str(a) for a in argv], cgroup=cgroup, stderr_path=log,
                            device=self.device, timeout_s=self.args.run_timeout)

    def disktrain(self, repeat: int) -> dict:
        a, s, label = self.args, self.scale, f"disktrain-{repeat}"
        for name in PREPARED:
            shutil.rmtree(self.ds / name, ignore_errors=True)
        run_dir, metrics = self.work / "runs" / label, self.logs / f"{label}.jsonl"
        common = ["--fanouts", ",".join(map(str, a.fanouts)), "--batch-size", a.batch_size,
                  "--seed", a.seed, "--no-progress"]
        prepare_argv = DISKTRAIN + [
            "prepare", self.ds, "--task", "link", "--num-negatives", a.num_negatives,
            "--negative-sampling", "uniform", "--edges-per-epoch", s.edges_per_epoch,
            "--epochs", 1, *common, *shlex.split(a.prepare_args)]
        train_argv = DISKTRAIN + [
            "train", self.ds, "--task", "link", "--decoder", "dot", "--model", "sage",
            "--hidden", a.hidden, "--epochs", s.epochs, "--lr", 0.01, "--weight-decay", 5e-4,
            "--dropout", 0.5, "--seed", a.seed, "--metrics", metrics, "--run-dir", run_dir,
            "--no-progress", *shlex.split(a.train_args)]
        log = self.logs / f"{label}.err"
        train, eval_s = None, None
        with self.out_of_core(label) as (cgroup, info):
            prepare = self.run(prepare_argv, cgroup, log)
            if prepare["returncode"] == 0:
                train = self.run(train_argv, cgroup, log)
                if metrics.exists():  # the last epoch's record to train's exit
                    eval_s = time.time() - metrics.stat().st_mtime
        per_epoch = ([json.loads(line) for line in metrics.read_text().splitlines()]
                     if metrics.exists() else [])
        record = disktrain_record(prepare, train, per_epoch, eval_s)
        record.update(setting="default", repeat=repeat, **info)
        if not record["ok"]:
            record["error"] = failure((train or prepare)["returncode"], info, log)
        for name in PREPARED:
            shutil.rmtree(self.ds / name, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        return record

    def peer(self, advice: str, repeat: int) -> dict:
        a, s, label = self.args, self.scale, f"pyg-{advice}-{repeat}"
        argv = PEER + [
            self.ds, "--features", self.npy, "--advice", advice, "--scratch", self.work,
            "--fanouts", ",".join(map(str, a.fanouts)), "--batch-size", a.batch_size,
            "--num-negatives", a.num_negatives, "--negative-mode", "triplet",
            "--edges-per-epoch", s.edges_per_epoch, "--epochs", s.epochs,
            "--hidden", a.hidden, "--lr", 0.01, "--weight-decay", 5e-4, "--dropout", 0.5,
            "--seed", a.seed,
            "--max-phase-s", s.peer_max_phase_s]
        log = self.logs / f"{label}.err"
        with self.out_of_core(label) as (cgroup, info):
            rec = self.run(argv, cgroup, log)
        record = peer_record(rec, last_json(rec["stdout"]))
        record.update(setting=advice, repeat=repeat, **info)
        if not record["ok"]:
            record["error"] = failure(rec["returncode"], info, log)
        return record


def failure(returncode: int, info: dict, log: Path) -> str:
    """Why a run failed: its exit status or signal, the cgroup's OOM kills, its stderr."""
    why = f"exit {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    if info.get("cgroup_oom_kills"):
        why += f" ({info['cgroup_oom_kills']} OOM kill(s) in the memory cgroup)"
    return f"{why}\n{stderr_tail(log)}"


def build_dataset(args, scale: Scale, work: Path, result: dict) -> tuple[Path, Path]:
    """``work/ds`` (``disktrain synth`` with the edge split) and its features exported to
    ``work/ds.features.npy`` (the peer's, untimed); each step's wall in ``result``."""
    ds, npy, log = work / "ds", work / "ds.features.npy", work / "logs" / "dataset.err"
    synth = DISKTRAIN + [
        "synth", "--out", ds, "--nodes", scale.nodes, "--avg-degree", scale.avg_degree,
        "--feature-dim", scale.feature_dim, "--classes", 16, "--feature-dtype", "float32",
        "--edge-split", scale.edge_split, "--split-seed", args.seed, "--eval-negatives",
        scale.eval_negatives, "--seed", args.seed, "--no-progress"]
    for name, argv in (("synth", synth), ("export", EXPORT + [ds, "--features", npy,
                                                              "--export"])):
        argv = [str(a) for a in argv]
        print(f"bench_link_scale: {shlex.join(argv[1:])}", file=sys.stderr)
        rec = run_measured(argv, stderr_path=log)
        result["steps"][name] = {"argv": argv, "wall_s": rec["wall_s"],
                                 "returncode": rec["returncode"]}
        if rec["returncode"] != 0:
            raise SystemExit(f"bench_link_scale: {name} failed ({rec['returncode']}):\n"
                             f"{stderr_tail(log)}")
    return ds, npy


def dataset_sizes(ds: Path) -> dict:
    from disktrain.storage.dataset import Dataset

    d = Dataset(ds)
    out = {"num_nodes": d.num_nodes, "csr_edges": d.meta.num_edges,
           "feature_dim": d.meta.feature_dim}
    out.update({f"link_{s}": len(d.link_edges(s)) for s in ("train", "val", "test")})
    return out


def plot(summary: dict, path: Path) -> Path:
    """Bars of job, epoch and evaluation seconds (median, log scale), one per system and peer
    setting; hatched where extrapolated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = path / "link_scale.png" if path.suffix != ".png" else path
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = (("job_s", "whole job"), ("epoch_s", "training epoch"), ("eval_s", "evaluation"))
    names = list(summary["systems"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, name in enumerate(names):
        m = summary["systems"][name]
        for j, (key, _) in enumerate(keys):
            x, y = j + (i - (len(names) - 1) / 2) * width, m.get(key) or 0.0
            ax.bar([x], [y], width, color=f"C{i}",
                   hatch="//" if m["extrapolated_figures"][key.removesuffix("_s")] else "",
                   label=None if j else name if name == "disktrain"
                   else f"PyG LinkNeighborLoader (mmap, {name.split('/')[1]})")
            if y:
                ax.annotate(f"{y:.3g}", (x, y), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys)), [name for _, name in keys])
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 8)  # room for the legend
    ax.set_ylabel("seconds (median, log)")
    r = summary["ratios_peer_over_disktrain"]
    ax.set_title(f"Link prediction out of core, fastest PyG / disktrain: job "
                 f"{r['job'] or float('nan'):.1f}x, epoch {r['epoch'] or float('nan'):.1f}x"
                 + ("\n(hatched: extrapolated from the batches run)"
                    if summary["peer_extrapolated"] else ""), fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args, scale = parse_args(argv)
    missing = [m for m in ("torch_geometric", "torch_sparse", "matplotlib")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"bench_link_scale: error: {', '.join(missing)} not installed; "
                         "pip install -e '.[bench]'")
    term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-link-scale-", dir=args.workdir))
    try:
        need, free = disk_need(scale, args), shutil.disk_usage(work).free
        if free < need:
            raise SystemExit(f"bench_link_scale: error: {work} has {free / 1e9:.1f} GB free, "
                             f"this setting needs about {need / 1e9:.1f} GB (--workdir "
                             "elsewhere)")
        (work / "logs").mkdir()
        result = run_header("link_scale", __file__, args, argv, work)
        result.update(setting=args.setting, scale=dataclasses.asdict(scale),
                      disk_need_bytes=need, runs=[])
        t0 = time.perf_counter()
        ds, npy = build_dataset(args, scale, work, result)
        result["dataset"] = in_child(dataset_sizes, ds)  # the maps stay out of our RSS
        bench = Bench(args, scale, work, ds, npy)
        for repeat in range(args.repeats):
            for system in ("disktrain", *args.peer_settings):
                rec = (bench.disktrain(repeat) if system == "disktrain"
                       else bench.peer(system, repeat))
                result["runs"].append(rec)
                print(f"bench_link_scale: #{repeat} {label(rec)}: ok={rec['ok']} job "
                      f"{rec['job_s']:.1f} s, epoch {rec['epoch_s'] or float('nan'):.2f} s"
                      f"{' (extrapolated)' if rec['extrapolated'] else ''}", file=sys.stderr)
                result["summary"] = summarize(result["runs"], scale, result["dataset"])
                result["bench_wall_s"] = time.perf_counter() - t0
                write_json(result, args.out)
        if args.plots:
            result["plot"] = str(plot(result["summary"], args.plots))
            write_json(result, args.out)
        text = table(result["summary"])
        if args.out:
            args.out.with_suffix(".md").write_text(text + "\n")
        print(text)
        print(json.dumps({k: result["summary"][k] for k in
                          ("ratios_peer_over_disktrain", "peer_best", "peer_extrapolated",
                           "goals")}))
        return 0 if all(r["ok"] for r in result["runs"]) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, term)


if __name__ == "__main__":
    sys.exit(main())
