"""How close `disktrain prepare` runs to the disk's sequential bandwidth, and its CPU cost.

Usage: python scripts/bench_prepare.py [--nodes 1000000] [--avg-degree 10] [--dim 256]
                                       [--train-fraction 0.2] [--fanouts 10,10]
                                       [--batch-size 1024] [--chunk-bytes 256K]
                                       [--disk-bytes 4G] [--no-epochs]
                                       [--profile N] [--data DATASET] [--workdir DIR] [--keep]

Builds a synthetic graph (disktrain.ingest.synth; the defaults make ~1 GB of float32 features), then
on the same filesystem:
  - measures the disk: writes a ``--disk-bytes`` file of random bytes with 16 MiB writes
    (through the page cache then fsync, with ``O_DIRECT``, and uncached with
    ``RWF_DONTCACHE`` where the kernel has it), drops it from the page cache (``os.sync`` then
    ``posix_fadvise(DONTNEED)``) and reads it back, through the page cache and with
    ``O_DIRECT``; the disk's read and write bandwidths are the best of these;
  - runs the stages below, each with the page cache of the dataset directory dropped first,
    recording wall, user and sys seconds (``resource.getrusage``: every thread of this
    process; ``thread_cpu_s``: by thread name, sampled from ``/proc/self/task``), bytes read
    from and written to storage (``/proc/self/io`` read_bytes / write_bytes) and the time of
    an ``os.sync`` right after (the writeback the stage left):
      sample   `sample_dataset` of the training root
      pack     `pack_dataset` of the training root
      epoch    `prepare_epoch(1)`: what training runs in the background for each fresh epoch
               (sample + pack under DATASET/epochs/)
      epoch_after_delete
               epoch 1's root deleted, then `prepare_epoch(2)`: training's steady state,
               where each fresh epoch is written right after an old one was deleted. On an
               ext4 without a journal (our VMs) the kernel skips inodes freed in the last
               minutes when it allocates one, so a file created soon after many were deleted
               nearby costs up to ~1 ms of sys time instead of ~20 us (so leave minutes
               between runs: each deletes what it wrote)

For each stage, ``disk_fraction`` = (read_bytes / read bandwidth + write_bytes / write
bandwidth) / (wall + final sync): the share of the stage's time the disk would need to move
the same bytes sequentially (1.0 = at disk speed); ``gb_per_s`` = (read + written) / that
time; ``cpu_s_per_gb`` = (user + sys) / (read + written in GB). ``prepare`` sums sample and
pack. ``io_replay_s``: what the disk takes for packing's reads and writes alone, done
concurrently as packing does them with nothing computed between (:func:`io_replay`), measured
after the stages; ``device_share`` = that / packing's time (1.0 = packing costs no more than
its I/O). ``--profile N`` prints packing's N most expensive functions (cProfile, cumulative; the
main thread only) to stderr. Prints one JSON line. Everything written goes to a temporary
directory deleted at the end (kept with ``--keep``; ``--data`` reuses a kept dataset, whose
prepared stores are removed first).
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import numpy as np

from disktrain.cli import parse_bytes, parse_fanouts
from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.pack import PackConfig, pack_dataset
from disktrain.pack.prepare import prepare_epoch
from disktrain.pack.store import PackedStore
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.storage.chunkfile import CRC_BYTES
from disktrain.storage.io import RWF_DONTCACHE, aligned_buffer, round_up, write_blocks
from disktrain.storage.roots import epoch_root, new_run

IO_BLOCK = 16 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def _write_file(path: Path, nbytes: int, flags: int, rwf: int = 0) -> float:
    """Seconds to write ``nbytes`` of random bytes with 16 MiB writes (``pwritev2`` flags
    ``rwf``) and an fsync."""
    block = mmap.mmap(-1, IO_BLOCK)  # page-aligned, as O_DIRECT needs
    block.write(np.random.default_rng(0).integers(0, 256, IO_BLOCK, np.uint8).tobytes())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        t = time.perf_counter()
        for k in range(nbytes // IO_BLOCK):
            os.pwritev(fd, [block], k * IO_BLOCK, rwf)
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
    through the page cache, with ``O_DIRECT`` and (writes) uncached; the disk's is the best."""
    os.sync()  # nothing else's writeback in the way
    size = nbytes // IO_BLOCK * IO_BLOCK
    out = {}
    for name, flags in (("buffered", 0), ("direct", os.O_DIRECT)):
        out[f"write_{name}"] = size / _write_file(path, size, flags)
        out[f"read_{name}"] = size / _read_file(path, flags)
    try:
        out["write_uncached"] = size / _write_file(path, size, 0, RWF_DONTCACHE)
    except OSError:  # a kernel or filesystem without RWF_DONTCACHE
        pass
    path.unlink()
    out["write"] = max(v for k, v in out.items() if k.startswith("write_"))
    out["read"] = max(out["read_buffered"], out["read_direct"])
    return out


