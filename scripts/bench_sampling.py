"""Benchmark: disktrain's multi-layer neighbor sampler against torch_sparse.neighbor_sample.

Needs the bench extras (torch-geometric, torch-sparse wheels) for the peer; prints one JSON line.

    .venv/bin/python scripts/bench_sampling.py                       # R-MAT, 2M nodes, 20M edges
    .venv/bin/python scripts/bench_sampling.py --graph uniform --num-edges 30000000
    /usr/bin/time -v .venv/bin/python scripts/bench_sampling.py --dataset /work/big/rmat1b --epoch \
        --group 64 --progress
    # the CSR memory-mapped, page cache evicted first, seeds sorted within each batch
    .venv/bin/python scripts/bench_sampling.py --dataset DIR --epoch --csr map --cold \
        --seed-order sorted --passes 2

Both samplers get the same CSR and the same seeds. torch_sparse (what PyG's NeighborLoader
runs) samples each node once, at the hop after it is reached; ours does that with
``frontier_only=True`` (like for like), and by default resamples every known node at every hop
(DGL blocks), which samples more edges per batch: its rate is reported too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
from _benchlib import evict

from disktrain.kernels.sampling import SampledBatches, sample_batches
from disktrain.storage.residency import RESIDENCIES


def rmat_edges(scale: int, num_edges: int, gen: np.random.Generator,
               probs=(0.57, 0.19, 0.19, 0.05)) -> tuple[np.ndarray, np.ndarray]:
    """R-MAT (Graph500 parameters) edges over 2**scale nodes, ids randomly permuted."""
    a, b, c, _ = probs
    src = np.zeros(num_edges, np.int64)
    dst = np.zeros(num_edges, np.int64)
    for level in range(scale):
        r = gen.random(num_edges, np.float32)
        src |= (r >= a + b).astype(np.int64) << level
        dst |= (((r >= a) & (r < a + b)) | (r >= a + b + c)).astype(np.int64) << level
    perm = gen.permutation(1 << scale)
    return perm[src], perm[dst]


def build_graph(kind: str, scale: int, num_edges: int, seed: int):
    """In-neighbor CSR (indptr int64, indices int32) of a seeded random graph."""
    gen = np.random.default_rng(seed)
    num_nodes = 1 << scale
    if kind == "rmat":
        src, dst = rmat_edges(scale, num_edges, gen)
    else:
        src, dst = gen.integers(0, num_nodes, num_edges), gen.integers(0, num_nodes, num_edges)
    order = np.argsort(dst, kind="stable")
    indices = src[order].astype(np.int32)
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    return indptr, indices


def cut_batches(ids: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.arange(0, ids.size + batch_size, batch_size).clip(max=ids.size)
    return ids.astype(np.int64), np.unique(offsets).astype(np.int64)


def run_ours(indptr, indices, seeds, offsets, fanouts, key, group, frontier_only, repeats):
    """Sample every batch, ``group`` batches per call; returns (best seconds, stats)."""
    num_batches = offsets.size - 1
    best = float("inf")
    for _ in range(repeats):
        edges = np.zeros(len(fanouts), np.int64)
        input_nodes = 0
        start = time.perf_counter()
        for g in range(0, num_batches, group):
            lo, hi = offsets[g], offsets[min(g + group, num_batches)]
            res: SampledBatches = sample_batches(indptr, indices, seeds[lo:hi],
                                                 offsets[g:g + group + 1] - lo, fanouts, key,
                                                 frontier_only=frontier_only)
            edges += np.diff(res.edge_offsets).reshape(-1, len(fanouts)).sum(0)
            input_nodes += int(res.hop_counts[:, -1].sum())
        best = min(best, time.perf_counter() - start)
    return best, stats(edges, input_nodes, num_batches)


def run_peer(colptr, row, seeds, offsets, fanouts, threads):
    """torch.ops.torch_sparse.neighbor_sample per batch (as PyG's NeighborLoader calls it)."""
    import torch
    import torch_sparse  # noqa: F401  (registers torch.ops.torch_sparse)

    colptr_t, row_t = torch.from_numpy(colptr), torch.from_numpy(row)
    batches = [torch.from_numpy(seeds[offsets[b]:offsets[b + 1]])
               for b in range(offsets.size - 1)]

    def one(input_node):
        nodes, rows, cols, _ = torch.ops.torch_sparse.neighbor_sample(
            colptr_t, row_t, input_node, list(fanouts), False, True)
        return per_hop_edges(cols.numpy(), rows.numpy(), input_node.numel(), len(fanouts)), \
            nodes.numel()

    start = time.perf_counter()
    if threads == 1:
        results = [one(s) for s in batches]
    else:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(one, batches))
    seconds = time.perf_counter() - start
    edges = np.sum([r[0] for r in results], axis=0)
    return seconds, stats(edges, sum(r[1] for r in results), len(batches))


