"""Accuracy on the val and test splits: from their packed batches (read through the same
pipeline as training), or sampling neighborhoods online with the offline sampler's kernels.
"""

from __future__ import annotations

import sys
from contextlib import closing

import numpy as np
import torch
import torch.distributed as dist

from disktrain.checksum import CRC_BYTES
from disktrain.dataset import Dataset
from disktrain.errors import DataError
from disktrain.kernels.sampling import sample_batches
from disktrain.layout import EVAL_SPLITS, eval_root, is_prepared
from disktrain.models.block import Block
from disktrain.pipeline import PackedLoader
from disktrain.sample.plan import sampling_key
from disktrain.sample.store import unpack_batch
from disktrain.train.config import EVAL_MODES


class Evaluator:
    """Accuracy of a model on val and test, the way ``mode`` asks.

    packed: each split's packed batches (``disktrain prepare`` made them with the training
    store); online: neighborhoods sampled now, features read from the raw array; auto:
    packed where prepared, else online (with a warning when those batches were made with
    another training store).
    """

    def __init__(self, mode: str, loader: PackedLoader, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if mode not in EVAL_MODES:
            raise ValueError(f"eval mode must be one of {EVAL_MODES}, got {mode!r}")
        self.train, self.batch_size, self.seed = loader, batch_size, seed
        self.rank, self.world_size = rank, world_size
        dataset = loader.dataset
        self.packed: dict[str, PackedLoader] = {}
        stale = []
        for split in EVAL_SPLITS if mode != "online" else ():
            if len(dataset.split(split)) == 0:
                continue
            root = eval_root(dataset.path, split)
            if is_prepared(root):
                other = loader.sibling(root)
                if other.caches is loader.caches:  # made with this training store
                    self.packed[split] = other
                    continue
                stale.append(str(root))
            elif mode == "packed":
                stale.append(str(root))
        if stale and mode == "packed":
            raise DataError(f"no packed evaluation batches made with {dataset.path}'s training "
                            f"store in {', '.join(stale)}; run `disktrain prepare` (without "
                            "--no-eval) or train with --eval online")
        if stale and rank == 0:
            print(f"disktrain: warning: no packed evaluation batches made with this training "
                  f"store in {', '.join(stale)}: evaluating those splits online (slower; "
                  "`disktrain prepare` makes them)", file=sys.stderr)

    def mode(self, split: str) -> str:
        return "packed" if split in self.packed else "online"

    def packed_bytes(self) -> dict[str, int]:
        """What this rank's packed evaluation needs and reads (see ``packed_bytes``)."""
        out = {"needed": 0, "read": 0}
        for loader in self.packed.values():
            got = packed_bytes(loader.packed, range(self.rank, loader.num_batches,
                                                    self.world_size))
            out = {k: out[k] + got[k] for k in out}
        return out

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"val_acc": .., "test_acc": ..}`` (NaN for an empty split)."""
        out = {}
        for split in EVAL_SPLITS:
            if split in self.packed:
                acc = evaluate_packed(model, self.packed[split], self.rank, self.world_size)
            else:
                loader = self.train
                acc = evaluate(model, loader.dataset, split, loader.samples.config.fanouts,
                               self.batch_size, self.seed, loader.device, self.rank,
                               self.world_size)
            out[f"{split}_acc"] = acc
        return out


def packed_bytes(store, batch_ids) -> dict[str, int]:
    """Bytes of packed feature rows batches ``batch_ids`` of ``store`` (a PackedStore) need,
    and the bytes their reads take from storage (whole chunks: padding and crc included)."""
    ids = np.asarray(batch_ids, np.int64)
    row = store.feature_dim * store.dtype.itemsize
    padded = store.batch_rows[ids + 1] - store.batch_rows[ids]
    return {"needed": int(store.batch_packed[ids].sum()) * row,
            "read": int(padded.sum()) * row + int((padded // store.chunk_rows).sum()) * CRC_BYTES}


@torch.no_grad()
def evaluate_packed(model: torch.nn.Module, loader: PackedLoader, rank: int = 0,
                    world_size: int = 1) -> float:
    """Accuracy of ``model`` over every packed batch of ``loader`` (an eval root's).

    With ``world_size`` > 1 each rank evaluates every ``world_size``-th batch and the counts
    are summed over the process group.
    """
    total = len(loader.dataset.split(loader.samples.config.split))
    if total == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    with closing(loader(range(rank, loader.num_batches, world_size))) as batches:
        for mb in batches:
            pred = model(mb.x.float(), mb.blocks).argmax(dim=1)
            correct += (pred == mb.labels).sum()
    model.train(was_training)
    if world_size > 1:
        dist.all_reduce(correct)
    return int(correct) / total


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
