"""Our sampler against torch_sparse.neighbor_sample (PyG's), when the bench extras are installed.

With ``frontier_only=True`` both follow the same semantics: where every row is taken whole the
outputs must be identical (same node order, same edges); with real sampling the sizes of the
sampled subgraphs must agree statistically.
"""

import numpy as np
import pytest

from disktrain.kernels.sampling import sample_batches

torch = pytest.importorskip("torch")
pytest.importorskip("torch_sparse")


def small_graph(num_nodes=2000, num_edges=30000, seed=0):
    gen = np.random.default_rng(seed)
    src = gen.integers(0, num_nodes, num_edges)
    dst = (gen.pareto(1.5, num_edges) * 50).astype(np.int64) % num_nodes
    pairs = gen.permutation(np.unique(np.stack([src, dst], 1), axis=0))
    # rows in random order: torch_sparse 0.6.18 draws from [0, j) where Floyd's algorithm
    # needs [0, j], so it under-picks the last entries of a row; sorted rows would correlate
    # that bias with node ids (and degrees) and shift the sizes it samples
    order = np.argsort(pairs[:, 1], kind="stable")
    indptr = np.zeros(num_nodes + 1, np.int64)
    np.cumsum(np.bincount(pairs[:, 1], minlength=num_nodes), out=indptr[1:])
    return indptr, pairs[order, 0].astype(np.int64)


def peer(indptr, indices, seeds, fanouts):
    """(nodes, local src, local dst) from torch_sparse, directed, without replacement."""
    nodes, rows, cols, _ = torch.ops.torch_sparse.neighbor_sample(
        torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(seeds),
        list(fanouts), False, True)
    return nodes.numpy(), rows.numpy(), cols.numpy()


def ours(indptr, indices, seeds, fanouts, key=0):
    res = sample_batches(indptr, indices, seeds, np.array([0, seeds.size], np.int64), fanouts,
                         key, frontier_only=True)
    one = res.batch(0)
    return one.nodes, one.edge_src, one.edge_dst, one.hop_counts, one.edge_offsets


def peer_edges_per_hop(src, dst, num_seeds, num_hops):
    """Split the peer's edges by hop: hop l's dst ids are the nodes first reached at hop l-1,
    and its edges come in dst order, so each hop ends where dst reaches the next frontier."""
    counts, hi, start = [], num_seeds, 0
    for _ in range(num_hops):
        end = int(np.searchsorted(dst, hi, side="left"))
        counts.append(end - start)
        hi, start = max(hi, int(src[start:end].max(initial=hi - 1)) + 1), end
    return np.array(counts)


def test_identical_when_every_row_is_taken_whole():
    indptr, indices = small_graph()
    take_all = int(np.diff(indptr).max())
    gen = np.random.default_rng(1)
    for _ in range(5):
        seeds = gen.choice(indptr.size - 1, 16, replace=False).astype(np.int64)
        p_nodes, p_src, p_dst = peer(indptr, indices, seeds, [take_all, take_all])
        o_nodes, o_src, o_dst, _, _ = ours(indptr, indices, seeds, [take_all, take_all])
        assert np.array_equal(o_nodes, p_nodes)
        assert np.array_equal(o_src, p_src) and np.array_equal(o_dst, p_dst)


def test_sampled_sizes_agree():
    torch.manual_seed(0)  # torch_sparse draws from torch's global generator
    indptr, indices = small_graph()
    fanouts = [10, 5, 3]
    gen = np.random.default_rng(2)
    ours_nodes, peer_nodes, ours_edges, peer_edges = [], [], [], []
    for b in range(150):
        seeds = gen.choice(indptr.size - 1, 32, replace=False).astype(np.int64)
        p_nodes, p_src, p_dst = peer(indptr, indices, seeds, fanouts)
        o_nodes, _, _, _, offsets = ours(indptr, indices, seeds, fanouts, key=b)
        peer_edges.append(peer_edges_per_hop(p_src, p_dst, seeds.size, len(fanouts)))
        ours_edges.append(np.diff(offsets))
        peer_nodes.append(p_nodes.size)
        ours_nodes.append(o_nodes.size)
        assert set(o_nodes[:32]) == set(p_nodes[:32])
    rel = np.mean(ours_nodes) / np.mean(peer_nodes) - 1
    assert abs(rel) < 0.03, f"mean input nodes differ by {rel:.1%}"
    rel_edges = np.mean(ours_edges, axis=0) / np.mean(peer_edges, axis=0) - 1
    assert (np.abs(rel_edges) < 0.03).all(), f"mean edges per hop differ by {rel_edges}"
