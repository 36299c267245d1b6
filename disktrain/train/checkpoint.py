"""Atomic checkpoints: model, optimizer, epoch, batch cursor and RNG state."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

LATEST = "latest.pt"


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    """Write ``state`` to ``directory/latest.pt`` through a temporary file and a rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LATEST
    tmp = directory / f".{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | Path) -> dict | None:
    """The latest checkpoint in ``directory`` (tensors and plain values only), or None."""
    path = Path(directory) / LATEST
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
