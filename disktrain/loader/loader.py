"""The public loader: a prepared dataset's mini-batches for any PyTorch or PyG model.

    import disktrain
    train = disktrain.Loader("papers", split="train", epochs=10)
    for epoch in range(10):
        train.set_epoch(epoch)
        for batch in train:
            out = model(batch.x, batch.edge_index)[:batch.batch_size]
            loss = F.cross_entropy(out, batch.y[:batch.batch_size])
    val = disktrain.Loader("papers", split="val")

Batches come through the same pipeline as ``disktrain train`` (packed reads, caches,
prefetching). Train batches are those ``disktrain prepare`` sampled, shuffled per epoch;
epochs beyond them are prepared afresh in the background (``plan_reuse="fresh"``) or reuse
them (``"cycle"``). Val and test batches are the packed evaluation batches. Under
torch.distributed each rank gets its own share of every epoch.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.distributed as dist

from disktrain.errors import DataError
from disktrain.loader.batch import Batch, MiniBatch
from disktrain.loader.config import LoaderConfig
from disktrain.loader.fresh import FreshEpochs
from disktrain.loader.pipeline import PackedLoader
from disktrain.loader.schedule import epoch_batches, worker_share
from disktrain.sample.plan import SPLITS
from disktrain.storage.dataset import Dataset
from disktrain.storage.objstore import is_url
from disktrain.storage.remote import stage
from disktrain.storage.roots import eval_root, is_prepared, train_root

STATE_VERSION = 1
PLAN_REUSE = ("fresh", "cycle", "pool")


def packed_bytes(store, batch_ids) -> dict[str, int]:
    """Bytes of packed feature rows batches ``batch_ids`` of ``store`` (a PackedSource) need,
    and the bytes their reads take from storage (whole chunks, crc and padding included)."""
    ids = np.asarray(batch_ids, np.int64)
    row = store.feature_dim * store.dtype.itemsize
    padded = store.batch_rows[ids + 1] - store.batch_rows[ids]
    return {"needed": int(store.batch_packed[ids].sum()) * row,
            "read": int((padded // store.chunk_rows).sum()) * store.chunk_stride}


class Loader:
    """Iterate the pre-sampled mini-batches of ``split`` of a prepared dataset (a directory,
    or an object-store URL, ``s3://bucket/prefix``, staged on this node first:
    :mod:`disktrain.storage.remote`).

    ``device``/``dtype``: where the batch tensors go (default: ``config.device``, "cpu"
    unless set) and the feature dtype (float32 by default, whatever is stored).
    ``shuffle``: a new seeded order every epoch (default: for train).
    ``rank``/``world_size``: this process's share (default: torch.distributed's when
    it is initialized, else everything); train shares are equal (the remainder is dropped),
    evaluation shares cover every batch. ``plan_reuse`` and ``epochs`` (the number of
    epochs that will run; bounds the fresh epochs prepared ahead): see the module docstring.
    ``prepare_ahead``: fresh epochs prepared ahead of the one iterated. ``max_batches``: at
    most this many batches per epoch (this rank's first). ``reuse_buffers``: on a CPU, let
    ``x`` share the loader's buffer (valid only until the next batch) instead of a copy of it.
    ``config``: the pipeline's settings. ``share``: another loader of the same dataset whose
    caches and labels this one uses (e.g. val next to train) instead of loading its own.
    ``aggregated``: accept batches packed with their first hop aggregated (``disktrain
    prepare --aggregate-first-hop``), which carry ``x_agg`` for a model that takes it (the
    first layer's targets in ``x``, the blocks above it) instead of the first hop's rows and
    edges; without it such a store is refused (a PyG model reading ``edge_index`` would
    silently lose a hop). ``run_dir``: where fresh epochs are prepared, in a directory of this
    loader's own removed at :meth:`close` (default: the dataset's; give a writable one for a
    read-only dataset).
    """

    def __init__(self, dataset_dir: str | Path, split: str = "train", *,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 shuffle: bool | None = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, plan_reuse: str = "fresh",
                 epochs: int | None = None, prepare_ahead: int = 1,
                 max_batches: int | None = None, reuse_buffers: bool = False,
                 config: LoaderConfig | None = None, share: Loader | None = None,
                 aggregated: bool = False, run_dir: str | Path | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if plan_reuse not in PLAN_REUSE:
            raise ValueError(f"plan_reuse must be one of {PLAN_REUSE}, got {plan_reuse!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None:
            distributed = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed \
                else (0, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        for name, value in (("prepare_ahead", prepare_ahead), ("max_batches", max_batches)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if is_url(dataset_dir):
            dataset_dir = stage(dataset_dir)
        self.dataset_dir, self.split = Path(dataset_dir), split
        self.run_dir = Path(run_dir) if run_dir is not None else self.dataset_dir
        self.dtype, self.seed = dtype, seed
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.rank, self.world_size = rank, world_size
        self.plan_reuse, self.epochs, self.reuse_buffers = plan_reuse, epochs, reuse_buffers
        self.prepare_ahead, self.max_batches = prepare_ahead, max_batches
        root = train_root(dataset_dir) if split == "train" else eval_root(dataset_dir, split)
        if split != "train" and not is_prepared(root):
            raise DataError(f"{root}: no packed {split} batches; run `disktrain prepare "
                            f"{dataset_dir}` (without --no-eval)")
        if share is not None:
            if (mine := Dataset(dataset_dir).dataset_id) != share.dataset.dataset_id:
                raise ValueError(f"share: the loader shared reads dataset {share.dataset_dir} "
                                 f"({share.dataset.dataset_id}), this one dataset {dataset_dir} "
                                 f"({mine}); share a loader of the same dataset, or none")
            self._source = share._source.sibling(root)
        else:
            cfg = config or LoaderConfig()
            if device is not None:
                cfg = replace(cfg, device=str(device))
            self._source = PackedLoader(dataset_dir, cfg, root=root)
        self.device = self._source.device
        if self.aggregate is not None and not aggregated:
            raise DataError(
                f"{root}: packed with --aggregate-first-hop {self.aggregate}: its batches carry "
                "the first layer's aggregate (x_agg), not the first hop's rows and edges a PyG "
                "model reads; pass Loader(..., aggregated=True) with a model that takes "
                "model(batch.x, batch.blocks, batch.x_agg) (disktrain's sage or gcn), or "
                "prepare without --aggregate-first-hop")
        samples = self._source.samples
        self.batches_per_epoch = samples.batches_per_epoch
        self.sampled_epochs = samples.num_batches // samples.batches_per_epoch
        self.epoch, self._cursor = 0, 0
        self._fresh: FreshEpochs | None = None
        self.prepare_wait_s = 0.0
        """Seconds the last epoch started waited for its fresh samples."""
        self.packed_bytes: dict[str, int] = {}
        """The packed bytes this rank's batches of the last epoch started need and read."""
        self._labels = (None if self._source.labels is None
                        else self._source.labels.numpy())

    @property
    def dataset(self):
        """The :class:`~disktrain.storage.dataset.Dataset` read."""
        return self._source.dataset

    @property
    def fanouts(self) -> tuple[int, ...]:
        """The sampled fanouts, first hop (from the seeds) first."""
        return self._source.samples.config.fanouts

    @property
    def task(self) -> str:
        """What the batches are: "node" (seed nodes) or "link" (edges and negatives)."""
        return self._source.samples.config.task

    @property
    def aggregate(self) -> str | None:
        """The first-hop aggregation the batches carry in ``x_agg`` (None: none)."""
        return self._source.packed.aggregate

    @property
    def tiers_id(self) -> str:
        """The identity of the cache rows the batches are read with (see docs/FORMAT.md)."""
        return self._source.packed.tiers_id

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next (its order and, for train, its samples)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self._cursor = epoch, 0

    def batch_ids(self, epoch: int | None = None) -> np.ndarray:
        """This rank's batches of ``epoch`` (default: the current one), in order: ids in
        the epoch's store."""
        epoch = self.epoch if epoch is None else epoch
        if self.split != "train":
            ids = np.arange(self.batches_per_epoch)
            if self.shuffle:
                ids = np.random.default_rng([self.seed, 1_000_003, epoch]).permutation(ids)
            return ids[self.rank::self.world_size][:self.max_batches]
        ids = epoch_batches(epoch, self.seed, self.sampled_epochs, self.batches_per_epoch,
                            self.plan_reuse)
        if not self.shuffle:
            ids = np.sort(ids)
        return worker_share(ids, self.rank, self.world_size)[:self.max_batches]

    def __len__(self) -> int:
        return len(self.batch_ids())

    def _is_fresh(self, epoch: int) -> bool:
        return (self.split == "train" and self.plan_reuse == "fresh"
                and epoch >= self.sampled_epochs)

    def _epoch_source(self, epoch: int) -> PackedLoader:
        """The packed loader of ``epoch``'s store (a fresh epoch's once it is prepared).

        Epochs ahead are prepared only when ``epochs`` says how many will run; without it a
        fresh epoch is prepared when it is asked for."""
        if self.split != "train" or self.plan_reuse != "fresh" or (
                self.epochs is not None and self.epochs <= self.sampled_epochs) or (
                self.epochs is None and not self._is_fresh(epoch)):
            return self._source
        if self._fresh is None:
            last = self.epochs if self.epochs is not None else epoch + 1
            self._fresh = FreshEpochs(self.dataset_dir, self.run_dir, self.sampled_epochs, last,
                                      self.prepare_ahead, self.rank == 0, self.device)
        self._fresh.last = max(self._fresh.last, epoch + 1)
        self._fresh.ahead_of(epoch + 1)
        if not self._is_fresh(epoch):
            return self._source
        return self._source.sibling(self._fresh.root(epoch))

    def __iter__(self):
        epoch = self.epoch
        t0 = time.perf_counter()
        source = self._epoch_source(epoch)
        self.prepare_wait_s = time.perf_counter() - t0
        ids = self.batch_ids(epoch)
        self.packed_bytes = packed_bytes(source.packed, ids)
        with closing(source(ids[self._cursor:])) as batches:
            for i, mb in enumerate(batches, start=self._cursor):
                self._cursor = i + 1  # the caller holds it: consumed
                yield self._batch(mb)
        self._cursor = 0
        if self._is_fresh(epoch) and self._fresh is not None:
            if self.world_size > 1 and dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank has read the epoch before it is deleted
            self._fresh.done(epoch)

    def _batch(self, mb: MiniBatch) -> Batch:
        # a typed batch's labels: its target type's nodes (global ids = the type's ids)
        labelled = mb.input_nodes if mb.n_id_dict is None else \
            next(iter(mb.n_id_dict.values())).cpu().numpy()
        y = (None if self._labels is None
             else torch.from_numpy(self._labels[labelled]).to(self.device))
        x_agg = None if mb.x_agg is None else self._own(mb.x_agg)
        batch = Batch.of(mb, self._own(mb.x), y, x_agg)
        if not self.reuse_buffers and mb.release is not None:
            mb.release()  # its rows are copied out: the pipeline may read the next batch in
        return batch

    def _own(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (features of a batch) in the loader's dtype, and not in the pipeline's buffer
        unless ``reuse_buffers``."""
        if x.dtype != self.dtype:
            return x.to(self.dtype)
        if x.device.type == "cpu" and not self.reuse_buffers:
            return x.clone()  # the pipeline reuses its buffer for a later batch
        return x

    def state_dict(self) -> dict:
        """Where iteration stands (epoch, batches consumed), to resume mid-epoch."""
        return {"version": STATE_VERSION, "split": self.split, "epoch": self.epoch,
                "cursor": self._cursor, "world_size": self.world_size, "seed": self.seed,
                "samples_id": self._source.samples.store_id}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the next iteration continues that epoch after its
        consumed batches. Refuses another version, split, seed, sample store or world size
        (the shares would differ)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}")
        mine = self.state_dict()
        for key in ("split", "world_size", "seed", "samples_id"):
            if state.get(key) != mine[key]:
                raise ValueError(f"loader state has {key} {state.get(key)!r}, this loader "
                                 f"{mine[key]!r}: resuming would change the batches")
        cursor = int(state["cursor"])
        if not 0 <= cursor <= len(self.batch_ids(int(state["epoch"]))):
            raise ValueError(f"loader state cursor {cursor} out of range")
        self.epoch, self._cursor = int(state["epoch"]), cursor

    def close(self) -> None:
        """Stop the background preparation of fresh epochs, if any, remove their directory,
        and release the dataset's lock (see :class:`PackedLoader`)."""
        if self._fresh is not None:
            self._fresh.close()
            self._fresh = None
        self._source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass
