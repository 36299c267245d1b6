"""Accuracy on the val and test splits, one loop over either source of batches: their packed
batches (read through the same pipeline as training), or batches sampled online with the
offline sampler's kernels (:class:`OnlineBatches`; on a GPU, with their CUDA twins over a
device copy of the CSR when it fits: the same neighbors,
:func:`disktrain.loader.device.sample_on_device`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from disktrain.errors import DataError, check_min
from disktrain.kernels.sampling import SampledBatch, sample_batches
from disktrain.loader.batch import Batch, MiniBatch
from disktrain.loader.block import Block
from disktrain.loader.device import copy_to_device, sample_on_device
from disktrain.loader.loader import Loader
from disktrain.pack.store import packed_ref
from disktrain.sample.plan import sampling_key
from disktrain.storage.dataset import Dataset, TypedDataset
from disktrain.storage.roots import EVAL_SPLITS, eval_root
from disktrain.storage.schema import group_attrs

EVAL_MODES = ("auto", "packed", "online", "exact")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How and how often a training run evaluates val and test accuracy."""

    mode: str = "auto"
    """packed: their batches as `disktrain prepare` sampled and packed them, read through the
    training pipeline; online: sampled now, features read from the raw array; auto: packed
    where prepared, else online; exact: as auto during training, and after it the exact
    accuracy of the last checkpoint by layer-wise full-neighbourhood inference
    (``disktrain evaluate``, which the command line runs: the training function does not)."""
    every: int = 1
    """Evaluate every this many epochs (and after the last)."""
    batch_size: int = 4096
    """Seeds per batch of online evaluation."""

    def __post_init__(self) -> None:
        if self.mode not in EVAL_MODES:
            raise ValueError(f"EvalConfig.mode must be one of {EVAL_MODES}, got {self.mode!r}")
        check_min(self, 1, "every", "batch_size", owner="EvalConfig.")

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether to evaluate after epoch ``epoch`` of ``epochs``."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs


class Evaluator:
    """Accuracy of a model on val and test, the way ``cfg.mode`` asks.

    packed: each split's packed batches (``disktrain prepare`` made them with the training
    store), read by :class:`~disktrain.loader.loader.Loader` with the training loader's caches;
    online: neighborhoods sampled now (seeded by ``seed``), features read from the raw array;
    auto: packed where prepared, else online (with a warning when those batches were made with
    another training store).
    """

    def __init__(self, cfg: EvalConfig, train: Loader, seed: int):
        mode = cfg.mode
        self.train, self.batch_size, self.seed = train, cfg.batch_size, seed
        self._graph: tuple[torch.Tensor, torch.Tensor] | None | bool = False  # not made yet
        dataset = train.dataset
        self.packed: dict[str, Loader] = {}
        stale = []
        for split in EVAL_SPLITS if mode != "online" else ():
            if not dataset.has(split) or len(dataset.split(split)) == 0:
                continue
            root = eval_root(dataset.path, split)
            tiers = _tiers_from(root)
            if tiers == train.tiers_id:
                self.packed[split] = Loader(dataset.path, split, rank=train.rank,
                                            world_size=train.world_size, share=train,
                                            reuse_buffers=True, aggregated=True)
            elif tiers is not None or mode == "packed":
                stale.append(str(root))
        if stale and mode == "packed":
            raise DataError(f"no packed evaluation batches made with {dataset.path}'s training "
                            f"store in {', '.join(stale)}; run `disktrain prepare` (without "
                            "--no-eval) or train with --eval online")
        if stale and train.rank == 0:
            print(f"disktrain: warning: no packed evaluation batches made with this training "
                  f"store in {', '.join(stale)}: evaluating those splits online (slower; "
                  "`disktrain prepare` makes them)", file=sys.stderr)

    def mode(self, split: str) -> str:
        return "packed" if split in self.packed else "online"

    def packed_bytes(self) -> dict[str, int]:
        """What this rank's packed evaluation needs and reads (see ``packed_bytes``)."""
        out = {"needed": 0, "read": 0}
        for loader in self.packed.values():
            out = {k: out[k] + loader.packed_bytes.get(k, 0) for k in out}
        return out

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"val_acc": .., "test_acc": ..}`` (NaN for an empty or missing split)."""
        out = {}
        train = self.train
        for split in EVAL_SPLITS:
            if split in self.packed:  # each rank its share of the batches, counts summed
                loader = self.packed[split]
                acc = accuracy(model, loader, len(loader.dataset.split(split)), loader.device,
                               loader.world_size)
            elif not train.dataset.has(split):  # (e.g. PyG data without its mask)
                acc = float("nan")
            else:
                if isinstance(train.dataset, TypedDataset):
                    raise DataError(f"{train.dataset.path}: a typed graph is evaluated on "
                                    f"packed {split} batches only; run `disktrain prepare` "
                                    "(without --no-eval) after the training batches")
                if self._graph is False:
                    self._graph = device_graph(train.dataset, train.device)
                acc = evaluate(model, train.dataset, split, train.fanouts, self.batch_size,
                               self.seed, train.device, train.rank, train.world_size,
                               graph=self._graph)
            out[f"{split}_acc"] = acc
        return out


def _tiers_from(root: Path) -> str | None:
    """The tiers id the complete packed store at ``root`` was made with (None: none there)."""
    path = root / "packed"
    if not (path / "zarr.json").exists():
        return None
    attrs = group_attrs(path, packed_ref(path))
    return (attrs.get("tiers_from") or attrs.get("store_id")) if attrs.get("complete") else None


def evaluate(model: torch.nn.Module, dataset: Dataset, split: str, fanouts: tuple[int, ...],
             batch_size: int, seed: int, device: torch.device, rank: int = 0,
             world_size: int = 1, graph: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> float:
    """Accuracy of ``model`` on ``split``, sampled now (:class:`OnlineBatches`): each rank
    evaluates every ``world_size``-th node, the counts summed over the process group."""
    batches = OnlineBatches(dataset, split, fanouts, batch_size, seed, device, rank, world_size,
                            graph)
    return accuracy(model, batches, len(dataset.split(split)), device, world_size)


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches, total: int, device: torch.device,
             world_size: int) -> float:
    """The share of the ``total`` seeds of a split that ``model`` labels right, over this
    rank's ``batches`` (:class:`~disktrain.loader.batch.Batch`; the counts of the process
    group's ``world_size`` ranks summed); NaN for an empty split."""
    if total == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for batch in batches:
        pred = model(*batch.inputs).argmax(dim=1)
        correct += (pred == batch.seed_labels).sum()
    model.train(was_training)
    if world_size > 1:
        dist.all_reduce(correct)
    return int(correct) / total


