"""Synthetic R-MAT datasets: determinism, graph shape, planted classes, splits, config checks."""

import google_crc32c
import numba
import numpy as np
import pytest
import zarr
from helpers import needs_two_threads

from disktrain.ingest.synth import (
    EdgeGenerator,
    SynthConfig,
    class_centroids,
    node_features,
    node_labels,
    synthesize,
)
from disktrain.kernels import rmat as krmat
from disktrain.storage.dataset import Dataset


def _cfg(tmp_path, name="ds", **kw):
    base = {"num_nodes": 1000, "avg_degree": 8.0, "feature_dim": 6, "num_classes": 4,
            "seed": 1, "chunk_edges": 1500, "progress": False}
    base.update(kw)
    return SynthConfig(out=tmp_path / name, **base)


def _arrays(path):
    ds = Dataset(path)
    out = {name: np.array(getattr(ds, name)) for name in ("indptr", "indices", "labels")}
    out["features"] = np.asarray(ds.features[...])
    out.update({s: np.array(ds.split(s)) for s in ("train", "val", "test")})
    return out


def _chunk_files(path):
    """Every file of the dataset but the group's zarr.json (which holds its id and time)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p != path / "zarr.json"}


def _edges(cfg):
    src, dst = zip(*EdgeGenerator(cfg)())
    return np.concatenate(src), np.concatenate(dst)


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    a = _arrays(synthesize(_cfg(tmp_path, "a")))
    b = _arrays(synthesize(_cfg(tmp_path, "b", chunk_edges=333)))
    c = _arrays(synthesize(_cfg(tmp_path, "c", seed=2)))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for name in ("indices", "labels", "features", "train"):
        assert not np.array_equal(a[name], c[name]), name


def test_chunks_do_not_change_edges_or_features(tmp_path):
    cfg = _cfg(tmp_path)
    src, dst = EdgeGenerator(cfg).chunk(0, cfg.num_input_edges)
    src_c, dst_c = _edges(_cfg(tmp_path, chunk_edges=101))
    np.testing.assert_array_equal(src, src_c)
    np.testing.assert_array_equal(dst, dst_c)
    whole = node_features(cfg, 0, cfg.num_nodes)
    parts = np.concatenate([node_features(cfg, a, min(a + 97, cfg.num_nodes))
                            for a in range(0, cfg.num_nodes, 97)])
    np.testing.assert_array_equal(whole, parts)


@needs_two_threads
def test_thread_count_does_not_change_output(tmp_path):
    cfg = _cfg(tmp_path, num_nodes=3000)
    gen = EdgeGenerator(cfg)  # chunk() runs in this thread (set_num_threads is per thread)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = (*gen.chunk(0, cfg.num_input_edges), node_features(cfg, 0, cfg.num_nodes))
        numba.set_num_threads(2)
        two = (*gen.chunk(0, cfg.num_input_edges), node_features(cfg, 0, cfg.num_nodes))
    finally:
        numba.set_num_threads(before)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kw", [{"feature_dtype": "float16"}, {"dedup": True},
                                {"undirected": False, "feature_dim": 5}])
@pytest.mark.slow
def test_memory_budget_and_threads_do_not_change_output(tmp_path, kw):
    """The CSR built a row at a time, in buckets of a few rows read in groups, or in one
    bucket, on 1 or 2 threads: the same files, byte for byte."""
    kw = {"num_nodes": 300, "num_classes": 3, **kw}
    ref = _chunk_files(synthesize(_cfg(tmp_path, "ref", **kw)))
    before = numba.get_num_threads()
    try:
        for k, (rows, budget, threads) in enumerate([(1, 1, 2), (4, 200, 1), (32, 2000, 2),
                                                     (1 << 16, 1 << 20, 1)]):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            out = synthesize(_cfg(tmp_path, f"b{k}", csr_bucket_rows=rows,
                                  csr_memory_bytes=budget, **kw))
            assert _chunk_files(out) == ref, (rows, budget, threads)
            assert sorted(p.name for p in out.iterdir()) == sorted(
                ["zarr.json", "indptr", "indices", "features", "labels", "train", "val",
                 "test"])  # no spill or partial file left
    finally:
        numba.set_num_threads(before)


def test_feature_chunks_written_whole_with_crc(tmp_path):
    """A partial last chunk is stored full-size, zero-padded, with its crc32c (what Zarr
    writes), so zarr reads the features back."""
    cfg = _cfg(tmp_path, num_nodes=70_000, feature_dim=40, feature_dtype="float16")
    out = synthesize(cfg)
    arr = zarr.open_array(out / "features", mode="r")
    rows = arr.chunks[0]
    assert cfg.num_nodes % rows and cfg.num_nodes // rows >= 1
    np.testing.assert_array_equal(arr[...], node_features(cfg, 0, cfg.num_nodes)
                                  .astype(np.float16))
    last = out / "features" / "c" / str(cfg.num_nodes // rows) / "0"
    data = last.read_bytes()
    assert len(data) == rows * 40 * 2 + 4
    tail = np.frombuffer(data[:-4], np.float16)[(cfg.num_nodes % rows) * 40:]
    assert tail.size and not tail.any()
    assert int.from_bytes(data[-4:], "little") == google_crc32c.value(data[:-4])


@pytest.mark.parametrize("n", [2, 3, 5, 64, 1000, 4097])
def test_permutation_is_a_bijection(n):
    cfg_bits = (n - 1).bit_length()
    perm = np.array([[3, 99, 12345, 7], [5, 77, 1 << 40 | 1, 9]], np.uint64)
    image = [krmat.permute(v, n, perm, cfg_bits) for v in range(n)]
    assert sorted(image) == list(range(n))


def test_edges_in_range_and_degree_skewed_not_by_id(tmp_path):
    cfg = _cfg(tmp_path, num_nodes=5000, avg_degree=16.0, homophily=0.0, undirected=False)
    src, dst = _edges(cfg)
    assert src.shape == dst.shape == (cfg.num_input_edges,) == (80_000,)
    for ids in (src, dst):
        assert ids.min() >= 0 and ids.max() < cfg.num_nodes
    deg = np.bincount(np.concatenate([src, dst]), minlength=cfg.num_nodes)
    assert deg.max() > 15 * deg.mean()
    assert abs(np.corrcoef(np.arange(cfg.num_nodes), deg)[0, 1]) < 0.1


@pytest.mark.parametrize("homophily", [0.0, 0.5, 0.9])
def test_homophily_fraction(tmp_path, homophily):
    cfg = _cfg(tmp_path, num_nodes=4000, num_classes=5, homophily=homophily)
    ds = Dataset(synthesize(cfg))
    rows = np.repeat(np.arange(cfg.num_nodes), np.diff(ds.indptr))
    same = np.mean(ds.labels[rows] == ds.labels[ds.indices])
    expected = homophily + (1 - homophily) / cfg.num_classes
    assert same == pytest.approx(expected, abs=0.03)


def test_dataset_layout(tmp_path):
    cfg = _cfg(tmp_path, num_nodes=999, feature_dtype="float16", train_fraction=0.1,
               val_fraction=0.0, test_fraction=0.3)
    ds = Dataset(synthesize(cfg))
    assert ds.meta.num_nodes == 999 and ds.meta.num_edges == 2 * cfg.num_input_edges
    assert ds.meta.num_edges == pytest.approx(999 * 8, abs=2)
    assert ds.meta.provenance["sources"]["generator"] == "rmat"
    assert ds.features.shape == (999, 6) and ds.features.dtype == np.float16
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (999,)
    counts = np.bincount(ds.labels, minlength=cfg.num_classes)
    assert counts.max() - counts.min() <= 1
    assert ds.indices.max() < 999 and ds.indptr[-1] == ds.meta.num_edges
    train, val, test = (ds.split(s) for s in ("train", "val", "test"))
    assert (train.size, val.size, test.size) == (99, 0, 300)
    both = np.concatenate([train, test])
    assert np.unique(both).size == both.size and both.min() >= 0 and both.max() < 999
    assert zarr.open_group(cfg.out, mode="r")["val"].shape == (0,)


def test_dedup_drops_repeats_and_self_loops(tmp_path):
    ds = Dataset(synthesize(_cfg(tmp_path, num_nodes=300, avg_degree=30.0, dedup=True)))
    rows = np.repeat(np.arange(300), np.diff(ds.indptr))
    pairs = rows.astype(np.int64) * 300 + ds.indices
    assert np.unique(pairs).size == pairs.size
    assert not np.any(rows == ds.indices)
    assert ds.meta.num_edges < 300 * 30


def test_neighbor_mean_beats_own_features(tmp_path):
    """The planted signal: one node's features are ambiguous, its neighborhood's are not."""
    cfg = _cfg(tmp_path, num_nodes=3000, avg_degree=10.0, feature_dim=64, num_classes=8)
    ds = Dataset(synthesize(cfg))
    x = np.asarray(ds.features[...], np.float64)
    deg = np.diff(ds.indptr)
    rows = np.repeat(np.arange(cfg.num_nodes), deg)
    agg = x.copy()
    np.add.at(agg, rows, x[ds.indices])
    agg /= (1 + deg)[:, None]
    centroids = class_centroids(cfg)

    def accuracy(z):
        dist = ((z[:, None, :] - centroids[None]) ** 2).sum(-1)
        return np.mean(dist.argmin(1) == ds.labels)

    raw, smoothed = accuracy(x), accuracy(agg)
    assert raw < 0.75 and smoothed > raw + 0.2, (raw, smoothed)


def test_refuses_existing_output(tmp_path):
    synthesize(_cfg(tmp_path, num_nodes=50, num_classes=2))
    with pytest.raises(FileExistsError):
        synthesize(_cfg(tmp_path, num_nodes=50, num_classes=2))
    synthesize(_cfg(tmp_path, num_nodes=50, num_classes=2, overwrite=True))


@pytest.mark.parametrize("bad", [
    {"num_nodes": 1}, {"num_nodes": 10.5}, {"num_classes": 1}, {"num_classes": 2000},
    {"feature_dim": 0}, {"seed": -1}, {"chunk_edges": 0}, {"avg_degree": 0.0},
    {"avg_degree": float("nan")}, {"homophily": 1.5}, {"noise": -1.0},
    {"train_fraction": -0.1}, {"test_fraction": 1.2}, {"feature_dtype": "int8"},
    {"csr_memory_bytes": 0}, {"csr_bucket_rows": 0},
    {"csr_bucket_rows": 12},
])
def test_config_errors_name_parameter_and_value(tmp_path, bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=name) as info:
        _cfg(tmp_path, **bad)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_config_error_fractions_sum(tmp_path):
    with pytest.raises(ValueError, match="train_fraction \\+ val_fraction"):
        _cfg(tmp_path, train_fraction=0.7, val_fraction=0.2, test_fraction=0.2)


def test_wide_feature_rows_fill_many_chunks_per_block(tmp_path):
    """Rows of 2.4 MB: a chunk is one row and a generated block holds 13 chunks, more than
    the pool's default depth; every chunk is written and checks."""
    cfg = _cfg(tmp_path, num_nodes=20, avg_degree=2.0, feature_dim=600_000, num_classes=2)
    out = synthesize(cfg)
    arr = zarr.open_array(out / "features", mode="r")
    assert arr.chunks == (1, 600_000)
    np.testing.assert_array_equal(arr[...], node_features(cfg, 0, cfg.num_nodes))


def test_feature_noise_is_normal_with_the_configured_std(tmp_path):
    q = krmat.normal_quantiles()
    assert q.shape == (65536,) and np.all(np.diff(q) > 0)
    np.testing.assert_allclose(q, -q[::-1], atol=1e-12)  # symmetric about 0
    cfg = _cfg(tmp_path, num_nodes=20_000, feature_dim=64, noise=0.5)
    noise = (node_features(cfg, 0, cfg.num_nodes)
             - class_centroids(cfg)[node_labels(cfg, 0, cfg.num_nodes)]) / cfg.noise
    assert noise.mean() == pytest.approx(0, abs=0.01)
    assert noise.std() == pytest.approx(1, abs=0.01)
    assert (np.abs(noise) < 1).mean() == pytest.approx(0.6827, abs=0.005)
    assert (np.abs(noise) < 2).mean() == pytest.approx(0.9545, abs=0.003)
    # neighbouring columns of a row are not correlated (four draws share one hash)
    assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.03
