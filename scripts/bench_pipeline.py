"""Overlap efficiency of the training pipeline: epoch wall time / max(read alone, compute alone).

Usage: python scripts/bench_pipeline.py [--nodes 1000000] [--avg-degree 10] [--dim 128]
                                        [--batches 60] [--cpu-cache-frac 0.1] [--dataset DIR]
                                        [--torch-threads auto,1] [--repeats 3]

Builds (or, with --dataset, reuses a prepared) dataset, then on the same batches measures:
  read alone     reading every batch's packed range with the loader's read threads;
  compute alone  forward/backward/step of a 2-layer SAGE (hidden 128) on batches assembled
                 beforehand (no other work running);
  pipelined      the staged loader feeding the same training step (what `train` does).
The packed files' page cache is evicted before each read pass. Each compute-thread setting
(`auto`: what `train` uses, every core on a CPU; a number N: as `train --compute-threads N`;
either way the loader's Numba assembly gets the cores compute leaves, at least one) is
measured in interleaved rounds and reported as medians. Prints one JSON line.
Without --dataset everything written goes to a temporary directory deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import MiniBatch, PackedLoader
from disktrain.models.gnn import GNNConfig, build_model
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.storage.io import aligned_buffer
from disktrain.train.threads import available_cores, compute_threads, loader_threads, torch_threads


def evict_packed(loader: PackedLoader, batches) -> None:
    p = loader.packed
    os.sync()
    shards = {p.layout.place(c)[0] for b in batches
              for c in range(p.batch_rows[b] // p.chunk_rows, p.batch_rows[b + 1] // p.chunk_rows)}
    for path in shards:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def read_alone(loader: PackedLoader, batches) -> float:
    p = loader.packed
    threads = loader.cfg.read_threads
    row_bytes = p.feature_dim * p.dtype.itemsize  # page-aligned: read with O_DIRECT
    bufs = [aligned_buffer(p.max_padded_rows * row_bytes).view(p.dtype)
            .reshape(-1, p.feature_dim) for _ in range(threads)]
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda ib: p.read_packed(ib[1], bufs[ib[0] % threads]),
                      enumerate(batches)))
    return time.perf_counter() - t


def step(model, opt, mb) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(mb.x, mb.blocks), mb.labels).backward()
    opt.step()


def measure(loader: PackedLoader, model, opt, batches) -> dict:
    """One interleaved round on the same batches: compute alone, then the pipelined epoch."""
    # assembled first (cloned: the loader reuses its buffers), so nothing else runs
    ready = [MiniBatch(mb.index, mb.x.clone(), mb.blocks, mb.labels, mb.input_nodes)
             for mb in loader(batches)]
    t = time.perf_counter()
    for mb in ready:
        step(model, opt, mb)
    t_compute = time.perf_counter() - t
    del ready

    evict_packed(loader, batches)
    stages = dict.fromkeys(("read", "assemble", "copy"), 0.0)
    t = time.perf_counter()
    for mb in loader(batches):
        step(model, opt, mb)
        for k in stages:
            stages[k] += mb.seconds[k]
    t_epoch = time.perf_counter() - t
    return {"compute_alone_s": t_compute, "pipelined_s": t_epoch, "stage_sums_s": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="a prepared dataset to reuse")
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--avg-degree", type=float, default=10)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--cpu-cache-frac", type=float, default=0.1,
                    help="CPU cache size as a fraction of the feature bytes")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--read-threads", type=int, default=2)
    ap.add_argument("--torch-threads", default="auto,1",
                    help="comma-separated compute thread settings to compare: auto (what "
                    "`train` uses: every core on a CPU) or a number")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved rounds per setting; medians are reported")
    args = ap.parse_args()
    cores = available_cores()
    auto = compute_threads(0, torch.device("cpu")) or torch.get_num_threads()
    settings = {name: auto if name == "auto" else int(name)
                for name in args.torch_threads.split(",")}
    work = None
    if args.dataset:
        path = Path(args.dataset)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        path = work / "ds"
        synthesize(SynthConfig(out=path, num_nodes=args.nodes, avg_degree=args.avg_degree,
                               feature_dim=args.dim, num_classes=16, seed=0, progress=False))
        sample_dataset(path, SampleConfig(fanouts=(10, 10), batch_size=1024, epochs=1),
                       progress=False)
        cache = int(args.cpu_cache_frac * args.nodes * args.dim * 4)
        pack_dataset(path, PackConfig(cpu_cache_bytes=cache), progress=False)
    try:
        # the loader's Numba threads get the cores compute leaves (as `train`)
        loaders = {name: PackedLoader(path, LoaderConfig(
            prefetch=args.prefetch, read_threads=args.read_threads,
            assemble_threads=loader_threads(n)))
            for name, n in settings.items()}
        loader = next(iter(loaders.values()))
        meta = loader.dataset.meta
        batches = np.random.default_rng(0).permutation(loader.num_batches)[:args.batches]
        torch.manual_seed(0)
        model = build_model(GNNConfig(model="sage", in_dim=meta.feature_dim, hidden=128,
                                      num_classes=meta.num_classes,
                                      num_layers=len(loader.samples.config.fanouts)))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for each in loaders.values():  # warm up kernels and allocator
            for mb in each(batches[:2]):
                step(model, opt, mb)

        rounds: dict[str, list[dict]] = {name: [] for name in settings}
        reads = []
        for _ in range(args.repeats):
            evict_packed(loader, batches)
            reads.append(read_alone(loader, batches))
            for name, n in settings.items():
                with torch_threads(n):
                    rounds[name].append(measure(loaders[name], model, opt, batches))
        t_read = float(np.median(reads))
        result = {
            "dataset": str(path) if args.dataset else "synthetic",
            "nodes": meta.num_nodes, "edges": meta.num_edges, "dim": meta.feature_dim,
            "batches": len(batches), "cores": cores, "repeats": args.repeats,
            "read_alone_s": round(t_read, 3), "settings": {},
        }
        for name, runs in rounds.items():
            compute = float(np.median([r["compute_alone_s"] for r in runs]))
            epoch = float(np.median([r["pipelined_s"] for r in runs]))
            result["settings"][name] = {
                "torch_threads": settings[name],
                "compute_alone_s": round(compute, 3), "pipelined_s": round(epoch, 3),
                "overlap_efficiency": round(epoch / max(t_read, compute), 3),
                "efficiency_per_round": [
                    round(r["pipelined_s"] / max(t_read, r["compute_alone_s"]), 3)
                    for r in runs],
                "stage_sums_s": {k: round(float(np.median([r["stage_sums_s"][k]
                                                           for r in runs])), 3)
                                 for k in ("read", "assemble", "copy")},
                "s_per_batch": round(epoch / len(batches), 4),
            }
        if "auto" in rounds:
            # the pipelined epoch as `train` runs it, against its compute alone
            auto = result["settings"]["auto"]
            result["auto_pipelined_over_compute_alone"] = round(
                auto["pipelined_s"] / auto["compute_alone_s"], 3)
        print(json.dumps(result))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
