"""Importers: OGB's raw layout (round trip, a bad input per file) and from_pyg (PyG's Data and a
duck-typed object), and a dataset from from_pyg through prepare and the loader."""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import assert_user_error

import disktrain
from disktrain.cli import main
from disktrain.errors import DataError
from disktrain.ingest import importers
from disktrain.storage.dataset import Dataset

# 6 nodes, a repeated edge and a self loop; node 5 has no edges.
SRC = np.array([0, 1, 2, 3, 4, 0, 2, 1, 3], np.int64)
DST = np.array([1, 2, 3, 4, 0, 1, 2, 4, 0], np.int64)
N = 6
FEATS = np.arange(N * 4, dtype=np.float32).reshape(N, 4) / 8 - 1
LABELS = np.array([0, 2, 1, 2, 0, 1], np.int64)
SPLIT = {"train": [0, 3, 5], "valid": [1], "test": [2, 4]}
EI = np.stack([SRC, DST])


def expected_csr(src, dst, num_nodes):
    """In-neighbor CSR: rows = dst, each row's sources sorted, repeats kept."""
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=num_nodes))])
    return indptr, src[np.lexsort((src, dst))]


def write_gz(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.writelines(",".join(map(str, np.atleast_1d(row))) + "\n" for row in rows)
    return path


def write_ogb(root: Path, split_name: str = "time") -> Path:
    """A small dataset in OGB's node property prediction layout (as ogbn-arxiv's)."""
    raw = root / "raw"
    write_gz(raw / "edge.csv.gz", np.stack([SRC, DST], axis=1))
    write_gz(raw / "num-node-list.csv.gz", [N])
    write_gz(raw / "num-edge-list.csv.gz", [len(SRC)])
    write_gz(raw / "node-feat.csv.gz", [[f"{v:.6f}" for v in row] for row in FEATS])
    write_gz(raw / "node-label.csv.gz", LABELS[:, None])
    write_gz(raw / "node_year.csv.gz", np.full((N, 1), 2020))  # an extra file: ignored
    for name, ids in SPLIT.items():
        write_gz(root / "split" / split_name / f"{name}.csv.gz", ids)
    return root


def ingest_ogb(root: Path, out: Path, *more: str) -> int:
    return main(["ingest", "--ogb", str(root), "--out", str(out), "--no-progress", *more])


@pytest.fixture
def small_blocks(monkeypatch):
    """CSV blocks of 64 bytes: every file streams in several record batches."""
    monkeypatch.setattr(importers, "_CSV_BLOCK_BYTES", 64)


def test_ogb_round_trip(tmp_path, capsys, small_blocks):
    root = write_ogb(tmp_path / "ogbn_tiny")
    out = tmp_path / "ds"
    assert ingest_ogb(root, out, "--undirected", "--chunk-rows", "2") == 0
    assert f"wrote {out}: {N} nodes, {2 * len(SRC)} edges" in capsys.readouterr().out
    ds = Dataset(out)
    indptr, indices = expected_csr(np.concatenate([SRC, DST]), np.concatenate([DST, SRC]), N)
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)
    assert ds.features.dtype == np.float32
    np.testing.assert_array_equal(ds.features[...], FEATS)
    np.testing.assert_array_equal(ds.labels, LABELS)
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        np.testing.assert_array_equal(ds.split(ours), SPLIT[theirs])
    meta = ds.meta
    assert (meta.num_classes, meta.feature_dim) == (3, 4)
    assert meta.provenance["ingest"]["importer"] == "ogb"
    assert meta.provenance["sources"]["val"].endswith("split/time/valid.csv.gz")


