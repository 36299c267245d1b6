"""Accuracy on a split, sampling neighborhoods online with the offline sampler's kernels."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from disktrain.dataset import Dataset
from disktrain.kernels.sampling import sample_batches
from disktrain.models.block import Block
from disktrain.sample.plan import sampling_key
from disktrain.sample.store import unpack_batch


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, split: str, fanouts: tuple[int, ...],
             batch_size: int, seed: int, device: torch.device, rank: int = 0,
             world_size: int = 1) -> float:
    """Accuracy of ``model`` on ``split`` (features read from the raw array, in order).

    With ``world_size`` > 1 each rank evaluates every ``world_size``-th node and the counts
    are summed over the process group.
    """
    everything = np.asarray(dataset.split(split), np.int64)
    if len(everything) == 0:
        return float("nan")
    ids = everything[rank::world_size]
    was_training = model.training
    model.eval()
    correct = 0
    labels = np.asarray(dataset.labels)
    for start in range(0, len(ids), batch_size):
        seeds = ids[start:start + batch_size]
        out = sample_batches(dataset.indptr, dataset.indices, seeds,
                             np.array([0, len(seeds)], np.int64),
                             np.asarray(fanouts, np.int64), sampling_key(seed, 1 << 30))
        batch = unpack_batch(vars(out), 0, 0)
        uniq, inverse = np.unique(batch.input_nodes, return_inverse=True)
        x = torch.from_numpy(dataset.gather_sorted(uniq)[inverse]).to(device).float()
        degree = dataset.in_degrees(batch.input_nodes)
        blocks = [Block.from_numpy(s, d, ns, nd, degree).to(device)
                  for s, d, ns, nd in batch.blocks]
        pred = model(x, blocks).argmax(dim=1).cpu().numpy()
        correct += int((pred == labels[seeds]).sum())
    model.train(was_training)
    if world_size > 1:
        counts = torch.tensor([correct], dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        correct = int(counts.item())
    return correct / len(everything)
