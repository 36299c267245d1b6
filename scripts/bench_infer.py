"""Inference for every node, out of core: ``disktrain infer`` of a trained 3-layer GraphSAGE
over an R-MAT graph, per layer (seconds, bytes read and written against the minimum), against
PyG's layer-wise inference (``NeighborLoader`` with ``num_neighbors=[-1]``) in the same run.

Usage: python scripts/bench_infer.py [--scale 22] [--avg-degree 16] [--feature-dim 64]
           [--hidden 128] [--fanouts 5,5,5] [--memory-limit 8G] [--pyg-memory-limit BYTES]
           [--pyg-batch-size 4096] [--pyg-max-s 600] [--infer-args "..."] [--skip-pyg]
           [--skip-evaluate] [--sample-interval 0.5] [--workdir DIR] [--keep]
           [--out result.json] [--plot layers.png]

Needs the `bench` extra (torch-geometric, torch-sparse, matplotlib) for the PyG peer and the
plot. The issue's graph is ``--scale 26`` (67M nodes, 1.07B stored edges); the default, 22
(4.2M nodes, 67M edges), runs in minutes on two cores.

Steps, each a child process with every file of the work directory dropped from the page cache
first and run in a cgroup-v1 memory group of its own limited to ``--memory-limit`` (page cache
included; where none can be made, the files are evicted every ``--evict-interval`` seconds
and ``out_of_core_method`` says so), as scripts/bench_typed.py's:
  1. ``disktrain synth``: 2^scale nodes, ``--avg-degree``, ``--feature-dim`` float16 features;
  2. ``disktrain prepare`` + ``train --model sage`` (3 layers, one epoch on a small train
     split: a quick model, the benchmark is about inference);
  3. ``disktrain infer DS --checkpoint DS/checkpoints --out OUT --no-progress``, watched from
     outside (disktrain's code is not touched): a thread samples the child's
     ``/proc/PID/io`` (``read_bytes``, ``write_bytes``, ``cancelled_write_bytes``) and
     ``VmRSS`` every ``--sample-interval`` seconds, and which layer stores exist: layer ``l``
     is complete at the first sample that finds ``OUT.layers/layer-<l>`` (without
     ``.partial``), a higher layer's store, or ``OUT``. Layer ``l``'s phase runs from the
     end of the phase before (``startup``: until ``layer-0.partial`` appears) to its
     completion; ``finish`` (the final export) from the last layer's completion to the exit,
     its bytes the child's totals (rusage) less the last sample's. Phase boundaries are
     known to within one interval; layers completing within one interval are merged into
     the first of them (the others show zero). Each layer's minimum: read the CSR (the
     ``indptr`` and ``indices`` files) and the layer's input rows (N x width x itemsize:
     the float16 features, then float32 layer outputs) once, write its output rows
     (N x out_width x 4) once. Reads made in ``startup`` (the CSR, where loaded up front)
     and a CSR kept in the page cache from layer to layer put single layers below their
     minimum: the whole run's ratio (``summary.disktrain.moved_over_min``: the child's
     bytes read and written over the sum of the minimums) is the figure to quote;
  4. ``disktrain evaluate`` (exact val/test accuracy; ``--skip-evaluate``);
  5. PyG (scripts/pyg_infer_peer.py): the same weights in ``torch_geometric.nn.GraphSAGE``,
     layer-wise over a ``NeighborLoader(num_neighbors=[-1], input_nodes=None)`` on the stored
     CSR as a ``SparseTensor``, features memory-mapped from a ``.npy`` exported beforehand
     (not timed), each layer's output (N x width float32) kept in memory as PyG's
     ``BasicGNN.inference`` does; capped at ``--pyg-max-s`` and extrapolated from its batch
     rate (``extrapolated`` in the JSON), under ``--pyg-memory-limit``; an OOM kill is
     recorded with its exit status.
Writes the JSON to ``--out`` after every step and prints it; ``--plot`` draws seconds and
bytes per layer, disktrain against PyG. Checks the free disk first; everything written is
deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import (
    Regime,
    data_files,
    device_of,
    in_child,
    last_json,
    parse_bytes,
    run_header,
    run_measured,
    stderr_tail,
    write_json,
)

DISKTRAIN = [sys.executable, "-m", "disktrain"]
PEER = [sys.executable, str(Path(__file__).resolve().parent / "pyg_infer_peer.py")]
GiB = 1 << 30
RSS_GOAL = 8 * GiB
NUM_LAYERS = 3


def proc_io(pid: int) -> dict | None:
    """``read_bytes``, ``write_bytes``, ``cancelled_write_bytes`` of /proc/PID/io and the
    resident set (``VmRSS``) of process ``pid``; None once it is gone."""
    try:
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return None
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                if line.startswith("VmRSS:")), 0)
    return {"read_bytes": int(io["read_bytes"]), "write_bytes": int(io["write_bytes"]),
            "cancelled_write_bytes": int(io["cancelled_write_bytes"]), "rss_bytes": rss}


def own_children() -> list[int]:
    """The ids of this process's children (every thread's)."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += map(int, (task / "children").read_text().split())
        except OSError:
            pass
    return pids


