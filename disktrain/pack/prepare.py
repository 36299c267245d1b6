"""`disktrain prepare` as library calls: the training batches, the evaluation batches, and
the fresh epochs training prepares ahead of itself (roots: :mod:`disktrain.storage.roots`)."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sys
import threading
from dataclasses import replace
from pathlib import Path

from disktrain.pack import PackConfig, PackedStore, pack_dataset, pack_roots
from disktrain.sample import SampleConfig, SampleStore, sample_dataset
from disktrain.storage.dataset import Dataset, TypedDataset
from disktrain.storage.lock import write_lock
from disktrain.storage.residency import mem_available
from disktrain.storage.roots import EVAL_SPLITS, epoch_root, eval_root


def eval_config(train: SampleConfig, split: str, batch_size: int | None = None) -> SampleConfig:
    """How ``split``'s seeds are batched for evaluation: the training fanouts, one epoch,
    ``batch_size`` seeds per batch (default: the training batch size)."""
    return replace(train, split=split, epochs=1, first_epoch=0,
                   batch_size=batch_size or train.batch_size)


def prepare_dataset(dataset_path: str | Path, sample_cfg: SampleConfig,
                    pack_cfg: PackConfig | None = None, *, evaluation: bool = True,
                    eval_batch_size: int | None = None, progress: bool = True
                    ) -> tuple[PackedStore, dict[str, PackedStore]]:
    """``disktrain prepare``: sample the training batches and (``evaluation``) the val and
    test batches, then pack them all in shared passes over the raw features (the eval stores
    with the training store's caches); return the training store and the eval stores.
    Holds the dataset's lock alone (:mod:`disktrain.storage.lock`): refused while another
    process reads the dataset."""
    dataset = Dataset(dataset_path)
    with write_lock(dataset.path, "prepare"):
        sample_dataset(dataset.path, sample_cfg, progress)
        # link prediction evaluates on exact embeddings (disktrain.infer), not node batches
        splits = _eval_splits(dataset) if evaluation and sample_cfg.task == "node" else []
        for split in splits:
            sample_dataset(dataset.path, eval_config(sample_cfg, split, eval_batch_size),
                           progress, root=eval_root(dataset.path, split))
        roots = [dataset.path, *(eval_root(dataset.path, s) for s in splits)]
        packed, *stores = pack_roots(dataset.path, roots, pack_cfg or PackConfig(), progress)
    return packed, dict(zip(splits, stores))


def prepare_eval(dataset_path: str | Path, batch_size: int | None = None,
                 progress: bool = True, run_sample=None, run_pack=None) -> dict[str, PackedStore]:
    """Sample the val and test seeds once and pack their rows, each under its eval root.

    They use the training fanouts and the training packed store's caches (its cache rows are
    linked, not copied; a loader shares them), so prepare the training batches first. A split
    without nodes is skipped. ``run_sample`` / ``run_pack``: the ``run_groups`` hooks of
    :func:`sample_dataset` / :func:`pack_dataset` (e.g. Ray tasks); without ``run_pack`` both
    splits are packed in shared passes over the raw features. Holds the dataset's lock alone,
    as :func:`prepare_dataset` does.
    """
    dataset = Dataset(dataset_path)
    with write_lock(dataset.path, "prepare"):
        train = SampleStore(dataset.path)
        packed = PackedStore(dataset.path)
        cfg = PackConfig(**packed.attrs["pack_config"])
        splits = _eval_splits(dataset)
        roots = [eval_root(dataset.path, split) for split in splits]
        for split, root in zip(splits, roots):
            sample_dataset(dataset.path, eval_config(train.config, split, batch_size), progress,
                           run_groups=run_sample, root=root)
        if run_pack is None:
            stores = pack_roots(dataset.path, roots, cfg, progress, tiers_from=packed)
        else:
            stores = [pack_dataset(dataset.path, cfg, progress, run_groups=run_pack, root=root,
                                   tiers_from=packed) for root in roots]
    return dict(zip(splits, stores))


def _eval_splits(dataset: Dataset) -> list[str]:
    """The evaluation splits that have nodes (a stale eval root of an empty one removed; a
    split the dataset lacks is said on stderr)."""
    splits = []
    for split in EVAL_SPLITS:
        if not dataset.has(split):
            print(f"disktrain: notice: {dataset.path} has no {split} split: no {split} "
                  f"evaluation batches prepared (training reports {split}_acc NaN)",
                  file=sys.stderr)
        if dataset.has(split) and len(dataset.split(split)):
            splits.append(split)
        elif eval_root(dataset.path, split).exists():
            shutil.rmtree(eval_root(dataset.path, split))
    return splits


def prepare_epoch(dataset_path: str | Path, run: str | Path, epoch: int,
                  progress: bool = False, group_bytes: int | None = None) -> Path:
    """Sample and pack training epoch ``epoch`` alone under its root in the run directory
    ``run`` (:func:`disktrain.storage.roots.new_run`); return the root.

    Its batches are those a training store sampled with more epochs would hold for
    ``epoch`` (same config, ``first_epoch=epoch``), packed with the training store's caches
    (``group_bytes``: at most this packing group memory instead of the store's).
    A finished root is returned as it is.
    """
    dataset = Dataset(dataset_path)
    train = SampleStore(dataset.path)
    packed = PackedStore(dataset.path)
    root = epoch_root(run, epoch)
    sample_dataset(dataset.path, replace(train.config, first_epoch=epoch, epochs=1), progress,
                   root=root)
    cfg = PackConfig(**packed.attrs["pack_config"])
    if group_bytes is not None:
        cfg = replace(cfg, group_bytes=min(cfg.group_bytes, group_bytes))
    pack_dataset(dataset.path, cfg, progress, root=root, tiers_from=packed)
    return root


NICE = 10
"""The niceness increment of the preparing process (:func:`_serve`): training's threads run
first."""


def background_group_bytes() -> int:
    """Packing group memory of an epoch prepared while training runs beside it: at most a
    third of the memory this process may still take (:func:`mem_available`, its cgroup's
    limit included), 64 MiB at least. A group's first-hop aggregates are held until its pass
    over the raw rows ends: the store's 1 GiB beside the trainer overran a 2.5 GiB memory
    limit (plain packing needs far less and keeps its one pass)."""
    return max(64 << 20, mem_available() // 3)


def serve_epochs(dataset_path: str | Path, run: str | Path, lines=sys.stdin,
                 out=sys.stdout) -> None:
    """Prepare each epoch number read from ``lines`` (one per line) with
    :func:`prepare_epoch` in ``run``, in packing groups of :func:`background_group_bytes`,
    the dataset's CSR loaded once for them all; answer one line ``EPOCH<TAB>ERROR`` per
    epoch (ERROR empty when done)."""
    group_bytes = background_group_bytes()  # once: later, this process's own heap counts
    held = None  # while epochs are prepared: each epoch's dataset shares this CSR in memory
    with contextlib.suppress(Exception):  # (each epoch meets an error again and answers it)
        dataset = Dataset(dataset_path)
        held = None if isinstance(dataset, TypedDataset) else dataset.indices
    for line in lines:
        epoch = int(line)
        try:
            prepare_epoch(dataset_path, run, epoch, group_bytes=group_bytes)
            error = ""
        except Exception as e:  # noqa: BLE001 - reported to the trainer as text
            error = f"{type(e).__name__}: {e}".replace("\n", " ")
        print(f"{epoch}\t{error}", file=out, flush=True)
    del held


def _serve(dataset_path: str, run: str) -> None:
    """The preparing process of a training run, ``python -m disktrain.pack.prepare
    --serve-epochs DATASET RUN`` (:mod:`disktrain.loader.fresh`): :func:`serve_epochs` at a
    lower CPU priority, in a process group of its own (Ctrl-C is the trainer's, which closes
    its input). It ends at once and quietly when its input does, whether the trainer
    closed it or died (a SIGKILL included): the epoch being prepared is abandoned with the
    run's directory, and no answer is written to a trainer that is gone."""
    os.nice(NICE)
    lines: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_watch, args=(sys.stdin, lines), daemon=True,
                     name="disktrain-trainer-watch").start()
    with contextlib.suppress(BrokenPipeError):  # answering a trainer that is gone
        serve_epochs(dataset_path, run, iter(lines.get, None))
    os._exit(0)


def _watch(stdin, lines: queue.SimpleQueue) -> None:
    """Pass the trainer's lines on to ``lines``; end the process when they end."""
    for line in stdin:
        lines.put(line)
    os._exit(0)


if __name__ == "__main__" and sys.argv[1:2] == ["--serve-epochs"]:
    _serve(sys.argv[2], sys.argv[3])
