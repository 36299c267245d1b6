"""Typed graphs end to end (issue 26): sampled per relation, packed as one sequential range
per batch, loaded in PyG's HeteroData layout and as HeteroBlocks, trained with R-SAGE/R-GAT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinygraphs import make_typed_dataset

from disktrain.errors import DataError
from disktrain.loader import Loader
from disktrain.models import ModelConfig
from disktrain.pack import PackConfig
from disktrain.pack.prepare import prepare_dataset
from disktrain.sample import SampleConfig
from disktrain.sample.store import SampleStore
from disktrain.storage.dataset import Dataset
from disktrain.train import TrainConfig, train
from disktrain.verify import verify

SAMPLE = SampleConfig(fanouts=(4, 3), batch_size=8, relation_fanouts={"about": (1, 0)})
CACHES = {"none": {}, "cpu": {"cpu_cache_bytes": 600},
          "gpu and cpu": {"gpu_cache_bytes": 300, "cpu_cache_bytes": 600}}


@pytest.fixture
def typed(tmp_path):
    return make_typed_dataset(tmp_path / "typed")


def _edge_exists(ds, rel, src_global, dst_global) -> bool:
    s, d = ds.type_index(rel[0]), ds.type_index(rel[2])
    indptr, indices = ds.relation_csr(rel)
    row = dst_global - ds.type_offsets[d]
    return src_global - ds.type_offsets[s] in indices[indptr[row]:indptr[row + 1]]


@pytest.mark.parametrize("caches", CACHES)
def test_typed_batches_hold_each_types_rows_and_real_edges(typed, caches):
    prepare_dataset(typed, SAMPLE, PackConfig(chunk_bytes=256, **CACHES[caches]),
                    progress=False)
    assert verify(typed).clean
    ds = Dataset(typed)
    raw = {t.name: ds.gather_sorted(np.arange(ds.type_offsets[i], ds.type_offsets[i + 1]))
           [:, :t.feature_dim] for i, t in enumerate(ds.types) if t.feature_dim}
    samples = SampleStore(typed)
    with Loader(typed, shuffle=False) as loader:
        batches = list(loader)
    assert len(batches) == samples.num_batches == 4
    seeds = np.concatenate([b.n_id_dict["paper"][:b.batch_size].numpy() for b in batches])
    assert np.array_equal(np.sort(seeds), np.sort(ds.split("train")))
    for batch in batches:
        assert set(batch.x_dict) == {"paper", "author"}  # subject has no features
        for t, x in batch.x_dict.items():
            assert torch.equal(x, torch.from_numpy(raw[t][batch.n_id_dict[t].numpy()]))
        n = batch.batch_size
        assert torch.equal(batch.seed_labels, torch.from_numpy(ds.labels[batch.n_id_dict[
            "paper"][:n]]))
        for block in batch.blocks:
            for rel, (src, dst) in block.edges.items():
                s_ids = batch.n_id_dict[rel[0]][src] + int(ds.type_offsets[ds.type_index(rel[0])])
                d_ids = batch.n_id_dict[rel[2]][dst] + int(ds.type_offsets[ds.type_index(rel[2])])
                assert all(_edge_exists(ds, rel, int(a), int(b)) for a, b in zip(s_ids, d_ids))
        assert ("paper", "about", "subject") not in batch.blocks[0].edges  # fanout 0, hop 2
        for i in range(len(batch.blocks) - 1):
            assert batch.blocks[i].num_dst == batch.blocks[i + 1].num_src


def test_typed_batch_as_pyg_heterodata(typed):
    pytest.importorskip("torch_geometric")
    prepare_dataset(typed, SAMPLE, PackConfig(chunk_bytes=256), progress=False)
    with Loader(typed, shuffle=False, max_batches=1) as loader:
        batch = next(iter(loader))
    data = batch.to_pyg()
    assert data["paper"].batch_size == batch.batch_size
    assert torch.equal(data["paper"].x, batch.x_dict["paper"])
    assert data["subject"].num_nodes == len(batch.n_id_dict["subject"])
    for rel, edges in batch.edge_index_dict.items():
        assert edges.shape[0] == 2 and edges.shape[1] > 0
        assert int(edges[0].max()) < data[rel[0]].num_nodes
        assert int(edges[1].max()) < data[rel[2]].num_nodes
    assert sum(batch.num_sampled_edges) == sum(e.shape[1] for e in data.edge_index_dict.values())
    # a user's PyG hetero model runs on it (relations between the featured types)
    from torch_geometric.nn import HeteroConv, SAGEConv
    rels = [r for r in data.edge_types if r[0] in data.x_dict and r[2] in data.x_dict]
    conv = HeteroConv({r: SAGEConv((-1, -1), 8) for r in rels}, aggr="sum")
    out = conv(data.x_dict, data.edge_index_dict)
    assert out["paper"].shape == (data["paper"].num_nodes, 8)
    assert out["paper"][:batch.batch_size].isfinite().all()


@pytest.mark.parametrize("model", ["rsage", "rgat"])
def test_training_a_relational_model_on_a_typed_graph(typed, tmp_path, model):
    prepare_dataset(typed, SAMPLE, PackConfig(chunk_bytes=256), progress=False)
    result = train(TrainConfig(dataset=str(typed), epochs=3, progress=False,
                               model=ModelConfig(model=model, hidden=16, heads=2)))
    assert np.isfinite(result["loss"]) and 0.0 <= result["test_acc"] <= 1.0


def test_typed_graphs_refuse_what_they_do_not_support(typed, tmp_path):
    with pytest.raises(DataError, match="aggregate-first-hop mean is for one node type"):
        prepare_dataset(typed, SAMPLE, PackConfig(aggregate_first_hop="mean"), progress=False)
    prepare_dataset(typed, SAMPLE, PackConfig(chunk_bytes=256), progress=False)
    with pytest.raises(ValueError, match="model 'gcn' does not take a typed graph"):
        train(TrainConfig(dataset=str(typed), epochs=1, progress=False,
                          model=ModelConfig(model="gcn")))
    with pytest.raises(ValueError, match="relation_fanouts: 'nope' names no relation"):
        prepare_dataset(typed, SampleConfig(fanouts=(2,), relation_fanouts={"nope": (1,)}),
                        progress=False)