def per_hop_edges(cols: np.ndarray, rows: np.ndarray, num_seeds: int, num_hops: int):
    """Split torch_sparse's edges by hop: hop l's dst ids are that hop's frontier, in order."""
    counts, hi, start = [], num_seeds, 0
    for _ in range(num_hops):
        end = int(np.searchsorted(cols, hi, side="left"))
        counts.append(end - start)
        new_hi = max(hi, int(rows[start:end].max()) + 1) if end > start else hi
        hi, start = new_hi, end
    return np.array(counts, np.int64)


def stats(edges: np.ndarray, input_nodes: int, num_batches: int) -> dict:
    return {"sampled_edges": int(edges.sum()),
            "mean_input_nodes": input_nodes / num_batches,
            "mean_edges_per_hop": (edges / num_batches).round(1).tolist()}


def rate(seconds: float, s: dict) -> float:
    return s["sampled_edges"] / seconds


def compare(args) -> dict:
    t0 = time.perf_counter()
    indptr, indices = build_graph(args.graph, args.scale, args.num_edges, args.seed)
    build_s = time.perf_counter() - t0
    gen = np.random.default_rng(args.seed + 1)
    candidates = np.flatnonzero(np.diff(indptr) > 0)
    seeds, offsets = cut_batches(gen.choice(candidates, args.batches * args.batch_size,
                                            replace=False), args.batch_size)
    fanouts = args.fanouts
    # warm up: compile (or load the cache) and touch the graph once
    sample_batches(indptr, indices, seeds[:64], np.array([0, 64], np.int64), fanouts, 0)
    sample_batches(indptr, indices, seeds[:64], np.array([0, 64], np.int64), fanouts, 0,
                   frontier_only=True)
    ours_f_s, ours_f = run_ours(indptr, indices, seeds, offsets, fanouts, args.key, args.group,
                                frontier_only=True, repeats=args.repeats)
    ours_d_s, ours_d = run_ours(indptr, indices, seeds, offsets, fanouts, args.key, args.group,
                                frontier_only=False, repeats=args.repeats)
    row64 = indices.astype(np.int64)
    ours_64_s, _ = run_ours(indptr, row64, seeds, offsets, fanouts, args.key, args.group,
                            frontier_only=True, repeats=args.repeats)
    run_peer(indptr, row64, seeds[:args.batch_size], offsets[:2], fanouts, 1)  # warm up
    peer_s, peer = run_peer(indptr, row64, seeds, offsets, fanouts, 1)
    peer2_s, _ = run_peer(indptr, row64, seeds, offsets, fanouts, 2)
    deviation = {
        "mean_input_nodes": ours_f["mean_input_nodes"] / peer["mean_input_nodes"] - 1,
        "mean_edges_per_hop": [o / p - 1 if p else 0.0 for o, p in
                               zip(ours_f["mean_edges_per_hop"], peer["mean_edges_per_hop"])],
    }
    worst = max([abs(deviation["mean_input_nodes"])] +
                [abs(d) for d in deviation["mean_edges_per_hop"]])
    return {
        "graph": args.graph, "num_nodes": int(indptr.size - 1), "num_edges": int(indices.size),
        "build_s": round(build_s, 1), "batches": int(offsets.size - 1),
        "batch_size": args.batch_size, "fanouts": fanouts, "group": args.group,
        "repeats": args.repeats, "numba_threads": numba.get_num_threads(),
        "ours_edges_per_s": round(rate(ours_f_s, ours_f)),
        "ours_int64_edges_per_s": round(rate(ours_64_s, ours_f)),
        "ours_dgl_edges_per_s": round(rate(ours_d_s, ours_d)),
        "peer_edges_per_s": round(rate(peer_s, peer)),
        "peer_2threads_edges_per_s": round(rate(peer2_s, peer)),
        "ratio": round(rate(ours_f_s, ours_f) / rate(peer_s, peer), 2),
        "ratio_vs_peer_2threads": round(rate(ours_f_s, ours_f) / rate(peer2_s, peer), 2),
        "ratio_dgl": round(rate(ours_d_s, ours_d) / rate(peer_s, peer), 2),
        "seconds": {"ours": round(ours_f_s, 3), "ours_dgl": round(ours_d_s, 3),
                    "peer": round(peer_s, 3), "peer_2threads": round(peer2_s, 3)},
        "stats": {"ours": ours_f, "ours_dgl": ours_d, "peer": peer},
        "stats_max_rel_deviation": round(worst, 4),
        "stats_agree": bool(worst < args.tolerance),
    }


