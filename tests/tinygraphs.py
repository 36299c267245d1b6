"""Tiny datasets for tests, written straight through the format module."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr

from disktrain.ingest.csr import CSRConfig, build_csr
from disktrain.ingest.inputs import FeatureSource
from disktrain.ingest.typed import TypedInputs, write_typed_dataset
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


def make_link_dataset(path: Path, num_nodes: int = 200, num_edges: int = 2000, dim: int = 8,
                      eval_negatives: int = 20, seed: int = 0) -> Path:
    """A graph split for link prediction: 10% of random edges held out (half val, half test,
    with ``eval_negatives`` random destinations each), the rest the CSR and ``link_train``.
    Features carry a planted signal: nodes of one of 4 groups link mostly within it."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, num_nodes)
    src = rng.integers(0, num_nodes, num_edges)
    dst = np.where(rng.random(num_edges) < 0.8,  # a random node of src's group, mostly
                   _same_group(rng, group, src), rng.integers(0, num_nodes, num_edges))
    keep = src != dst
    pairs = np.unique(np.stack((src[keep], dst[keep]), 1), axis=0)
    held = rng.random(len(pairs)) < 0.1
    train, held = pairs[~held], pairs[held]
    with atomic_dir(path) as tmp:
        g = zarr.open_group(tmp, mode="w")
        e = build_csr(g, lambda: [(train[:, 0], train[:, 1])], num_nodes, len(train),
                      CSRConfig(progress=False))
        feats = create_features(g, num_nodes, dim, np.float32)
        feats[...] = (np.eye(4, dim)[group] + 0.3 * rng.standard_normal((num_nodes, dim))
                      ).astype(np.float32)
        indptr, indices = g["indptr"][:], g["indices"][:]
        rows = np.repeat(np.arange(num_nodes), np.diff(indptr))
        write_small_array(g, "link_train", np.stack((indices, rows), 1).astype(np.int32))
        for name, part in (("link_val", held[::2]), ("link_test", held[1::2])):
            write_small_array(g, name, part.astype(np.int64))
            write_small_array(g, f"{name}_neg",
                              rng.integers(0, num_nodes, (len(part), eval_negatives)))
        g.attrs.update(asdict(DatasetMeta(num_nodes=num_nodes, num_edges=e, feature_dim=dim,
                                          num_classes=0, feature_dtype="float32")))
    return path


def _same_group(rng, group: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """A random member of each node's group."""
    members = [np.flatnonzero(group == k) for k in range(group.max() + 1)]
    return np.array([rng.choice(members[group[v]]) for v in nodes])


def feature_source(x: np.ndarray, name: str = "mem") -> FeatureSource:
    """An in-memory feature matrix as a :class:`FeatureSource`."""
    return FeatureSource(Path(name), x.shape[0], x.shape[1], np.dtype(x.dtype),
                         lambda rows: ((i, x[i:i + rows]) for i in range(0, len(x), rows)),
                         lambda j: f"feature {j}")


def typed_inputs(num_papers: int = 60, num_authors: int = 90, num_subjects: int = 5,
                 seed: int = 0, **changes) -> TypedInputs:
    """A tiny typed graph: papers (target, 6 float32 features, 3 classes) cite papers, are
    written by authors (4 float16 features) and are about subjects (featureless)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, num_papers)
    papers = rng.standard_normal((num_papers, 6)).astype(np.float32)
    papers[:, 0] += labels  # learnable
    authors = rng.standard_normal((num_authors, 4)).astype(np.float16)
    cites = (rng.integers(0, num_papers, 4 * num_papers), rng.integers(0, num_papers,
                                                                       4 * num_papers))
    written = (rng.integers(0, num_papers, 3 * num_papers), rng.integers(0, num_authors,
                                                                         3 * num_papers))
    about = (np.arange(num_papers), labels % num_subjects)
    perm = rng.permutation(num_papers)
    a, b = num_papers // 2, 3 * num_papers // 4
    fields = {
        "node_counts": {"author": num_authors, "paper": num_papers, "subject": num_subjects},
        "relations": {("paper", "cites", "paper"): lambda: [cites],
                   ("paper", "written_by", "author"): lambda: [written],
                   ("paper", "about", "subject"): lambda: [about]},
        "target_type": "paper",
        "features": {"paper": feature_source(papers), "author": feature_source(authors)},
        "labels": labels, "splits": {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}}
    return TypedInputs(**{**fields, **changes})


def make_typed_dataset(path: Path, **changes) -> Path:
    """:func:`typed_inputs` written with reverse relations."""
    return write_typed_dataset(path, typed_inputs(**changes), add_reverse=True, progress=False)
