"""Ingest: round trips per input format, every validation error through the CLI, and Cora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from helpers import assert_user_error

from disktrain.cli import main
from disktrain.ingest import IngestConfig, ingest
from disktrain.ingest.inputs import rechunk
from disktrain.storage.dataset import Dataset

# A 7-node graph with a repeated edge and a self loop; node 6 has no edges.
SRC = np.array([0, 1, 2, 3, 4, 5, 0, 2, 2, 5, 1], np.int64)
DST = np.array([1, 2, 3, 4, 5, 0, 1, 2, 0, 3, 4], np.int64)


def expected_csr(src, dst, num_nodes):
    """In-neighbor CSR: rows = dst, each row's sources sorted, repeats kept."""
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=num_nodes))])
    return indptr, src[np.lexsort((src, dst))]


def write_parquet(path: Path, src, dst, **more) -> Path:
    pq.write_table(pa.table({"src": src, "dst": dst, **more}), path)
    return path


def write_csv(path: Path, src, dst, sep=",") -> Path:
    rows = "".join(f"{s}{sep}{d}{sep}x\n" for s, d in zip(src, dst, strict=True))
    path.write_text(f"src{sep}dst{sep}note\n{rows}")
    return path


def write_edges(tmp: Path, kind: str, src=SRC, dst=DST) -> Path:
    if kind == "parquet":
        return write_parquet(tmp / "edges.parquet", src, dst, weight=np.ones(len(src)))
    if kind == "parquet-dir":
        (tmp / "edges").mkdir()
        for i, part in enumerate(np.array_split(np.arange(len(src)), 3)):
            write_parquet(tmp / "edges" / f"part-{i}.parquet", src[part], dst[part])
        return tmp / "edges"
    if kind == "csv":
        return write_csv(tmp / "edges.csv", src, dst)
    if kind == "tsv":
        return write_csv(tmp / "edges.tsv", src, dst, sep="\t")
    if kind == "npy":
        np.save(tmp / "edges.npy", np.stack([src, dst], axis=1).astype(np.int32))
        return tmp / "edges.npy"
    if kind == "npy-fortran":
        np.save(tmp / "edges.npy", np.asfortranarray(np.stack([src, dst], axis=1)))
        return tmp / "edges.npy"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parquet", "parquet-dir", "csv", "tsv", "npy", "npy-fortran"])
def test_round_trip(tmp_path, kind):
    edges = write_edges(tmp_path, kind)
    out = ingest(IngestConfig(edges=edges, out=tmp_path / "ds", chunk_rows=3, progress=False))
    ds = Dataset(out)
    indptr, indices = expected_csr(SRC, DST, 6)  # no features: num_nodes = max id + 1
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.indices, indices)
    assert ds.meta.num_nodes == 6 and ds.meta.num_edges == len(SRC)
    assert ds.features.shape == (6, 0) and ds.meta.num_classes == 0
    assert ds.meta.provenance["sources"]["edges"] == str(edges.resolve())


def test_options_and_num_nodes(tmp_path):
    edges = write_edges(tmp_path, "parquet")
    out = ingest(IngestConfig(edges=edges, out=tmp_path / "ds", num_nodes=7, undirected=True,
                              dedup=True, drop_self_loops=True, progress=False))
    ds = Dataset(out)
    keep = SRC != DST
    m = sp.coo_matrix((np.ones(2 * keep.sum()), (np.r_[DST[keep], SRC[keep]],
                                                 np.r_[SRC[keep], DST[keep]])), shape=(7, 7))
    m = m.tocsr()
    m.sum_duplicates()
    m.sort_indices()
    np.testing.assert_array_equal(ds.indptr, m.indptr)
    np.testing.assert_array_equal(ds.indices, m.indices)
    assert ds.meta.num_nodes == 7 and ds.meta.num_edges == m.nnz


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int8, np.bool_])
def test_npy_features_dtypes(tmp_path, dtype):
    feats = (np.random.default_rng(0).standard_normal((7, 3)) * 3).astype(dtype)
    np.save(tmp_path / "f.npy", feats)
    out = ingest(IngestConfig(edges=write_edges(tmp_path, "npy"), out=tmp_path / "ds",
                              features=tmp_path / "f.npy", progress=False))
    ds = Dataset(out)
    stored = np.float16 if dtype == np.float16 else np.float32
    assert ds.features.dtype == stored and ds.meta.feature_dtype == np.dtype(stored).name
    np.testing.assert_array_equal(ds.features[...], feats.astype(stored))
    assert ds.meta.num_nodes == 7  # from the feature rows, not the largest edge id


