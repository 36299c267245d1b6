"""Models with a pre-aggregated first layer (issue 24): given the first layer's targets' own
rows and their aggregate (kernels/aggregate.py) and the blocks above, SAGE and GCN give the
plain path's first-layer outputs and logits (same parameters); the settings that cannot are
refused naming the option."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from disktrain.kernels.aggregate import first_hop_edges, scatter_add_rows
from disktrain.loader.batch import Batch, MiniBatch
from disktrain.models import Block, GNNConfig, ModelConfig, build_model
from disktrain.train.trainer import _check_first_hop

KIND = {"sage": "mean", "gcn": "gcn"}


def _batch(rng, num_layers, dim=12):
    """(x, blocks, degree): a random sampled batch of ``num_layers`` chained blocks with
    whole-graph in-degrees; some targets without in-edges, some ``i -> i`` edges."""
    sizes = [50, 24, 10, 4][-num_layers - 1:]
    degree = rng.integers(0, 20, sizes[0])
    edges = []
    for num_src, num_dst in itertools.pairwise(sizes):
        src = rng.integers(0, num_src, 4 * num_src)
        dst = rng.integers(0, num_dst - 1, 4 * num_src)  # the last target gets no edge
        src[:2] = dst[:2]
        pairs = np.unique(np.stack([dst, src], 1), axis=0)  # no duplicate edges
        src, dst = pairs[:, 1], pairs[:, 0]
        count = np.bincount(dst, minlength=num_dst)
        degree[:num_dst] = np.maximum(degree[:num_dst], count)
        edges.append((src, dst, num_src, num_dst))
    blocks = [Block.from_numpy(*e, degree) for e in edges]
    x = rng.standard_normal((sizes[0], dim)).astype(np.float32)
    return x, blocks, degree


def _aggregate(kind, x, block, degree):
    """The first layer's aggregate as the packer makes it (tests/test_aggregate.py)."""
    src, dst, w = first_hop_edges(kind, block.src.numpy(), block.dst.numpy(), block.num_dst,
                                  degree[:block.num_src])
    out = np.zeros((block.num_dst, x.shape[1]), np.float32)
    order = np.argsort(src, kind="stable")
    scatter_add_rows(out, x, src[order], dst[order], w[order])
    return torch.from_numpy(out)


def _model(model, num_layers, **kw):
    torch.manual_seed(0)
    return build_model(GNNConfig(model=model, in_dim=12, hidden=16, num_classes=5,
                                 num_layers=num_layers, **kw)).eval()


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("model", ["sage", "gcn"])
def test_pre_aggregated_equals_plain(model, num_layers):
    x, blocks, degree = _batch(np.random.default_rng(num_layers), num_layers)
    x_agg = _aggregate(KIND[model], x, blocks[0], degree)
    x, n = torch.from_numpy(x), blocks[0].num_dst
    net = _model(model, num_layers)
    conv = net.convs[0]
    assert torch.allclose(conv.aggregated(x[:n], x_agg), conv(x, blocks[0]), atol=1e-5)
    with torch.no_grad():
        want = net(x, blocks)
        got = net(x[:n], blocks[1:], x_agg)
    assert got.shape == want.shape == (blocks[-1].num_dst, 5)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_mlp_ignores_the_aggregate(num_layers):
    x, blocks, degree = _batch(np.random.default_rng(7), num_layers)
    x_agg = _aggregate("mean", x, blocks[0], degree)
    x, n = torch.from_numpy(x), blocks[0].num_dst
    net = _model("mlp", num_layers)
    assert torch.equal(net(x[:n], blocks[1:], x_agg), net(x, blocks))


@pytest.mark.parametrize(("cfg", "match"), [
    ({"model": "gat", "heads": 2}, "'gat' attends"),
    ({"model": "sage", "input_dropout": 0.2}, "input_dropout = 0.2"),
])
def test_model_refuses_what_it_cannot_take(cfg, match):
    x, blocks, degree = _batch(np.random.default_rng(3), 2)
    x_agg = _aggregate("mean", x, blocks[0], degree)
    net = _model(num_layers=2, **cfg)
    n = blocks[0].num_dst
    with pytest.raises(ValueError, match=f"--aggregate-first-hop.*{match}"):
        net(torch.from_numpy(x[:n]), blocks[1:], x_agg)
    net(torch.from_numpy(x), blocks)  # the plain path still works


def test_block_count_with_aggregate():
    x, blocks, degree = _batch(np.random.default_rng(4), 2)
    x_agg = _aggregate("mean", x, blocks[0], degree)
    with pytest.raises(ValueError, match="expected 1 blocks .*pre-aggregated first.*got 2"):
        _model("sage", 2)(torch.from_numpy(x), blocks, x_agg)


@pytest.mark.parametrize(("cfg", "first_hop"), [
    ({"model": "sage"}, "mean"), ({"model": "gcn"}, "gcn"), ({"model": "gat"}, None),
    ({"model": "mlp"}, None), ({"model": "gcn", "input_dropout": 0.5}, None),
])
def test_first_hop_by_model(cfg, first_hop):
    assert ModelConfig(**cfg).first_hop == first_hop


@pytest.mark.parametrize(("cfg", "aggregate", "match"), [
    ({"model": "sage"}, "gcn",
     "'sage' aggregates its first layer with 'mean', not 'gcn'; prepare with 'mean'"),
    ({"model": "gcn"}, "mean", "'gcn' aggregates its first layer with 'gcn', not 'mean'"),
    ({"model": "gat"}, "mean", "'gat' attends over every raw neighbour row; prepare without"),
    ({"model": "sage", "input_dropout": 0.1}, "mean", "input_dropout = 0.1"),
])
def test_check_first_hop_refuses(cfg, aggregate, match):
    with pytest.raises(ValueError, match=f"^ds: packed with --aggregate-first-hop / "
                                         f"PackConfig.aggregate_first_hop = '{aggregate}'"):
        ModelConfig(**cfg).check_first_hop(aggregate, "ds")
    with pytest.raises(ValueError, match=match):
        ModelConfig(**cfg).check_first_hop(aggregate, "ds")


@pytest.mark.parametrize(("model", "aggregates"), [
    ("sage", ["mean"]), ("gcn", ["gcn"]), ("gat", []), ("mlp", ["mean", "gcn"]),
])
def test_check_first_hop_accepts(model, aggregates):
    for aggregate in [None, *aggregates]:  # None: packed without aggregation, every model
        ModelConfig(model=model, heads=2).check_first_hop(aggregate, "ds")


def test_trainer_checks_each_loader():
    loaders = [SimpleNamespace(dataset_dir="ds", split=s, aggregate=a)
               for s, a in (("train", "mean"), ("val", "gcn"))]
    _check_first_hop(ModelConfig(model="sage"), loaders[:1])
    with pytest.raises(ValueError, match="ds's val batches: packed with"):
        _check_first_hop(ModelConfig(model="sage"), loaders)
    _check_first_hop(ModelConfig(model="gat"), [SimpleNamespace(dataset_dir="ds",
                                                                split="train", aggregate=None)])


def test_batch_carries_the_aggregate():
    x, x_agg = torch.ones(4, 3), torch.zeros(4, 3)
    mb = MiniBatch(0, x=x, x_agg=x_agg, input_nodes=np.arange(4))
    batch = Batch.of(mb)
    assert batch.x_agg is x_agg and batch.batch_size == 4  # one layer: every row a seed
    assert Batch.of(mb, x_agg=x_agg.double()).x_agg.dtype == torch.float64
    assert Batch.of(MiniBatch(0, x=x, input_nodes=np.arange(4))).x_agg is None
