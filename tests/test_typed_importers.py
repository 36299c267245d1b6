"""Importers of the big graphs' published layouts: ogbn-papers100M's binary data.npz, IGB / IGBH
(headered and headerless), MAG240M and OGB's heterogeneous CSVs (ogbn-mag), each on tiny files
written in the real layout (names, dtypes, headers, compression), round trip and bad input."""

from __future__ import annotations

import datetime
import gzip
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error

from disktrain.cli import main
from disktrain.ingest import typed_importers
from disktrain.ingest.arrays import NpzMember, PairEdges
from disktrain.storage.dataset import Dataset

RNG = np.random.default_rng(7)


def write_gz(path: Path, rows, header: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        if header is not None:
            f.write(header + "\n")
        f.writelines(",".join(map(str, np.atleast_1d(row))) + "\n" for row in rows)
    return path


def expected_csr(src, dst, num_dst):
    """In-neighbour CSR: rows = dst, each row's sources sorted, repeats kept."""
    src, dst = np.asarray(src), np.asarray(dst)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=num_dst))])
    return indptr, src[np.lexsort((src, dst))]


def assert_csr(got, src, dst, num_dst):
    for a, b in zip(got, expected_csr(src, dst, num_dst), strict=True):
        np.testing.assert_array_equal(a, b)


def ingest(*args: str) -> int:
    return main(["ingest", *map(str, args), "--no-progress"])


def run_bad(capsys, out: Path, args, *needles: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest(*args, "--out", out)
    assert_user_error(exit_info.value.code, capsys.readouterr().err, *needles)
    assert not out.exists()


# ogbn-papers100M: OGB's binary layout

P_N, P_F = 9, 128
P_SRC = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 3], np.int64)
P_DST = np.array([1, 2, 3, 4, 5, 6, 7, 8, 0, 5, 3], np.int64)
P_FEAT = RNG.standard_normal((P_N, P_F)).astype(np.float32)
P_LABEL = np.array([3, np.nan, 0, 171, np.nan, 5, 2, np.nan, 1], np.float32)
P_SPLIT = {"train": [0, 2, 3], "valid": [5, 6], "test": [8]}