class ThreadCPU:
    """CPU seconds (user + sys) of this process's threads while it runs, by Python thread
    name less its pool index (``chunk-writer_3`` -> ``chunk-writer``), from
    ``/proc/self/task`` sampled every ``interval`` s (a thread's last moments before it
    ends may be missed)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.seen, self.names = interval, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler")

    def _sample(self) -> None:
        self.names.update({t.native_id: t.name.rsplit("_", 1)[0]
                           for t in threading.enumerate()})
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended
                continue
            self.seen[int(tid)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self.start = dict(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, cpu in self.seen.items():
            name = self.names.get(tid, "?")
            out[name] = out.get(name, 0.0) + cpu - self.start.get(tid, 0.0)
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])
                if v >= 0.01 and k != "bench-sampler"}


def io_replay(features: Path, written: int, chunk_bytes: int, streams: int,
              path: Path) -> float:
    """Seconds the disk takes for packing's I/O alone, with no work between: every feature
    chunk file read whole (``O_DIRECT``, two threads, out of the page cache) while a third
    thread writes ``written`` bytes into ``path`` as packing does: a chunk (``chunk_bytes``
    and its crc, to a block) at a time, past the page cache, round robin over ``streams``
    batches' regions of a preallocated file; then an fsync."""
    files = sorted(features.glob("c/*/0"))
    drop_cache(features)
    size = round_up(chunk_bytes + CRC_BYTES)
    per = max(1, written // size // streams)
    order = [s * per + k for k in range(per) for s in range(streams)]
    block = aligned_buffer(size)
    local = threading.local()

    def read(f: Path) -> None:
        if not hasattr(local, "buf"):
            local.buf = aligned_buffer(round_up(f.stat().st_size))
        fd = os.open(f, os.O_RDONLY | os.O_DIRECT)
        try:
            os.preadv(fd, [local.buf], 0)
        finally:
            os.close(fd)

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, len(order) * size)
            uncached = True
            for c in order:
                uncached = write_blocks(fd, block, c * size, uncached)
            os.fsync(fd)
        finally:
            os.close(fd)

    t = time.perf_counter()
    with ThreadPoolExecutor(1) as writer, ThreadPoolExecutor(2) as readers:
        writing = writer.submit(write)
        list(readers.map(read, files))
        writing.result()
    seconds = time.perf_counter() - t
    path.unlink()
    return seconds


def measure(stage, root: Path, disk: dict, profile: int = 0) -> dict:
    """Run ``stage()`` with ``root``'s page cache dropped first; its time, CPU (also per
    thread) and I/O."""
    drop_cache(root)
    io0, ru0 = proc_io(), resource.getrusage(resource.RUSAGE_SELF)
    prof = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    with ThreadCPU() as threads:
        stage()
    if prof:
        prof.disable()
    wall = time.perf_counter() - t
    os.sync()
    synced = time.perf_counter() - t
    io1, ru1 = proc_io(), resource.getrusage(resource.RUSAGE_SELF)
    if prof:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(profile)
    return {**summary(synced, wall, io1["read"] - io0["read"], io1["written"] - io0["written"],
                      ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime, disk),
            "thread_cpu_s": threads.by_name()}


