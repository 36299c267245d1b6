"""Typed-graph sampling kernel: equal to a plain Python reference, to the homogeneous sampler
on one type and relation, deterministic, with the layout's views and the errors."""

import numba
import numpy as np
import pytest
from helpers import needs_two_threads
from test_sampling_kernels import csr_from_edges, random_graph

from disktrain.kernels.rng import GOLDEN, stream_key
from disktrain.kernels.sampling import _floyd_small, sample_batches
from disktrain.kernels.typed_sampling import TypedSampledBatches, sample_typed_batches

TYPE_COUNTS = (60, 45, 30, 8)
RELATIONS = ((0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (3, 1))
"""(src type, dst type): a self-relation, bipartite ones both ways, a type that is only a src
and one (3) of few nodes."""
FANOUTS = np.array([[40, -1, 3, 0, 1, 2],  # 40 > 32: Floyd's hashed pick set
                    [2, 2, 0, 3, -1, 1],
                    [1, 3, 2, 2, 1, 0]])


def typed_graph(seed=0, index_dtype=np.int32):
    """(indptrs, indices, rel_src, rel_dst, type_offsets) of a random typed graph: skewed
    in-degrees with many zero rows; type 0's node 0 has every type-0 node as in-neighbor."""
    gen = np.random.default_rng(seed)
    type_offsets = np.concatenate(([0], np.cumsum(TYPE_COUNTS))).astype(np.int64)
    indptrs, indices = [], []
    for s, d in RELATIONS:
        num_src, num_dst = TYPE_COUNTS[s], TYPE_COUNTS[d]
        src = gen.integers(0, num_src, 4 * num_dst)
        dst = (gen.pareto(1.2, src.size) * 3).astype(np.int64) % num_dst
        if s == d == 0:
            src, dst = np.append(src, np.arange(num_src)), np.append(dst, np.zeros(num_src, int))
        pairs = np.unique(np.stack([src, dst], 1), axis=0)
        indptr, ind = csr_from_edges(pairs[:, 0], pairs[:, 1], num_dst, index_dtype)
        indptrs.append(indptr)
        indices.append(ind)
    rel_src, rel_dst = np.array(RELATIONS).T
    return tuple(indptrs), tuple(indices), rel_src, rel_dst, type_offsets


def typed_seeds(sizes, seed=1):
    """Batches of distinct seeds of every type; global node 0 is in the first batch."""
    gen = np.random.default_rng(seed)
    batches = [gen.choice(np.arange(1, sum(TYPE_COUNTS)), s, replace=False) for s in sizes]
    batches[0][0] = 0
    return np.concatenate(batches).astype(np.int64), \
        np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)


@pytest.fixture(scope="module")
def graph():
    return typed_graph()


