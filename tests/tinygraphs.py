"""Tiny datasets for tests, written straight through the format module."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr

from disktrain.ingest.csr import CSRConfig, build_csr
from disktrain.storage.atomic import atomic_dir
from disktrain.storage.dataset import DatasetMeta, create_features, write_small_array


def make_dataset(path: Path, num_nodes: int = 300, num_edges: int = 3000, dim: int = 16,
                 classes: int = 4, seed: int = 0, dtype=np.float32) -> Path:
    """A random graph with random features, labels and a 50/25/25 split."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, num_nodes, num_edges)
    dst = rng.integers(0, num_nodes, num_edges)
    with atomic_dir(path) as tmp:
        g = zarr.open_group(tmp, mode="w")
        e = build_csr(g, lambda: [(src, dst)], num_nodes, num_edges,
                      CSRConfig(dedup=True, drop_self_loops=True, progress=False))
        feats = create_features(g, num_nodes, dim, dtype)
        feats[...] = rng.standard_normal((num_nodes, dim)).astype(dtype)
        write_small_array(g, "labels", rng.integers(0, classes, num_nodes))
        perm = rng.permutation(num_nodes)
        a, b = num_nodes // 2, 3 * num_nodes // 4
        for name, ids in (("train", perm[:a]), ("val", perm[a:b]), ("test", perm[b:])):
            write_small_array(g, name, np.sort(ids).astype(np.int64))
        g.attrs.update(asdict(DatasetMeta(num_nodes=num_nodes, num_edges=e, feature_dim=dim,
                                          num_classes=classes,
                                          feature_dtype=np.dtype(dtype).name)))
    return path
