"""Shared fixtures; the helpers they share with the tests are in helpers.py."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

# Numba sizes its thread pool when first imported, one thread per core by default: two at
# least, so that the tests comparing one thread with several do so on a single core too (they
# skip where NUMBA_NUM_THREADS=1 was asked for).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
os.environ.setdefault("NUMBA_NUM_THREADS", str(max(2, CORES or 1)))

import pytest
from helpers import RAY_PACK, RAY_SAMPLE, assert_no_ray_left, prepare, uncached_reads
from tinygraphs import make_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "tiny")


@pytest.fixture
def prepared(tiny_dataset) -> Path:
    """:func:`tiny_dataset`, sampled and packed by :func:`helpers.prepare`'s defaults."""
    prepare(tiny_dataset)
    return tiny_dataset


@pytest.fixture
def cora_dir() -> Path:
    path = SHARED / "datasets" / "cora"
    if not path.exists():
        pytest.skip("shared/datasets/cora not present")
    return path


@pytest.fixture(scope="session")
def uncached_root(tmp_path_factory) -> Path | None:
    """The first of pytest's temporary directory, /var/tmp and the repository's disk whose
    files are read past the page cache (``O_DIRECT``), or None."""
    for root in (tmp_path_factory.getbasetemp(), Path("/var/tmp"), REPO):
        if os.access(root, os.W_OK) and uncached_reads(root):
            return root
    return None


@pytest.fixture
def uncached_tmp(uncached_root) -> Path:
    """A temporary directory whose files are read past the page cache; skips where no
    filesystem here does that (tmpfs everywhere)."""
    if uncached_root is None:
        pytest.skip("no filesystem here reads past the page cache (O_DIRECT): "
                    "the temporary directory, /var/tmp and the repository are all in memory")
    path = Path(tempfile.mkdtemp(prefix="disktrain-direct-", dir=uncached_root))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """An S3 API server on 127.0.0.1 (moto), for the session; skips without moto."""
    pytest.importorskip("moto.server", reason="moto[server] (the dev extra) is not installed")
    from objstore import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """A fresh bucket on :func:`s3_server`, this test's environment pointing at it and a stage
    directory of its own; yields ``s3://BUCKET``."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DISKTRAIN_STAGE_DIR", str(tmp_path / "stage"))
    return f"s3://{s3_server.new_bucket()}"


# Ray

@pytest.fixture(scope="session")
def ray_env():
    """Loopback, RAY_TMPDIR (short: Ray's socket paths must stay under 108 bytes), a token:
    one for the session (a Ray started in this process keeps the first token it read)."""
    from disktrain.cluster.head import LOOPBACK_ENV

    root = Path(tempfile.mkdtemp(prefix="dtray", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        # read when Ray is first imported (by the fixtures and tests below): loopback only
        for key, value in LOOPBACK_ENV.items():
            mp.setenv(key, value)
        mp.setenv("RAY_TMPDIR", str(root))
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        mp.setenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        yield root
    try:
        assert_no_ray_left(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(ray_env):
    """Two Ray nodes of 2 CPUs each on this machine, and this process connected."""
    import ray
    from ray.cluster_utils import Cluster

    from disktrain.cluster.head import LOOPBACK

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": LOOPBACK, "include_dashboard": False})
    try:
        c.add_node(num_cpus=2, node_ip_address=LOOPBACK)
        ray.init(address=c.address)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def ray_prepared(tmp_path_factory) -> Path:
    """A tiny dataset prepared in this process with :data:`helpers.RAY_SAMPLE` and
    :data:`helpers.RAY_PACK` (the reference for Ray's preparation)."""
    path = make_dataset(tmp_path_factory.mktemp("ray") / "tiny")
    prepare(path, RAY_SAMPLE, RAY_PACK)
    return path


def pytest_collection_modifyitems(config, items):
    """The files holding Ray tests first, then those holding other slow tests, each file's
    tests in their order: a parallel run (``-n auto --dist loadfile --no-loadscope-reorder``,
    a file per worker, in this order) starts its longest files first and ends on short ones,
    instead of one worker finishing a Ray file alone."""
    def rank(item) -> int:
        return 0 if item.get_closest_marker("ray") else 1 if item.get_closest_marker("slow") else 2

    first: dict[str, int] = {}
    for item in items:
        first[item.path] = min(first.get(item.path, 2), rank(item))
    items.sort(key=lambda item: first[item.path])
