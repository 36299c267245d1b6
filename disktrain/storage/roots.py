"""Where the prepared stores of a dataset live.

A *root* is a directory holding one sample store (``samples/``) and the packed store made
from it (``packed/``). A dataset directory has three kinds::

    DATASET/                      the training root: the epochs `disktrain prepare` sampled
        samples/  packed/
    DATASET/eval/val/             evaluation roots: the val and test seeds, sampled once
        samples/  packed/         and packed (they do not change between evaluations)
    DATASET/eval/test/
    DATASET/epochs/RUN/           a training run's fresh epochs (:func:`new_run`): its owner
        owner                     process (host, pid, start time), so that a later run
        e000003/                  removes the directory of a killed one; an epoch prepared
            samples/  packed/     while the previous one trains (deleted once trained)

A run given a directory of its own (``train --run-dir DIR``: a read-only dataset) keeps its
fresh epochs in ``DIR/epochs/RUN/`` instead; each run has its own ``RUN``, so runs on one
dataset never share one.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

from disktrain.storage.atomic import atomic_dir, is_temporary, owner, owner_gone
from disktrain.storage.chunkfile import StoreRef
from disktrain.storage.schema import group_attrs

EVAL_SPLITS = ("val", "test")
OWNER = "owner"
"""The file in a run's directory naming its owner process (``atomic.owner()``)."""


def train_root(dataset: str | Path) -> Path:
    return Path(dataset)


def eval_root(dataset: str | Path, split: str) -> Path:
    """The root of ``split``'s (val or test) packed evaluation batches."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    return Path(dataset) / "eval" / split


def runs_dir(base: str | Path) -> Path:
    """The directory of the runs' fresh epochs under ``base`` (a dataset or a run directory)."""
    return Path(base) / "epochs"


def epoch_root(run: str | Path, epoch: int) -> Path:
    """The root of fresh epoch ``epoch`` of the run whose directory is ``run``
    (:func:`new_run`)."""
    return Path(run) / f"e{epoch:06d}"


def new_run(base: str | Path) -> Path:
    """Make a directory for this process's fresh epochs, ``BASE/epochs/RUN``, naming this
    process in its owner file; first remove those of runs that are gone (said on stderr)."""
    parent = runs_dir(base)
    remove_stale_runs(parent)
    final = parent / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with atomic_dir(final) as tmp:
        (tmp / OWNER).write_text(owner())
    return final


def remove_stale_runs(parent: str | Path) -> list[Path]:
    """Remove the run directories in ``parent`` whose owner process is gone, or that have no
    owner file (an earlier disktrain's fresh epochs); return them."""
    removed = []
    for path in sorted(Path(parent).iterdir()) if Path(parent).is_dir() else []:
        if not path.is_dir() or is_temporary(path):
            continue  # temporaries are removed by their own sweep
        try:
            tag = (path / OWNER).read_text()
        except FileNotFoundError:
            tag = ""
        if tag and not owner_gone(tag):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        print(f"disktrain: removed stale run directory {path} (fresh epochs) left by a training "
              "run that is no longer running", file=sys.stderr)
    return removed


def is_prepared(root: str | Path) -> bool:
    """Whether ``root`` holds a complete packed store (and so its sample store); damaged
    metadata is a ``DataError`` naming it."""
    store = Path(root) / "packed"
    if not (store / "zarr.json").exists():
        return False
    ref = StoreRef("packed store", store, f"remove {store} and rerun disktrain prepare")
    return bool(group_attrs(store, ref).get("complete"))
