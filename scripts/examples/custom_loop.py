"""A plain PyTorch training loop on disktrain's loader, data-parallel under torchrun.

    disktrain synth --out g --nodes 20000 --feature-dim 32 --classes 8
    disktrain prepare g --fanouts 10,5 --batch-size 512
    torchrun --nproc_per_node=2 scripts/examples/custom_loop.py g --epochs 3

Each rank builds ``disktrain.Loader``s, which find torch.distributed initialised and give
every rank its own, equal share of each epoch's training batches (and a share of the val
batches); ``DistributedDataParallel`` averages the gradients. The model is disktrain's
GraphSAGE on the per-layer blocks (``model(batch.x, batch.blocks)``); any module taking
``batch.x, batch.edge_index`` works the same way. gloo on CPU, nccl on GPUs; without
torchrun it runs as one process. Rank 0 prints one JSON line per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import disktrain
from disktrain.models import ModelConfig, build_model


def evaluate(model: torch.nn.Module, loader: disktrain.Loader) -> float:
    """Accuracy over every rank's share of ``loader``'s batches."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            out = model(batch.x, batch.blocks)
            counts[0] += (out.argmax(1) == batch.y[:batch.batch_size]).sum().item()
            counts[1] += batch.batch_size
    if dist.is_initialized():
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Run under torchrun --nproc_per_node=N for N ranks.")
    ap.add_argument("dataset", help="a dataset prepared with `disktrain prepare`")
    ap.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    ap.add_argument("--hidden", type=int, default=64, help="(default: %(default)s)")
    ap.add_argument("--lr", type=float, default=0.01, help="(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
    torch.manual_seed(args.seed)  # the same initial weights on every rank

    train = disktrain.Loader(args.dataset, split="train", device=device, seed=args.seed,
                             epochs=args.epochs)
    val = disktrain.Loader(args.dataset, split="val", share=train)
    meta = train.dataset.meta
    arch = ModelConfig(model="sage", hidden=args.hidden)  # one layer per sampled hop:
    model = build_model(arch.sized(in_dim=meta.feature_dim, num_classes=meta.num_classes,
                                   num_layers=len(train.fanouts))).to(device)
    model = DistributedDataParallel(model) if dist.is_initialized() else model
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        train.set_epoch(epoch)  # a new order (and new samples) every epoch, on every rank
        model.train()
        start, total, steps = time.perf_counter(), 0.0, 0
        for batch in train:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(batch.x, batch.blocks), batch.y[:batch.batch_size])
            loss.backward()  # DDP all-reduces the gradients here
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        acc = evaluate(model.module if dist.is_initialized() else model, val)
        if rank == 0:
            print(json.dumps({"epoch": epoch, "batches_per_rank": steps,
                              "loss": round(total / max(steps, 1), 4), "val_acc": round(acc, 4),
                              "epoch_s": round(time.perf_counter() - start, 2)}), flush=True)
    train.close()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