@pytest.mark.parametrize("layout", ["columns", "list", "fixed-list", "directory"])
def test_parquet_features(tmp_path, layout):
    feats = np.arange(21, dtype=np.float64).reshape(7, 3) / 4
    if layout == "columns":
        pq.write_table(pa.table({f"f{j}": feats[:, j] for j in range(3)}), tmp_path / "f.pq")
    elif layout == "list":
        pq.write_table(pa.table({"x": list(feats)}), tmp_path / "f.pq")
    elif layout == "fixed-list":
        column = pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), 3)
        pq.write_table(pa.table({"x": column}), tmp_path / "f.pq")
    else:
        (tmp_path / "f.pq").mkdir()
        for i, rows in enumerate(np.array_split(np.arange(7), 3)):
            pq.write_table(pa.table({"x": list(feats[rows])}), tmp_path / "f.pq" / f"{i}.parquet")
    out = ingest(IngestConfig(edges=write_edges(tmp_path, "csv"), out=tmp_path / "ds",
                              features=tmp_path / "f.pq", progress=False))
    np.testing.assert_array_equal(Dataset(out).features[...], feats.astype(np.float32))


def test_rechunk():
    blocks = [np.arange(n) for n in (1, 5, 0, 2, 7, 3)]
    got = [b.copy() for b in rechunk(iter(blocks), 4)]
    assert [len(b) for b in got] == [4, 4, 4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(blocks))


def test_labels_splits_and_cli(tmp_path, capsys):
    edges = write_edges(tmp_path, "parquet")
    np.save(tmp_path / "y.npy", np.array([0, 2, 1, 2, 0, 1, 4], np.int32))
    np.save(tmp_path / "tr.npy", np.array([0, 5, 6]))
    np.save(tmp_path / "va.npy", np.array([1], np.uint8))
    np.save(tmp_path / "te.npy", np.array([], np.int64))
    out = tmp_path / "ds"
    assert main(["ingest", "--edges", str(edges), "--out", str(out), "--num-nodes", "7",
                 "--labels", str(tmp_path / "y.npy"), "--train", str(tmp_path / "tr.npy"),
                 "--val", str(tmp_path / "va.npy"), "--test", str(tmp_path / "te.npy"),
                 "--no-progress"]) == 0
    assert f"wrote {out}: 7 nodes, 11 edges" in capsys.readouterr().out
    ds = Dataset(out)
    assert ds.meta.num_classes == 5 and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, [0, 2, 1, 2, 0, 1, 4])
    np.testing.assert_array_equal(ds.split("train"), [0, 5, 6])
    assert ds.split("val").dtype == np.int64 and ds.split("test").size == 0


# Bad inputs: each case writes files under tmp and returns (CLI args, expected message parts).

def _bad_parquet_column(tmp):
    pq.write_table(pa.table({"a": SRC, "b": DST}), tmp / "e.parquet")
    return ["--edges", tmp / "e.parquet"], ["e.parquet", "no column 'src'",
                                            "columns present: 'a', 'b'"]


def _bad_csv_column(tmp):
    write_csv(tmp / "e.csv", SRC, DST)
    return (["--edges", tmp / "e.csv", "--dst-col", "target"],
            ["e.csv", "no column 'target'", "'src', 'dst', 'note'"])


def _float_ids(tmp):
    write_parquet(tmp / "e.parquet", SRC.astype(float), DST)
    return ["--edges", tmp / "e.parquet"], ["column 'src' has type double", "integer"]


def _csv_not_integer(tmp):
    path = write_csv(tmp / "e.csv", SRC, DST)
    lines = path.read_text().splitlines()
    lines[5] = "4,1.5,x"  # data row 4
    path.write_text("\n".join(lines) + "\n")
    return (["--edges", path, "--chunk-rows", "2"],
            ["e.csv", "column 'dst' row 4", "'1.5'", "not an integer"])


def _negative_id(tmp):
    src = SRC.copy()
    src[5] = -3
    return (["--edges", write_edges(tmp, "parquet-dir", src=src), "--chunk-rows", "2"],
            ["part-1.parquet", "column 'src' row 5", "negative node id: -3"])


