"""Preprocessing speed: `disktrain synth`, and `disktrain ingest` of the same edges.

Usage: python scripts/bench_synth.py [--scale 22] [--avg-degree 16] [--feature-dim 64]
                                     [--feature-dtype float16] [--ingest] [--feature-write]
                                     [--workdir DIR] [--python-path DIR] [--out result.json]

Each step is the ``disktrain`` command line run as a child process, after ``sync`` with the
work directory evicted from the page cache; the child times its CSR build and feature write
(the functions wrapped, nothing else changed). Per step and phase: wall seconds, CPU
seconds, peak RSS (the child's ``VmHWM``: ``ru_maxrss`` would start from this script's RSS
at the fork, which the Parquet export raises), bytes read and written (the child's
``/proc/self/io``: ``write_bytes`` counts pages it dirtied, ``cancelled_write_bytes`` those
of files deleted before writeback, the CSR build's spill file), the dataset's bytes on
disk, stored edges/s and MB/s of output. ``--ingest`` exports synth's stored edges to
Parquet (not timed) and times ``disktrain ingest --edges`` on them, checking the CSR equals
synth's. ``--feature-write`` times the feature write alone: the same rows stored through
Zarr (``array[a:b] = rows``, the old way) and as chunk files
(:class:`disktrain.storage.chunkfile.ChunkWriter`). ``--python-path DIR`` puts a checkout of
another version first on ``PYTHONPATH`` (before and after on one machine).
``NUMBA_NUM_THREADS`` in the environment reaches the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchlib import evict, run_measured
from bench_billion import DISKTRAIN, export_parquet, footprint, same_csr

CHILD = """
import json, sys, time
import disktrain.{module} as target
from disktrain.cli import main

IO = ("read_bytes", "write_bytes", "cancelled_write_bytes")
def io():
    fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    return {{k: int(fields[k]) for k in IO}}
phases = []
def timed(name, fn):
    def run(*args, **kwargs):
        before, cpu, t0 = io(), time.process_time(), time.perf_counter()
        out = fn(*args, **kwargs)
        after = io()
        phases.append({{"phase": name, "wall_s": time.perf_counter() - t0,
                       "cpu_s": time.process_time() - cpu,
                       **{{k: after[k] - before[k] for k in IO}}}})
        return out
    return run
for name, attr in {wrap!r}:
    setattr(target, attr, timed(name, getattr(target, attr)))
status = main(sys.argv[1:])
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print("BENCH " + json.dumps({{"phases": phases, "io": io(), "peak_rss_kib": int(hwm[0])}}))
raise SystemExit(status)
"""
"""The step's child: the command line with the CSR build and feature write timed."""


def step(name: str, args: list[str], work: Path, out: Path, module: str,
         wrap: list[tuple[str, str]]) -> dict:
    """Run ``disktrain ARGS``, writing the dataset ``out``, with ``wrap`` (phase, function
    of ``disktrain.MODULE``) timed; its figures, and those of each phase."""
    evict([work])
    child = work / f"{name}_child.py"  # a file: ``-c`` would put the cwd first on sys.path
    child.write_text(CHILD.format(module=module, wrap=wrap))
    rec = run_measured([DISKTRAIN[0], str(child), *args], stderr_path=work / f"{name}.stderr")
    if rec["returncode"] != 0:
        err = (work / f"{name}.stderr").read_text()[-3000:]
        raise SystemExit(f"step {name} failed ({rec['returncode']}):\n{err}")
    report = json.loads(rec["stdout"].split("BENCH ", 1)[1])
    output = footprint(out)
    edges = json.loads((out / "zarr.json").read_text())["attributes"]["num_edges"]
    result = {"step": name, "command": " ".join(["disktrain", *args]),
              "wall_s": round(rec["wall_s"], 2), "user_s": round(rec["user_s"], 2),
              "sys_s": round(rec["sys_s"], 2),
              "peak_rss_gib": round(report["peak_rss_kib"] / 2**20, 3),
              "read_gb": round(report["io"]["read_bytes"] / 1e9, 3),
              "written_gb": round(report["io"]["write_bytes"] / 1e9, 3),
              "cancelled_gb": round(report["io"]["cancelled_write_bytes"] / 1e9, 3),
              "output_gb": round(output / 1e9, 3), "stored_edges": edges,
              "edges_per_s": round(edges / rec["wall_s"])}
    sizes = {"csr": footprint(out / "indptr") + footprint(out / "indices"),
             "features": footprint(out / "features")}
    for p in report["phases"]:
        p = {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()}
        p["mb_per_s"] = round(sizes[p["phase"]] / p["wall_s"] / 1e6)
        if p["phase"] == "csr":
            p["edges_per_s"] = round(edges / p["wall_s"])
        result[p.pop("phase")] = p
    print(json.dumps(result), file=sys.stderr)
    return result


