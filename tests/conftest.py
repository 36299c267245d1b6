"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinygraphs import make_dataset

from disktrain.train.checkpoint import load_bytes, read_newest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def newest_checkpoint(directory) -> dict:
    """The newest checkpoint in ``directory`` that loads."""
    path, data = read_newest(directory)
    return load_bytes(data, path)


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "tiny")


@pytest.fixture
def cora_dir() -> Path:
    path = SHARED / "datasets" / "cora"
    if not path.exists():
        pytest.skip("shared/datasets/cora not present")
    return path
