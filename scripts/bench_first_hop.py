"""First-hop aggregation at pack time: rows, bytes and compute per batch, before and after.

Usage: python scripts/bench_first_hop.py --dataset DIR [--aggregate mean] [--batches 8]
                                         [--repeats 3] [--threads N] [--out FILE]

On a dataset whose training batches are sampled (``disktrain prepare`` made DIR/samples; its
fanouts and batch size are used), packs the same batches twice, without and with
``--aggregate-first-hop`` (each pack timed, its store's rows and bytes recorded), and on the
first ``--batches`` of them, assembled beforehand, times the training step of the 2-layer mean
GraphSAGE (hidden 128; forward, backward and Adam step; the same initial parameters) against
its floor: the step's FLOPs, counted from its blocks as scripts/bench_compute.py counts them
(with the first layer, when aggregated, two projections of the targets' rows and no edge
sums), over the GFLOP/s ``torch.mm`` reaches on the first layer's shape with the same
threads. Also checks that the logits of the two agree (max abs difference). Prints one JSON
object (and writes it to ``--out``). DIR's packed store is re-made without aggregation at
the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_compute import _linear, matmul_gflops, sage_flops

from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import MiniBatch, PackedLoader
from disktrain.models.gnn import GNNConfig, build_model
from disktrain.pack import PackConfig, pack_dataset
from disktrain.train.threads import torch_threads


def flops(mb: MiniBatch, dims: list[int]) -> int:
    """FLOPs of one training step on ``mb`` in the cheaper order (the floor)."""
    if mb.x_agg is None:
        return sage_flops(mb.blocks, dims)["cheaper_order"]
    first = 2 * _linear(mb.x.shape[0], dims[0], dims[1], False)  # lin_self and lin_neigh
    return first + sage_flops(mb.blocks, dims, first=1)["cheaper_order"]


def run(path: Path, aggregate: str, batches: list[int], repeats: int, threads: int) -> dict:
    t = time.perf_counter()
    store = pack_dataset(path, PackConfig(aggregate_first_hop=aggregate), progress=False)
    pack_s = time.perf_counter() - t
    info = store.info()
    loader = PackedLoader(path, LoaderConfig(prefetch=2))
    ready = [MiniBatch(mb.index, x=mb.x.clone(), blocks=mb.blocks, labels=mb.labels,
                       x_agg=None if mb.x_agg is None else mb.x_agg.clone())
             for mb in loader(batches)]
    meta = loader.dataset.meta
    dims = [meta.feature_dim, 128, meta.num_classes]
    torch.manual_seed(0)
    model = build_model(GNNConfig(model="sage", in_dim=meta.feature_dim, hidden=128,
                                  num_classes=meta.num_classes, num_layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with torch.no_grad():
        logits = [model(mb.x, mb.blocks, mb.x_agg) for mb in ready]
    with torch_threads(threads):
        rate = matmul_gflops(ready[0].x.shape[0], dims[0], dims[1])
        times = []
        for _ in range(repeats):
            for mb in ready:
                s = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(mb.x, mb.blocks, mb.x_agg), mb.labels).backward()
                opt.step()
                times.append(time.perf_counter() - s)
    per_batch = sorted(times)[len(times) // 2]
    gflop = sum(flops(mb, dims) for mb in ready) / len(ready) / 1e9
    return {"aggregate": aggregate, "pack_s": round(pack_s, 2),
            "packed_rows": info["packed_rows"], "packed_bytes": info["packed_bytes"],
            "rows_per_batch": info["packed_rows"] / store.num_batches,
            "x_rows_per_batch": sum(mb.x.shape[0] for mb in ready) / len(ready),
            "step_s_per_batch": round(per_batch, 4), "gflop_per_batch": round(gflop, 3),
            "mm_gflops": round(rate, 1), "floor_s_per_batch": round(gflop / rate, 4),
            "over_floor": round(per_batch / (gflop / rate), 2)}, logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--aggregate", default="mean", choices=("mean",))
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    batches = list(range(args.batches))
    try:
        plain, want = run(args.dataset, "off", batches, args.repeats, args.threads)
        aggregated, got = run(args.dataset, args.aggregate, batches, args.repeats, args.threads)
    finally:
        pack_dataset(args.dataset, PackConfig(), progress=False)
    result = {"dataset": str(args.dataset), "batches": len(batches), "threads": args.threads,
              "plain": plain, "aggregated": aggregated,
              "logits_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(got, want)),
              "fewer_rows": round(plain["packed_rows"] / aggregated["packed_rows"], 2),
              "step_speedup": round(plain["step_s_per_batch"] /
                                    aggregated["step_s_per_batch"], 2)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