def summary(seconds: float, wall: float, read: int, written: int, user: float, sys_s: float,
            disk: dict) -> dict:
    """A stage's figures (``seconds``: wall plus the final sync)."""
    ideal = read / disk["read"] + written / disk["write"]
    gb = (read + written) / 1e9
    return {
        "wall_s": round(wall, 2), "sync_s": round(seconds - wall, 2),
        "user_s": round(user, 2), "sys_s": round(sys_s, 2),
        "read_bytes": read, "write_bytes": written,
        "gb_per_s": round(gb / seconds, 3),
        "disk_fraction": round(ideal / seconds, 3),
        "cpu_s_per_gb": round((user + sys_s) / max(gb, 1e-9), 3),
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
    ap.add_argument("--no-epochs", action="store_true",
                    help="skip the fresh-epoch stages (prepare_epoch)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print packing's N costliest functions (cProfile) to stderr")
    ap.add_argument("--data", type=Path,
                    help="use this dataset (its prepared stores are removed first) "
                    "instead of synthesizing one")
    ap.add_argument("--workdir", type=Path, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare-", dir=args.workdir))
    data = args.data or tmp / "data"
    try:
        t = time.perf_counter()
        if args.data:
            for store in ("samples", "packed", "epochs"):
                shutil.rmtree(data / store, ignore_errors=True)
        else:
            synthesize(SynthConfig(out=data, num_nodes=args.nodes, avg_degree=args.avg_degree,
                                   feature_dim=args.dim, num_classes=16,
                                   train_fraction=args.train_fraction, val_fraction=0.01,
                                   test_fraction=0.01, progress=False))
        synth_s = time.perf_counter() - t
        disk = disk_bandwidth(tmp / "disk.bin", args.disk_bytes)
        sample_cfg = SampleConfig(fanouts=args.fanouts, batch_size=args.batch_size)
        pack_cfg = PackConfig(chunk_bytes=args.chunk_bytes)
        stages = {
            "sample": measure(lambda: sample_dataset(data, sample_cfg, progress=False), data,
                              disk),
            "pack": measure(lambda: pack_dataset(data, pack_cfg, progress=False), data, disk,
                            args.profile),
        }
        if not args.no_epochs:
            run = new_run(data)
            stages["epoch"] = measure(lambda: prepare_epoch(data, run, 1), data, disk)
            shutil.rmtree(epoch_root(run, 1))
            stages["epoch_after_delete"] = measure(lambda: prepare_epoch(data, run, 2), data,
                                                   disk)
            shutil.rmtree(data / "epochs")
        info = json.loads((data / "packed" / "zarr.json").read_text())["attributes"]
        pack = stages["pack"]
        store = PackedStore(data)
        pack["io_replay_s"] = round(io_replay(
            data / "features", pack["write_bytes"],
            info["chunk_rows"] * store.feature_dim * store.dtype.itemsize, store.num_batches,
            tmp / "replay.bin"), 2)
        del store
        pack["device_share"] = round(pack["io_replay_s"] / (pack["wall_s"] + pack["sync_s"]), 3)
        both = {k: stages["sample"][k] + stages["pack"][k] for k in ("read_bytes",
                                                                      "write_bytes")}
        seconds = sum(stages[s]["wall_s"] + stages[s]["sync_s"] for s in ("sample", "pack"))
        cpu = {k: sum(stages[s][k] for s in ("sample", "pack")) for k in ("user_s", "sys_s")}
        print(json.dumps({
            "dataset": str(args.data or "synth"), "nodes": args.nodes, "dim": args.dim,
            "chunk_bytes": args.chunk_bytes, "synth_s": round(synth_s, 1),
            "disk_gb_per_s": {k: round(v / 1e9, 3) for k, v in disk.items()},
            "disk_test_bytes": args.disk_bytes // IO_BLOCK * IO_BLOCK,
            **stages,
            "prepare": summary(seconds, seconds, both["read_bytes"], both["write_bytes"],
                               cpu["user_s"], cpu["sys_s"], disk),
            "packed": {k: info[k] for k in ("packed_rows", "padded_rows", "packed_bytes",
                                            "duplication_factor", "chunk_rows")},
        }))
    finally:
        if args.data:
            shutil.rmtree(data / "epochs", ignore_errors=True)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
