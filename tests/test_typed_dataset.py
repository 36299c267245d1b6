"""Typed datasets (issue 26): written from TypedInputs, read as one global id space, checked
by verify; bad input named, nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
from tinygraphs import feature_source, make_typed_dataset, typed_inputs

from disktrain.errors import DataError
from disktrain.ingest.typed import write_typed_dataset
from disktrain.storage.chunkfile import chunk_file
from disktrain.storage.dataset import Dataset, TypedDataset
from disktrain.verify import verify


def _csr_of(src, dst, num_dst):
    """The deduplicated in-neighbour CSR of edges src -> dst, rows sorted."""
    pairs = np.unique(np.stack([dst, src], 1), axis=0)
    indptr = np.searchsorted(pairs[:, 0], np.arange(num_dst + 1))
    return indptr, pairs[:, 1]


def test_typed_dataset_reads_back_what_was_written(tmp_path):
    inputs = typed_inputs()
    path = write_typed_dataset(tmp_path / "ds", inputs, add_reverse=True, dedup=True,
                               progress=False)
    ds = Dataset(path)
    assert isinstance(ds, TypedDataset)
    assert ds.type_names == ["paper", "author", "subject"]  # the target type first
    assert ds.type_offsets.tolist() == [0, 60, 150, 155] and ds.num_nodes == 155
    assert ds.meta.feature_dim == 6 and ds.meta.feature_dtype == "float32"
    assert len(ds.relations) == 6 and ("author", "rev_written_by", "paper") in ds.relations
    src, dst = inputs.relations[("paper", "written_by", "author")]()[0]
    for rel, (s, d, n) in {("paper", "written_by", "author"): (src, dst, 90),
                           ("author", "rev_written_by", "paper"): (dst, src, 60)}.items():
        indptr, indices = ds.relation_csr(rel)
        want = _csr_of(s, d, n)
        assert np.array_equal(indptr, want[0]) and np.array_equal(indices, want[1])
    papers = np.concatenate([b for _, b in inputs.features["paper"].blocks(1000)])
    authors = np.concatenate([b for _, b in inputs.features["author"].blocks(1000)])
    rows = ds.gather_sorted(np.array([0, 59, 60, 149]))
    assert np.array_equal(rows[:2], papers[[0, 59]])
    assert np.array_equal(rows[2:, :4], authors[[0, 89]].astype(np.float32))
    assert not rows[2:, 4:].any()  # narrower types zero-padded
    got = np.concatenate([r for _, _, r in ds.iter_sorted(np.arange(150), 256)])
    assert np.array_equal(got, ds.gather_sorted(np.arange(150)))
    with pytest.raises(DataError, match="node type 'subject' has no features"):
        ds.gather_sorted(np.array([150]))
    assert np.array_equal(ds.labels, inputs.labels)
    assert np.array_equal(ds.split("train"), inputs.splits["train"])
    info = ds.info()
    assert list(info["relations"])[:3] == [
        "paper__cites__paper", "paper__written_by__author", "paper__about__subject"]
    assert info["node_types"]["subject"] == {"num_nodes": 5, "features": "none"}
    assert verify(path).clean


def test_verify_names_a_damaged_relation(tmp_path):
    path = make_typed_dataset(tmp_path / "ds")
    file = chunk_file(path / "relations" / "paper__written_by__author" / "indices", 0)
    data = bytearray(file.read_bytes())
    data[0] ^= 0xFF
    file.write_bytes(bytes(data))
    report = verify(path)
    assert not report.clean
    assert any(p.array == "relations/paper__written_by__author/indices"
               for p in report.problems)


@pytest.mark.parametrize("change,message", [
    ({"relations": {("paper", "cites", "venue"): list}},
     r"relation \('paper', 'cites', 'venue'\): destination type 'venue' is not a node type"),
    ({"features": {"paper": feature_source(np.zeros((59, 6), np.float32))}},
     "node type 'paper': features .* have 59 rows, but the type has 60 nodes"),
    ({"target_type": "author"},
     "split 'train' entry .*|labels must be integers, one per 'author' node"),
    ({"labels": None}, "split 'train' on type 'paper', which has no labels"),
    ({"labels": np.full(60, -1)}, "node .* of type 'paper' has no label"),
    ({"node_counts": {"paper": 60, "author": 90, "sub__ject": 5}},
     "node type name 'sub__ject'"),
])
def test_bad_typed_inputs_are_named(change, message):
    with pytest.raises(DataError, match=message):
        typed_inputs(**change)


def test_ids_past_a_types_count_are_named_and_nothing_is_left(tmp_path):
    bad = typed_inputs(relations={
        ("paper", "written_by", "author"): lambda: [(np.array([0, 1, 2]), np.array([3, 90, 4]))]})
    with pytest.raises(DataError, match=r"relation \('paper', 'written_by', 'author'\): edge 1 "
                                        r"has destination id 90, outside \[0, 90\) of type "
                                        "'author'"):
        write_typed_dataset(tmp_path / "ds", bad, progress=False)
    assert list(tmp_path.iterdir()) == []  # no dataset, no temporary
