"""Multi-layer neighbor sampling kernel: distribution, layout, determinism, input types."""

import itertools

import numba
import numpy as np
import pytest
from helpers import needs_two_threads
from scipy.stats import chisquare

from disktrain.kernels import rng as krng
from disktrain.kernels import sampling
from disktrain.kernels.sampling import SampledBatches, sample_batches


def csr_from_edges(src, dst, num_nodes, index_dtype=np.int32):
    """In-neighbor CSR: row v lists the sources of edges u -> v, sorted."""
    order = np.lexsort((src, dst))
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=num_nodes), out=indptr[1:])
    return indptr, np.asarray(src)[order].astype(index_dtype)


def random_graph(num_nodes=300, num_edges=4000, seed=0, index_dtype=np.int32):
    """A simple random digraph (no repeated edges) with mixed degrees, some zero."""
    gen = np.random.default_rng(seed)
    src = gen.integers(0, num_nodes, num_edges)
    dst = (gen.pareto(1.2, num_edges) * 7).astype(np.int64) % num_nodes  # skewed in-degrees
    pairs = np.unique(np.stack([src, dst], 1), axis=0)
    return csr_from_edges(pairs[:, 0], pairs[:, 1], num_nodes, index_dtype)


def batches(num_nodes, sizes, seed=1):
    gen = np.random.default_rng(seed)
    seeds = np.concatenate([gen.choice(num_nodes, s, replace=False) for s in sizes])
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return seeds.astype(np.int64), offsets


@pytest.fixture(scope="module")
def graph():
    return random_graph()


def blocks(res: SampledBatches):
    """Yield (b, hop, batch nodes, global src, global dst, local src, local dst)."""
    for b in range(res.num_batches):
        one = res.batch(b)
        for hop in range(1, res.num_hops + 1):
            src, dst = one.hop(hop)
            yield b, hop, one, one.nodes[src], one.nodes[dst], src, dst


def assert_same(a: SampledBatches, b: SampledBatches):
    for name in ("nodes", "node_offsets", "hop_counts", "edge_src", "edge_dst", "edge_offsets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# Distribution -------------------------------------------------------------------------------

def star_graph(num_dst, degree):
    """Nodes 0..num_dst-1 all have in-neighbors num_dst..num_dst+degree-1."""
    dst = np.repeat(np.arange(num_dst), degree)
    src = np.tile(np.arange(num_dst, num_dst + degree), num_dst)
    return csr_from_edges(src, dst, num_dst + degree)


@pytest.mark.parametrize("degree,fanout", [(20, 5), (9, 8), (150, 40)])  # 40 > 32: hashed set
def test_each_neighbor_chosen_with_probability_k_over_d(degree, fanout):
    num_dst = 3000
    indptr, indices = star_graph(num_dst, degree)
    hits = np.zeros(degree, np.int64)
    for key in (11, 12, 13):  # fixed keys: deterministic, never flaky
        res = sample_batches(indptr, indices, np.arange(num_dst, dtype=np.int64),
                             np.array([0, num_dst], np.int64), [fanout], key)
        src, dst = res.batch(0).hop(1)
        assert np.array_equal(np.bincount(dst, minlength=num_dst), np.full(num_dst, fanout))
        hits += np.bincount(res.nodes[src] - num_dst, minlength=degree)
    expected = 3 * num_dst * fanout / degree
    assert hits.sum() == 3 * num_dst * fanout
    assert chisquare(hits, np.full(degree, expected)).pvalue > 1e-4


def test_every_subset_equally_likely():
    num_dst, degree, fanout = 6000, 5, 2
    indptr, indices = star_graph(num_dst, degree)
    res = sample_batches(indptr, indices, np.arange(num_dst, dtype=np.int64),
                         np.array([0, num_dst], np.int64), [fanout], key=7)
    src, _ = res.batch(0).hop(1)
    picks = np.sort((res.nodes[src] - num_dst).reshape(num_dst, fanout), axis=1)
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(degree), fanout))}
    counts = np.bincount([subsets[tuple(p)] for p in picks.tolist()], minlength=len(subsets))
    assert chisquare(counts).pvalue > 1e-4