class OnlineBatches:
    """This rank's batches of ``split`` sampled now, as the Loader yields them
    (:class:`~disktrain.loader.batch.Batch`): every ``world_size``-th seed from ``rank``, in
    order, ``batch_size`` per batch, sampled by the offline sampler's kernels with the key of
    ``seed`` (or by their device twins over ``graph``, ``(indptr, indices)`` tensors from
    :func:`device_graph`: the same samples); features read from the raw array."""

    def __init__(self, dataset: Dataset, split: str, fanouts: tuple[int, ...], batch_size: int,
                 seed: int, device: torch.device, rank: int = 0, world_size: int = 1,
                 graph: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.dataset, self.fanouts, self.batch_size = dataset, fanouts, batch_size
        self.device, self.graph, self.key = device, graph, sampling_key(seed, 1 << 30)
        self.seeds = np.asarray(dataset.split(split), np.int64)[rank::world_size]
        self.labels = np.asarray(dataset.labels)

    def __iter__(self):
        for index, start in enumerate(range(0, len(self.seeds), self.batch_size)):
            sampled = self._sample(self.seeds[start:start + self.batch_size], index)
            nodes = sampled.input_nodes
            uniq, inverse = np.unique(nodes, return_inverse=True)
            x = torch.from_numpy(self.dataset.gather_sorted(uniq)[inverse]).to(self.device)
            degree = self.dataset.in_degrees(nodes)
            blocks = [Block.from_numpy(*block, degree).to(self.device)
                      for block in sampled.blocks]
            y = torch.from_numpy(self.labels[nodes]).to(self.device)
            mb = MiniBatch(index, x=x.float(), blocks=blocks, input_nodes=nodes)
            yield Batch.of(mb, y=y)

    def _sample(self, seeds: np.ndarray, index: int) -> SampledBatch:
        """Batch ``index``, of ``seeds``: by the CPU kernels, or the device ones."""
        if self.graph is None:
            return sample_batches(self.dataset.indptr, self.dataset.indices, seeds,
                                  np.array([0, len(seeds)], np.int64),
                                  np.asarray(self.fanouts, np.int64), self.key).batch(0, index)
        indptr, indices = self.graph
        s = sample_on_device(indptr, indices, torch.from_numpy(seeds).to(indptr.device),
                             self.fanouts, self.key)
        return SampledBatch(s.nodes.cpu().numpy(), np.asarray(s.hop_counts),
                            s.edge_src.cpu().numpy(), s.edge_dst.cpu().numpy(),
                            np.asarray(s.edge_offsets), index)


DEVICE_GRAPH_SHARE = 0.5
"""Online evaluation samples on the GPU when the CSR takes at most this share of its free
memory."""


def device_graph(dataset: Dataset, device: torch.device, force: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The dataset's CSR ``(indptr, indices)`` copied to ``device`` (in 64 MiB slices) for
    sampling there: on a GPU where it takes at most :data:`DEVICE_GRAPH_SHARE` of the free
    memory (``force``: on any device, e.g. a CPU to run the kernels' twins); else None."""
    if not force:
        if device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(device)
        if dataset.indptr.nbytes + dataset.indices.nbytes > DEVICE_GRAPH_SHARE * free:
            return None
    return tuple(copy_to_device(a, device) for a in (dataset.indptr, dataset.indices))
