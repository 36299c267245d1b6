"""Atomic checkpoints: model, optimizer, epoch, batch cursor and RNG state."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from disktrain.atomic import atomic_write_bytes

LATEST = "latest.pt"


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    """Write ``state`` to ``directory/latest.pt`` through a temporary file and a rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(directory / LATEST, buf.getvalue())
    return directory / LATEST


def load_checkpoint(directory: str | Path) -> dict | None:
    """The latest checkpoint in ``directory`` (tensors and plain values only), or None."""
    path = Path(directory) / LATEST
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
