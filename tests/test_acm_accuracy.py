"""scripts/acm_accuracy.py on a tiny graph in the exact layout of ../shared/datasets/acm: its
typed inputs ingest with reverse relations and 0/1 features, and the PyG side trains."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import acm_accuracy as acm

from disktrain.ingest.typed import write_typed_dataset
from disktrain.storage.dataset import Dataset

RELATIONS = [["paper", "has_author", "author"], ["paper", "has_subject", "subject"]]


@pytest.fixture
def acm_dir(tmp_path) -> Path:
    """6 papers (5-d features stored as 1/k on a row's k terms, as the real file), 4 authors,
    2 subjects, 3 classes; the real file names, dtypes and (E, 2) edge arrays."""
    root = tmp_path / "acm"
    root.mkdir()
    meta = {"node_types": {"paper": 6, "author": 4, "subject": 2}, "target_type": "paper",
            "num_classes": 3, "edge_types": RELATIONS, "feature_dims": {"paper": 5}}
    (root / "meta.json").write_text(json.dumps(meta))
    terms = (np.arange(30).reshape(6, 5) % 3 == 0).astype(np.float32)
    np.save(root / "paper_features.npy", terms / terms.sum(1, keepdims=True))
    np.save(root / "labels.npy", np.array([0, 1, 2, 0, 1, 2], np.int64))
    np.save(root / "paper__has_author__author.npy",
            np.array([[0, 0], [1, 0], [1, 1], [2, 2], [3, 3], [4, 1], [5, 2]], np.int64))
    np.save(root / "paper__has_subject__subject.npy",
            np.array([[p, p % 2] for p in range(6)], np.int64))
    for name, ids in (("train", [0, 1, 2]), ("val", [3, 4]), ("test", [5])):
        np.save(root / f"{name}_idx.npy", np.array(ids, np.int64))
    return root


def test_acm_inputs_ingest_with_reverse_relations_and_binary_features(acm_dir, tmp_path):
    out = write_typed_dataset(tmp_path / "ds", acm.acm_inputs(acm_dir), add_reverse=True,
                              progress=False)
    ds = Dataset(out)
    assert sorted(ds.relations) == sorted(
        [tuple(r) for r in RELATIONS] + [("author", "rev_has_author", "paper"),
                                         ("subject", "rev_has_subject", "paper")])
    indptr, indices = ds.relation_csr(("author", "rev_has_author", "paper"))
    authors = [sorted(indices[a:b].tolist()) for a, b in itertools.pairwise(indptr)]
    assert authors == [[0], [0, 1], [2], [3], [1], [2]]  # each paper's authors
    rows = ds.feature_rows(0, 6)
    np.testing.assert_array_equal(rows, np.load(acm_dir / "paper_features.npy") > 0)
    np.testing.assert_array_equal(ds.split("val"), [3, 4])


def test_pyg_side_trains_on_the_same_graph(acm_dir):
    pytest.importorskip("torch_geometric", reason="the bench extra is not installed")
    data, target = acm.pyg_data(acm_dir)
    assert ("subject", "rev_has_subject", "paper") in data.edge_types
    assert set(data[target].x.unique().tolist()) == {0.0, 1.0}
    curve = acm.run_pyg(acm_dir, seed=0, epochs=3, every=2)
    assert [e for e, _, _ in curve] == [2, 3]
    assert all(0.0 <= acc <= 1.0 for _, val, test in curve for acc in (val, test))
