"""How close `disktrain prepare` runs to the disk's sequential bandwidth.

Usage: python scripts/bench_prepare.py [--nodes 1000000] [--avg-degree 10] [--dim 256]
                                       [--train-fraction 0.2] [--fanouts 10,10]
                                       [--batch-size 1024] [--chunk-bytes 256K]
                                       [--disk-bytes 4G] [--profile N] [--data DATASET]
                                       [--workdir DIR] [--keep]

Builds a synthetic graph (disktrain.synth; the defaults make ~1 GB of float32 features), then
on the same filesystem:
  - measures the disk: writes a ``--disk-bytes`` file of random bytes with 16 MiB writes and
    an fsync, drops it from the page cache (``os.sync`` then ``posix_fadvise(DONTNEED)``) and
    reads it back, once through the page cache and once with ``O_DIRECT``; the disk's read
    and write bandwidths are the better of the two;
  - runs sampling (`sample_dataset`) and packing (`pack_dataset`) separately, each with the
    page cache of the whole dataset directory dropped first, recording wall, user and sys
    seconds (``resource.getrusage``), bytes read from and written to storage
    (``/proc/self/io`` read_bytes / write_bytes) and the time of an ``os.sync`` right after
    (the dirty pages the stage left behind).

For each stage, ``disk_fraction`` = (read_bytes / read bandwidth + write_bytes / write
bandwidth) / (wall + final sync): the share of the stage's time the disk would need to move
the same bytes sequentially (1.0 = at disk speed); ``gb_per_s`` = (read + written) / that time.
``--profile N`` prints packing's N most expensive functions (cProfile, cumulative) to stderr.
Prints one JSON line. Everything written goes to a temporary directory deleted at the end
(kept with ``--keep``; ``--data`` reuses a kept dataset).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import mmap
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from disktrain.cli import parse_bytes, parse_fanouts
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.synth import SynthConfig, synthesize

IO_BLOCK = 16 << 20


def proc_io() -> dict[str, int]:
    """This process's bytes read from and written to storage so far."""
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return {"read": int(fields["read_bytes"]), "written": int(fields["write_bytes"])}


def drop_cache(root: Path) -> None:
    """Write back every dirty page, then drop the files under ``root`` from the page cache."""
    os.sync()
    paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _write_file(path: Path, nbytes: int, flags: int) -> float:
    """Seconds to write ``nbytes`` of random bytes with 16 MiB writes and an fsync."""
    block = mmap.mmap(-1, IO_BLOCK)  # page-aligned, as O_DIRECT needs
    block.write(np.random.default_rng(0).integers(0, 256, IO_BLOCK, np.uint8).tobytes())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        t = time.perf_counter()
        for _ in range(nbytes // IO_BLOCK):
            os.write(fd, block)
        os.fsync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)


def _read_file(path: Path, flags: int) -> float:
    """Seconds to read ``path`` (out of the page cache) with 16 MiB reads."""
    drop_cache(path)
    buf = mmap.mmap(-1, IO_BLOCK)
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        t = time.perf_counter()
        while os.readv(fd, [buf]):
            pass
        return time.perf_counter() - t
    finally:
        os.close(fd)


def disk_bandwidth(path: Path, nbytes: int) -> dict[str, float]:
    """Sequential write (with fsync) and cold read bandwidth of a ``nbytes`` file, bytes/s,
    through the page cache and with ``O_DIRECT``; the disk's is the better of the two."""
    os.sync()  # nothing else's writeback in the way
    size = nbytes // IO_BLOCK * IO_BLOCK
    out = {}
    for name, flags in (("buffered", 0), ("direct", os.O_DIRECT)):
        out[f"write_{name}"] = size / _write_file(path, size, flags)
        out[f"read_{name}"] = size / _read_file(path, flags)
    path.unlink()
    out["write"] = max(out["write_buffered"], out["write_direct"])
    out["read"] = max(out["read_buffered"], out["read_direct"])
    return out


