"""Benchmark: the typed sampler against the homogeneous one on the same random graph.

The graph's edges are split at random into ``--relations`` relations between ``--types`` node
types (relation ``r``: src type ``(r // T) % T``, dst type ``r % T``); the homogeneous sampler
gets all of them as one CSR. Both get the same seeds and the same total fanout per node (each of
the ``R / T`` relations into a type takes ``fanout * T / R``). Prints one JSON line; the figure
is sampled edges per second (wall clock, and CPU time of all threads: steadier on a shared
machine), and their ratios.

    .venv/bin/python scripts/bench_typed_sampling.py                   # 1M nodes, 10M edges
    .venv/bin/python scripts/bench_typed_sampling.py --types 2 --relations 4 --frontier-only
"""

from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np

from disktrain.kernels.sampling import sample_batches
from disktrain.kernels.typed_sampling import sample_typed_batches


def csr(src: np.ndarray, dst: np.ndarray, num_dst: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(num_dst + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=num_dst), out=indptr[1:])
    return indptr, src[order].astype(np.int32)


def build(args):
    """(homogeneous CSR, typed graph): the same edges, in global and in type-local ids."""
    gen = np.random.default_rng(args.seed)
    num_types, num_rels = args.types, args.relations
    type_offsets = np.linspace(0, args.nodes, num_types + 1).astype(np.int64)
    rel_src = np.arange(num_rels) // num_types % num_types
    rel_dst = np.arange(num_rels) % num_types
    per_rel = args.edges // num_rels
    indptrs, indices, all_src, all_dst = [], [], [], []
    for s, d in zip(rel_src, rel_dst):
        src = gen.integers(0, type_offsets[s + 1] - type_offsets[s], per_rel)
        dst = gen.integers(0, type_offsets[d + 1] - type_offsets[d], per_rel)
        indptr, ind = csr(src, dst, type_offsets[d + 1] - type_offsets[d])
        indptrs.append(indptr)
        indices.append(ind)
        all_src.append(src + type_offsets[s])
        all_dst.append(dst + type_offsets[d])
    homogeneous = csr(np.concatenate(all_src), np.concatenate(all_dst), args.nodes)
    return homogeneous, (tuple(indptrs), tuple(indices), rel_src, rel_dst, type_offsets)


def timed(samplers: dict, seeds, offsets, group, repeats) -> dict:
    """Per sampler its best wall and CPU seconds (all threads) over ``repeats`` passes of
    ``group`` batches a call (the samplers take turns, so that both see the same load) and
    its sampled edges."""
    best, num_batches = {}, offsets.size - 1
    for _ in range(repeats):
        for name, sample in samplers.items():
            edges = 0
            wall, cpu = time.perf_counter(), time.process_time()
            for g in range(0, num_batches, group):
                lo, hi = offsets[g], offsets[min(g + group, num_batches)]
                edges += int(sample(seeds[lo:hi], offsets[g:g + group + 1] - lo).edge_offsets[-1])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            prev = best.get(name, {"seconds": wall, "cpu_s": cpu})
            wall, cpu = min(wall, prev["seconds"]), min(cpu, prev["cpu_s"])
            best[name] = {"seconds": round(wall, 3), "cpu_s": round(cpu, 3),
                          "sampled_edges": edges, "edges_per_s": round(edges / wall),
                          "edges_per_cpu_s": round(edges / cpu)}
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--edges", type=int, default=10_000_000)
    p.add_argument("--types", type=int, default=1)
    p.add_argument("--relations", type=int, default=4)
    p.add_argument("--fanouts", type=int, nargs="+", default=[8, 8, 4])
    p.add_argument("--batches", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--frontier-only", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    share = args.relations // args.types
    if args.relations % args.types or any(f % share for f in args.fanouts):
        raise SystemExit(f"--relations must be a multiple of --types and every fanout of "
                         f"relations/types = {share}")
    t0 = time.perf_counter()
    (indptr, indices), typed = build(args)
    build_s = time.perf_counter() - t0
    seeds = np.random.default_rng(args.seed + 1).permutation(args.nodes)[
        :args.batches * args.batch_size].astype(np.int64)
    offsets = np.arange(0, seeds.size + 1, args.batch_size, dtype=np.int64)
    rel_fanouts = np.repeat(np.array(args.fanouts)[:, None] // share, args.relations, 1)

    def homogeneous(s, o):
        return sample_batches(indptr, indices, s, o, args.fanouts, 1,
                              frontier_only=args.frontier_only)

    def typed_sample(s, o):
        return sample_typed_batches(*typed, s, o, rel_fanouts, 1,
                                    frontier_only=args.frontier_only)

    samplers = {"homogeneous": homogeneous, "typed": typed_sample}
    for sample in samplers.values():
        sample(seeds[:64], np.array([0, 64], np.int64))  # compile, or load the cache
    rates = timed(samplers, seeds, offsets, args.group, args.repeats)
    print(json.dumps({
        "nodes": args.nodes, "edges": int(indices.size), "types": args.types,
        "relations": args.relations, "fanouts": args.fanouts,
        "relation_fanouts": rel_fanouts[:, 0].tolist(), "batches": args.batches,
        "batch_size": args.batch_size, "group": args.group, "frontier_only": args.frontier_only,
        "numba_threads": numba.get_num_threads(), "build_s": round(build_s, 1), **rates,
        "homogeneous_over_typed_per_edge": round(rates["homogeneous"]["edges_per_s"] /
                                                 rates["typed"]["edges_per_s"], 2),
        "homogeneous_over_typed_per_edge_cpu": round(rates["homogeneous"]["edges_per_cpu_s"] /
                                                     rates["typed"]["edges_per_cpu_s"], 2)}))


if __name__ == "__main__":
    main()