def test_keys_and_hops_give_different_samples():
    indptr, indices = star_graph(200, 30)
    seeds, offsets = np.arange(200, dtype=np.int64), np.array([0, 200], np.int64)
    a = sample_batches(indptr, indices, seeds, offsets, [5], key=1)
    b = sample_batches(indptr, indices, seeds, offsets, [5], key=2)
    assert not np.array_equal(a.nodes[a.edge_src], b.nodes[b.edge_src])
    two = sample_batches(indptr, indices, seeds, offsets, [5, 5], key=1)
    hop1, hop2 = (two.nodes[two.batch(0).hop(h)[0]] for h in (1, 2))
    assert np.array_equal(hop1, a.nodes[a.edge_src])
    assert not np.array_equal(hop1, hop2[:hop1.size])  # seeds resampled independently at hop 2


# Edges and layout -----------------------------------------------------------------------------

@pytest.mark.parametrize("frontier_only", [False, True])
def test_block_edges_exist_and_are_distinct(graph, frontier_only):
    indptr, indices = graph
    seeds, offsets = batches(300, [8, 1, 20, 0, 5])
    fanouts = [3, -1, 2]
    res = sample_batches(indptr, indices, seeds, offsets, fanouts, key=5,
                         frontier_only=frontier_only)
    for _, hop, _, gsrc, gdst, _, _ in blocks(res):
        fanout = fanouts[hop - 1]
        for v in np.unique(gdst):
            row = indices[indptr[v]:indptr[v + 1]]
            picked = gsrc[gdst == v]
            assert np.isin(picked, row).all(), "sampled an edge that is not in the graph"
            assert np.unique(picked).size == picked.size, "duplicate within a node's sample"
            if fanout == -1 or row.size <= fanout:
                assert np.array_equal(picked, row), "degree <= fanout must take the whole row"
            else:
                assert picked.size == fanout


@pytest.mark.parametrize("frontier_only", [False, True])
def test_relabel_layout(graph, frontier_only):
    indptr, indices = graph
    sizes = [8, 1, 20, 0, 5]
    seeds, offsets = batches(300, sizes)
    res = sample_batches(indptr, indices, seeds, offsets, [4, 3, 2], key=9,
                         frontier_only=frontier_only)
    assert res.num_batches == 5 and res.num_hops == 3
    assert res.nodes.dtype == np.int64 and res.edge_src.dtype == np.int32
    assert res.edge_dst.dtype == np.int32 and res.edge_offsets.shape == (16,)
    assert np.array_equal(np.diff(res.node_offsets), res.hop_counts[:, -1])
    for b in range(5):
        one = res.batch(b)
        counts = one.hop_counts
        assert counts[0] == sizes[b] and (np.diff(counts) >= 0).all()
        assert np.array_equal(one.nodes[:counts[0]], seeds[offsets[b]:offsets[b + 1]])
        assert np.unique(one.nodes).size == one.nodes.size
        seen = set(one.nodes[:counts[0]].tolist())
        for hop in range(1, 4):
            src, dst = one.hop(hop)
            lo = counts[hop - 2] if frontier_only and hop > 1 else 0
            assert ((dst >= lo) & (dst < counts[hop - 1])).all()
            assert ((src >= 0) & (src < counts[hop])).all()
            assert (np.diff(dst) >= 0).all(), "edges grouped by dst in dst order"
            if not frontier_only:  # every dst node has its in-edges (if it has any)
                degree = np.diff(indptr)[one.nodes[:counts[hop - 1]]]
                assert np.array_equal(np.unique(dst), np.flatnonzero(degree > 0))
            # new nodes appear in order of first appearance among the hop's sources
            order = []
            for s in one.nodes[src].tolist():
                if s not in seen:
                    seen.add(s)
                    order.append(s)
            assert np.array_equal(one.nodes[counts[hop - 1]:counts[hop]], order)