def _id_out_of_range(tmp):
    return (["--edges", write_edges(tmp, "npy"), "--num-nodes", "5", "--chunk-rows", "2"],
            ["edges.npy", "column 1 (dst)", "row 4", "out of range [0, 5): 5"])


def _null_id(tmp):
    pq.write_table(pa.table({"src": pa.array([0, 1, None, 2]), "dst": [1, 2, 3, 4]}),
                   tmp / "e.parquet")
    return ["--edges", tmp / "e.parquet"], ["column 'src' row 2", "null"]


def _csv_malformed(tmp):
    path = write_csv(tmp / "e.csv", SRC, DST)
    path.write_text(path.read_text() + "7\n")
    return ["--edges", path], ["e.csv", "Expected 3 columns, got 1"]


def _npy_truncated(tmp):
    np.save(tmp / "e.npy", np.stack([SRC, DST], axis=1))
    (tmp / "e.npy").write_bytes((tmp / "e.npy").read_bytes()[:-8])
    return ["--edges", tmp / "e.npy", "--chunk-rows", "4"], ["e.npy", "truncated"]


def _empty_parquet(tmp):
    write_parquet(tmp / "e.parquet", np.zeros(0, np.int64), np.zeros(0, np.int64))
    return ["--edges", tmp / "e.parquet", "--num-nodes", "3"], ["e.parquet", "empty"]


def _empty_csv(tmp):
    (tmp / "e.csv").write_text("src,dst\n")
    return ["--edges", tmp / "e.csv"], ["e.csv", "empty"]


def _empty_npy(tmp):
    np.save(tmp / "e.npy", np.zeros((0, 2), np.int64))
    return ["--edges", tmp / "e.npy"], ["e.npy", "empty"]


def _npy_wrong_shape(tmp):
    np.save(tmp / "e.npy", np.zeros((2, 5), np.int64))
    return ["--edges", tmp / "e.npy"], ["e.npy", "shape (2, 5)", "(num_edges, 2)"]


def _npy_float_edges(tmp):
    np.save(tmp / "e.npy", np.zeros((5, 2)))
    return ["--edges", tmp / "e.npy"], ["e.npy", "dtype float64"]


def _unknown_format(tmp):
    (tmp / "e.txt").write_text("0 1\n")
    return ["--edges", tmp / "e.txt"], ["e.txt", "unknown edge list format"]


def _missing_file(tmp):
    return ["--edges", tmp / "nope.parquet"], ["not found", "nope.parquet"]


def _features_rows(tmp):
    np.save(tmp / "f.npy", np.zeros((6, 2), np.float32))
    return (["--edges", write_edges(tmp, "parquet"), "--features", tmp / "f.npy",
             "--num-nodes", "7"], ["f.npy", "6 feature rows", "num_nodes is 7"])


def _features_nan(tmp):
    feats = np.zeros((7, 2), np.float32)
    feats[3, 1] = np.nan
    np.save(tmp / "f.npy", feats)
    return (["--edges", write_edges(tmp, "parquet"), "--features", tmp / "f.npy"],
            ["f.npy", "row 3, column 1", "nan", "not finite"])


def _features_inf_parquet(tmp):
    pq.write_table(pa.table({"a": np.zeros(7), "b": [0, 0, 0, 0, 0, 1e300, 0]}), tmp / "f.pq")
    return (["--edges", write_edges(tmp, "parquet"), "--features", tmp / "f.pq"],
            ["f.pq", "row 5, column 'b'", "1e+300", "overflows float32"])


def _features_strings(tmp):
    pq.write_table(pa.table({"a": np.zeros(7), "name": list("abcdefg")}), tmp / "f.pq")
    return (["--edges", write_edges(tmp, "parquet"), "--features", tmp / "f.pq"],
            ["f.pq", "column 'name' has type string"])


def _labels_rows(tmp):
    np.save(tmp / "y.npy", np.zeros(5, np.int64))
    return (["--edges", write_edges(tmp, "parquet"), "--labels", tmp / "y.npy"],
            ["y.npy", "5 labels", "num_nodes is 6", "largest node id"])


def _labels_not_npy(tmp):
    (tmp / "y.npy").write_text("0\n1\n")
    return (["--edges", write_edges(tmp, "parquet"), "--labels", tmp / "y.npy"],
            ["y.npy", "cannot read the labels as a .npy array"])


