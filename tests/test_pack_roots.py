"""Packing several stores in shared passes over the raw features (`disktrain prepare`)."""

import numpy as np
import pytest
import torch
from tinygraphs import make_dataset

from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader
from disktrain.pack import PackConfig
from disktrain.pack.packer import _groups
from disktrain.pack.prepare import prepare_dataset, prepare_eval
from disktrain.sample import SampleConfig
from disktrain.storage.dataset import Dataset
from disktrain.storage.roots import eval_root
from disktrain.verify import verify

SAMPLE = SampleConfig(fanouts=(4, 3), batch_size=24, epochs=2, seed=3, group_size=3)


def _count_passes(monkeypatch) -> list[int]:
    """Record the number of ids of every pass over the raw feature rows."""
    passes, real = [], Dataset.iter_sorted

    def counted(self, ids, *args, **kw):
        passes.append(len(ids))
        return real(self, ids, *args, **kw)

    monkeypatch.setattr(Dataset, "iter_sorted", counted)
    return passes


def _assert_exact(path, root):
    """Every batch under ``root`` assembles to the raw feature rows of its input nodes."""
    raw = Dataset(path).feature_rows(0, Dataset(path).num_nodes)
    loader = PackedLoader(path, LoaderConfig(prefetch=2, read_threads=2), root=root)
    seen = 0
    for mb in loader(range(loader.num_batches)):
        assert torch.equal(mb.x, torch.from_numpy(raw[mb.input_nodes]))
        seen += 1
    assert seen == loader.num_batches > 0


@pytest.mark.parametrize("group_bytes", [1 << 20, 3000])
def test_prepare_reads_the_raw_features_once_per_pass(tmp_path, monkeypatch, group_bytes):
    path = make_dataset(tmp_path / "g")
    cfg = PackConfig(cpu_cache_bytes=40 * 64, chunk_bytes=256, group_bytes=group_bytes)
    passes = _count_passes(monkeypatch)
    packed, stores = prepare_dataset(path, SAMPLE, cfg, progress=False)
    assert sorted(stores) == ["test", "val"]
    row_bytes = 16 * 4
    groups = [len(_groups(s.batch_packed, s.chunk_rows * row_bytes, group_bytes,
                          np.zeros(s.num_batches, np.int64)))  # no aggregates
              for s in (packed, *stores.values())]
    # one pass per group of the store with the most groups, not one per group of every store
    assert len(passes) == max(groups) < sum(groups)
    for split, store in stores.items():
        assert store.tiers_id == packed.tiers_id == packed.store_id
        assert (eval_root(path, split) / "packed" / "cache_rows").exists()
    for root in (path, eval_root(path, "val"), eval_root(path, "test")):
        _assert_exact(path, root)
    assert verify(path).clean


def test_prepare_eval_alone_packs_both_splits_in_one_pass(tmp_path, monkeypatch):
    path = make_dataset(tmp_path / "g")
    cfg = PackConfig(chunk_bytes=256)
    packed, _ = prepare_dataset(path, SAMPLE, cfg, evaluation=False, progress=False)
    assert not eval_root(path, "val").exists()
    passes = _count_passes(monkeypatch)
    stores = prepare_eval(path, progress=False)
    assert len(passes) == 1 and sorted(stores) == ["test", "val"]
    assert all(s.tiers_id == packed.tiers_id for s in stores.values())
    _assert_exact(path, eval_root(path, "val"))
    again = _count_passes(monkeypatch)
    prepare_dataset(path, SAMPLE, cfg, progress=False)  # everything complete: nothing read
    assert again == []


def test_an_interrupted_shared_pass_resumes(tmp_path, monkeypatch):
    path = make_dataset(tmp_path / "g")
    cfg = PackConfig(chunk_bytes=256, group_bytes=3000)
    real = Dataset.iter_sorted
    calls = []

    def failing(self, ids, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk went away")
        return real(self, ids, *args, **kw)

    monkeypatch.setattr(Dataset, "iter_sorted", failing)
    with pytest.raises(OSError, match="went away"):
        prepare_dataset(path, SAMPLE, cfg, progress=False)
    monkeypatch.setattr(Dataset, "iter_sorted", real)
    prepare_dataset(path, SAMPLE, cfg, progress=False)
    for root in (path, eval_root(path, "val"), eval_root(path, "test")):
        _assert_exact(path, root)
    assert not any(p.name.endswith(".partial") for p in path.rglob("*"))
    assert verify(path).clean
