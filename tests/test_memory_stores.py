"""The stores' in-memory twins: the loader reads them as it reads the stores on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SAMPLE, prepare
from tinygraphs import make_typed_dataset

from disktrain.errors import DataError
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader
from disktrain.pack import PackConfig, PackedStore, Tiers
from disktrain.pack.memory import MemoryPacked
from disktrain.pack.prepare import prepare_dataset
from disktrain.pack.store import PackedSource
from disktrain.sample import SampleConfig, SampleStore
from disktrain.sample.memory import MemorySamples
from disktrain.sample.store import SampleSource
from disktrain.storage.dataset import Dataset

CACHES = {"none": {}, "cpu": {"cpu_cache_bytes": 1024},
          "gpu and cpu": {"gpu_cache_bytes": 512, "cpu_cache_bytes": 1024}}
"""Cache sizes of the prepared stores (rows of 64 bytes): every tier mix the loader reads."""


def _twins(path, packed: PackedStore) -> tuple[MemorySamples, MemoryPacked]:
    """The twins of the stores prepared at ``path``: sampled here, packed from the raw
    features with ``packed``'s tiers."""
    dataset = Dataset(path)
    samples = MemorySamples.sample(dataset, SAMPLE)
    features = dataset.feature_rows(0, dataset.num_nodes)
    return samples, MemoryPacked(samples, features, Tiers(packed.gpu_nodes, packed.cpu_nodes))


def test_twins_and_stores_offer_the_loader_the_same_interface(prepared):
    samples, packed = _twins(prepared, PackedStore(prepared))
    assert isinstance(samples, SampleSource) and isinstance(SampleStore(prepared), SampleSource)
    assert isinstance(packed, PackedSource) and isinstance(PackedStore(prepared), PackedSource)
    assert not isinstance(packed, SampleSource) and not isinstance(samples, PackedSource)


def test_sampled_in_memory_are_the_stored_batches(prepared):
    store = SampleStore(prepared)
    samples, _ = _twins(prepared, PackedStore(prepared))
    assert (samples.num_batches, samples.batches_per_epoch, samples.config) == \
        (store.num_batches, store.batches_per_epoch, store.config)
    for b in range(store.num_batches):
        got, want = samples.batch(b), store.batch(b)
        assert got.index == want.index == b
        for name in ("nodes", "hop_counts", "edge_src", "edge_dst", "edge_offsets"):
            assert np.array_equal(getattr(got, name), getattr(want, name)), (b, name)
        assert samples.inner_count(b) == store.inner_count(b)


@pytest.mark.parametrize("caches", CACHES)
def test_the_loader_gives_the_same_batches_from_twins_and_stores(tiny_dataset, caches):
    store = prepare(tiny_dataset, pack=PackConfig(chunk_bytes=256, **CACHES[caches]))
    assert (store.n_gpu > 0, store.n_cpu > 0) == ("gpu" in caches, "cpu" in caches)
    samples, packed = _twins(tiny_dataset, store)
    assert np.array_equal(packed.cache_rows(), store.cache_rows())
    assert all(np.array_equal(packed.slots(b), store.slots(b))
               for b in range(store.num_batches))
    cfg = LoaderConfig(prefetch=1, degrees=True)
    disk = PackedLoader(tiny_dataset, cfg)
    memory = PackedLoader(tiny_dataset, cfg, stores=(samples, packed))
    order = list(reversed(range(disk.num_batches)))
    seen = 0
    for want, got in zip(disk(order), memory(order), strict=True):
        assert got.index == want.index
        assert torch.equal(got.x, want.x)
        assert np.array_equal(got.input_nodes, want.input_nodes)
        assert torch.equal(got.labels, want.labels)
        assert len(got.blocks) == len(want.blocks) == len(SAMPLE.fanouts)
        for g, w in zip(got.blocks, want.blocks, strict=True):
            assert (g.num_src, g.num_dst) == (w.num_src, w.num_dst)
            for name in ("src", "dst", "src_degree"):
                assert torch.equal(getattr(g, name), getattr(w, name)), name
        seen += 1
    assert seen == disk.num_batches


@pytest.mark.parametrize("wrong", ["feature dim", "dtype"])
def test_a_twin_of_other_features_is_refused_by_name(prepared, wrong):
    dataset = Dataset(prepared)
    samples = MemorySamples.sample(dataset, SAMPLE)
    features = dataset.feature_rows(0, dataset.num_nodes)
    features = features[:, :8] if wrong == "feature dim" else features.astype(np.float64)
    packed = MemoryPacked(samples, features, Tiers(np.zeros(0, np.int64), np.zeros(0, np.int64)))
    want = "8 float32" if wrong == "feature dim" else "16 float64"
    with pytest.raises(DataError, match=f"rows of {want} features, but dataset "
                                        f".*{prepared.name} has 16 float32 features"):
        PackedLoader(prepared, stores=(samples, packed))
    with pytest.raises(ValueError, match=r"features must be 2-D .* got shape \(300,\)"):
        MemoryPacked(samples, features[:, 0], Tiers(np.zeros(0, np.int64), np.zeros(0, np.int64)))


def test_typed_twins_give_the_loader_the_stored_batches(tmp_path):
    path = make_typed_dataset(tmp_path / "typed")
    sample = SampleConfig(fanouts=(3, 2), batch_size=8)
    prepare_dataset(path, sample, PackConfig(chunk_bytes=256, cpu_cache_bytes=300),
                    evaluation=False, progress=False)
    store, dataset = PackedStore(path), Dataset(path)
    samples = MemorySamples.sample(dataset, sample)
    features = np.zeros((dataset.num_nodes, dataset.meta.feature_dim), np.float32)
    for i, t in enumerate(dataset.types):
        ids = np.arange(dataset.type_offsets[i], dataset.type_offsets[i + 1])
        if t.feature_dim:
            features[ids] = dataset.gather_sorted(ids)
    packed = MemoryPacked(samples, features, Tiers(store.gpu_nodes, store.cpu_nodes))
    cfg = LoaderConfig(prefetch=1)
    disk, memory = PackedLoader(path, cfg), PackedLoader(path, cfg, stores=(samples, packed))
    order = list(range(disk.num_batches))
    for want, got in zip(disk(order), memory(order), strict=True):
        assert torch.equal(got.x, want.x) and torch.equal(got.labels, want.labels)
        assert got.type_rows == want.type_rows
        assert all(torch.equal(got.n_id_dict[t], want.n_id_dict[t]) for t in want.n_id_dict)
        for g, w in zip(got.blocks, want.blocks, strict=True):
            assert (g.num_src, g.num_dst) == (w.num_src, w.num_dst) and g.edges.keys() == \
                w.edges.keys()
            assert all(torch.equal(a, b) for r in w.edges for a, b in zip(g.edges[r],
                                                                          w.edges[r]))