def _labels_negative(tmp):
    np.save(tmp / "y.npy", np.array([0, 1, -1, 0, 1, 0]))
    return (["--edges", write_edges(tmp, "parquet"), "--labels", tmp / "y.npy"],
            ["y.npy", "row 2", "negative label -1"])


def _labels_float(tmp):
    np.save(tmp / "y.npy", np.zeros(6))
    return (["--edges", write_edges(tmp, "parquet"), "--labels", tmp / "y.npy"],
            ["y.npy", "dtype float64", "integers"])


def _split_out_of_range(tmp):
    np.save(tmp / "va.npy", np.array([1, 9]))
    return (["--edges", write_edges(tmp, "parquet"), "--val", tmp / "va.npy"],
            ["va.npy", "val split row 1", "node id 9 out of range [0, 6)"])


def _splits_overlap(tmp):
    np.save(tmp / "tr.npy", np.array([0, 2]))
    np.save(tmp / "te.npy", np.array([3, 2]))
    return (["--edges", write_edges(tmp, "parquet"), "--train", tmp / "tr.npy",
             "--test", tmp / "te.npy"], ["te.npy", "node 2", "train", "test"])


def _split_repeats(tmp):
    np.save(tmp / "tr.npy", np.array([4, 0, 4]))
    return (["--edges", write_edges(tmp, "parquet"), "--train", tmp / "tr.npy"],
            ["tr.npy", "node 4", "more than once", "train"])


def _bad_num_nodes(tmp):
    return (["--edges", write_edges(tmp, "parquet"), "--num-nodes", "0"],
            ["num_nodes must be >= 1, got 0"])


BAD_INPUTS = [
    _bad_parquet_column, _bad_csv_column, _float_ids, _csv_not_integer, _negative_id,
    _id_out_of_range, _null_id, _csv_malformed, _npy_truncated, _empty_parquet, _empty_csv,
    _empty_npy, _npy_wrong_shape, _npy_float_edges, _unknown_format, _missing_file,
    _features_rows, _features_nan, _features_inf_parquet, _features_strings, _labels_rows,
    _labels_not_npy, _labels_negative, _labels_float, _split_out_of_range, _splits_overlap,
    _split_repeats, _bad_num_nodes,
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input(tmp_path, capsys, case):
    args, parts = case(tmp_path)
    out = tmp_path / "out" / "ds"
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", *map(str, args), "--out", str(out), "--no-progress"])
    assert_user_error(exit_info.value.code, capsys.readouterr().err, *parts)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no dataset, no tmp dir


def test_existing_output(tmp_path, capsys):
    edges = write_edges(tmp_path, "parquet")
    (tmp_path / "ds").mkdir()
    args = ["ingest", "--edges", str(edges), "--out", str(tmp_path / "ds"), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert Dataset(tmp_path / "ds").meta.num_edges == len(SRC)


def test_cora(tmp_path, capsys, cora_dir):
    out = tmp_path / "cora"
    assert main(["ingest", "--edges", str(cora_dir / "edges.parquet"), "--out", str(out),
                 "--features", str(cora_dir / "features.npy"),
                 "--labels", str(cora_dir / "labels.npy"),
                 *[a for s in ("train", "val", "test")
                   for a in (f"--{s}", str(cora_dir / f"{s}_idx.npy"))],
                 "--no-progress"]) == 0
    edges = pq.read_table(cora_dir / "edges.parquet")
    src, dst = edges["src"].to_numpy(), edges["dst"].to_numpy()
    features = np.load(cora_dir / "features.npy")
    m = sp.csr_matrix((np.ones(len(src)), (dst, src)), shape=(len(features),) * 2)
    m.sort_indices()
    ds = Dataset(out)
    np.testing.assert_array_equal(ds.indptr, m.indptr)
    np.testing.assert_array_equal(ds.indices, m.indices)
    np.testing.assert_array_equal(ds.features[...], features)
    np.testing.assert_array_equal(ds.labels, np.load(cora_dir / "labels.npy"))
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(ds.split(s), np.load(cora_dir / f"{s}_idx.npy"))
    assert (ds.meta.num_nodes, ds.meta.num_edges, ds.meta.feature_dim,
            ds.meta.num_classes) == (2708, 10556, 1433, 7)
