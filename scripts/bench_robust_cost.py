"""Aggregation time per step for every robust rule, with and without NNM, next to a plain mean.

Usage: python scripts/bench_robust_cost.py [--dims 1000000,10000000] [--workers 8,16] [--f 0]
                                           [--rules mean,median,...] [--repeats 3]
                                           [--device cpu|cuda] [--out FILE.json]

For each gradient size d and worker count n, a stack of n random gradients (float32) is
aggregated by every rule of disktrain.robust.AGGREGATORS (f = --f, default floor((n - 1) / 4)
so that every rule, Bulyan's n >= 4f + 3 included, accepts it), then again after NNM
pre-aggregation. "allreduce-mean" is the arithmetic a plain all-reduce of the same size
does on one rank: a sum of the n rows divided by n. Each time is the median of --repeats runs
after one warm-up run (on CUDA, synchronized). Prints one JSON document (and writes it to
--out): the machine's threads and device, then one record per (d, n, rule, pre-aggregation)
with seconds per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="1000000,10000000")
    ap.add_argument("--workers", default="8,16")
    ap.add_argument("--f", type=int, default=None,
                    help="Byzantine workers tolerated (default: floor((n - 1) / 4))")
    ap.add_argument("--rules", default=",".join(AGGREGATORS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
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
