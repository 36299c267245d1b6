"""build_csr against scipy.sparse on random graphs, with budgets that fill the rows in one,
two or many ranges; the range plan against a table."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numba
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from helpers import needs_two_threads
from hypothesis import given, settings
from hypothesis import strategies as st

from disktrain.ingest.csr import CSRConfig, build_csr, plan_groups
from disktrain.storage.dataset import open_flat_array

LAYOUTS = ({"bucket_rows": 1, "memory_bytes": 1}, {"bucket_rows": 2, "memory_bytes": 40},
           {"bucket_rows": 4, "memory_bytes": 1 << 20}, {})
"""A bucket per row read one at a time, buckets of a few rows read in groups, one bucket."""


def scipy_csr(src: np.ndarray, dst: np.ndarray, num_nodes: int,
              cfg: CSRConfig) -> tuple[np.ndarray, np.ndarray]:
    """Expected (indptr, indices): rows = dst, sorted sources, repeats kept unless dedup."""
    if cfg.drop_self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    rows, cols = dst, src
    if cfg.undirected:
        rows, cols = np.concatenate([dst, src]), np.concatenate([src, dst])
    m = sp.coo_matrix((np.ones(rows.size, np.int64), (rows, cols)),
                      shape=(num_nodes, num_nodes)).tocsr()
    m.sum_duplicates()
    m.sort_indices()
    if cfg.dedup:
        return m.indptr.astype(np.int64), m.indices
    counts = m.data  # multiplicity of each (row, col): expand back to a sorted multiset
    degrees = np.asarray(m.sum(axis=1)).ravel()
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    return indptr, np.repeat(m.indices, counts)


def build(src, dst, num_nodes, cfg, chunk) -> tuple[np.ndarray, np.ndarray, int, list]:
    with tempfile.TemporaryDirectory() as tmp:
        group = zarr.open_group(tmp, mode="w")

        def chunks():
            for a in range(0, src.size, chunk):
                yield src[a:a + chunk], dst[a:a + chunk]

        num_edges = build_csr(group, chunks, num_nodes, src.size, cfg)
        indptr = np.array(open_flat_array(tmp, "indptr", verify=True))
        indices = np.array(open_flat_array(tmp, "indices", verify=True))
        np.testing.assert_array_equal(zarr.open_array(f"{tmp}/indices")[...], indices)
        leftovers = sorted(p.name for p in Path(tmp).iterdir())
    return indptr, indices, num_edges, leftovers


graphs = st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60)))


@settings(max_examples=120, deadline=None)
@given(graph=graphs, undirected=st.booleans(), dedup=st.booleans(),
       drop_self_loops=st.booleans(), chunk=st.integers(1, 16),
       layout=st.sampled_from(LAYOUTS))
def test_build_csr_matches_scipy(graph, undirected, dedup, drop_self_loops, chunk, layout):
    num_nodes, pairs = graph
    edges = np.array(pairs, np.int64).reshape(-1, 2)
    src, dst = edges[:, 0].copy(), edges[:, 1].copy()
    cfg = CSRConfig(undirected=undirected, dedup=dedup, drop_self_loops=drop_self_loops,
                    progress=False, **layout)
    indptr, indices, num_edges, leftovers = build(src, dst, num_nodes, cfg, chunk)
    want_indptr, want_indices = scipy_csr(src, dst, num_nodes, cfg)
    np.testing.assert_array_equal(indptr, want_indptr)
    np.testing.assert_array_equal(indices, want_indices)
    assert num_edges == indices.size == indptr[-1]
    assert indices.dtype == np.int32
    assert leftovers == ["indices", "indptr", "zarr.json"]  # no "_indices_build" left


def test_build_csr_all_edges_dropped():
    """Only self loops, dropped: an empty but valid CSR."""
    src = dst = np.arange(5, dtype=np.int64)
    for dedup in (False, True):
        cfg = CSRConfig(drop_self_loops=True, dedup=dedup, progress=False)
        indptr, indices, num_edges, _ = build(src, dst, 5, cfg, 2)
        assert num_edges == 0 and indices.size == 0
        np.testing.assert_array_equal(indptr, np.zeros(6, np.int64))


@pytest.mark.parametrize("layout", LAYOUTS[1:] + ({"bucket_rows": 64, "memory_bytes": 5000},))
@pytest.mark.parametrize("dedup", [False, True])
@needs_two_threads
def test_build_csr_larger_graph_any_layout_and_threads(layout, dedup):
    """Skewed degrees, repeats, self loops; 1 and 2 threads (chunk slices, buckets)."""
    rng = np.random.default_rng(7)
    num_nodes = 500
    src = (rng.pareto(1.5, 6000) * 20).astype(np.int64) % num_nodes
    dst = rng.integers(0, num_nodes, 6000)
    cfg = CSRConfig(undirected=True, dedup=dedup, drop_self_loops=dedup, progress=False,
                    **layout)
    want_indptr, want_indices = scipy_csr(src, dst, num_nodes, cfg)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            indptr, indices, num_edges, _ = build(src, dst, num_nodes, cfg, 777)
            np.testing.assert_array_equal(indptr, want_indptr)
            np.testing.assert_array_equal(indices, want_indices)
            assert num_edges == want_indices.size
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize(("bucket_edges", "edge_bytes", "memory_bytes", "want"), [
    ([5, 5, 5, 5], 6, 1 << 20, [(0, 4)]),              # all in one group
    ([5, 5, 5, 5], 6, 60, [(0, 2), (2, 4)]),            # 2 buckets = 60 bytes
    ([5, 5, 5, 5], 6, 59, [(0, 1), (1, 2), (2, 3), (3, 4)]),
    ([100, 0, 0, 1], 6, 64, [(0, 1), (1, 4)]),          # a bucket over budget: alone
    ([0, 0, 0], 6, 1, [(0, 3)]),                        # empty buckets cost nothing
    ([1, 2, 3], 12, 36, [(0, 2), (2, 3)]),              # int64 ids
    ([], 6, 10, []),
])
def test_plan_groups(bucket_edges, edge_bytes, memory_bytes, want):
    assert plan_groups(np.array(bucket_edges, np.int64), edge_bytes, memory_bytes) == want


@pytest.mark.parametrize("bad", [{"memory_bytes": 0}, {"memory_bytes": 1.5},
                                 {"bucket_rows": 0}, {"bucket_rows": 3}, {"bucket_rows": True}])
def test_config_checked(bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=name) as info:
        CSRConfig(**bad)
    assert str(value) in str(info.value)


@pytest.mark.parametrize("undirected", [False, True])
def test_spill_bytes_is_the_spill_file_size(monkeypatch, undirected):
    """What synth reserves for the temporary spill file is what the build writes there
    (6 bytes per stored edge), and the file is gone afterwards."""
    from disktrain.ingest import csr

    sizes = []
    finish = csr._Spill.finish

    def record(spill):
        finish(spill)
        sizes.append(spill.path.stat().st_size)

    monkeypatch.setattr(csr._Spill, "finish", record)
    rng = np.random.default_rng(3)
    src, dst = rng.integers(0, 300, 2000), rng.integers(0, 300, 2000)
    cfg = CSRConfig(undirected=undirected, progress=False, bucket_rows=16)
    _, _, _, leftovers = build(src, dst, 300, cfg, 500)
    stored = 2000 * (1 + undirected)
    assert sizes == [csr.spill_bytes(300, stored, cfg)] == [stored * 6]
    assert leftovers == ["indices", "indptr", "zarr.json"]


@pytest.mark.parametrize("fail_at", ["bucket", "fill"])
def test_error_removes_spill_and_partial_files(tmp_path, monkeypatch, fail_at):
    """An error while bucketing (the edge source) or filling (a bucket) propagates and
    leaves neither the spill file nor the partial indices behind."""
    from disktrain.ingest import csr

    group = zarr.open_group(tmp_path, mode="w")
    src = np.arange(100, dtype=np.int64) % 10
    dst = src[::-1].copy()

    def chunks():
        yield src[:50], dst[:50]
        if fail_at == "bucket":
            raise RuntimeError("bad edge file")
        yield src[50:], dst[50:]

    def broken(*args, **kwargs):
        raise RuntimeError("bucket build failed")

    if fail_at == "fill":
        monkeypatch.setattr(csr.kcsr, "fill_bucket", broken)
    with pytest.raises(RuntimeError, match="bad edge file|bucket build failed"):
        build_csr(group, chunks, 10, 100, CSRConfig(progress=False, bucket_rows=2))
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "_edges.spill" not in left and "_indices.partial" not in left
    assert not any(p.startswith("indptr/c") for p in left), left  # no partial chunk file