def feature_write(work: Path, nodes: int, dim: int, dtype: str) -> dict:
    """MB/s of the same float32 rows stored as ``dtype`` through Zarr and as chunk files
    (converted on two threads, crc, ``O_DIRECT``), each followed by ``sync``."""
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    from disktrain.ingest.synth import FEATURE_BLOCK_BYTES, SynthConfig, _store_rows, node_features
    from disktrain.storage.chunkfile import ChunkWriter
    from disktrain.storage.dataset import chunk_file, create_features

    stored = np.dtype(dtype).newbyteorder("<")
    out = {}
    for way in ("zarr", "chunk_files"):
        array = create_features(zarr.open_group(work / way, mode="w", zarr_format=3), nodes,
                                dim, stored)
        rows = array.chunks[0]
        step = rows * max(1, FEATURE_BLOCK_BYTES // (rows * dim * 4))
        block = node_features(SynthConfig(out=work, num_nodes=nodes, feature_dim=dim), 0, step)
        t0 = time.perf_counter()
        if way == "zarr":
            for a in range(0, nodes, step):
                array[a:a + step] = block[:min(step, nodes - a)].astype(stored)
        else:
            with ChunkWriter(rows * dim * stored.itemsize,
                             lambda c, d=work / way / "features": (chunk_file(d, c, 0), None),
                             2, 8) as pool, \
                    ThreadPoolExecutor(2) as convert:
                for a in range(0, nodes, step):
                    starts = range(a, min(a + step, nodes), rows)
                    parts = [(block[c - a:min(c + rows, nodes) - a], pool.buffer())
                             for c in starts]
                    list(convert.map(lambda p: _store_rows(*p, pool.chunk_bytes, stored),
                                     parts))
                    for c, (_, buf) in zip(starts, parts):
                        pool.submit(c // rows, buf)
        os.sync()
        out[f"{way}_mb_per_s"] = round(nodes * dim * stored.itemsize
                                       / (time.perf_counter() - t0) / 1e6)
        evict([work / way])
        shutil.rmtree(work / way)
    print(json.dumps({"feature_write": out}), file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=22, help="2^scale nodes (default: 22)")
    p.add_argument("--avg-degree", type=float, default=16)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--feature-dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--ingest", action="store_true", help="also time ingest of the edges")
    p.add_argument("--feature-write", action="store_true",
                   help="also time the feature write alone (Zarr vs chunk files)")
    p.add_argument("--workdir", type=Path, help="where to write (default: the temp dir)")
    p.add_argument("--python-path", type=Path, help="put this checkout first on PYTHONPATH")
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    args = p.parse_args()

    nodes = 1 << args.scale
    edges = nodes * args.avg_degree  # stored, about
    row = args.feature_dim * np.dtype(args.feature_dtype).itemsize
    need = 1.2 * (edges * 10 * (3 if args.ingest else 1) + nodes * (row + 16))
    work = Path(tempfile.mkdtemp(prefix="bench-synth-", dir=args.workdir))
    if shutil.disk_usage(work).free < need:
        shutil.rmtree(work)
        raise SystemExit(f"{work}: {shutil.disk_usage(work).free / 1e9:.1f} GB free, this "
                         f"run needs about {need / 1e9:.1f} GB")
    if args.python_path:  # the steps inherit it
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [
            str(args.python_path.resolve()), os.environ.get("PYTHONPATH")]))
    ds = work / "ds"
    result = {"scale": args.scale, "nodes": nodes,
              "feature_dim": args.feature_dim, "feature_dtype": args.feature_dtype,
              "python_path": str(args.python_path or ""),
              "numba_threads": os.environ.get("NUMBA_NUM_THREADS"),
              "cores": len(os.sched_getaffinity(0)), "load_avg_before": os.getloadavg()[0],
              "steps": []}
    try:
        result["steps"].append(step(
            "synth", ["synth", "--out", str(ds), "--nodes", str(nodes), "--avg-degree",
                      str(args.avg_degree), "--feature-dim", str(args.feature_dim),
                      "--feature-dtype", args.feature_dtype, "--classes", "16",
                      "--train-fraction", "0.01", "--val-fraction", "0.001",
                      "--test-fraction", "0.001", "--no-progress"],
            work, ds, "ingest.synth", [("csr", "build_csr"), ("features", "_write_features")]))
        if args.ingest:
            export_parquet(ds, work / "parquet")
            result["steps"].append(step(
                "ingest", ["ingest", "--edges", str(work / "parquet"), "--out",
                           str(work / "ingested"), "--num-nodes", str(nodes), "--no-progress"],
                work, work / "ingested", "ingest.inputs", [("csr", "build_csr")]))
            result["steps"][-1]["csr_equal"] = same_csr(ds, work / "ingested")
            shutil.rmtree(work / "parquet")
            shutil.rmtree(work / "ingested")
        if args.feature_write:
            shutil.rmtree(ds)
            result["feature_write"] = feature_write(work, nodes, args.feature_dim,
                                                    args.feature_dtype)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        result["load_avg_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
