"""Where the prepared stores of a dataset live.

A *root* is a directory holding one sample store (``samples/``) and the packed store made
from it (``packed/``). A dataset directory has three kinds::

    DATASET/                      the training root: the epochs `disktrain prepare` sampled
        samples/  packed/
    DATASET/eval/val/             evaluation roots: the val and test seeds, sampled once
        samples/  packed/         and packed (they do not change between evaluations)
    DATASET/eval/test/
    DATASET/epochs/e000003/       a fresh epoch prepared while the previous one trains
        samples/  packed/         (deleted once trained)
"""

from __future__ import annotations

from pathlib import Path

EVAL_SPLITS = ("val", "test")


def train_root(dataset: str | Path) -> Path:
    return Path(dataset)


def eval_root(dataset: str | Path, split: str) -> Path:
    """The root of ``split``'s (val or test) packed evaluation batches."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    return Path(dataset) / "eval" / split


def epoch_root(dataset: str | Path, epoch: int) -> Path:
    """The root of fresh epoch ``epoch``, prepared during training."""
    return Path(dataset) / "epochs" / f"e{epoch:06d}"


def is_prepared(root: str | Path) -> bool:
    """Whether ``root`` holds a complete packed store (and so its sample store)."""
    import zarr

    meta = Path(root) / "packed" / "zarr.json"
    if not meta.exists():
        return False
    return bool(zarr.open_group(meta.parent, mode="r").attrs.get("complete"))
