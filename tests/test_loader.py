"""The public loader: PyG's batch layout, shuffling, sharding, resuming, evaluation splits."""

import shutil

import numpy as np
import pytest
import torch
from helpers import prepare
from tinygraphs import make_dataset

import disktrain
from disktrain.errors import DataError
from disktrain.pack import PackConfig
from disktrain.sample import SampleConfig, SampleStore
from disktrain.storage.dataset import Dataset

SAMPLE = {"fanouts": (4, 3), "batch_size": 24, "seed": 0, "group_size": 2}


def _prepare(path, epochs=1, dtype=np.float32):
    prepare(make_dataset(path, dtype=dtype), SampleConfig(**SAMPLE, epochs=epochs),
            PackConfig(gpu_cache_bytes=20 * 64, cpu_cache_bytes=30 * 64, chunk_bytes=512),
            evaluation=True)
    return path


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("loader") / "g")


def _edges(dataset: Dataset) -> set[tuple[int, int]]:
    indptr, indices = np.asarray(dataset.indptr), np.asarray(dataset.indices)
    dst = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return set(zip(indices.tolist(), dst.tolist(), strict=True))


def test_batches_have_pyg_neighbor_loader_layout(ds):
    dataset = Dataset(ds)
    graph, features, labels = _edges(dataset), dataset.features[:], dataset.labels
    loader = disktrain.Loader(ds, plan_reuse="cycle")
    seeds = []
    for batch in loader:
        n = batch.num_nodes
        assert batch.x.dtype == torch.float32 and batch.x.shape == (n, 16)
        assert torch.equal(batch.x, torch.from_numpy(features[batch.n_id.numpy()]))
        assert torch.equal(batch.y, torch.from_numpy(labels[batch.n_id.numpy()]))
        assert sum(batch.num_sampled_nodes) == n and batch.num_sampled_nodes[0] == \
            batch.batch_size
        assert sum(batch.num_sampled_edges) == batch.edge_index.shape[1]
        src, dst = batch.edge_index.numpy()
        n_id = batch.n_id.numpy()
        assert set(zip(n_id[src].tolist(), n_id[dst].tolist(), strict=True)) <= graph
        # hop k's edges point into the nodes first reached at hop k - 1, from nodes reached
        # by hop k, and every node's in-edges come from one hop (one sample)
        reached = np.cumsum(batch.num_sampled_nodes)
        at = 0
        for hop, count in enumerate(batch.num_sampled_edges):
            low = reached[hop - 1] if hop else 0
            assert ((dst[at:at + count] >= low) & (dst[at:at + count] < reached[hop])).all()
            assert int(src[at:at + count].max(initial=-1)) < reached[hop + 1]
            at += count
        seeds_block = batch.blocks[-1]  # hop 1: the seeds' in-edges, all of them
        assert batch.num_sampled_edges[0] == seeds_block.num_edges
        # the same edges as the blocks, which the model sees
        assert batch.blocks[-1].num_dst == batch.batch_size
        seeds.append(batch.n_id[:batch.batch_size])
    assert sorted(torch.cat(seeds).tolist()) == sorted(dataset.split("train").tolist())
    assert len(loader) == len(seeds) == SampleStore(ds).batches_per_epoch


def test_to_pyg_and_trim_to_layer(ds):
    pyg = pytest.importorskip("torch_geometric")
    from torch_geometric.nn import GraphSAGE
    from torch_geometric.utils import trim_to_layer

    batch = next(iter(disktrain.Loader(ds, plan_reuse="cycle")))
    data = batch.to_pyg()
    assert isinstance(data, pyg.data.Data) and data.batch_size == batch.batch_size
    torch.manual_seed(0)
    model = GraphSAGE(16, 8, num_layers=2).eval()
    full = model(data.x, data.edge_index)[:data.batch_size]
    trimmed = model(data.x, data.edge_index, num_sampled_nodes_per_hop=data.num_sampled_nodes,
                    num_sampled_edges_per_hop=data.num_sampled_edges)[:data.batch_size]
    assert torch.allclose(full, trimmed, atol=1e-5)
    x, edge_index, _ = trim_to_layer(1, data.num_sampled_nodes, data.num_sampled_edges,
                                     data.x, data.edge_index)
    assert x.shape[0] == sum(data.num_sampled_nodes[:-1])
    assert edge_index.shape[1] == sum(data.num_sampled_edges[:-1])


