"""A billion-edge graph end to end on one machine: every step of the job a user runs.

Usage: python scripts/bench_billion.py [--scale 26] [--avg-degree 16] [--feature-dim 64]
                                       [--fanouts 15,10,5] [--batch-size 1024]
                                       [--cpu-cache-bytes 2G] [--workdir DIR] [--keep]
                                       [--skip-ingest] [--skip-pyg] [--pyg-max-phase-s 120]
                                       [--first-hop] [--skip-extras]
                                       [--out result.json]

Steps, each a `disktrain` command run as a child process with the page cache evicted first
(``sync``, then ``posix_fadvise(DONTNEED)`` on every file of the work directory):
  1. ``synth``: an R-MAT graph of 2^scale nodes, avg degree 16 (about 1.07B stored edges at
     scale 26), 64-d float16 features, 16 classes, 1% train, 0.1% val, 0.1% test;
  2. the user-data path: the stored edges exported to Parquet files (pyarrow, not timed as a
     disktrain step) and ``ingest``-ed with the synth dataset's features, labels and splits;
     the ingested CSR must equal synth's;
  3. ``prepare`` with 3-layer fanouts (and once more with ``--cpu-cache-bytes``);
  4. ``train`` a 3-layer GraphSAGE for one epoch, then evaluate (packed val/test batches),
     and an MLP on the same features for comparison (``--skip-extras`` skips the MLP and the
     CPU-cache pair); with ``--first-hop`` the store is prepared again with
     ``--aggregate-first-hop mean`` (samples reused) and the same model trained on it: prepare,
     epoch and packed bytes before and after;
  5. the same model and fanouts with PyG's NeighborLoader (``scripts/pyg_peer.py``: the CSR
     in memory as int64, the features memory-mapped from the exported ``.npy``), each phase
     capped at ``--pyg-max-phase-s`` and extrapolated from its batch rate; a failure (e.g.
     out of memory) is recorded with its exit status, not fatal.
For each step: wall seconds, user and sys CPU seconds, peak RSS (``ru_maxrss`` of the child:
it counts the mapped file pages it touched; the exports and checks run in spawned processes,
so the parent stays small and does not inflate its children's figure), bytes read from and written to storage
(``ru_inblock``/``ru_oublock`` x 512 of the child and its reaped children), disk footprint of
the work directory after it, and throughput. It checks free disk space first and deletes
everything it wrote at the end unless ``--keep``. Prints one JSON object (and writes it to
``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import evict, footprint, in_child

DISKTRAIN = [sys.executable, "-m", "disktrain"]


def run(name: str, argv: list[str], work: Path, may_fail: bool = False) -> dict:
    """Run one step as a child process; its wall time, CPU, peak RSS, I/O and last line
    (a failure stops the run unless ``may_fail``: then it is recorded as ``exit_status``)."""
    evict([work])
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not may_fail:
        raise SystemExit(f"step {name} failed with exit status {code}: {' '.join(argv)}")
    os.sync()
    lines = out.strip().splitlines()
    record = {"step": name, "command": " ".join(argv[2:]), "exit_status": code,
              "wall_s": round(wall, 2),
              "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
              "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
              "read_gb": round(usage.ru_inblock * 512 / 1e9, 2),
              "written_gb": round(usage.ru_oublock * 512 / 1e9, 2),
              "footprint_gb": round(footprint(work) / 1e9, 2)}
    cpu = record["user_s"] + record["sys_s"]
    record["bound_by"] = ("CPU (both cores)" if cpu > 1.6 * wall else
                          "CPU (one core)" if cpu > 0.8 * wall else "waiting (disk)")
    try:
        record["result"] = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        record["result"] = None
    print(json.dumps({k: v for k, v in record.items() if k != "result"}), file=sys.stderr)
    return record


def export_parquet(dataset: Path, out: Path, files: int = 16) -> int:
    """Write the dataset's stored edges (src, dst int64) to ``files`` Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from disktrain.storage.dataset import Dataset

    ds = Dataset(dataset)
    indptr, indices = ds.indptr, ds.indices
    out.mkdir(parents=True)
    bounds = np.searchsorted(indptr, np.linspace(0, indptr[-1], files + 1)).clip(
        0, len(indptr) - 1)
    for k in range(files):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        dst = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(indptr[lo:hi + 1]))
        src = np.asarray(indices[indptr[lo]:indptr[hi]], np.int64)
        pq.write_table(pa.table({"src": src, "dst": dst}), out / f"part-{k:03d}.parquet")
    return int(indptr[-1])


def export_arrays(dataset: Path, out: Path) -> list[str]:
    """The ingest flags that give the synth dataset's features, labels and splits."""
    from disktrain.storage.dataset import Dataset

    ds = Dataset(dataset)
    out.mkdir(parents=True, exist_ok=True)
    features = np.lib.format.open_memmap(out / "features.npy", mode="w+",
                                         dtype=ds.features.dtype, shape=ds.features.shape)
    step = ds.features.chunks[0] * 16
    for a in range(0, ds.num_nodes, step):
        features[a:a + step] = ds.feature_rows(a, min(a + step, ds.num_nodes))
    features.flush()
    del features
    flags = ["--features", str(out / "features.npy")]
    for name in ("labels", "train", "val", "test"):
        np.save(out / f"{name}.npy", ds.labels if name == "labels" else ds.split(name))
        flags += [f"--{name}", str(out / f"{name}.npy")]
    return flags


