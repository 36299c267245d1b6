"""build_csr against scipy.sparse on random graphs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from disktrain.csr import CSRConfig, build_csr
from disktrain.dataset import open_flat_array


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
        indptr = np.array(open_flat_array(tmp, "indptr"))
        indices = np.array(open_flat_array(tmp, "indices"))
        leftovers = sorted(p.name for p in Path(tmp).iterdir())
    return indptr, indices, num_edges, leftovers


graphs = st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60)))


@settings(max_examples=60, deadline=None)
@given(graph=graphs, undirected=st.booleans(), dedup=st.booleans(),
       drop_self_loops=st.booleans(), chunk=st.integers(1, 16))
def test_build_csr_matches_scipy(graph, undirected, dedup, drop_self_loops, chunk):
    num_nodes, pairs = graph
    edges = np.array(pairs, np.int64).reshape(-1, 2)
    src, dst = edges[:, 0].copy(), edges[:, 1].copy()
    cfg = CSRConfig(undirected=undirected, dedup=dedup, drop_self_loops=drop_self_loops,
                    progress=False)
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