MADVICE = {"random": mmap.MADV_RANDOM, "willneed": mmap.MADV_WILLNEED,
           "sequential": mmap.MADV_SEQUENTIAL}


def advise(array: np.ndarray, advice: int) -> None:
    """``madvise`` the pages of a memory-mapped array."""
    addr = array.ctypes.data
    start = addr - addr % mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(addr + array.nbytes - start),
                    advice) != 0:
        raise OSError(ctypes.get_errno(), "madvise failed")


def faults() -> tuple[int, int, float, float]:
    """(minor, major) page faults and (user, system) CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_majflt, r.ru_utime, r.ru_stime


def epoch(args) -> dict:
    """Sample one full epoch over a dataset's train ids (``--passes`` times), discarding the
    results; the CSR's open (crc check, read into memory) is timed apart."""
    from disktrain.storage.dataset import Dataset

    if args.cold:
        evict([Path(args.dataset) / name for name in ("indptr", "indices")])
    ds = Dataset(args.dataset, csr=args.csr)
    train = ds.split("train")
    ids = np.random.default_rng(args.seed).permutation(train)
    seeds, offsets = cut_batches(ids, args.batch_size)
    if args.seed_order == "sorted":
        for b in range(offsets.size - 1):
            seeds[offsets[b]:offsets[b + 1]].sort()
    epoch_batches = offsets.size - 1
    num_batches = min(epoch_batches, args.max_batches or epoch_batches)
    f0, t0 = faults(), time.perf_counter()
    indptr, indices = ds.indptr, ds.indices
    open_s, open_faults = time.perf_counter() - t0, np.subtract(faults(), f0)
    if args.madvise != "none":
        if ds.csr_in_memory:
            raise SystemExit("--madvise applies to a memory-mapped CSR (--csr map)")
        for a in (indptr, indices):
            advise(a, MADVICE[args.madvise])
    sample_batches(indptr, indices, seeds[:8], np.array([0, 8], np.int64), args.fanouts,
                   0, frontier_only=args.frontier_only)  # compile / load the cache
    passes = []
    for _ in range(args.passes):
        edges = nodes = 0
        f0, start = faults(), time.perf_counter()
        for g in range(0, num_batches, args.group):
            stop = min(g + args.group, num_batches)
            lo, hi = offsets[g], offsets[stop]
            res = sample_batches(indptr, indices, seeds[lo:hi], offsets[g:stop + 1] - lo,
                                 args.fanouts, args.key, frontier_only=args.frontier_only)
            edges += int(res.edge_offsets[-1])
            nodes += int(res.hop_counts[:, -1].sum())
            if args.progress:
                print(f"{min(g + args.group, num_batches)}/{num_batches} batches, "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - start
        minor, major, user, system = np.subtract(faults(), f0)
        passes.append({"seconds": round(seconds, 2), "edges_per_s": round(edges / seconds),
                       "user_s": round(user, 2), "sys_s": round(system, 2),
                       "minor_faults": int(minor), "major_faults": int(major),
                       "loadavg_1min": os.getloadavg()[0]})
    seconds = passes[0]["seconds"]
    return {"dataset": str(args.dataset), "num_nodes": int(indptr.size - 1),
            "num_edges": int(indices.size), "index_dtype": str(indices.dtype),
            "csr": args.csr, "csr_in_memory": ds.csr_in_memory, "cold": args.cold,
            "madvise": args.madvise, "seed_order": args.seed_order,
            "open_s": round(open_s, 2), "open_minor_faults": int(open_faults[0]),
            "open_major_faults": int(open_faults[1]), "open_cpu_s": round(open_faults[2:].sum(), 2),
            "train_ids": int(train.size), "epoch_batches": epoch_batches,
            "batches": num_batches,
            "batch_size": args.batch_size, "fanouts": args.fanouts, "group": args.group,
            "frontier_only": args.frontier_only, "numba_threads": numba.get_num_threads(),
            "seconds": seconds,
            "epoch_s": round(seconds * epoch_batches / num_batches, 2),
            "epoch_s_extrapolated": num_batches < epoch_batches, "sampled_edges": edges,
            "edges_per_s": passes[0]["edges_per_s"], "passes": passes,
            "mean_input_nodes": nodes / num_batches,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            **rss_now()}


def rss_now() -> dict:
    """Resident memory now, split into anonymous (ours) and file-backed (mapped CSR pages)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    try:
        lines = Path("/proc/self/smaps_rollup").read_text().splitlines()
    except OSError:
        lines = []
    fields.update(line.split(":", 1) for line in lines[1:] if ":" in line)
    return {f"{k.lower()}_gib": round(int(fields[k].split()[0]) / 2**20, 2)
            for k in ("RssAnon", "RssFile", "AnonHugePages", "FilePmdMapped") if k in fields}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graph", choices=("rmat", "uniform"), default="rmat")
    p.add_argument("--scale", type=int, default=21, help="2**scale nodes")
    p.add_argument("--num-edges", type=int, default=20_000_000)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--fanouts", type=lambda s: [int(x) for x in s.split(",")],
                   default=[15, 10, 5])
    p.add_argument("--group", type=int, default=8, help="batches per sample_batches call")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed passes of our sampler (best kept); the peer runs once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", type=int, default=12345)
    p.add_argument("--tolerance", type=float, default=0.03,
                   help="largest relative gap in size statistics still counted as agreeing")
    p.add_argument("--dataset", help="a disktrain dataset directory (with --epoch)")
    p.add_argument("--epoch", action="store_true",
                   help="sample one epoch over the dataset's train ids instead of comparing")
    p.add_argument("--frontier-only", action="store_true", help="with --epoch: PyG semantics")
    p.add_argument("--max-batches", type=int, default=0,
                   help="with --epoch: stop after this many batches and extrapolate (0: all)")
    p.add_argument("--csr", choices=RESIDENCIES, default="auto",
                   help="with --epoch: the CSR residency policy (disktrain.storage.residency)")
    p.add_argument("--cold", action="store_true",
                   help="with --epoch: evict the CSR files from the page cache first")
    p.add_argument("--madvise", choices=("none", *MADVICE), default="none",
                   help="with --epoch --csr map: advice for the mapped CSR")
    p.add_argument("--seed-order", choices=("shuffled", "sorted"), default="shuffled",
                   help="with --epoch: sort the seeds within each batch")
    p.add_argument("--passes", type=int, default=1, help="with --epoch: timed epochs")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.epoch != bool(args.dataset):
        p.error("--dataset and --epoch go together")
    print(json.dumps(epoch(args) if args.epoch else compare(args)), flush=True)


if __name__ == "__main__":
    main()