def test_matches_a_plain_python_reference(graph):
    indptr, indices = graph
    seeds, offsets = batches(300, [6, 3, 11])
    fanouts, key = [3, 40, 2], 77
    for frontier_only in (False, True):
        res = sample_batches(indptr, indices, seeds, offsets, fanouts, key,
                             frontier_only=frontier_only)
        for b in range(3):
            nodes, counts, edges = reference(indptr, indices, seeds[offsets[b]:offsets[b + 1]],
                                             fanouts, key, frontier_only)
            one = res.batch(b)
            assert np.array_equal(one.nodes, nodes) and np.array_equal(one.hop_counts, counts)
            for hop in range(1, 4):
                src, dst = one.hop(hop)
                assert np.array_equal(np.stack([src, dst], 1).reshape(-1, 2),
                                      np.array(edges[hop - 1], np.int64).reshape(-1, 2))


def reference(indptr, indices, seeds, fanouts, key, frontier_only):
    """Straightforward re-implementation with the same random streams (Floyd's algorithm)."""
    key = np.uint64(key)
    nodes = list(seeds.tolist())
    local = {v: i for i, v in enumerate(nodes)}
    counts, edges = [len(nodes)], []
    for hop, fanout in enumerate(fanouts, start=1):
        lo = counts[-2] if frontier_only and hop > 1 else 0
        hop_edges = []
        for d_local in range(lo, counts[-1]):
            v = nodes[d_local]
            row = indices[indptr[v]:indptr[v + 1]].tolist()
            if fanout == -1 or len(row) <= fanout:
                picks = range(len(row))
            else:
                stream = krng.stream_key(np.uint64(krng.stream_key(key, hop)), v)
                picks, counter = [], 0
                for j in range(len(row) - fanout, len(row)):
                    t, counter = krng.uniform_below(np.uint64(stream), counter, j + 1)
                    picks.append(j if t in picks else t)
            for i in picks:
                u = row[i]
                if u not in local:
                    local[u] = len(nodes)
                    nodes.append(u)
                hop_edges.append((local[u], d_local))
        counts.append(len(nodes))
        edges.append(hop_edges)
    return np.array(nodes), np.array(counts), edges


# Determinism and inputs -----------------------------------------------------------------------

@needs_two_threads
def test_same_result_for_any_thread_count(graph):
    indptr, indices = graph
    seeds, offsets = batches(300, [30, 30, 30, 30])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sample_batches(indptr, indices, seeds, offsets, [5, 4, 3], key=3)
        numba.set_num_threads(2)
        two = sample_batches(indptr, indices, seeds, offsets, [5, 4, 3], key=3)
    finally:
        numba.set_num_threads(before)
    assert_same(one, two)


@pytest.mark.parametrize("frontier_only", [False, True])
def test_same_result_however_batches_are_grouped(graph, frontier_only):
    indptr, indices = graph
    sizes = [7, 12, 1, 9]
    seeds, offsets = batches(300, sizes)
    together = sample_batches(indptr, indices, seeds, offsets, [3, 5], key=21,
                              frontier_only=frontier_only)
    for b, size in enumerate(sizes):
        alone = sample_batches(indptr, indices, seeds[offsets[b]:offsets[b + 1]],
                               np.array([0, size], np.int64), [3, 5], key=21,
                               frontier_only=frontier_only)
        assert_same(alone, batch_alone(together, b))


def batch_alone(res: SampledBatches, b: int) -> SampledBatches:
    """Batch ``b`` of ``res`` as the result of a call that sampled it alone."""
    one = res.batch(b)
    return SampledBatches(nodes=one.nodes, node_offsets=np.array([0, one.nodes.size]),
                          hop_counts=res.hop_counts[b:b + 1], edge_src=one.edge_src,
                          edge_dst=one.edge_dst, edge_offsets=one.edge_offsets)