def test_shuffle_per_epoch_and_shards(ds):
    loader = disktrain.Loader(ds, plan_reuse="cycle")
    first = loader.batch_ids()
    loader.set_epoch(1)
    assert not np.array_equal(loader.batch_ids(), first)
    loader.set_epoch(0)
    assert np.array_equal(loader.batch_ids(), first)
    shares = [disktrain.Loader(ds, rank=r, world_size=2, plan_reuse="cycle").batch_ids()
              for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(first) // 2
    assert not set(shares[0]) & set(shares[1])
    val = [disktrain.Loader(ds, "val", rank=r, world_size=2) for r in range(2)]
    got = sorted(t for v in val for b in v for t in b.n_id[:b.batch_size].tolist())
    assert got == sorted(Dataset(ds).split("val").tolist())  # every seed, once


def test_state_dict_resumes_mid_epoch(ds):
    loader = disktrain.Loader(ds, plan_reuse="cycle")
    loader.set_epoch(1)
    it = iter(loader)
    [next(it) for _ in range(3)]
    state = loader.state_dict()
    rest = [b.index for b in it]
    again = disktrain.Loader(ds, plan_reuse="cycle")
    again.load_state_dict(state)
    assert [b.index for b in again] == rest
    assert [b.index for b in again] == loader.batch_ids(1).tolist()  # then whole epochs
    with pytest.raises(ValueError, match="world_size 1, this loader 2"):
        disktrain.Loader(ds, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        again.load_state_dict({**state, "version": 99})


def test_batches_stay_valid_and_dtype_is_asked_for(tmp_path):
    path = _prepare(tmp_path / "half", dtype=np.float16)
    batches = list(disktrain.Loader(path, plan_reuse="cycle"))
    features = Dataset(path).features[:]
    for b in batches:  # every batch held until the end
        assert b.x.dtype == torch.float32
        assert torch.equal(b.x, torch.from_numpy(features[b.n_id.numpy()]).float())
    kept = list(disktrain.Loader(path, dtype=torch.float16, plan_reuse="cycle"))
    assert kept[0].x.dtype == torch.float16


def test_the_public_batch_shares_the_pipeline_batch_tensors(ds):
    from disktrain.loader.pipeline import PackedLoader

    for mb in PackedLoader(ds)(range(3)):
        batch = disktrain.Batch.of(mb)
        assert batch.x is mb.x and batch.blocks is mb.blocks and batch.index == mb.index
        assert batch.n_id.numpy().ctypes.data == mb.input_nodes.ctypes.data  # not copied
        assert batch.batch_size == len(mb.labels) and batch.y is None
        assert batch.num_sampled_nodes[0] == batch.batch_size


def test_unlabelled_dataset_and_missing_eval(tmp_path):
    path = _prepare(tmp_path / "g")
    shutil.rmtree(path / "labels")
    batch = next(iter(disktrain.Loader(path, plan_reuse="cycle")))
    assert batch.y is None and batch.seed_labels is None
    shutil.rmtree(path / "eval")
    with pytest.raises(DataError, match="no packed val batches"):
        disktrain.Loader(path, "val")


@pytest.mark.slow
def test_fresh_epochs_are_the_presampled_ones(tmp_path):
    one, two = _prepare(tmp_path / "one"), _prepare(tmp_path / "two", epochs=2)
    with disktrain.Loader(one, epochs=2) as fresh:
        fresh.set_epoch(1)
        got = [(b.n_id[:b.batch_size].tolist(), sorted(b.n_id.tolist())) for b in fresh]
    want = disktrain.Loader(two, plan_reuse="cycle")
    want.set_epoch(1)
    # the same seeds and nodes (the last hop's row order follows each store's caches)
    assert got == [(b.n_id[:b.batch_size].tolist(), sorted(b.n_id.tolist())) for b in want]
    assert not any((one / "epochs").iterdir())  # deleted once read, with the run
