"""Benchmark ``disktrain ingest``: peak RSS and edges/s on a large random edge list.

Writes a random edge list (int64 ids, uniform over ``--nodes`` nodes) in chunks into a
temporary directory, runs ``python -m disktrain ingest`` on it under ``/usr/bin/time -v``
(Debian/Ubuntu package ``time``: ``apt-get install -y time``), prints one JSON line and
deletes everything it wrote. Peak RSS must stay under 2 GiB whatever the edge count: the
output memory maps (indptr, indices) are the only thing that grows with it.

    .venv/bin/python scripts/bench_ingest.py                       # 100M edges, Parquet
    .venv/bin/python scripts/bench_ingest.py --format csv --edges 10000000
    .venv/bin/python scripts/bench_ingest.py --num-nodes-known     # skip the scan pass
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

PEAK_RSS_LIMIT = 2 << 30
WRITE_ROWS = 10_000_000
ROW_GROUP = 1 << 20


def write_edges(root: Path, fmt: str, num_edges: int, num_nodes: int, num_files: int,
                seed: int) -> Path:
    """Write the random edge list under ``root``: Parquet files in a directory, or one CSV."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
    path = root / ("edges" if fmt == "parquet" else "edges.csv")
    per_file = -(-num_edges // num_files) if fmt == "parquet" else num_edges
    if fmt == "parquet":
        path.mkdir()
    written = 0
    while written < num_edges:
        file_rows = min(per_file, num_edges - written)
        if fmt == "parquet":
            writer = pq.ParquetWriter(path / f"part-{written // per_file:04d}.parquet", schema)
        else:
            writer = pcsv.CSVWriter(path, schema)
        for a in range(0, file_rows, WRITE_ROWS):
            n = min(WRITE_ROWS, file_rows - a)
            table = pa.table({"src": rng.integers(0, num_nodes, n),
                              "dst": rng.integers(0, num_nodes, n)}, schema=schema)
            if fmt == "parquet":
                writer.write_table(table, row_group_size=ROW_GROUP)
            else:
                writer.write_table(table)
        writer.close()
        written += file_rows
    return path


def run_timed(cmd: list[str]) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; return its wall time and peak RSS."""
    if not Path("/usr/bin/time").exists():
        sys.exit("bench_ingest: /usr/bin/time not found (apt-get install -y time)")
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        sys.exit(f"bench_ingest: ingest failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
    clock = re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", proc.stderr)[1]
    wall = sum(float(x) * 60**i for i, x in enumerate(reversed(clock.split(":"))))
    return {"wall_s": round(wall, 2), "peak_rss_bytes": rss_kib * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=100_000_000)
    parser.add_argument("--nodes", type=int, default=5_000_000)
    parser.add_argument("--files", type=int, default=10, help="Parquet files")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    parser.add_argument("--num-nodes-known", action="store_true",
                        help="pass --num-nodes (no scan pass over the edges)")
    parser.add_argument("--dedup", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary directory goes (default: system temp)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_ingest-", dir=args.workdir))
    try:
        t = time.perf_counter()
        edges = write_edges(root, args.format, args.edges, args.nodes, args.files, args.seed)
        generate_s = time.perf_counter() - t
        input_bytes = sum(p.stat().st_size for p in [edges, *edges.rglob("*")] if p.is_file())
        cmd = [sys.executable, "-m", "disktrain", "ingest", "--edges", str(edges),
               "--out", str(root / "dataset"), "--no-progress"]
        if args.num_nodes_known:
            cmd += ["--num-nodes", str(args.nodes)]
        if args.dedup:
            cmd += ["--dedup"]
        timed = run_timed(cmd)
        info = json.loads(subprocess.run(
            [sys.executable, "-m", "disktrain", "info", str(root / "dataset"), "--json"],
            capture_output=True, text=True, check=True).stdout)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "format": args.format, "input_edges": args.edges, "nodes": args.nodes,
        "files": args.files if args.format == "parquet" else 1, "input_bytes": input_bytes,
        "num_nodes_known": args.num_nodes_known, "dedup": args.dedup,
        "stored_edges": info["num_edges"], "stored_nodes": info["num_nodes"],
        "generate_s": round(generate_s, 1), "wall_s": timed["wall_s"],
        "edges_per_s": round(args.edges / timed["wall_s"]),
        "peak_rss_mib": round(timed["peak_rss_bytes"] / 2**20, 1),
        "peak_rss_ok": timed["peak_rss_bytes"] < PEAK_RSS_LIMIT,
    }))


if __name__ == "__main__":
    main()