def test_ogb_split_choice_and_no_features(tmp_path):
    root = write_ogb(tmp_path / "o")
    write_gz(root / "split" / "random" / "train.csv.gz", [1, 2])
    write_gz(root / "split" / "random" / "valid.csv.gz", [])
    write_gz(root / "split" / "random" / "test.csv.gz", [0])
    (root / "raw" / "node-feat.csv.gz").unlink()
    assert ingest_ogb(root, tmp_path / "ds", "--ogb-split", "random") == 0
    ds = Dataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.split("train"), [1, 2])
    assert ds.split("val").size == 0 and ds.features.shape == (N, 0)
    np.testing.assert_array_equal(ds.indices, expected_csr(SRC, DST, N)[1])


# Bad inputs, at least one per file: each edits a fresh OGB tree under tmp and returns
# (extra CLI args, expected message parts).

def _edge_not_integer(root):
    rows = [f"{s},{d}" for s, d in zip(SRC, DST, strict=True)]
    rows[4] = "4,x"
    write_gz(root / "raw" / "edge.csv.gz", rows)
    return [], ["edge.csv.gz", "row 4", "column 1 (dst)", "'x'", "not an integer"]


def _edge_out_of_range(root):
    src = SRC.copy()
    src[7] = N
    write_gz(root / "raw" / "edge.csv.gz", np.stack([src, DST], axis=1))
    return [], ["edge.csv.gz", "column 0 (src) row 7", f"out of range [0, {N}): {N}"]


def _edge_three_values(root):
    rows = [f"{s},{d}" for s, d in zip(SRC, DST, strict=True)]
    rows[6] = "1,2,3"
    write_gz(root / "raw" / "edge.csv.gz", rows)
    return [], ["edge.csv.gz", "row 6: 3 values, expected 2"]


def _edge_count_mismatch(root):
    write_gz(root / "raw" / "num-edge-list.csv.gz", [len(SRC) + 1])
    return [], ["edge.csv.gz", f"{len(SRC)} edges", "num-edge-list.csv.gz", f"{len(SRC) + 1}"]


def _edge_file_missing(root):
    (root / "raw" / "edge.csv.gz").unlink()
    return [], ["edge.csv.gz: file not found"]


def _num_nodes_two_graphs(root):
    write_gz(root / "raw" / "num-node-list.csv.gz", [3, 3])
    return [], ["num-node-list.csv.gz", "2 rows, expected one node count"]


def _num_nodes_given_differs(root):
    return ["--num-nodes", "7"], ["num-node-list.csv.gz", f"{N} nodes", "num_nodes is 7"]


def _features_ragged(root):
    rows = [",".join(map(str, r)) for r in FEATS]
    rows[3] = "1,2,3"
    write_gz(root / "raw" / "node-feat.csv.gz", rows)
    return [], ["node-feat.csv.gz", "row 3: 3 values, expected 4"]


def _features_not_number(root):
    rows = [",".join(map(str, r)) for r in FEATS]
    rows[4] = "1,abc,3,4"
    write_gz(root / "raw" / "node-feat.csv.gz", rows)
    return [], ["node-feat.csv.gz", "row 4, column 1", "'abc'", "not a number"]


def _features_nan(root):
    rows = [",".join(map(str, r)) for r in FEATS]
    rows[5] = "1,2,nan,4"
    write_gz(root / "raw" / "node-feat.csv.gz", rows)
    return [], ["node-feat.csv.gz", "row 5", "column 2", "not finite"]


def _features_missing_value(root):
    rows = [",".join(map(str, r)) for r in FEATS]
    rows[2] = "1,,3,4"
    write_gz(root / "raw" / "node-feat.csv.gz", rows)
    return [], ["node-feat.csv.gz", "row 2", "missing value"]


def _features_too_few_rows(root):
    write_gz(root / "raw" / "node-feat.csv.gz", FEATS[:-1])
    return [], ["node-feat.csv.gz", f"{N - 1} rows, but num_nodes is {N}"]


def _features_too_many_rows(root):
    write_gz(root / "raw" / "node-feat.csv.gz", np.concatenate([FEATS, FEATS]))
    return [], ["node-feat.csv.gz", f"more than {N} rows"]