def assert_same(a: TypedSampledBatches, b: TypedSampledBatches):
    for name in ("nodes", "node_offsets", "type_counts", "edge_src", "edge_dst",
                 "edge_offsets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# The reference ---------------------------------------------------------------------------------

def reference(indptrs, indices, rel_src, rel_dst, type_offsets, seeds, fanouts, key,
              frontier_only):
    """One batch, straight from the module docstring: ``(nodes, type_counts, edge_src,
    edge_dst, edge_offsets)``."""
    num_types, (num_hops, num_rels) = len(type_offsets) - 1, fanouts.shape
    lists: list[list[int]] = [[] for _ in range(num_types)]
    pos: dict[int, int] = {}
    counts = np.zeros((num_types, num_hops + 1), np.int64)
    for v in seeds.tolist():
        t = int(np.searchsorted(type_offsets, v, side="right")) - 1
        pos[v] = len(lists[t])
        lists[t].append(v)
    counts[:, 0] = [len(x) for x in lists]
    src, dst, offsets = [], [], [0]
    picks = np.empty(max(1, int(fanouts.max())), np.int64)
    for hop in range(1, num_hops + 1):
        hop_key = int(stream_key(np.uint64(key), hop))
        for r in range(num_rels):
            f, s, d = int(fanouts[hop - 1, r]), int(rel_src[r]), int(rel_dst[r])
            lo = int(counts[d, hop - 2]) if frontier_only and hop > 1 else 0
            indptr, ind = indptrs[r], indices[r]
            stream_base = np.uint64((hop_key ^ (int(GOLDEN) * r)) & ((1 << 64) - 1))
            for i in range(lo, int(counts[d, hop - 1]) if f else lo):
                v = lists[d][i]
                row = v - int(type_offsets[d])
                start, deg = int(indptr[row]), int(indptr[row + 1] - indptr[row])
                k = deg if f < 0 or deg <= f else f
                if k == deg:
                    chosen = range(deg)
                else:
                    _floyd_small(np.uint64(stream_key(stream_base, v)), deg, k, picks)
                    chosen = picks[:k].tolist()
                for p in chosen:
                    u = int(ind[start + p]) + int(type_offsets[s])
                    if u not in pos:
                        pos[u] = len(lists[s])
                        lists[s].append(u)
                    src.append(pos[u])
                    dst.append(i)
            offsets.append(len(src))
        counts[:, hop] = [len(x) for x in lists]
    nodes = np.array([v for x in lists for v in x], np.int64)
    return nodes, counts, np.array(src, np.int64), np.array(dst, np.int64), np.array(offsets)


@pytest.mark.parametrize("frontier_only", [False, True])
def test_matches_the_reference(graph, frontier_only):
    sizes = [6, 0, 11, 3, 1, 25]
    seeds, offsets = typed_seeds(sizes)
    res = sample_typed_batches(*graph, seeds, offsets, FANOUTS, 77, frontier_only=frontier_only)
    assert res.num_batches == len(sizes) and res.type_counts.shape == (6, 4, 4)
    assert res.edge_offsets.shape == (6 * 3 * 6 + 1,) and res.edge_src.dtype == np.int32
    # the 40 of hop 1 picks from node 0's 60 type-0 in-neighbors (Floyd's hashed set)
    hop1_rel0 = res.batch(0).hop_relation(1, 0)[1]
    assert (hop1_rel0 == 0).sum() == 40
    for b in range(len(sizes)):
        want = reference(*graph, seeds[offsets[b]:offsets[b + 1]], FANOUTS, 77, frontier_only)
        one = res.batch(b)
        for name, a, w in zip(("nodes", "type_counts", "edge_src", "edge_dst", "edge_offsets"),
                              (one.nodes, one.type_counts, one.edge_src, one.edge_dst,
                               one.edge_offsets), want):
            np.testing.assert_array_equal(a, w, err_msg=f"batch {b}: {name}")
    assert res.edge_offsets[-1] > 300


def test_one_type_and_relation_is_the_homogeneous_sampler():
    indptr, indices = random_graph()
    gen = np.random.default_rng(1)
    seeds, offsets = gen.permutation(300)[:45].astype(np.int64), np.array([0, 20, 20, 45])
    for frontier_only in (False, True):
        a = sample_batches(indptr, indices, seeds, offsets, [5, 35, -1], 7,
                           frontier_only=frontier_only)
        b = sample_typed_batches((indptr,), (indices,), [0], [0], [0, 300], seeds, offsets,
                                 [[5], [35], [-1]], 7, frontier_only=frontier_only)
        np.testing.assert_array_equal(a.hop_counts, b.type_counts[:, 0])
        for name in ("nodes", "node_offsets", "edge_src", "edge_dst", "edge_offsets"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# Determinism and inputs -----------------------------------------------------------------------

@needs_two_threads
def test_same_result_for_any_thread_count(graph):
    seeds, offsets = typed_seeds([20, 20, 20, 20])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sample_typed_batches(*graph, seeds, offsets, FANOUTS, 3)
        numba.set_num_threads(2)
        two = sample_typed_batches(*graph, seeds, offsets, FANOUTS, 3)
    finally:
        numba.set_num_threads(before)
    assert_same(one, two)


@pytest.mark.parametrize("frontier_only", [False, True])
def test_same_result_however_batches_are_grouped(graph, frontier_only):
    """Batches of very different sizes: a thread's work buffers, grown by a big batch, serve
    the small ones after it, and later calls."""
    sizes = [1, 120, 0, 2, 60, 1]
    seeds, offsets = typed_seeds(sizes, seed=5)
    together = sample_typed_batches(*graph, seeds, offsets, FANOUTS, 21,
                                    frontier_only=frontier_only)
    for b, size in enumerate(sizes):
        alone = sample_typed_batches(*graph, seeds[offsets[b]:offsets[b + 1]],
                                     np.array([0, size], np.int64), FANOUTS, 21,
                                     frontier_only=frontier_only)
        one = together.batch(b)
        assert_same(alone, TypedSampledBatches(
            nodes=one.nodes, node_offsets=np.array([0, one.nodes.size]),
            type_counts=one.type_counts[None], edge_src=one.edge_src, edge_dst=one.edge_dst,
            edge_offsets=one.edge_offsets))


def test_memmaps_read_only_and_int64_inputs_agree(graph, tmp_path):
    indptrs, indices, *rest = graph
    seeds, offsets = typed_seeds([10, 10])
    base = sample_typed_batches(indptrs, indices, *rest, seeds, offsets, FANOUTS, 8)
    assert_same(base, sample_typed_batches(indptrs, tuple(i.astype(np.int64) for i in indices),
                                           *rest, seeds, offsets, FANOUTS, 8))
    maps = []
    for name, arr in (("indptr", indptrs[1]), ("indices", indices[1])):
        arr.tofile(tmp_path / name)
        maps.append(np.memmap(tmp_path / name, dtype=arr.dtype, mode="r", shape=arr.shape))
    mixed = ((*indptrs[:1], maps[0], *indptrs[2:]), (*indices[:1], maps[1], *indices[2:]))
    assert_same(base, sample_typed_batches(*mixed, *rest, seeds, offsets, FANOUTS, 8))


# Views ----------------------------------------------------------------------------------------

def test_views_of_a_batch(graph):
    indptrs, indices, rel_src, rel_dst, type_offsets = graph
    seeds, offsets = typed_seeds([12])
    one = sample_typed_batches(*graph, seeds, offsets, FANOUTS, 5).batch(0, index=9)
    assert (one.index, one.num_types, one.num_hops, one.num_relations) == (9, 4, 3, 6)
    assert one.num_seeds == 12
    starts = one.type_starts
    assert starts[-1] == one.nodes.size and np.array_equal(np.diff(starts),
                                                           one.type_counts[:, -1])
    for t in range(4):
        ids = one.type_nodes(t)
        assert ((ids >= type_offsets[t]) & (ids < type_offsets[t + 1])).all()
        assert np.unique(ids).size == ids.size
        mine = np.isin(seeds, ids)
        assert np.array_equal(ids[:one.type_counts[t, 0]], seeds[mine])  # seeds first, in order
    layers = one.layers()
    assert len(layers) == 3
    for hop, (edges, num_src, num_dst) in zip((3, 2, 1), layers):  # the farthest hop first
        assert np.array_equal(num_src, one.type_counts[:, hop])
        assert np.array_equal(num_dst, one.type_counts[:, hop - 1])
        for r, (src, dst) in enumerate(edges):
            assert all(map(np.array_equal, (src, dst), one.hop_relation(hop, r)))
            s, d = rel_src[r], rel_dst[r]
            assert (src < num_src[s]).all() and (dst < num_dst[d]).all()
            if FANOUTS[hop - 1, r] == 0:
                assert src.size == 0
            for u, v in zip(one.type_nodes(s)[src] - type_offsets[s],
                            one.type_nodes(d)[dst] - type_offsets[d]):
                assert u in indices[r][indptrs[r][v]:indptrs[r][v + 1]], "not an edge of r"
    with pytest.raises(ValueError, match="hop must be in \\[1, 3\\] and relation in \\[0, 6\\)"):
        one.hop_relation(1, 6)
    with pytest.raises(ValueError, match="batch index"):
        sample_typed_batches(*graph, seeds, offsets, FANOUTS, 5).batch(1)


# Errors ---------------------------------------------------------------------------------------

def test_errors_name_the_argument(graph):
    indptrs, indices, rel_src, rel_dst, type_offsets = graph
    seeds, offsets = typed_seeds([5])

    def call(**change):
        args = {"indptrs": indptrs, "indices": indices, "rel_src": rel_src, "rel_dst": rel_dst,
                "type_offsets": type_offsets, "seeds": seeds, "seed_offsets": offsets,
                "fanouts": FANOUTS, "key": 0}
        return sample_typed_batches(**(args | change))

    cases = [
        ({"seeds": np.array([3, 9, 3], np.int64), "seed_offsets": np.array([0, 0, 3])},
         "seeds: batch 1 repeats seed 3"),
        ({"seeds": np.array([143], np.int64), "seed_offsets": np.array([0, 1])},
         "seeds: id 143 is outside \\[0, 143\\)"),
        ({"fanouts": FANOUTS[:, :5]}, "fanouts must be \\(hops, relations\\) = \\(L, 6\\)"),
        ({"fanouts": np.where(FANOUTS == 0, -2, FANOUTS)}, "fanouts must be"),
        ({"rel_src": [0, 1, 7, 2, 0, 3]}, "rel_src: relation 2 has type 7, outside \\[0, 4\\)"),
        ({"rel_dst": [0, 0, 1, 0, 0]}, "one entry per relation, got 6, 5, 6, 6"),
        ({"indptrs": (indptrs[0], indptrs[2], *indptrs[2:]),
          "indices": (indices[0], indices[2], *indices[2:])},
         "relation 1: indptr has 46 row pointers, but its dst type 0 has 60 nodes"),
        ({"indices": indices[:3] + (indices[3][:-1],) + indices[4:]},
         "relation 3: indptr\\[-1\\] is"),
        ({"indices": indices[:3] + (indices[3].astype(np.float32),) + indices[4:]},
         "relation 3: indices must be"),
        ({"indices": indices[:5] + (indices[5].astype(np.int64),)},
         "indices: every relation's indices must have one dtype, got \\['int32', 'int64'\\]"),
        ({"type_offsets": [0, 60, 50, 135, 143]}, "type_offsets must be"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            call(**change)
