"""First-hop aggregation (kernels/aggregate.py): the weighted edges and the scatter kernel give
the aggregate the first layer of SAGEConv and GCNConv computes from the raw rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from disktrain.kernels.aggregate import first_hop_edges, scatter_add_rows
from disktrain.loader.block import Block
from disktrain.models.gcn import GCNConv
from disktrain.models.sage import SAGEConv, mean_by_dst


def _block(rng, num_src=40, num_dst=12, nnz=90):
    src = rng.integers(0, num_src, nnz)
    dst = np.sort(rng.integers(0, num_dst - 2, nnz))  # the last two targets get no edge
    src[:3], dst[:3] = dst[:3], dst[:3]  # some i -> i edges
    pairs = np.unique(np.stack([dst, src], 1), axis=0)  # no duplicate edges
    return pairs[:, 1], pairs[:, 0], num_src, num_dst


def _aggregate(kind, x, src, dst, num_dst, degree=None):
    s, d, w = first_hop_edges(kind, src, dst, num_dst, degree)
    out = np.zeros((num_dst, x.shape[1]), np.float32)
    order = np.argsort(s, kind="stable")  # the packer's order: ascending source rows
    scatter_add_rows(out, x, s[order], d[order], w[order])
    return torch.from_numpy(out)


def test_mean_is_sage_mean_by_dst():
    rng = np.random.default_rng(0)
    src, dst, num_src, num_dst = _block(rng)
    x = rng.standard_normal((num_src, 16)).astype(np.float32)
    block = Block.from_numpy(src, dst, num_src, num_dst)
    want = mean_by_dst(torch.from_numpy(x), block.src, block.dst, block.num_dst)
    got = _aggregate("mean", x, src, dst, num_dst)
    assert torch.allclose(got, want, atol=1e-6)
    assert not got[-2:].any()  # no in-edges: zeros, as mean_by_dst
    conv = SAGEConv(16, 8)
    out = conv(torch.from_numpy(x), block)
    pre = conv.lin_self(torch.from_numpy(x[:num_dst])) + conv.lin_neigh(got)
    assert torch.allclose(out, pre, atol=1e-5)


def test_gcn_is_gcnconv_with_degrees():
    rng = np.random.default_rng(1)
    src, dst, num_src, num_dst = _block(rng)
    x = rng.standard_normal((num_src, 16)).astype(np.float32)
    degree = rng.integers(0, 30, num_src)
    degree[:num_dst] = np.maximum(degree[:num_dst], np.bincount(dst, minlength=num_dst))
    block = Block.from_numpy(src, dst, num_src, num_dst, degree)
    conv = GCNConv(16, 8)
    got = _aggregate("gcn", x, src, dst, num_dst, degree)
    assert torch.allclose(conv(torch.from_numpy(x), block), conv.lin(got) + conv.bias,
                          atol=1e-5)


def test_unknown_and_missing_degrees():
    with pytest.raises(ValueError, match="one of"):
        first_hop_edges("max", np.zeros(1, np.int64), np.zeros(1, np.int64), 1)
    with pytest.raises(ValueError, match="in-degree"):
        first_hop_edges("gcn", np.zeros(1, np.int64), np.zeros(1, np.int64), 1)
