"""Smoke tests of the examples in scripts/examples/ at tiny size: each runs as a user runs it
(a subprocess; custom_loop.py under torchrun with 2 gloo ranks) and prints what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import prepare, torchrun

from disktrain.pack import PackConfig
from disktrain.sample import SampleConfig, SampleStore

EXAMPLES = Path(__file__).resolve().parents[1] / "scripts" / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _tiny_cora(path: Path, num_nodes: int = 300, classes: int = 4) -> Path:
    """Files in the layout of shared/datasets/cora (edges.parquet, features.npy, labels.npy,
    {train,val,test}_idx.npy), for a small random graph."""
    rng = np.random.default_rng(0)
    path.mkdir()
    src, dst = rng.integers(0, num_nodes, (2, 2000))
    pq.write_table(pa.table({"src": src, "dst": dst}), path / "edges.parquet")
    np.save(path / "features.npy", rng.standard_normal((num_nodes, 8)).astype(np.float32))
    np.save(path / "labels.npy", rng.integers(0, classes, num_nodes))
    order = rng.permutation(num_nodes)
    for split, ids in zip(("train", "val", "test"), np.split(order, [140, 200])):
        np.save(path / f"{split}_idx.npy", ids)
    return path


@pytest.mark.slow
def test_pyg_sage(tmp_path):
    pytest.importorskip("torch_geometric")
    cora = _tiny_cora(tmp_path / "cora")
    proc = _run([sys.executable, str(EXAMPLES / "pyg_sage.py"), "--cora", str(cora),
                 "--seeds", "2", "--epochs", "3"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model"] == "torch_geometric.nn.GraphSAGE"
    assert len(out["test_acc"]) == 2 and all(0.0 <= a <= 1.0 for a in out["test_acc"])
    assert out["mean_test_acc"] == pytest.approx(np.mean(out["test_acc"]), abs=1e-4)


@pytest.mark.slow
def test_pyg_link(tmp_path):
    pytest.importorskip("torch_geometric")
    cora = _tiny_cora(tmp_path / "cora")
    proc = _run([sys.executable, str(EXAMPLES / "pyg_link.py"), "--cora", str(cora),
                 "--epochs", "2"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model"] == "torch_geometric.nn.GraphSAGE"
    assert 0.0 < out["mrr"] <= 1.0 and 0.0 <= out["auc"] <= 1.0


@pytest.mark.dist
@pytest.mark.slow
def test_custom_loop_under_torchrun(tiny_dataset):
    prepare(tiny_dataset, SampleConfig(fanouts=(3, 2), batch_size=16, epochs=2), PackConfig(),
            evaluation=True)
    proc = torchrun(str(EXAMPLES / "custom_loop.py"), str(tiny_dataset), "--epochs", "2",
                    "--hidden", "8", timeout=120)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in records] == [0, 1]  # rank 0 alone prints
    per_rank = SampleStore(tiny_dataset).batches_per_epoch // 2
    assert all(r["batches_per_rank"] == per_rank for r in records)
    assert all(np.isfinite(r["loss"]) and 0.0 <= r["val_acc"] <= 1.0 for r in records)