def measure(stage, root: Path, disk: dict, profile: int = 0) -> dict:
    """Run ``stage()`` with ``root``'s page cache dropped first; its time, CPU and I/O."""
    drop_cache(root)
    io0, ru0 = proc_io(), resource.getrusage(resource.RUSAGE_SELF)
    prof = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    stage()
    if prof:
        prof.disable()
    wall = time.perf_counter() - t
    os.sync()
    synced = time.perf_counter() - t
    io1, ru1 = proc_io(), resource.getrusage(resource.RUSAGE_SELF)
    read, written = io1["read"] - io0["read"], io1["written"] - io0["written"]
    ideal = read / disk["read"] + written / disk["write"]
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(profile)
    return {
        "wall_s": round(wall, 2), "sync_s": round(synced - wall, 2),
        "user_s": round(ru1.ru_utime - ru0.ru_utime, 2),
        "sys_s": round(ru1.ru_stime - ru0.ru_stime, 2),
        "read_bytes": read, "write_bytes": written,
        "gb_per_s": round((read + written) / synced / 1e9, 3),
        "disk_fraction": round(ideal / synced, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--avg-degree", type=float, default=10.0)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--train-fraction", type=float, default=0.2)
    ap.add_argument("--fanouts", type=parse_fanouts, default=(10, 10))
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--chunk-bytes", type=parse_bytes, default=PackConfig.chunk_bytes)
    ap.add_argument("--disk-bytes", type=parse_bytes, default=4 << 30)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print packing's N costliest functions (cProfile) to stderr")
    ap.add_argument("--data", type=Path,
                    help="use this dataset (its samples/ and packed/ are removed first) "
                    "instead of synthesizing one")
    ap.add_argument("--workdir", type=Path, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare-", dir=args.workdir))
    try:
        t = time.perf_counter()
        if args.data:
            data = args.data
            for store in ("samples", "packed"):
                shutil.rmtree(data / store, ignore_errors=True)
        else:
            data = tmp / "data"
            synthesize(SynthConfig(out=data, num_nodes=args.nodes, avg_degree=args.avg_degree,
                                   feature_dim=args.dim, num_classes=16,
                                   train_fraction=args.train_fraction, val_fraction=0.01,
                                   test_fraction=0.01, progress=False))
        synth_s = time.perf_counter() - t
        disk = disk_bandwidth(tmp / "disk.bin", args.disk_bytes)
        sample_cfg = SampleConfig(fanouts=args.fanouts, batch_size=args.batch_size)
        pack_cfg = PackConfig(chunk_bytes=args.chunk_bytes)
        sample = measure(lambda: sample_dataset(data, sample_cfg, progress=False), data, disk)
        pack = measure(lambda: pack_dataset(data, pack_cfg, progress=False), data, disk,
                       args.profile)
        info = json.loads((data / "packed" / "zarr.json").read_text())["attributes"]
        both = {k: sample[k] + pack[k] for k in ("read_bytes", "write_bytes")}
        total_s = sum(s["wall_s"] + s["sync_s"] for s in (sample, pack))
        ideal = (both["read_bytes"] / disk["read"]
                 + both["write_bytes"] / disk["write"])
        print(json.dumps({
            "dataset": str(args.data or "synth"), "nodes": args.nodes, "dim": args.dim,
            "chunk_bytes": args.chunk_bytes, "synth_s": round(synth_s, 1),
            "disk_gb_per_s": {k: round(v / 1e9, 3) for k, v in disk.items()},
            "disk_test_bytes": args.disk_bytes // IO_BLOCK * IO_BLOCK,
            "sample": sample, "pack": pack,
            "prepare": {"seconds": round(total_s, 2), **both,
                        "gb_per_s": round(sum(both.values()) / total_s / 1e9, 3),
                        "disk_fraction": round(ideal / total_s, 3)},
            "packed": {k: info[k] for k in ("packed_rows", "padded_rows", "packed_bytes",
                                            "duplication_factor")},
        }))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
