"""What the checksums cost: training epochs with and without crc32c checks, and `verify`'s speed.

Usage: python scripts/bench_integrity.py [--nodes 1000000] [--avg-degree 10] [--dim 128]
                                         [--batches 200] [--repeats 3] [--dataset DIR]

Builds (or, with --dataset, reuses a prepared) dataset, then on the same batches runs, in
interleaved rounds, a training epoch (2-layer SAGE, hidden 128, torch threads as `train`
sets them) fed by the staged loader with every packed chunk and sample group crc-checked
(`LoaderConfig(verify=True)`, the default) and with those checks off (`verify=False`), the
packed files' page cache evicted before each epoch. Then `disktrain verify` over the whole
dataset directory, once after evicting its files and once more with them in the page cache.
Prints one JSON line. Without --dataset everything written goes to a temporary directory
deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader
from disktrain.models.gnn import GNNConfig, build_model
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.train.threads import compute_threads, loader_threads, torch_threads
from disktrain.verify import verify


def evict(root: Path) -> int:
    """Drop every file under ``root`` from the page cache; return their bytes."""
    os.sync()
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                total += os.fstat(fd).st_size
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return total


def epoch(loader: PackedLoader, model, opt, batches) -> float:
    """One training pass over ``batches`` through the pipeline, packed files evicted first."""
    evict(loader.packed.path)
    evict(loader.samples.path)
    t = time.perf_counter()
    for mb in loader(batches):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(mb.x.float(), mb.blocks), mb.labels).backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="a prepared dataset to reuse")
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--avg-degree", type=float, default=10)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = None
    if args.dataset:
        path = Path(args.dataset)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-integrity-"))
        path = work / "ds"
        synthesize(SynthConfig(out=path, num_nodes=args.nodes, avg_degree=args.avg_degree,
                               feature_dim=args.dim, num_classes=16, seed=0, progress=False))
        sample_dataset(path, SampleConfig(fanouts=(10, 10), batch_size=1024, epochs=1),
                       progress=False)
        pack_dataset(path, PackConfig(cpu_cache_bytes=int(0.1 * args.nodes * args.dim * 4)),
                     progress=False)
    try:
        threads = compute_threads(0, torch.device("cpu")) or torch.get_num_threads()
        loaders = {on: PackedLoader(path, LoaderConfig(verify=on,
                                                       assemble_threads=loader_threads(threads)))
                   for on in (True, False)}
        meta = loaders[True].dataset.meta
        n = min(args.batches, loaders[True].num_batches)
        batches = list(np.random.default_rng(0).permutation(loaders[True].num_batches)[:n])
        torch.manual_seed(0)
        model = build_model(GNNConfig(model="sage", in_dim=meta.feature_dim, hidden=128,
                                      num_classes=meta.num_classes,
                                      num_layers=len(loaders[True].samples.config.fanouts)))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        times: dict[bool, list[float]] = {True: [], False: []}
        with torch_threads(threads):
            for loader in loaders.values():  # warm up kernels and allocator
                epoch(loader, model, opt, batches[:2])
            for _ in range(args.repeats):
                for on, loader in loaders.items():
                    times[on].append(epoch(loader, model, opt, batches))
        packed = loaders[True].packed
        read_bytes = sum(int(packed.batch_rows[b + 1] - packed.batch_rows[b]) for b in batches)
        read_bytes *= packed.feature_dim * packed.dtype.itemsize
        with_s, without_s = (float(np.median(times[on])) for on in (True, False))

        on_disk = evict(path)
        cold = verify(path)  # every file read from storage
        warm = verify(path)  # the same files, now in the page cache
        assert warm.clean and cold.clean, "the benchmark dataset failed verification"
        print(json.dumps({
            "dataset": str(path) if args.dataset else "synthetic",
            "nodes": meta.num_nodes, "edges": meta.num_edges, "dim": meta.feature_dim,
            "batches": n, "repeats": args.repeats, "torch_threads": threads,
            "packed_bytes_read_per_epoch": read_bytes,
            "epoch_checked_s": round(with_s, 3), "epoch_unchecked_s": round(without_s, 3),
            "epochs_checked_s": [round(t, 3) for t in times[True]],
            "epochs_unchecked_s": [round(t, 3) for t in times[False]],
            "checksum_overhead": round(with_s / without_s - 1, 4),
            "verify": {"bytes": warm.bytes, "dataset_dir_bytes": on_disk,
                       "page_cache_s_per_gb": round(warm.seconds / (warm.bytes / 1e9), 3),
                       "evicted_s_per_gb": round(cold.seconds / (cold.bytes / 1e9), 3)},
        }))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