@pytest.mark.parametrize("frontier_only", [False, True])
def test_reused_work_buffers_change_nothing(frontier_only, monkeypatch):
    """Batches of very different sizes in one call, so that each thread's work buffers, grown
    by a big batch, serve the small ones after it (and grow again), and calls reuse the
    buffers of earlier calls: each batch equals the batch sampled alone with fresh buffers, on
    one thread and on two."""
    num_nodes = 3000
    gen = np.random.default_rng(4)
    pairs = np.unique(gen.integers(0, num_nodes, (60000, 2)), axis=0)
    indptr, indices = csr_from_edges(pairs[:, 0], pairs[:, 1], num_nodes)
    sizes = [1, 400, 0, 3, 250, 2, 700, 1, 5]
    seeds, offsets = batches(num_nodes, sizes, seed=5)
    fanouts = [6, 40, 3]  # 40 > 32: the hashed pick set too
    with monkeypatch.context() as m:  # no buffers left between these calls: fresh ones
        m.setattr(sampling, "_idle", [])
        m.setattr(sampling, "_IDLE_BYTES", 0)
        alone = [sample_batches(indptr, indices, seeds[offsets[b]:offsets[b + 1]],
                                np.array([0, size], np.int64), fanouts, key=31,
                                frontier_only=frontier_only) for b, size in enumerate(sizes)]
        assert not sampling._idle
    edges = [int(a.edge_offsets[-1]) for a in alone]
    assert min(edges[:2]) > 0 and max(edges) > 50 * min(edges[:2])  # small and big batches
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}) * 2:
            numba.set_num_threads(threads)  # the second call of each reuses the first's buffers
            together = sample_batches(indptr, indices, seeds, offsets, fanouts, key=31,
                                      frontier_only=frontier_only)
            assert sampling._idle, "no work buffers left for the next call"
            for b, one in enumerate(alone):
                assert_same(one, batch_alone(together, b))
    finally:
        numba.set_num_threads(before)


def test_kernel_never_reads_stale_work_buffers(graph):
    """The batch kernel's output does not depend on what its reused work buffers held, and
    it keeps what lies before the bases (the thread's earlier batches)."""
    from disktrain.kernels.sampling import _NO_BUFFERS, _sample_batch

    indptr, indices = graph
    seeds, _ = batches(300, [40])
    fanouts = np.array([5, 40, 3], np.int64)  # 40 > 32: the hashed pick set too
    hop_keys = np.array([krng.stream_key(np.uint64(9), hop) for hop in (1, 2, 3)], np.uint64)
    gen = np.random.default_rng(2)
    # ids of this graph and local ids alike, large enough that no buffer grows
    stale = tuple(gen.integers(0, 300, 1 << 16).astype(a.dtype) for a in _NO_BUFFERS)
    node_base, edge_base = 100, 50
    for frontier_only in (False, True):
        *fresh, fresh_buffers = _sample_batch(indptr, indices, seeds, fanouts, hop_keys,
                                              frontier_only, _NO_BUFFERS, 0, 0)
        *reused, buffers = _sample_batch(indptr, indices, seeds, fanouts, hop_keys,
                                         frontier_only, tuple(a.copy() for a in stale),
                                         node_base, edge_base)
        for name, a, b in zip(("hop_counts", "hop_offsets", "duplicate", "too_big"), fresh,
                              reused):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert [a.shape for a in buffers] == [a.shape for a in stale], "a buffer grew"
        n, e = fresh[0][-1], fresh[1][-1]
        assert n > 200 and e > 500
        for i, base, size in ((3, node_base, n), (4, edge_base, e), (5, edge_base, e)):
            np.testing.assert_array_equal(buffers[i][base:base + size], fresh_buffers[i][:size])
            np.testing.assert_array_equal(buffers[i][:base], stale[i][:base])