def _labels_count(root):
    write_gz(root / "raw" / "node-label.csv.gz", LABELS[:-1, None])
    return [], ["node-label.csv.gz", f"{N - 1} labels, but num_nodes is {N}"]


def _labels_negative(root):
    labels = LABELS.copy()
    labels[2] = -1
    write_gz(root / "raw" / "node-label.csv.gz", labels[:, None])
    return [], ["node-label.csv.gz", "row 2: negative label -1"]


def _labels_nan(root):
    rows = [str(v) for v in LABELS]
    rows[3] = "nan"
    write_gz(root / "raw" / "node-label.csv.gz", rows)
    return [], ["node-label.csv.gz", "row 3", "'nan'", "not an integer"]


def _labels_blank_line(root):
    rows = [str(v) for v in LABELS]
    rows[1] = ""
    write_gz(root / "raw" / "node-label.csv.gz", rows)
    return [], ["node-label.csv.gz", "row 1: missing value"]


def _labels_not_gzip(root):
    (root / "raw" / "node-label.csv.gz").write_text("0\n1\n")
    return [], ["node-label.csv.gz", "cannot read"]


def _labels_multi_task(root):
    write_gz(root / "raw" / "node-label.csv.gz", np.zeros((N, 3), np.int64))
    return [], ["node-label.csv.gz", "3 values per row, expected one class id", "multi-task"]


def _split_file_missing(root):
    (root / "split" / "time" / "valid.csv.gz").unlink()
    return [], ["split/time/valid.csv.gz: split file not found"]


def _split_out_of_range(root):
    write_gz(root / "split" / "time" / "train.csv.gz", [0, 9])
    return [], ["train.csv.gz", "train split row 1: node id 9 out of range [0, 6)"]


def _splits_overlap(root):
    write_gz(root / "split" / "time" / "test.csv.gz", [2, 3])
    return [], ["test.csv.gz", "node 3 is in both the train and the test split"]


def _several_splits(root):
    write_gz(root / "split" / "random" / "train.csv.gz", [0])
    return [], ["several splits (random, time)", "--ogb-split"]


def _unknown_split(root):
    return ["--ogb-split", "species"], ["split/species: no such split; present: time"]


def _no_raw_dir(root):
    for path in (root / "raw").iterdir():
        path.unlink()
    (root / "raw").rmdir()
    return [], ["no raw/ directory", "raw/edge.csv.gz"]


def _heterogeneous(root):
    write_gz(root / "raw" / "triplet-type-list.csv.gz", [["paper", "cites", "paper"]])
    return [], ["heterogeneous"]


def _ogb_with_features(root):
    np.save(root / "f.npy", FEATS)
    return ["--features", str(root / "f.npy")], ["do not give features too"]


BAD_OGB = [
    _edge_not_integer, _edge_out_of_range, _edge_three_values, _edge_count_mismatch,
    _edge_file_missing, _num_nodes_two_graphs, _num_nodes_given_differs, _features_ragged,
    _features_not_number, _features_nan, _features_missing_value, _features_too_few_rows,
    _features_too_many_rows, _labels_count, _labels_negative, _labels_nan, _labels_blank_line,
    _labels_not_gzip, _labels_multi_task,
    _split_file_missing, _split_out_of_range, _splits_overlap, _several_splits, _unknown_split,
    _no_raw_dir, _heterogeneous, _ogb_with_features,
]


@pytest.mark.parametrize("case", BAD_OGB, ids=lambda f: f.__name__.strip("_"))
def test_ogb_bad_input(tmp_path, capsys, small_blocks, case):
    root = write_ogb(tmp_path / "o")
    args, parts = case(root)
    out = tmp_path / "out" / "ds"
    with pytest.raises(SystemExit) as exit_info:
        ingest_ogb(root, out, "--chunk-rows", "2", *args)
    assert_user_error(exit_info.value.code, capsys.readouterr().err, *parts)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no dataset, no tmp dir