def same_csr(a: Path, b: Path) -> bool:
    from disktrain.storage.dataset import Dataset

    x, y = Dataset(a), Dataset(b)
    step = 1 << 26
    if not np.array_equal(x.indptr, y.indptr):
        return False
    return all(np.array_equal(x.indices[i:i + step], y.indices[i:i + step])
               for i in range(0, int(x.indptr[-1]), step))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=26)
    p.add_argument("--avg-degree", type=float, default=16)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--fanouts", default="15,10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--cpu-cache-bytes", default="2G")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--skip-pyg", action="store_true")
    p.add_argument("--pyg-max-phase-s", type=float, default=120.0)
    p.add_argument("--first-hop", action="store_true")
    p.add_argument("--skip-extras", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    nodes = 1 << args.scale
    edges = nodes * args.avg_degree
    need = edges * 4 * (3.2 if not args.skip_ingest else 1.2) + nodes * args.feature_dim * 2 * 3
    work = Path(tempfile.mkdtemp(prefix="billion-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    if free < need:
        shutil.rmtree(work)
        raise SystemExit(f"{work}: {free / 1e9:.0f} GB free, this run needs about "
                         f"{need / 1e9:.0f} GB")
    ds = work / "ds"
    steps, result = [], {"scale": args.scale, "nodes": nodes, "workdir": str(work),
                         "machine": f"{os.cpu_count()} cores, "
                                    f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"}
    try:
        steps.append(run("synth", [*DISKTRAIN, "synth", "--out", str(ds), "--nodes", str(nodes),
                                   "--avg-degree", str(args.avg_degree), "--feature-dim",
                                   str(args.feature_dim), "--feature-dtype", "float16",
                                   "--classes", "16", "--train-fraction", "0.01",
                                   "--val-fraction", "0.001", "--test-fraction", "0.001",
                                   "--no-progress"], work))
        from disktrain.storage.dataset import Dataset

        num_edges = int(Dataset(ds).meta.num_edges)
        result["edges"] = num_edges
        steps[-1]["edges_per_s"] = round(num_edges / steps[-1]["wall_s"])
        if not args.skip_ingest:
            t0 = time.perf_counter()
            in_child(export_parquet, ds, work / "parquet")
            flags = in_child(export_arrays, ds, work / "arrays")
            result["export_s"] = round(time.perf_counter() - t0, 1)
            steps.append(run("ingest", [*DISKTRAIN, "ingest", "--edges", str(work / "parquet"),
                                        "--out", str(work / "ingested"), *flags,
                                        "--no-progress"], work))
            steps[-1]["edges_per_s"] = round(num_edges / steps[-1]["wall_s"])
            result["ingested_csr_equal"] = in_child(same_csr, ds, work / "ingested")
            shutil.rmtree(work / "parquet")
            shutil.rmtree(work / "ingested")
        prepare = [*DISKTRAIN, "prepare", str(ds), "--fanouts", args.fanouts, "--batch-size",
                   str(args.batch_size), "--no-progress"]
        steps.append(run("prepare", prepare, work))
        train = [*DISKTRAIN, "train", str(ds), "--epochs", "1", "--hidden", "128",
                 "--no-progress", "--checkpoint-dir", str(work / "ck")]
        steps.append(run("train sage", [*train, "--model", "sage"], work))
        if not args.skip_extras:
            steps.append(run("train mlp", [*train, "--model", "mlp"], work))
            steps.append(run("prepare with CPU cache",
                             [*prepare, "--cpu-cache-bytes", args.cpu_cache_bytes], work))
            steps.append(run("train sage, CPU cache", [*train, "--model", "sage"], work))
        if args.first_hop:
            steps.append(run("prepare, first hop aggregated",
                             [*prepare, "--aggregate-first-hop", "mean"], work))
            steps.append(run("train sage, first hop aggregated", [*train, "--model", "sage"],
                             work))
        if not args.skip_pyg:
            features = work / "arrays" / "features.npy"
            if not features.exists():
                in_child(export_arrays, ds, work / "arrays")
            peer = Path(__file__).with_name("pyg_peer.py")
            steps.append(run("pyg sage (NeighborLoader)",
                             [sys.executable, str(peer), str(ds), "--features", str(features),
                              "--fanouts", args.fanouts, "--batch-size", str(args.batch_size),
                              "--epochs", "1", "--max-phase-s", str(args.pyg_max_phase_s)],
                             work, may_fail=True))
        shutil.rmtree(work / "arrays", ignore_errors=True)
        for step in steps:
            res = step.get("result") or {}
            if step["step"].startswith("prepare"):
                packed = res.get("packed", {})
                step["packed_gb"] = round(packed.get("packed_bytes", 0) / 1e9, 2)
                step["duplication"] = packed.get("duplication_factor")
            if step["step"].startswith("train"):
                step["test_acc"] = res.get("test_acc")
                step["epoch_time_s"] = res.get("epoch_time_s")
                step["eval_time_s"] = res.get("eval_time_s")
            if step["step"].startswith("pyg"):
                first = (res.get("per_epoch") or [{}])[0]
                step["pyg"] = {**{k: res.get(k) for k in ("job_est_s", "extrapolated",
                                                          "setup_s", "test_acc")},
                               **{k: first.get(k) for k in ("epoch_est_s", "eval_est_s",
                                                            "batches", "total_batches")}}
        main_run = ("synth", "prepare", "train sage")
        result["whole_run_s"] = round(sum(s["wall_s"] for s in steps if s["step"] in main_run),
                                      1)
        result["max_peak_rss_gib"] = max(s["peak_rss_gib"] for s in steps)
    finally:
        result["steps"] = [{k: v for k, v in s.items() if k != "result"} for s in steps]
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
