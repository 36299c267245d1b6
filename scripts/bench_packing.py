"""I/O amplification of packed reads against random reads from a NumPy memmap, and packing time.

Usage: python scripts/bench_packing.py [--nodes 1000000] [--avg-degree 10] [--dim 128]
                                       [--batches 40] [--workdir DIR] [--keep]

Builds a synthetic graph (disktrain.ingest.synth), samples one epoch (fanouts 10,10, batch 1024),
packs it with no caches (the worst case for duplication), then measures, for the same batches,
with the page cache of the feature files evicted before every batch (features far larger than
memory):
  - packed: bytes read from storage (/proc/self/io read_bytes) / bytes of rows consumed;
  - memmap: the same for raw[input_nodes] from a NumPy memmap (default readahead and
    MADV_RANDOM), what a plain out-of-core loader does;
  - packing time of the whole plan against the time of one memmap epoch (same run), and the
    bytes packing reads from storage (raw features and sample store) over the raw bytes.
Prints one JSON line. Everything written goes to a temporary directory deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.pack import PackConfig, PackedStore, pack_dataset
from disktrain.sample import SampleConfig, SampleStore, sample_dataset
from disktrain.storage.dataset import Dataset


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def packed_epoch(store: PackedStore, batches) -> dict:
    buf = np.empty((store.max_padded_rows, store.feature_dim), store.dtype)
    row_bytes = store.feature_dim * store.dtype.itemsize
    read = needed = 0
    t = time.perf_counter()
    for b in batches:
        first, stop = store.batch_rows[b] // store.chunk_rows, store.batch_rows[b + 1] // \
            store.chunk_rows
        evict({store.layout.place(c)[0] for c in range(first, stop)})
        r0 = read_bytes()
        rows = store.read_packed(b, buf)
        read += read_bytes() - r0
        needed += len(rows) * row_bytes
    return {"amplification": read / needed, "seconds": time.perf_counter() - t,
            "bytes_needed": needed}


def memmap_epoch(npy: Path, samples: SampleStore, batches, advice: int | None) -> dict:
    raw = np.load(npy, mmap_mode="r")
    if advice is not None:
        raw._mmap.madvise(advice)
    row_bytes = raw.shape[1] * raw.dtype.itemsize
    read = needed = 0
    t = time.perf_counter()
    for b in batches:
        nodes = samples.input_nodes(b)
        raw._mmap.madvise(mmap.MADV_DONTNEED)  # unmap our pages, or fadvise keeps them
        evict([npy])
        r0 = read_bytes()
        rows = raw[nodes]
        read += read_bytes() - r0
        needed += len(rows) * row_bytes
    return {"amplification": read / needed, "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--avg-degree", type=float, default=10)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batches", type=int, default=40, help="batches measured per reader")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the data written")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-packing-", dir=args.workdir))
    try:
        ds_path = work / "ds"
        t = time.perf_counter()
        synthesize(SynthConfig(out=ds_path, num_nodes=args.nodes, avg_degree=args.avg_degree,
                               feature_dim=args.dim, num_classes=16, seed=0,
                               progress=False))
        t_synth = time.perf_counter() - t
        ds = Dataset(ds_path)
        t = time.perf_counter()
        samples = sample_dataset(ds_path, SampleConfig(fanouts=(10, 10), batch_size=1024,
                                                       epochs=1, seed=0), progress=False)
        t_sample = time.perf_counter() - t
        # raw features as one .npy, the file a memmap loader would use
        npy = work / "features.npy"
        out = np.lib.format.open_memmap(npy, mode="w+", dtype=ds.features.dtype,
                                        shape=(ds.num_nodes, args.dim))
        step = 1 << 16
        for a in range(0, ds.num_nodes, step):
            out[a:a + step] = ds.feature_rows(a, min(a + step, ds.num_nodes))
        out.flush()
        del out
        os.sync()
        evict(sorted((ds_path / "features").rglob("0")))
        evict(sorted((ds_path / "samples").rglob("c/0")))
        r0 = read_bytes()
        t = time.perf_counter()
        packed = pack_dataset(ds_path, PackConfig(), progress=False)
        t_pack = time.perf_counter() - t
        pack_read = read_bytes() - r0
        raw_bytes = ds.num_nodes * args.dim * np.dtype(ds.features.dtype).itemsize
        os.sync()
        rng = np.random.default_rng(0)
        batches = rng.permutation(samples.num_batches)[:args.batches]
        res_packed = packed_epoch(packed, batches)
        res_default = memmap_epoch(npy, samples, batches, None)
        res_random = memmap_epoch(npy, samples, batches, mmap.MADV_RANDOM)
        frac = samples.num_batches / len(batches)
        print(json.dumps({
            "graph": {"nodes": ds.num_nodes, "edges": ds.meta.num_edges, "dim": args.dim},
            "batches": samples.num_batches, "measured_batches": len(batches),
            "synth_s": round(t_synth, 2), "sample_s": round(t_sample, 2),
            "pack_s": round(t_pack, 2),
            "pack_read_over_raw_bytes": round(pack_read / raw_bytes, 3),
            "duplication_factor": round(packed.info()["duplication_factor"], 3),
            "padding_overhead": round(packed.info()["padded_rows"]
                                      / max(1, packed.info()["packed_rows"]) - 1, 4),
            "packed_amplification": round(res_packed["amplification"], 4),
            "memmap_amplification_default": round(res_default["amplification"], 2),
            "memmap_amplification_madv_random": round(res_random["amplification"], 2),
            "packed_epoch_s_est": round(res_packed["seconds"] * frac, 2),
            "memmap_epoch_s_est": round(res_random["seconds"] * frac, 2),
            "pack_vs_memmap_epoch": round(t_pack / (res_random["seconds"] * frac), 3),
        }))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
