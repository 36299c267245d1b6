"""Aggregation time per step for every robust rule, with and without NNM, next to a plain mean.

Usage: python scripts/bench_robust_cost.py [--dims 1000000,10000000] [--workers 8,16] [--f 0]
                                           [--rules mean,median,...] [--repeats 3]
                                           [--device cpu|cuda] [--collectives]
                                           [--out FILE.json]

For each gradient size d and worker count n, a stack of n random gradients (float32) is
aggregated by every rule of disktrain.robust.AGGREGATORS (f = --f, default floor((n - 1) / 4)
so that every rule, Bulyan's n >= 4f + 3 included, accepts it), then again after NNM
pre-aggregation. "allreduce-mean" is the arithmetic a plain all-reduce of the same size
does on one rank: a sum of the n rows divided by n. With --collectives, n processes on this
machine (gloo over 127.0.0.1, one thread each) also time the communication itself: a plain
all-reduce of d floats (what the mean sends) and the all-gather of n x d that every robust rule
needs first (rank 0's times). Each time is the median of --repeats runs after one warm-up run
(on CUDA, synchronized). Prints one JSON document (and writes it to
--out): the machine's threads and device, then one record per (d, n, rule, pre-aggregation)
with seconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from disktrain.robust import AGGREGATORS, RobustConfig, aggregate


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `repeats` calls of fn after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(d: int, n: int, f: int, rules: list[str], repeats: int,
          device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(d + n)
    x = (torch.randn(d, generator=gen) + torch.randn(n, d, generator=gen)).to(device)
    records = [{"d": d, "n": n, "f": f, "rule": "allreduce-mean", "pre_aggregate": [],
                "seconds": timed(lambda: x.sum(dim=0).div_(n), repeats, device)}]
    for rule in rules:
        for chain in ((), ("nnm",)):
            cfg = RobustConfig(aggregator=rule, f=f, pre_aggregate=chain)
            seconds = timed(lambda cfg=cfg: aggregate(x, cfg), repeats, device)
            records.append({"d": d, "n": n, "f": f, "rule": rule, "pre_aggregate": list(chain),
                            "seconds": seconds})
            print(f"d={d} n={n} {rule}{' +nnm' if chain else ''}: {seconds * 1e3:.1f} ms",
                  flush=True)
    return records


def _collective_rank(rank: int, n: int, d: int, repeats: int, port: int, out: str) -> None:
    """One rank of :func:`collectives`: time all_reduce(d) and all_gather(n x d)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=n)
    try:
        x = torch.randn(d)
        rows = [torch.empty(d) for _ in range(n)]

        def step(fn):
            def run():
                dist.barrier()
                fn()
            return timed(run, repeats, torch.device("cpu"))

        reduce_s = step(lambda: dist.all_reduce(x))
        gather_s = step(lambda: dist.all_gather(rows, x))
        if rank == 0:
            Path(out).write_text(json.dumps([reduce_s, gather_s]))
    finally:
        dist.destroy_process_group()


def collectives(d: int, n: int, repeats: int) -> list[dict]:
    """Seconds of a gloo all-reduce of ``d`` floats and of the all-gather of ``n`` x ``d``
    among ``n`` processes of this machine (a barrier before each timed call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.start_processes(_collective_rank, args=(n, d, repeats, port, out), nprocs=n,
                           start_method="spawn")
        reduce_s, gather_s = json.loads(Path(out).read_text())
    for name, seconds in (("gloo all_reduce", reduce_s), ("gloo all_gather", gather_s)):
        print(f"d={d} n={n} {name}: {seconds * 1e3:.1f} ms", flush=True)
    return [{"d": d, "n": n, "f": None, "rule": "gloo-all-reduce", "pre_aggregate": [],
             "seconds": reduce_s},
            {"d": d, "n": n, "f": None, "rule": "gloo-all-gather", "pre_aggregate": [],
             "seconds": gather_s}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="1000000,10000000")
    ap.add_argument("--workers", default="8,16")
    ap.add_argument("--f", type=int, default=None,
                    help="Byzantine workers tolerated (default: floor((n - 1) / 4))")
    ap.add_argument("--rules", default=",".join(AGGREGATORS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--collectives", action="store_true",
                    help="also time a gloo all-reduce and all-gather among n local processes")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    rules = args.rules.split(",")
    if unknown := [r for r in rules if r not in AGGREGATORS]:
        ap.error(f"--rules: unknown {', '.join(unknown)}; choose from {', '.join(AGGREGATORS)}")
    device = torch.device(args.device)
    records = []
    for d in map(int, args.dims.split(",")):
        for n in map(int, args.workers.split(",")):
            f = (n - 1) // 4 if args.f is None else args.f
            records += bench(d, n, f, rules, args.repeats, device)
            if args.collectives:
                records += collectives(d, n, args.repeats)
    doc = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "torch": torch.__version__, "repeats": args.repeats, "results": records}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