def write_papers100m(root: Path, label=P_LABEL, edge_index=None) -> Path:
    """ogbn-papers100M as OGB ships it (ogb/io/read_graph_raw.py read_binary_graph_raw and
    ogb/nodeproppred/dataset.py): raw/data.npz written by np.savez_compressed with
    edge_index (2, E) int64, node_feat (N, 128) float32, node_year (N, 1) int64,
    num_nodes_list and num_edges_list; raw/node-label.npz with node_label (N, 1) float32,
    NaN for unlabelled papers; split/time/{train,valid,test}.csv.gz, headerless, gzipped."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    edge_index = np.stack([P_SRC, P_DST]) if edge_index is None else edge_index
    np.savez_compressed(raw / "data.npz", edge_index=edge_index, node_feat=P_FEAT,
                        node_year=np.full((P_N, 1), 2019, np.int64),
                        num_nodes_list=np.array([P_N]), num_edges_list=np.array([len(P_SRC)]))
    np.savez_compressed(raw / "node-label.npz", node_label=np.asarray(label)[:, None])
    for name, ids in P_SPLIT.items():
        write_gz(root / "split" / "time" / f"{name}.csv.gz", ids)
    return root


def test_papers100m_binary_round_trip(tmp_path, capsys):
    root, out = write_papers100m(tmp_path / "ogbn_papers100M"), tmp_path / "ds"
    assert ingest("--ogb", root, "--out", out, "--chunk-rows", "2") == 0
    assert f"wrote {out}: {P_N} nodes, {len(P_SRC)} edges, 128 features" in capsys.readouterr().out
    ds = Dataset(out)
    assert_csr((ds.indptr, ds.indices), P_SRC, P_DST, P_N)
    np.testing.assert_array_equal(ds.features[...], P_FEAT)
    np.testing.assert_array_equal(ds.labels, np.nan_to_num(P_LABEL, nan=-1).astype(np.int64))
    assert ds.meta.num_classes == 172
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        np.testing.assert_array_equal(ds.split(ours), P_SPLIT[theirs])


def test_npz_members_stream_in_blocks(tmp_path):
    """An 8 MiB deflated edge_index read 4096 edges at a time holds far less than the member."""
    num = 1 << 19
    edge_index = np.stack([np.arange(num), np.arange(num)[::-1]]).astype(np.int64)
    np.savez_compressed(tmp_path / "data.npz", edge_index=edge_index)
    reader = PairEdges(NpzMember(tmp_path / "data.npz", "edge_index"), chunk_rows=4096)
    tracemalloc.start()
    try:
        total = 0
        for batch in reader.batches():
            assert batch.start == total and len(batch.src) <= 4096
            np.testing.assert_array_equal(batch.dst, num - 1 - batch.src)
            total += len(batch.src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == num and peak < 3 << 20, peak
    member = NpzMember(tmp_path / "data.npz", "edge_index")
    rows = [block for _, block in member.rows(1)]  # row blocks of a 2-D member
    np.testing.assert_array_equal(np.concatenate(rows), edge_index)


def test_papers100m_bad_input(tmp_path, capsys):
    label = P_LABEL.copy()
    label[5] = np.nan  # a valid node without a label
    run_bad(capsys, tmp_path / "a", ["--ogb", write_papers100m(tmp_path / "p1", label)],
            "valid.csv.gz", "val split row 0: node 5 has no label")
    label[5] = 2.5
    run_bad(capsys, tmp_path / "b", ["--ogb", write_papers100m(tmp_path / "p2", label)],
            "node-label.npz[node_label]", "row 5: label 2.5 is not a class id")
    edges = np.stack([P_SRC, P_DST])
    edges[1, 4] = P_N
    run_bad(capsys, tmp_path / "c", ["--ogb", write_papers100m(tmp_path / "p3", edge_index=edges),
                                     "--chunk-rows", "3"],
            "data.npz[edge_index]", "edge_index[1] (dst) row 4", f"out of range [0, {P_N})")


# IGB / IGBH

I_PAPERS, I_DIM = 10, 1024
I_FEAT = RNG.standard_normal((I_PAPERS, I_DIM)).astype(np.float32)
I_LABEL = np.array([0, 18, 3, 3, 7, 1, 0, 2, 5, 9], np.float32)
I_CITES = np.array([[0, 1], [1, 2], [2, 0], [3, 4], [9, 8], [5, 5], [4, 3]], np.int64)


def write_igb(root: Path, size: str = "tiny") -> Path:
    """IGB's homogeneous download (IGB-Datasets igb/download.py, igb/dataloader.py IGB260M):
    <root>/<size>/processed/paper/node_feat.npy (N, 1024) float32 and node_label_19.npy /
    node_label_2K.npy (N,) float32, np.save'd with headers in tiny/small/medium;
    paper__cites__paper/edge_index.npy (E, 2) int64."""
    processed = root / size / "processed"
    (processed / "paper").mkdir(parents=True)
    (processed / "paper__cites__paper").mkdir()
    np.save(processed / "paper" / "node_feat.npy", I_FEAT)
    np.save(processed / "paper" / "node_label_19.npy", I_LABEL)
    np.save(processed / "paper" / "node_label_2K.npy", I_LABEL * 100)
    np.save(processed / "paper__cites__paper" / "edge_index.npy", I_CITES)
    return root


def test_igb_homogeneous(tmp_path, capsys):
    root, out = write_igb(tmp_path / "igb"), tmp_path / "ds"
    assert ingest("--igb", root, "--out", out, "--chunk-rows", "3") == 0
    ds = Dataset(out)
    src, dst = I_CITES[:, 0], I_CITES[:, 1]  # --add-reverse (the default): both directions
    assert_csr((ds.indptr, ds.indices), np.r_[src, dst], np.r_[dst, src], I_PAPERS)
    np.testing.assert_array_equal(ds.features[...], I_FEAT)
    np.testing.assert_array_equal(ds.labels, I_LABEL.astype(np.int64))
    # IGB's split: the first 60% of the labelled papers, the next 20%, the rest
    for name, ids in (("train", range(6)), ("val", range(6, 8)), ("test", range(8, 10))):
        np.testing.assert_array_equal(ds.split(name), list(ids))
    assert ingest("--igb", root, "--out", tmp_path / "two", "--igb-classes", "2983",
                  "--no-add-reverse") == 0
    ds = Dataset(tmp_path / "two")
    assert ds.meta.num_edges == len(I_CITES) and ds.meta.num_classes == 1801


IGBH_COUNTS = {"paper": 10, "author": 7, "institute": 3, "fos": 4, "journal": 2,
               "conference": 2}
IGBH_HEADERLESS = ("paper", "author")
IGBH_RELATIONS = [("paper", "cites", "paper"), ("paper", "written_by", "author"),
                  ("author", "affiliated_to", "institute"), ("paper", "topic", "fos"),
                  ("paper", "published", "journal"), ("paper", "venue", "conference")]


def igbh_edges(rel) -> np.ndarray:
    src, _, dst = rel
    rng = np.random.default_rng(len(src) * 31 + len(dst))
    return np.stack([rng.integers(0, IGBH_COUNTS[src], 9),
                     rng.integers(0, IGBH_COUNTS[dst], 9)], axis=1).astype(np.int64)


def igbh_feat(t: str) -> np.ndarray:
    return np.random.default_rng(len(t)).standard_normal(
        (IGBH_COUNTS[t], I_DIM)).astype(np.float32)


def write_igbh_full(root: Path, labelled: int = 6) -> Path:
    """IGBH-full as its download scripts lay it out (IGB-Datasets
    igb/download_igbh600m.sh; read as in igb/dataloader.py IGBHeteroDGLDatasetMassive and the
    MLPerf GNN reference's dataset.py): paper and author node_feat.npy are HEADERLESS float32
    rows of 1024 (read with np.memmap), the small types' node_feat.npy have headers;
    node_label_19.npy is headerless float32 with labels for a prefix of the papers only;
    <src>__<rel>__<dst>/edge_index.npy (E, 2) int64 with a header; id-mapping files beside."""
    processed = root / "full" / "processed"
    for t, count in IGBH_COUNTS.items():
        (processed / t).mkdir(parents=True)
        path = processed / t / "node_feat.npy"
        if t in IGBH_HEADERLESS:
            igbh_feat(t).tofile(path)
        else:
            np.save(path, igbh_feat(t))
        np.save(processed / t / f"{t}_id_index_mapping.npy", np.arange(count))
    labels = np.full(IGBH_COUNTS["paper"], 99, np.float32)  # past the prefix: not labels
    labels[:labelled] = I_LABEL[:labelled]
    labels.tofile(processed / "paper" / "node_label_19.npy")
    for rel in IGBH_RELATIONS:
        (processed / "__".join(rel)).mkdir()
        np.save(processed / "__".join(rel) / "edge_index.npy", igbh_edges(rel))
    return root


def test_igbh_full_headerless_typed(tmp_path, monkeypatch):
    monkeypatch.setitem(typed_importers.IGB_FULL_LABELLED, 19, 6)  # full's labelled prefix
    root, out = write_igbh_full(tmp_path / "igbh"), tmp_path / "ds"
    assert ingest("--igb", root, "--out", out, "--chunk-rows", "4") == 0
    ds = Dataset(out)
    assert ds.type_names[0] == "paper" and sorted(ds.type_names) == sorted(IGBH_COUNTS)
    assert {t.name: t.num_nodes for t in ds.types} == IGBH_COUNTS
    for rel in IGBH_RELATIONS:
        e = igbh_edges(rel)
        assert_csr(ds.relation_csr(rel), e[:, 0], e[:, 1], IGBH_COUNTS[rel[2]])
        assert_csr(ds.relation_csr((rel[2], "rev_" + rel[1], rel[0])), e[:, 1], e[:, 0],
                   IGBH_COUNTS[rel[0]])
    for t in IGBH_COUNTS:
        k = ds.type_index(t)
        got = ds.gather_sorted(np.arange(ds.type_offsets[k], ds.type_offsets[k + 1]))
        np.testing.assert_array_equal(got, igbh_feat(t))
    expected = np.r_[I_LABEL[:6], [-1] * 4].astype(np.int64)
    np.testing.assert_array_equal(ds.labels, expected)
    for name, ids in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
        np.testing.assert_array_equal(ds.split(name), ids)


def test_igb_bad_input(tmp_path, capsys):
    root = write_igbh_full(tmp_path / "a")
    path = root / "full" / "processed" / "author" / "node_feat.npy"
    path.write_bytes(path.read_bytes()[:-4])
    run_bad(capsys, tmp_path / "o1", ["--igb", root], str(path), "not whole rows of 1024",
            "feature width")
    run_bad(capsys, tmp_path / "o2", ["--igb", write_igb(tmp_path / "b"), "--igb-size", "full"],
            "full/processed: not found")
    root = write_igb(tmp_path / "c")
    labels = I_LABEL.copy()
    labels[4] = 19
    np.save(root / "tiny" / "processed" / "paper" / "node_label_19.npy", labels)
    run_bad(capsys, tmp_path / "o3", ["--igb", root], "node_label_19.npy",
            "row 4: label 19.0 is not a class id in [0, 19)")
    root = write_igbh_full(tmp_path / "d")
    (root / "full" / "processed" / "paper__cites__venue").mkdir()
    np.save(root / "full" / "processed" / "paper__cites__venue" / "edge_index.npy", I_CITES)
    run_bad(capsys, tmp_path / "o4", ["--igb", root, "--igb-labelled", "6"],
            "('paper', 'cites', 'venue')", "destination type 'venue' is not a node type")
    root = write_igbh_full(tmp_path / "e")
    edges = igbh_edges(IGBH_RELATIONS[2])
    edges[5, 1] = 3
    np.save(root / "full" / "processed" / "author__affiliated_to__institute" / "edge_index.npy",
            edges)
    run_bad(capsys, tmp_path / "o5", ["--igb", root, "--igb-labelled", "6"],
            "('author', 'affiliated_to', 'institute'): edge 5 has destination id 3, outside "
            "[0, 3) of type 'institute'")


# MAG240M

M_COUNTS = {"paper": 8, "author": 5, "institution": 3}
M_FEAT = RNG.standard_normal((8, 768)).astype(np.float16)
M_LABEL = np.array([1, 0, 152, 4, np.nan, np.nan, np.nan, 7], np.float32)
M_RELS = {("author", "writes", "paper"): [[0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 7]],
          ("author", "affiliated_with", "institution"): [[0, 1, 4], [2, 2, 0]],
          ("paper", "cites", "paper"): [[0, 1, 2, 7], [1, 2, 0, 0]]}
M_SPLIT = {"train": np.array([0, 1, 2]), "valid": np.array([3, 7]), "test": np.array([5, 6])}


def save_as_numpy1(value, path: Path) -> None:
    """torch.save, the pickle naming numpy 1's numpy.core.multiarray._reconstruct (numpy 2
    writes numpy._core): the released split_dict.pt was written under numpy 1."""
    torch.save(value, path)
    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            z.writestr(info, data)


def write_mag240m(root: Path, split=M_SPLIT, save=save_as_numpy1) -> Path:
    """MAG240M as OGB-LSC ships it (ogb/lsc/mag240m.py MAG240MDataset): meta.pt, a torch.save'd
    dict of the node counts and num_classes; split_dict.pt, a dict of numpy int64 id arrays
    pickled under numpy 1 ('test' unlabelled: its labels are hidden);
    processed/paper/node_feat.npy (N, 768) float16, node_label.npy (N,) float with NaN,
    node_year.npy (N,) int64;
    processed/<src>___<rel>___<dst>/edge_index.npy (2, E) int64."""
    processed = root / "processed"
    (processed / "paper").mkdir(parents=True)
    torch.save({**M_COUNTS, "num_classes": 153}, root / "meta.pt")
    save(split, root / "split_dict.pt")
    np.save(processed / "paper" / "node_feat.npy", M_FEAT)
    np.save(processed / "paper" / "node_label.npy", M_LABEL)
    np.save(processed / "paper" / "node_year.npy", np.full(8, 2019, np.int64))
    for rel, edges in M_RELS.items():
        (processed / "___".join(rel)).mkdir()
        np.save(processed / "___".join(rel) / "edge_index.npy", np.array(edges, np.int64))
    return root


def test_mag240m_round_trip(tmp_path, capsys):
    root, out = write_mag240m(tmp_path / "mag240m_kddcup2021"), tmp_path / "ds"
    assert ingest("--mag240m", root, "--out", out, "--chunk-rows", "2") == 0
    ds = Dataset(out)
    assert ds.type_names == ["paper", "author", "institution"]
    assert [t.feature_dim for t in ds.types] == [768, 0, 0]
    assert ds.meta.feature_dtype == "float16"
    np.testing.assert_array_equal(ds.gather_sorted(np.arange(8)), M_FEAT)
    for rel, (src, dst) in M_RELS.items():
        assert_csr(ds.relation_csr(rel), src, dst, M_COUNTS[rel[2]])
        assert_csr(ds.relation_csr((rel[2], "rev_" + rel[1], rel[0])), dst, src,
                   M_COUNTS[rel[0]])
    np.testing.assert_array_equal(ds.labels, [1, 0, 152, 4, -1, -1, -1, 7])
    np.testing.assert_array_equal(ds.split("train"), M_SPLIT["train"])
    np.testing.assert_array_equal(ds.split("val"), M_SPLIT["valid"])
    assert not ds.has("test")  # MAG240M's test labels are hidden


def test_mag240m_bad_input(tmp_path, capsys):
    bad = {**M_SPLIT, "train": np.array([0, 4])}  # pickled under numpy 2 (numpy._core)
    root = write_mag240m(tmp_path / "a", bad, torch.save)
    run_bad(capsys, tmp_path / "o1", ["--mag240m", root], "split_dict.pt",
            "train split row 1: node 4 of type 'paper' has no label")
    pickled = {**M_SPLIT, "train": datetime.date(2021, 1, 1)}  # not an array: code to run
    run_bad(capsys, tmp_path / "o2", ["--mag240m", write_mag240m(tmp_path / "b", pickled)],
            "split_dict.pt", "weights_only=True")
    root = write_mag240m(tmp_path / "c")
    torch.save({"paper": 8, "author": 5}, root / "meta.pt")
    run_bad(capsys, tmp_path / "o3", ["--mag240m", root], "meta.pt", "'institution': None")


# OGB heterogeneous raw CSVs (ogbn-mag)

O_COUNTS = {"author": 6, "field_of_study": 4, "institution": 2, "paper": 5}
O_FEAT = np.round(RNG.standard_normal((5, 128)), 4).astype(np.float32)
O_LABEL = np.array([3, 0, 348, 1, 2])
O_RELS = {("author", "affiliated_with", "institution"): [[0, 1, 5], [1, 0, 1]],
          ("author", "writes", "paper"): [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 4]],
          ("paper", "cites", "paper"): [[0, 1, 3], [1, 2, 4]],
          ("paper", "has_topic", "field_of_study"): [[0, 1, 2, 4], [3, 3, 0, 1]]}
O_SPLIT = {"train": [0, 1, 2], "valid": [3], "test": [4]}


def write_ogbn_mag(root: Path) -> Path:
    """ogbn-mag's raw layout (ogb/io/read_graph_raw.py read_csv_heterograph_raw,
    read_node_label_hetero, read_nodesplitidx_split_hetero): num-node-dict.csv.gz with a header
    line of type names; relations/<src>___<rel>___<dst>/ edge.csv.gz, num-edge-list.csv.gz,
    edge_reltype.csv.gz; node-feat/paper/node-feat.csv.gz (and node_year.csv.gz);
    node-label/paper/node-label.csv.gz; split/time/paper/{train,valid,test}.csv.gz; all
    headerless but the node counts, gzipped."""
    raw = root / "raw"
    write_gz(raw / "num-node-dict.csv.gz", [list(O_COUNTS.values())], ",".join(O_COUNTS))
    write_gz(raw / "triplet-type-list.csv.gz", list(O_RELS))
    for rel, (src, dst) in O_RELS.items():
        folder = raw / "relations" / "___".join(rel)
        write_gz(folder / "edge.csv.gz", np.stack([src, dst], axis=1))
        write_gz(folder / "num-edge-list.csv.gz", [len(src)])
        write_gz(folder / "edge_reltype.csv.gz", np.zeros((len(src), 1), np.int64))
    write_gz(raw / "node-feat" / "paper" / "node-feat.csv.gz", O_FEAT)
    write_gz(raw / "node-feat" / "paper" / "node_year.csv.gz", np.full((5, 1), 2015))
    write_gz(raw / "node-label" / "paper" / "node-label.csv.gz", O_LABEL[:, None])
    for name, ids in O_SPLIT.items():
        write_gz(root / "split" / "time" / "paper" / f"{name}.csv.gz", ids)
    return root


def test_ogbn_mag_round_trip(tmp_path):
    root, out = write_ogbn_mag(tmp_path / "ogbn_mag"), tmp_path / "ds"
    assert ingest("--ogb", root, "--out", out, "--no-add-reverse", "--chunk-rows", "2") == 0
    ds = Dataset(out)
    assert ds.type_names == ["paper", "author", "field_of_study", "institution"]
    assert sorted(ds.relations) == sorted(O_RELS)  # no reverse relations
    for rel, (src, dst) in O_RELS.items():
        assert_csr(ds.relation_csr(rel), src, dst, O_COUNTS[rel[2]])
    np.testing.assert_allclose(ds.gather_sorted(np.arange(5)), O_FEAT)
    np.testing.assert_array_equal(ds.labels, O_LABEL)
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        np.testing.assert_array_equal(ds.split(ours), O_SPLIT[theirs])
    assert ds.meta.provenance["ingest"] == {"add_reverse": False, "dedup": False,
                                            "importer": "ogb"}


def test_ogbn_mag_bad_input(tmp_path, capsys):
    root = write_ogbn_mag(tmp_path / "a")
    write_gz(root / "raw" / "relations" / "author___writes___paper" / "edge.csv.gz",
             [[0, 0], [1, 5]])
    write_gz(root / "raw" / "relations" / "author___writes___paper" / "num-edge-list.csv.gz",
             [2])
    run_bad(capsys, tmp_path / "o1", ["--ogb", root],
            "('author', 'writes', 'paper'): edge 1 has destination id 5, outside [0, 5)")
    root = write_ogbn_mag(tmp_path / "b")
    write_gz(root / "raw" / "num-node-dict.csv.gz", [[6, 4, 2, 5], [1, 1, 1, 1]],
             ",".join(O_COUNTS))
    run_bad(capsys, tmp_path / "o2", ["--ogb", root], "num-node-dict.csv.gz",
            "2 rows of counts, expected one")
    root = write_ogbn_mag(tmp_path / "c")
    write_gz(root / "raw" / "relations" / "paper___cites___paper" / "edge.csv.gz",
             [[0, 1], [1, "x"]])
    run_bad(capsys, tmp_path / "o3", ["--ogb", root], "paper___cites___paper/edge.csv.gz",
            "row 1", "not an integer")


def test_options_of_the_other_kind_are_refused(tmp_path, capsys):
    root = write_ogbn_mag(tmp_path / "m")
    run_bad(capsys, tmp_path / "o1", ["--ogb", root, "--undirected"],
            "--undirected apply only to an edge list or a homogeneous OGB dataset")
    run_bad(capsys, tmp_path / "o2", ["--edges", tmp_path / "e.npy", "--igb-size", "tiny"],
            "--igb-size apply only with --igb, --mag240m or a typed --ogb")
    run_bad(capsys, tmp_path / "o3", ["--mag240m", tmp_path, "--igb-size", "tiny"],
            "igb_size ('tiny') needs igb")