def test_lines_from_skips_to_a_row(tmp_path):
    """The error path's line reader, across its 1 MiB read blocks (and a blank line)."""
    lines = [f"{i},{2 * i}" for i in range(200_000)]
    lines[150_001] = ""
    path = write_gz(tmp_path / "a.csv.gz", lines)
    for start in (0, 1, 99_999, 150_001, 199_999, 200_000):
        got = list(importers._lines_from(path, start))
        assert [line.decode() for _, line in got] == lines[start:]
        assert [row for row, _ in got] == list(range(start, len(lines)))


def test_ogb_and_edges_exclusive(tmp_path, capsys):
    root = write_ogb(tmp_path / "o")
    for args in (["--ogb", str(root), "--edges", str(root / "raw" / "edge.csv.gz")], []):
        with pytest.raises(SystemExit) as exit_info:
            main(["ingest", *args, "--out", str(tmp_path / "ds")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert ("not allowed with" if args else "one of the arguments --edges --ogb") in err


# from_pyg

def _check_dataset(path: Path, feature_dtype=np.float32, features=FEATS, labels=LABELS):
    ds = Dataset(path)
    indptr, indices = expected_csr(SRC, DST, N)
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)
    assert ds.features.dtype == feature_dtype
    np.testing.assert_array_equal(ds.features[...], features.astype(feature_dtype))
    if labels is None:
        assert ds.meta.num_classes == 0
    else:
        np.testing.assert_array_equal(ds.labels, labels)
    assert ds.meta.provenance["ingest"]["importer"] == "pyg"
    return ds


def _mask(ids):
    mask = torch.zeros(N, dtype=torch.bool)
    mask[ids] = True
    return mask


def test_from_pyg_data(tmp_path):
    pyg = pytest.importorskip("torch_geometric.data")
    data = pyg.Data(x=torch.from_numpy(FEATS), edge_index=torch.from_numpy(EI),
                    y=torch.from_numpy(LABELS), train_mask=_mask(SPLIT["train"]),
                    val_mask=_mask(SPLIT["valid"]), test_mask=_mask(SPLIT["test"]))
    out = disktrain.from_pyg(data, tmp_path / "ds", progress=False)
    ds = _check_dataset(out)
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        np.testing.assert_array_equal(ds.split(ours), SPLIT[theirs])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        disktrain.from_pyg(data, out, progress=False)
    hetero = pyg.HeteroData()
    with pytest.raises(DataError, match="to_homogeneous"):
        disktrain.from_pyg(hetero, tmp_path / "h", progress=False)


def test_from_pyg_duck_typed(tmp_path):
    """No PyG needed: numpy arrays and tensors; float16 kept, int features to float32, y as
    (N, 1), OGB-style split ids overriding a mask, a missing mask skipped."""
    x16 = FEATS.astype(np.float16)
    data = SimpleNamespace(x=torch.from_numpy(x16),
                           edge_index=np.stack([SRC, DST]).astype(np.int32),
                           y=torch.from_numpy(LABELS[:, None]), train_mask=np.ones(N, bool))
    out = disktrain.from_pyg(data, tmp_path / "ds", splits={"train": torch.tensor([1, 2]),
                                                            "valid": np.array([0])},
                             progress=False, chunk_rows=2)
    ds = _check_dataset(out, np.float16, x16)
    np.testing.assert_array_equal(ds.split("train"), [1, 2])
    np.testing.assert_array_equal(ds.split("val"), [0])
    assert not (out / "test").exists()

    ints = np.arange(N * 3).reshape(N, 3)
    bare = SimpleNamespace(edge_index=torch.from_numpy(np.stack([SRC, DST])), x=ints)
    ds = _check_dataset(disktrain.from_pyg(bare, tmp_path / "bare", progress=False),
                        np.float32, ints, labels=None)
    assert not (tmp_path / "bare" / "train").exists()

    no_x = SimpleNamespace(edge_index=np.stack([SRC, DST]), num_nodes=N + 2)
    ds = Dataset(disktrain.from_pyg(no_x, tmp_path / "no_x", progress=False))
    assert ds.meta.num_nodes == N + 2 and ds.features.shape == (N + 2, 0)



@pytest.mark.parametrize(("data", "message"), [
    (SimpleNamespace(x=FEATS), "data has no edge_index"),
    (SimpleNamespace(edge_index=EI.T.copy()), r"data.edge_index has shape \(9, 2\)"),
    (SimpleNamespace(edge_index=EI.astype(float)), "dtype float64"),
    (SimpleNamespace(edge_index=np.stack([SRC, np.where(DST == 2, 7, DST)]), x=FEATS),
     (r"data.edge_index\[1, 1\] \(target of edge 1\): node id out of range \[0, 6\): 7 "
      r"\(num_nodes from the rows of data.x\)")),
    (SimpleNamespace(edge_index=EI, x=FEATS, num_nodes=5),
     "data.x has 6 rows, but data.num_nodes is 5"),
    (SimpleNamespace(edge_index=EI, x=FEATS[:, 0]), r"data.x has shape \(6,\)"),
    (SimpleNamespace(edge_index=EI, x=FEATS, y=FEATS[:, 0]), "data.y has shape .* float32"),
    (SimpleNamespace(edge_index=EI, x=FEATS, y=LABELS[:4]), "data.y: 4 labels, but num_nodes"),
    (SimpleNamespace(edge_index=EI, x=FEATS, y=LABELS - 1), "data.y: row 0: negative label -1"),
    (SimpleNamespace(edge_index=EI, x=FEATS, val_mask=np.ones((N, 3), bool)),
     r"data.val_mask has shape \(6, 3\).*pick one"),
    (SimpleNamespace(edge_index=EI, x=FEATS, test_mask=np.array([1, 9])),
     "data.test_mask: test split row 1: node id 9 out of range"),
    (SimpleNamespace(edge_index=EI, x=np.where(FEATS > 1, np.inf, FEATS)),
     "data.x: row 4, column 1: value inf is not finite"),
    (SimpleNamespace(edge_index=EI, x=[[1.0]] * N), "data.x is a list"),
])
def test_from_pyg_bad_input(tmp_path, data, message):
    with pytest.raises(DataError, match=message):
        disktrain.from_pyg(data, tmp_path / "ds", progress=False)
    assert not any(tmp_path.iterdir())


def test_from_pyg_trains_with_the_loader(tmp_path):
    """A from_pyg dataset goes through `disktrain prepare` and disktrain.Loader."""
    rng = np.random.default_rng(0)
    n, e = 60, 400
    x = rng.standard_normal((n, 5)).astype(np.float32)
    data = SimpleNamespace(x=torch.from_numpy(x),
                           edge_index=torch.from_numpy(rng.integers(0, n, (2, e))),
                           y=torch.from_numpy(rng.integers(0, 3, n)),
                           train_mask=torch.from_numpy(np.arange(n) < 40),
                           val_mask=torch.from_numpy(np.arange(n) >= 50),
                           test_mask=torch.from_numpy((np.arange(n) >= 40) & (np.arange(n) < 50)))
    out = disktrain.from_pyg(data, tmp_path / "ds", progress=False)
    assert main(["prepare", str(out), "--fanouts", "3,2", "--batch-size", "16",
                 "--no-progress"]) == 0
    with disktrain.Loader(out, split="train", plan_reuse="cycle") as loader:
        batches = list(loader)
    assert len(batches) == len(loader) >= 2
    seeds = torch.cat([b.n_id[:b.batch_size] for b in batches])
    assert sorted(seeds.tolist()) == list(range(40))
    for batch in batches:
        assert torch.equal(batch.x, torch.from_numpy(x[batch.n_id.numpy()]))
        assert torch.equal(batch.y, data.y[batch.n_id])
    val = next(iter(disktrain.Loader(out, split="val")))
    assert val.n_id[:val.batch_size].min() >= 50
