"""The offline plan and the sample store: layout, determinism, resume, access counts."""

import numpy as np
import pytest

from disktrain.errors import DataError
from disktrain.sample import SampleConfig, SamplePlan, SampleStore, sample_dataset
from disktrain.sample import store as store_mod
from disktrain.storage.dataset import Dataset


def test_plan_is_a_pure_function_of_config():
    cfg = SampleConfig(batch_size=4, epochs=2, seed=3, group_size=3)
    plan = SamplePlan(cfg, np.arange(10))
    assert (plan.batches_per_epoch, plan.num_batches, plan.num_groups) == (3, 6, 2)
    assert list(plan.group_batches(1)) == [3, 4, 5]
    for epoch in range(2):
        seeds = np.concatenate([plan.batch_seeds(epoch * 3 + i) for i in range(3)])
        assert sorted(seeds) == list(range(10))
    assert not np.array_equal(plan.batch_seeds(0), plan.batch_seeds(3))
    again = SamplePlan(cfg, np.arange(10))
    assert np.array_equal(plan.batch_seeds(4), again.batch_seeds(4))


@pytest.mark.parametrize("bad", [{"fanouts": ()}, {"fanouts": (0,)}, {"batch_size": 0},
                                 {"epochs": 0}, {"seed": -1}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SampleConfig(**bad)


def test_store_layout_and_counts(tiny_dataset):
    cfg = SampleConfig(fanouts=(3, 2), batch_size=32, epochs=2, seed=1, group_size=2)
    store = sample_dataset(tiny_dataset, cfg, progress=False)
    ds = Dataset(tiny_dataset)
    plan = SamplePlan(cfg, ds.split("train"))
    assert store.num_batches == plan.num_batches
    counts = np.zeros(ds.num_nodes, np.int64)
    for b in range(store.num_batches):
        batch = store.batch(b)
        assert np.array_equal(batch.seeds, plan.batch_seeds(b))
        assert len(np.unique(batch.input_nodes)) == len(batch.input_nodes)
        counts[batch.input_nodes] += 1
        assert len(batch.blocks) == 2
        next_src = len(batch.input_nodes)
        for src, dst, num_src, num_dst in batch.blocks:
            assert num_src == next_src
            next_src = num_dst
            g_src = batch.input_nodes[src]
            g_dst = batch.input_nodes[dst]
            for u, v in zip(g_src, g_dst):
                assert u in ds.indices[ds.indptr[v]:ds.indptr[v + 1]]
        assert next_src == batch.num_seeds
    assert np.array_equal(store.access_counts, counts)
    assert store.info()["num_batches"] == plan.num_batches

    nodes = SampleStore(tiny_dataset, nodes_only=True)  # what packing reads: no blocks
    for b in range(store.num_batches):
        assert np.array_equal(nodes.input_nodes(b), store.input_nodes(b))
        assert nodes.inner_count(b) == store.inner_count(b)
    assert sorted(nodes._reader._group(0)) == ["hop_counts", "node_offsets", "nodes"]
    with pytest.raises(TypeError, match="nodes_only"):
        nodes.batch(0)


def test_resume_after_crash_matches_clean_run(tiny_dataset, tmp_path, monkeypatch):
    cfg = SampleConfig(fanouts=(4, 3), batch_size=16, epochs=1, seed=7, group_size=2)
    clean = tmp_path / "clean"
    import shutil
    shutil.copytree(tiny_dataset, clean)
    ref = sample_dataset(clean, cfg, progress=False)

    real = store_mod.sample_group
    calls = []

    def flaky(dataset, plan, group, groups_dir):
        calls.append(group)
        if group == 3:
            raise RuntimeError("killed")
        real(dataset, plan, group, groups_dir)

    monkeypatch.setattr(store_mod, "sample_group", flaky)
    with pytest.raises(RuntimeError):
        sample_dataset(tiny_dataset, cfg, progress=False)
    with pytest.raises(DataError):
        SampleStore(tiny_dataset)  # nothing that looks like a complete store
    monkeypatch.setattr(store_mod, "sample_group", real)
    resumed_groups = []
    monkeypatch.setattr(store_mod, "sample_group",
                        lambda d, p, g, o: (resumed_groups.append(g), real(d, p, g, o)))
    got = sample_dataset(tiny_dataset, cfg, progress=False)
    assert resumed_groups[0] == 3  # groups 0..2 were kept
    for b in range(ref.num_batches):
        x, y = ref.batch(b), got.batch(b)
        assert np.array_equal(x.input_nodes, y.input_nodes)
        for bx, by in zip(x.blocks, y.blocks):
            assert all(np.array_equal(p, q) for p, q in zip(bx[:2], by[:2]))


def test_crash_after_counting_still_resumes(tiny_dataset, monkeypatch):
    cfg = SampleConfig(fanouts=(2,), batch_size=64, seed=0)

    def dying_rename(src, final):
        raise OSError("killed during rename")

    monkeypatch.setattr(store_mod, "replace_dir", dying_rename)
    with pytest.raises(OSError):
        sample_dataset(tiny_dataset, cfg, progress=False)
    monkeypatch.undo()
    store = sample_dataset(tiny_dataset, cfg, progress=False)
    assert store.num_batches == 3
