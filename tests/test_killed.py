"""Killed runs: ``disktrain ingest`` and ``disktrain prepare`` are SIGKILLed at a random point
of their writing, then the same command is rerun: it succeeds, writes what a clean run
writes, and leaves no temporary behind (the rerun removes the killed run's).

Kill points are drawn at random (seeded) over the whole write, and, for prepare, also within
a few milliseconds of each partial store appearing, where it is laid out."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.pack import PackedStore
from disktrain.sample import SampleStore
from disktrain.storage.dataset import SPLITS, Dataset

pytestmark = pytest.mark.slow  # whole commands, killed and rerun

ROOT = Path(__file__).resolve().parents[1]
PREPARE = ("--fanouts", "5,5", "--batch-size", "128", "--epochs", "2", "--group-size", "2",
           "--cpu-cache-bytes", "16K", "--no-progress")


def disktrain(*args) -> list[str]:
    return [sys.executable, "-m", "disktrain", *map(str, args)]


def run_until(args: list[str], started: Callable[[], bool],
              kill_after: float | None = None) -> float:
    """Run ``args``; once ``started()`` holds, SIGKILL it after ``kill_after`` seconds, or
    (None) let it finish. Returns the seconds from ``started()`` to the end."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and not started():
            assert time.monotonic() < deadline, "the command never started writing"
            time.sleep(0.002)
        t0 = time.monotonic()
        if kill_after is None:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()[-3000:]
        else:
            time.sleep(kill_after)
            proc.kill()
            proc.wait(timeout=60)
        return time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def rerun(args: list[str]) -> None:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def temporaries(path: Path) -> list[Path]:
    return [p for pattern in ("*.tmp-*", "*.old-*") for p in path.rglob(pattern)]


# ingest

@pytest.fixture(scope="module")
def ingest_inputs(tmp_path_factory) -> tuple[list, Path, float]:
    """Input files, a clean run's dataset, and how long its writing took."""
    tmp = tmp_path_factory.mktemp("ingest")
    rng = np.random.default_rng(0)
    n = 20_000
    np.save(tmp / "edges.npy", rng.integers(0, n, (200_000, 2)))
    np.save(tmp / "x.npy", rng.standard_normal((n, 32)).astype(np.float32))
    np.save(tmp / "y.npy", rng.integers(0, 7, n))
    np.save(tmp / "train.npy", rng.permutation(n)[: n // 2])
    inputs = ["--edges", tmp / "edges.npy", "--features", tmp / "x.npy", "--labels",
              tmp / "y.npy", "--train", tmp / "train.npy", "--undirected", "--dedup",
              "--chunk-rows", "20000", "--overwrite", "--no-progress"]
    ref = tmp / "ref"
    took = run_until(disktrain("ingest", *inputs, "--out", ref),
                     lambda: any(tmp.glob("ref.tmp-*")))
    return inputs, ref, took


def dataset_arrays(path: Path) -> dict[str, np.ndarray]:
    ds = Dataset(path)
    out = {"indptr": np.array(ds.indptr), "indices": np.array(ds.indices),
           "features": np.asarray(ds.features[...]), "labels": np.array(ds.labels)}
    out.update({s: np.array(ds.split(s)) for s in SPLITS if ds.has(s)})
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_killed_ingest_reruns_to_clean_result(tmp_path, ingest_inputs, seed):
    inputs, ref, took = ingest_inputs
    args = disktrain("ingest", *inputs, "--out", tmp_path / "ds")
    delay = np.random.default_rng(seed).uniform(0, took)
    run_until(args, lambda: any(tmp_path.glob("ds.tmp-*")), kill_after=delay)
    rerun(args)
    want, got = dataset_arrays(ref), dataset_arrays(tmp_path / "ds")
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert temporaries(tmp_path) == []


# prepare

@pytest.fixture(scope="module")
def prepare_inputs(tmp_path_factory) -> tuple[Path, Path, float]:
    """A dataset, a clean prepare of a copy of it, and how long that prepare wrote."""
    tmp = tmp_path_factory.mktemp("prepare")
    data = synthesize(SynthConfig(out=tmp / "data", num_nodes=5000, feature_dim=16,
                                  progress=False))
    ref = tmp / "ref"
    shutil.copytree(data, ref)
    took = run_until(disktrain("prepare", ref, *PREPARE),
                     lambda: (ref / "samples.partial").exists())
    return data, ref, took


def assert_same_prepared(got: Path, want: Path) -> None:
    a, b = SampleStore(got), SampleStore(want)
    assert a.num_batches == b.num_batches
    np.testing.assert_array_equal(a.access_counts, b.access_counts)
    for i in range(a.num_batches):
        x, y = a.batch(i), b.batch(i)
        np.testing.assert_array_equal(x.input_nodes, y.input_nodes)
        assert x.num_seeds == y.num_seeds and len(x.blocks) == len(y.blocks)
        for bx, by in zip(x.blocks, y.blocks, strict=True):
            np.testing.assert_array_equal(bx[0], by[0])
            np.testing.assert_array_equal(bx[1], by[1])
            assert bx[2:] == by[2:]
    p, q = PackedStore(got), PackedStore(want)
    assert p.num_batches == q.num_batches and (p.n_gpu, p.n_cpu) == (q.n_gpu, q.n_cpu)
    np.testing.assert_array_equal(p.cache_rows(), q.cache_rows())
    for i in range(p.num_batches):
        np.testing.assert_array_equal(p.slots(i), q.slots(i))
        np.testing.assert_array_equal(p.read_packed(i), q.read_packed(i))


@pytest.mark.parametrize(("seed", "after", "within"), [
    (0, "samples.partial", None), (1, "samples.partial", 0.01), (2, "packed.partial", 0.01)])
def test_killed_prepare_reruns_to_clean_result(tmp_path, prepare_inputs, seed, after, within):
    """Killed at a random point ``within`` seconds (None: the clean run's writing time) of
    ``after`` appearing."""
    data, ref, took = prepare_inputs
    ds = tmp_path / "ds"
    shutil.copytree(data, ds)
    args = disktrain("prepare", ds, *PREPARE)
    delay = np.random.default_rng(seed).uniform(0, within or took)
    run_until(args, lambda: (ds / after).exists(), kill_after=delay)
    rerun(args)
    assert_same_prepared(ds, ref)
    assert temporaries(tmp_path) == []