def test_int32_int64_and_memmap_inputs_agree(graph, tmp_path):
    indptr, indices = graph
    seeds, offsets = batches(300, [10, 10])
    base = sample_batches(indptr, indices, seeds, offsets, [4, 4], key=8)
    assert_same(base, sample_batches(indptr, indices.astype(np.int64), seeds, offsets, [4, 4],
                                     key=8))
    maps = []
    for name, arr in (("indptr", indptr), ("indices", indices)):
        m = np.memmap(tmp_path / name, dtype=arr.dtype, mode="w+", shape=arr.shape)
        m[:] = arr
        m.flush()
        maps.append(np.memmap(tmp_path / name, dtype=arr.dtype.newbyteorder("<"), mode="r",
                              shape=arr.shape))
    assert_same(base, sample_batches(*maps, seeds, offsets, np.array([4, 4]), key=np.uint64(8)))


def test_key_is_taken_modulo_2_64(graph):
    indptr, indices = graph
    seeds, offsets = batches(300, [10])
    assert_same(sample_batches(indptr, indices, seeds, offsets, [4], key=-1),
                sample_batches(indptr, indices, seeds, offsets, [4], key=2**64 - 1))
    assert krng.derive_key(1, 2) == krng.derive_key(1, 2) != krng.derive_key(2, 1)


def test_zero_degree_and_empty_batches(graph):
    indptr, indices = graph
    isolated = np.flatnonzero(np.diff(indptr) == 0)[:3].astype(np.int64)
    res = sample_batches(indptr, indices, isolated, np.array([0, 0, 3], np.int64), [5, 5], 1)
    assert res.edge_offsets[-1] == 0
    assert np.array_equal(res.hop_counts, [[0, 0, 0], [3, 3, 3]])


def test_errors_name_the_argument(graph):
    indptr, indices = graph
    seeds, offsets = np.array([1, 2, 1], np.int64), np.array([0, 3], np.int64)
    with pytest.raises(ValueError, match="batch 0 repeats seed 1"):
        sample_batches(indptr, indices, seeds, offsets, [2], 0)
    with pytest.raises(ValueError, match="seeds: id 300"):
        sample_batches(indptr, indices, np.array([300], np.int64), np.array([0, 1], np.int64),
                       [2], 0)
    with pytest.raises(ValueError, match="fanouts"):
        sample_batches(indptr, indices, seeds[:2], np.array([0, 2], np.int64), [2, -3], 0)
    with pytest.raises(ValueError, match="seed_offsets"):
        sample_batches(indptr, indices, seeds[:2], np.array([0, 3], np.int64), [2], 0)
    with pytest.raises(ValueError, match="indices"):
        sample_batches(indptr, indices.astype(np.float32), seeds[:2],
                       np.array([0, 2], np.int64), [2], 0)
    with pytest.raises(ValueError, match="hop must be"):
        sample_batches(indptr, indices, seeds[:2], np.array([0, 2], np.int64), [2], 0) \
            .batch(0).hop(2)


def test_load_kernels_loads_what_sampling_a_dataset_runs(tiny_dataset, tmp_path):
    from disktrain.storage.dataset import Dataset, index_dtype

    ds = Dataset(tiny_dataset)
    kernels = [getattr(sampling, n) for n in dir(sampling)
               if isinstance(getattr(sampling, n), numba.core.registry.CPUDispatcher)]
    sampling.load_kernels(index_dtype(ds.num_nodes))
    loaded = [set(k.signatures) for k in kernels]
    assert any(loaded)
    got = sample_batches(ds.indptr, ds.indices, np.arange(4, dtype=np.int64),
                         np.array([0, 2, 4], np.int64), np.array([3, 2], np.int64), 7)
    counts = np.memmap(tmp_path / "counts", np.int32, "w+", shape=(ds.num_nodes,))
    for b in range(2):  # as sample_dataset counts them, into its access_counts' mapping
        sampling.count_rows(counts, got.batch(b).nodes)
    assert [set(k.signatures) for k in kernels] == loaded  # nothing new to load or compile
    assert np.array_equal(counts, np.bincount(got.nodes, minlength=ds.num_nodes))
    with pytest.raises(IndexError, match="outside"):
        sampling.count_rows(counts, np.array([0, ds.num_nodes], got.nodes.dtype))
