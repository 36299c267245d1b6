"""First-hop aggregation at pack time (issue 24): a store packed with it gives each batch its
first-layer targets' own rows and their aggregates, equal to what the first layer computes
from the raw rows of a plain store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SAMPLE, prepare
from tinygraphs import make_dataset

from disktrain.errors import DataError
from disktrain.loader import Loader
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader
from disktrain.models import ModelConfig
from disktrain.models.gcn import GCNConv
from disktrain.models.sage import mean_by_dst
from disktrain.pack import PackConfig, PackedStore
from disktrain.storage.dataset import Dataset
from disktrain.train import TrainConfig, train
from disktrain.verify import verify

CACHES = {"none": {}, "cpu": {"cpu_cache_bytes": 1024},
          "gpu and cpu": {"gpu_cache_bytes": 512, "cpu_cache_bytes": 1024}}


def _reference(kind: str, x: torch.Tensor, block) -> torch.Tensor:
    """The first layer's aggregate of the raw rows ``x`` as the layers compute it."""
    if kind == "mean":
        return mean_by_dst(x, block.src, block.dst, block.num_dst)
    conv = GCNConv(x.shape[1], x.shape[1], bias=False)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.eye(x.shape[1]))
    return conv(x, block).detach()


def _batches(path, cfg):
    return [(mb.index, mb.x.clone(), None if mb.x_agg is None else mb.x_agg.clone(),
             mb.blocks, mb.labels) for mb in PackedLoader(path, cfg)(range(
                 PackedLoader(path, cfg).num_batches))]


@pytest.mark.parametrize("caches", CACHES)
@pytest.mark.parametrize("kind", ["mean", "gcn"])
def test_aggregated_batches_equal_the_first_layer_of_plain_ones(tiny_dataset, kind, caches):
    cfg = LoaderConfig(prefetch=1, degrees=True)
    plain = prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256, **CACHES[caches]))
    want = _batches(tiny_dataset, cfg)
    store = prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256, aggregate_first_hop=kind,
                                                  **CACHES[caches]))
    assert store.aggregate == kind and plain.aggregate is None
    assert store.info()["packed_rows"] < plain.info()["packed_rows"]
    got = _batches(tiny_dataset, cfg)
    assert len(got) == len(want) == plain.num_batches
    for (b, x, x_agg, blocks, labels), (wb, wx, _, wblocks, wlabels) in zip(got, want):
        inner = wblocks[0].num_dst
        assert b == wb and torch.equal(labels, wlabels)
        assert torch.equal(x, wx[:inner])  # the targets' own rows, in place
        assert len(blocks) == len(SAMPLE.fanouts) - 1
        for g, w in zip(blocks, wblocks[1:], strict=True):
            assert (g.num_src, g.num_dst) == (w.num_src, w.num_dst)
            for name in ("src", "dst", "src_degree"):
                assert torch.equal(getattr(g, name), getattr(w, name)), name
        torch.testing.assert_close(x_agg, _reference(kind, wx, wblocks[0]), atol=1e-5,
                                   rtol=1e-5)
    report = verify(tiny_dataset)
    assert report.clean, report.problems


def test_aggregated_store_is_repacked_when_the_option_changes(tiny_dataset):
    first = prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256, aggregate_first_hop="mean"))
    again = prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256))
    assert again.store_id != first.store_id and again.aggregate is None
    assert PackedStore(tiny_dataset).num_batches == first.num_batches
    assert Dataset(tiny_dataset).num_nodes == 300


@pytest.mark.parametrize("kind", ["mean", "gcn"])
def test_float16_features_are_summed_in_float32(tmp_path, kind):
    path = make_dataset(tmp_path / "half", dtype=np.float16)
    cfg = LoaderConfig(prefetch=1, degrees=True)
    prepare(path, pack=PackConfig(chunk_bytes=256))
    want = _batches(path, cfg)
    prepare(path, pack=PackConfig(chunk_bytes=256, aggregate_first_hop=kind))
    for (_, x, x_agg, _, _), (_, wx, _, wblocks, _) in zip(_batches(path, cfg), want,
                                                           strict=True):
        assert torch.equal(x, wx[:wblocks[0].num_dst])
        ref = _reference(kind, wx.float(), wblocks[0])  # stored as float16: rounded once
        torch.testing.assert_close(x_agg.float(), ref.half().float(), atol=1e-3, rtol=1e-3)


def test_unknown_aggregation_is_refused_by_name():
    with pytest.raises(ValueError, match="aggregate_first_hop must be one of .* got 'max'"):
        PackConfig(aggregate_first_hop="max")


def test_loader_refuses_aggregated_batches_unless_asked(tiny_dataset):
    prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256, aggregate_first_hop="mean"))
    with pytest.raises(DataError, match="packed with --aggregate-first-hop mean: .* pass "
                                        r"Loader\(\.\.\., aggregated=True\)"):
        Loader(tiny_dataset)
    loader = Loader(tiny_dataset, aggregated=True, max_batches=1)
    batch = next(iter(loader))
    assert loader.aggregate == "mean" and batch.x_agg.shape == batch.x.shape
    assert batch.x_agg.dtype == torch.float32 and len(batch.blocks) == len(SAMPLE.fanouts) - 1


@pytest.mark.parametrize("model,kind", [("sage", "mean"), ("gcn", "gcn")])
def test_training_on_aggregated_batches_matches_plain(tiny_dataset, model, kind):
    """Same batches, same parameters at the start: the same losses and accuracy (within
    float rounding) with the first hop aggregated at pack time."""
    def run(aggregate):
        prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256, aggregate_first_hop=aggregate),
                evaluation=True)
        return train(TrainConfig(dataset=str(tiny_dataset), epochs=2, progress=False,
                                 model=ModelConfig(model=model, hidden=16, dropout=0.0)))
    plain, aggregated = run("off"), run(kind)
    assert PackedStore(tiny_dataset).aggregate == kind
    assert aggregated["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    assert aggregated["test_acc"] == plain["test_acc"]
    with pytest.raises(ValueError, match="packed with .*aggregate.* 'gcn'"):
        prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256, aggregate_first_hop="gcn"))
        train(TrainConfig(dataset=str(tiny_dataset), epochs=1, model=ModelConfig(model="sage")))