class LayerWatch:
    """Samples the child this process starts (``disktrain infer``) every ``interval``
    seconds: its I/O counters and RSS, and which of the ``num_layers`` layer stores of
    ``out`` are complete; :meth:`phases` attributes time and bytes to each layer."""

    def __init__(self, out: Path, num_layers: int, interval: float):
        self.out, self.work = out, out.with_name(out.name + ".layers")
        self.num_layers, self.interval = num_layers, interval
        self.done = -1  # the highest complete layer
        self.t0 = time.perf_counter()
        zero = {"read_bytes": 0, "write_bytes": 0, "cancelled_write_bytes": 0}
        self.marks: list[tuple[str, float, dict]] = [("start", 0.0, zero)]
        self.last: dict = zero
        self.peak_rss = {"startup": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.known = set(own_children())  # e.g. multiprocessing's resource tracker
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _complete(self) -> int:
        if self.out.exists():
            return self.num_layers - 1
        return max((lay for lay in range(self.num_layers)
                    if (self.work / f"layer-{lay}").is_dir()), default=-1)

    def _run(self) -> None:
        pid = None
        while not self._stop.wait(self.interval):
            pid = pid or next((p for p in own_children() if p not in self.known), None)
            sample = proc_io(pid) if pid else None
            if sample is None:
                continue
            t, self.last = time.perf_counter() - self.t0, sample
            phase = self._phase()
            self.peak_rss[phase] = max(self.peak_rss.get(phase, 0), sample["rss_bytes"])
            if len(self.marks) == 1 and (self.work / "layer-0.partial").exists():
                self.marks.append(("startup", t, sample))
            done = self._complete()
            for lay in range(self.done + 1, done + 1):
                if len(self.marks) == 1:
                    self.marks.append(("startup", t, sample))
                self.marks.append((f"layer {lay}", t, sample))
            self.done = max(self.done, done)

    def _phase(self) -> str:
        if len(self.marks) == 1:
            return "startup"
        return f"layer {self.done + 1}" if self.done + 1 < self.num_layers else "finish"

    def phases(self, record: dict, ok: bool) -> dict:
        """Each phase's seconds, bytes read and written (and the writes cancelled, by files
        removed before their writeback) and sampled peak RSS, given the child's
        ``run_measured`` record (its totals end the last phase)."""
        end = {"read_bytes": record["read_bytes"], "write_bytes": record["written_bytes"],
               "cancelled_write_bytes": self.last["cancelled_write_bytes"]}
        marks = list(self.marks)
        named = {m[0] for m in marks}
        for name in ("startup", *(f"layer {lay}" for lay in range(self.num_layers))):
            if ok and name not in named:  # finished between two samples
                marks.append((name, record["wall_s"], end))
        marks.append(("finish" if ok else f"{self._phase()} (unfinished)", record["wall_s"],
                      end))
        out = {}
        for (_, t0, a), (name, t1, b) in itertools.pairwise(marks):
            out[name] = {"seconds": t1 - t0,
                         **{k: b[k] - a[k] for k in ("read_bytes", "write_bytes",
                                                      "cancelled_write_bytes")},
                         "peak_rss_sampled_bytes": self.peak_rss.get(name)}
        return out


def dataset_sizes(path: Path) -> dict:
    """Nodes, stored edges, feature width and dtype, split sizes and CSR file bytes."""
    import numpy as np

    from disktrain.storage.dataset import Dataset

    ds = Dataset(path)
    meta = ds.meta
    csr = sum(f.stat().st_size for f in data_files([path / "indptr", path / "indices"])
              if f.name != "zarr.json")
    return {"num_nodes": int(meta.num_nodes), "stored_edges": int(meta.num_edges),
            "feature_dim": int(meta.feature_dim), "num_classes": int(meta.num_classes),
            "feature_itemsize": np.dtype(ds.features.dtype).itemsize, "csr_bytes": csr,
            "splits": {s: len(ds.split(s)) for s in ("train", "val", "test")}}


def minimum_bytes(sizes: dict, hidden: int) -> dict:
    """Per layer, what must move at least: the CSR and the input rows read once, the output
    rows (float32) written once; ``finish``: the last layer's rows read, the output's rows
    and node ids (int64) written."""
    n, dims = sizes["num_nodes"], [sizes["feature_dim"], *[hidden] * (NUM_LAYERS - 1),
                                   sizes["num_classes"]]
    out = {}
    for lay in range(NUM_LAYERS):
        itemsize = sizes["feature_itemsize"] if lay == 0 else 4
        out[f"layer {lay}"] = {"read_bytes": sizes["csr_bytes"] + n * dims[lay] * itemsize,
                               "write_bytes": n * dims[lay + 1] * 4}
    out["finish"] = {"read_bytes": n * dims[-1] * 4, "write_bytes": n * (dims[-1] * 4 + 8)}
    return out


def layer_table(phases: dict, minimum: dict) -> dict:
    """``phases`` with each layer's minimum, ratios (moved over the minimum) and MB/s (none
    for a layer merged into the one before)."""
    out = {}
    for name, p in phases.items():
        row = dict(p)
        lo = minimum.get(name)
        if lo:
            row.update({"min_read_bytes": lo["read_bytes"], "min_write_bytes": lo["write_bytes"]})
        if p["seconds"] == 0:  # completed in the same sample as the layer before
            row["merged_into_previous"] = True
        else:
            row["mb_per_s"] = (p["read_bytes"] + p["write_bytes"]) / 1e6 / p["seconds"]
        if lo and p["seconds"] > 0:
            row.update({"read_over_min": p["read_bytes"] / lo["read_bytes"],
                        "write_over_min": p["write_bytes"] / lo["write_bytes"],
                        "moved_over_min": (p["read_bytes"] + p["write_bytes"])
                        / (lo["read_bytes"] + lo["write_bytes"])})
        out[name] = row
    return out


class Bench:
    """The steps of one run in one work directory, each measured in its own memory group."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.logs = work / "logs"
        self.logs.mkdir()
        self.device = device_of(work)

    def step(self, name: str, argv: list[str], limit: int | None = None,
             watch: LayerWatch | None = None) -> dict:
        log = self.logs / f"{name}.err"
        with Regime("out_of_core", [self.work], limit or self.args.memory_limit,
                    self.args.evict_interval, f"bench-infer-{os.getpid()}-{name}") as env:
            with watch or contextlib.nullcontext():
                rec = run_measured(argv, cgroup=env.cgroup, stderr_path=log,
                                   device=self.device, timeout_s=self.args.step_timeout)
            info = env.info
        del rec["argv"]
        record = {"step": name, "command": shlex.join(argv), **rec,
                  "ok": rec["returncode"] == 0, "peak_rss_gib": rec["peak_rss_bytes"] / GiB,
                  "peak_rss_within_8gib": rec["peak_rss_bytes"] <= RSS_GOAL, **info,
                  "result": last_json(rec.pop("stdout"))}
        if not record["ok"]:
            record["error"] = stderr_tail(log)
        print(f"bench_infer: {name}: exit {rec['returncode']}, {rec['wall_s']:.1f} s, peak RSS "
              f"{record['peak_rss_gib']:.2f} GiB", file=sys.stderr)
        return record


def export_features(dataset: Path, npy: Path) -> None:
    """The peer's export (imported in the child: torch never in this process)."""
    from pyg_peer import export_features as export

    export(dataset, npy)


def run_steps(args, bench: Bench, result: dict, out: Path | None) -> None:
    """synth, prepare, train, infer, evaluate and the PyG peer into ``result["steps"]``
    (a failed step stops those that need it); the JSON rewritten after each."""
    work, steps = bench.work, result["steps"]
    ds, ckpt, emb = work / "ds", work / "ds" / "checkpoints", work / "emb"
    common = ["--seed", str(args.seed), "--no-progress"]
    steps["synth"] = bench.step("synth", DISKTRAIN + [
        "synth", "--out", str(ds), "--nodes", str(2 ** args.scale),
        "--avg-degree", str(args.avg_degree), "--feature-dim", str(args.feature_dim),
        "--feature-dtype", "float16", "--classes", str(args.classes),
        "--train-fraction", repr(args.train_fraction), "--val-fraction", repr(args.val_fraction),
        "--test-fraction", repr(args.val_fraction), *common])
    write_json(result, out)
    if not steps["synth"]["ok"]:
        return
    sizes = result["sizes"] = in_child(dataset_sizes, ds)
    for name, argv in (
            ("prepare", ["prepare", str(ds), "--fanouts", args.fanouts, "--batch-size",
                         str(args.batch_size), "--epochs", "1"]),
            ("train", ["train", str(ds), "--model", "sage", "--epochs", "1", "--hidden",
                       str(args.hidden), "--checkpoint-dir", str(ckpt)])):
        steps[name] = bench.step(name, DISKTRAIN + argv + common)
        write_json(result, out)
        if not steps[name]["ok"]:
            return
    watch = LayerWatch(emb, NUM_LAYERS, args.sample_interval)
    steps["infer"] = bench.step("infer", DISKTRAIN + [
        "infer", str(ds), "--checkpoint", str(ckpt), "--out", str(emb), "--no-progress",
        *shlex.split(args.infer_args)], watch=watch)
    result["layers"] = layer_table(watch.phases(steps["infer"], steps["infer"]["ok"]),
                                   minimum_bytes(sizes, args.hidden))
    shutil.rmtree(emb, ignore_errors=True)
    write_json(result, out)
    if not args.skip_evaluate:
        steps["evaluate"] = bench.step("evaluate", DISKTRAIN + [
            "evaluate", str(ds), "--checkpoint", str(ckpt), "--no-progress"])
        write_json(result, out)
    if not args.skip_pyg:
        for name in ("samples", "packed", "eval", "epochs"):  # measured: room for the export
            shutil.rmtree(ds / name, ignore_errors=True)
        t0 = time.perf_counter()
        in_child(export_features, ds, work / "features.npy")
        result["export_s"] = time.perf_counter() - t0
        steps["pyg"] = bench.step("pyg", PEER + [
            str(ds), "--features", str(work / "features.npy"), "--checkpoint", str(ckpt),
            "--batch-size", str(args.pyg_batch_size), "--max-s", str(args.pyg_max_s),
            *(["--save", str(args.pyg_save)] if args.pyg_save else [])],
            args.pyg_memory_limit)


def summarize(result: dict) -> dict:
    """disktrain's infer (wall, per layer, bytes against the minimum, peak RSS) and PyG's
    layer-wise inference (measured or extrapolated), PyG's seconds over disktrain's."""
    steps, layers = result["steps"], result.get("layers", {})
    out = {"failed": {k: {"exit_status": s["returncode"], "timed_out": s["timed_out"],
                          "oom_kills": s.get("cgroup_oom_kills")}
                      for k, s in steps.items() if not s["ok"]}}
    if "infer" in steps and steps["infer"]["ok"]:
        least = sum(lo["read_bytes"] + lo["write_bytes"]
                    for lo in minimum_bytes(result["sizes"], result["config"]["hidden"]).values())
        moved = steps["infer"]["read_bytes"] + steps["infer"]["written_bytes"]
        out["disktrain"] = {
            "infer_s": steps["infer"]["wall_s"],
            "layer_s": {k: r["seconds"] for k, r in layers.items()},
            "peak_rss_gib": steps["infer"]["peak_rss_gib"],
            "peak_rss_within_8gib": steps["infer"]["peak_rss_within_8gib"],
            "moved_over_min": moved / least if least else None}
    pyg = steps.get("pyg")
    if pyg and pyg["ok"] and pyg["result"]:
        res = pyg["result"]
        out["pyg"] = {"est_s": res["est_seconds"], "setup_s": res["setup_s"],
                      "extrapolated": res["extrapolated"],
                      "layer_s": {f"layer {r['layer']}": r["est_seconds"]
                                  for r in res["layers"]},
                      "peak_rss_gib": pyg["peak_rss_gib"]}
    if "disktrain" in out and "pyg" in out:
        d, p = out["disktrain"], out["pyg"]
        out["pyg_over_disktrain"] = {
            "whole": p["est_s"] / d["infer_s"],
            **{k: p["layer_s"][k] / v for k, v in d["layer_s"].items()
               if k in p["layer_s"] and v > 0}}
    return out


def plot(result: dict, path: Path) -> None:
    """Seconds per layer (disktrain against PyG; hatched: extrapolated) and bytes per layer
    (disktrain's read and written, PyG's read, the minimum)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = result.get("layers", {})
    names = [f"layer {lay}" for lay in range(NUM_LAYERS)]
    pyg = {f"layer {r['layer']}": r for r in
           ((result["steps"].get("pyg") or {}).get("result") or {}).get("layers", [])}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [layers.get(n, {}).get("seconds", 0) for n in names], 0.4,
           label="disktrain infer")
    ax.bar(x + 0.2, [pyg.get(n, {}).get("est_seconds", 0) for n in names], 0.4,
           hatch=["//" if pyg.get(n, {}).get("extrapolated") else "" for n in names],
           label="PyG layer-wise (hatched: extrapolated)")
    ax.set_xticks(x, names)
    ax.set_ylabel("seconds")
    sizes = result.get("sizes", {})
    ax.set_title(f"R-MAT scale {result['config']['scale']}: {sizes.get('num_nodes', 0):,} "
                 f"nodes, {sizes.get('stored_edges', 0) / 1e6:,.0f}M edges", fontsize=9)
    ax.legend(fontsize=8)
    gb = 1e9
    for k, (label, key) in enumerate((("disktrain read", "read_bytes"),
                                      ("disktrain written", "write_bytes"),
                                      ("minimum read", "min_read_bytes"),
                                      ("minimum written", "min_write_bytes"))):
        ax2.bar(x + (k - 2) * 0.16, [layers.get(n, {}).get(key, 0) / gb for n in names],
                0.16, label=label)
    ax2.bar(x + 2 * 0.16, [pyg.get(n, {}).get("read_bytes", 0) / gb for n in names], 0.16,
            label="PyG read (measured part)")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("GB")
    ax2.set_title("bytes per layer against the minimum", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=22, help="2^scale nodes (issue: 26)")
    ap.add_argument("--avg-degree", type=float, default=16)
    ap.add_argument("--feature-dim", type=int, default=64, help="float16")
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--train-fraction", type=float, default=0.001)
    ap.add_argument("--val-fraction", type=float, default=0.001, help="val and test each")
    ap.add_argument("--fanouts", default="5,5,5", help="training's (3 layers)")
    ap.add_argument("--batch-size", type=int, default=1024, help="training's")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-limit", type=parse_bytes, default=8 * GiB,
                    help="each step's memory cgroup limit, page cache included (default: 8G)")
    ap.add_argument("--pyg-memory-limit", type=parse_bytes, default=None,
                    help="the PyG step's limit (default: --memory-limit)")
    ap.add_argument("--infer-args", default="", help="extra `disktrain infer` flags")
    ap.add_argument("--sample-interval", type=float, default=0.5,
                    help="seconds between samples of the infer child's I/O and layer stores")
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--skip-pyg", action="store_true")
    ap.add_argument("--pyg-batch-size", type=int, default=4096)
    ap.add_argument("--pyg-max-s", type=float, default=600.0,
                    help="cap the PyG run at this many seconds, extrapolate (0: none)")
    ap.add_argument("--pyg-save", type=Path, help="the PyG outputs (.npy; complete runs only)")
    ap.add_argument("--step-timeout", type=float, default=4 * 3600,
                    help="kill a step after this many seconds (recorded as failed)")
    ap.add_argument("--evict-interval", type=float, default=1.0,
                    help="seconds between evictions where no cgroup can be made")
    ap.add_argument("--workdir", type=Path, help="parent of the temporary work directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    ap.add_argument("--plot", type=Path, help="write the PNG plot here")
    args = ap.parse_args(argv)
    if len(args.fanouts.split(",")) != NUM_LAYERS:
        ap.error(f"--fanouts: {NUM_LAYERS} layers, got {args.fanouts!r}")
    return args


def disk_need(args) -> int:
    """Bytes the run writes at most at once: the dataset (CSR, features), the prepared
    store (about the features again), two float32 layer stores and the PyG export."""
    n, e = 2 ** args.scale, args.avg_degree * 2 ** args.scale
    features = n * args.feature_dim * 2
    return int(12 * e + 8 * n + 3 * features + 2 * n * args.hidden * 4) + GiB


def main(argv=None) -> int:
    args = parse_args(argv)
    term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bench-infer-", dir=args.workdir))
    result = run_header("bench_infer", __file__, args, argv, work)
    try:
        need, free = disk_need(args), shutil.disk_usage(work).free
        result["disk"] = {"need_bytes": need, "free_bytes": free}
        if free < need:
            raise SystemExit(f"bench_infer: error: {work} has {free / 1e9:.1f} GB free, this "
                             f"run needs about {need / 1e9:.1f} GB: --workdir elsewhere or a "
                             "smaller --scale")
        run_steps(args, Bench(args, work), result, args.out)
        result["summary"] = summarize(result)
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
