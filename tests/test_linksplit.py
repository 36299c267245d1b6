"""Edge splits for link prediction: no val/test edge in the graph (either direction),
link_train the graph's edges once, seeded and chunk-independent hash splits, given split
files and OGB's link layouts, and every bad input refused with nothing left behind."""

from __future__ import annotations

import fractions
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_user_error

from disktrain.cli import main
from disktrain.ingest import IngestConfig, SynthConfig, ingest, synthesize
from disktrain.ingest.linksplit import LinkSplitConfig
from disktrain.storage.dataset import Dataset, dataset_bytes
from disktrain.verify import verify

N = 60


def graph(seed: int = 0, num_edges: int = 400, num_nodes: int = N) -> np.ndarray:
    """Random (E, 2) edges with repeats, self loops, and some edges in both directions."""
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, num_nodes, (num_edges, 2))
    edges[:10, 1] = edges[:10, 0]  # self loops
    return np.concatenate([edges, edges[20:60, ::-1], edges[60:70]])


def split_dataset(path: Path, edges: np.ndarray, *, undirected=True, dedup=False,
                  drop_self_loops=False, chunk_rows=1 << 20, **link) -> Dataset:
    np.save(path.with_suffix(".npy"), edges)
    link = {"edge_split": (0.6, 0.2, 0.2), "eval_negatives": 7, **link}
    ingest(IngestConfig(out=path, edges=path.with_suffix(".npy"), undirected=undirected,
                        dedup=dedup, drop_self_loops=drop_self_loops, progress=False,
                        chunk_rows=chunk_rows, num_nodes=N, link=LinkSplitConfig(**link)))
    return Dataset(path)


def csr_edges(ds: Dataset) -> np.ndarray:
    """The CSR's entries as (src, dst) rows."""
    indptr = np.asarray(ds.indptr)
    dst = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return np.column_stack((np.asarray(ds.indices, np.int64), dst))


def canonical(edges: np.ndarray) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in edges.tolist()}


def rows(edges: np.ndarray) -> np.ndarray:
    """``edges`` sorted by row (a multiset to compare)."""
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    return edges[np.lexsort((edges[:, 1], edges[:, 0]))]


@pytest.mark.parametrize(("undirected", "dedup", "drop_self_loops"),
                         [(True, False, False), (True, True, False), (True, True, True),
                          (False, False, False), (False, True, True)])
def test_no_leakage_and_link_train(tmp_path, undirected, dedup, drop_self_loops):
    edges = graph()
    ds = split_dataset(tmp_path / "ds", edges, undirected=undirected, dedup=dedup,
                       drop_self_loops=drop_self_loops)
    graph_pairs = canonical(csr_edges(ds))
    held = {s: ds.link_edges(s) for s in ("val", "test")}
    for split, pairs in held.items():
        assert len(pairs) and not canonical(pairs) & graph_pairs, split  # both directions
        assert canonical(pairs) <= canonical(edges)
        if undirected or dedup:
            assert len(np.unique(pairs, axis=0)) == len(pairs)
        if undirected:
            assert (pairs[:, 0] <= pairs[:, 1]).all()
        if drop_self_loops:
            assert (pairs[:, 0] != pairs[:, 1]).all()
    assert not canonical(held["val"]) & canonical(held["test"])
    loops = edges[:, 0] == edges[:, 1]
    kept = edges[~loops] if drop_self_loops else edges
    assert canonical(kept) == graph_pairs | canonical(held["val"]) | canonical(held["test"])
    train = np.asarray(ds.link_edges("train"))
    assert train.dtype == ds.indices.dtype
    if not undirected:
        np.testing.assert_array_equal(rows(train), rows(csr_edges(ds)))
        return
    assert (train[:, 0] <= train[:, 1]).all()
    back = train[train[:, 0] != train[:, 1]] if dedup else train  # dedup: a loop once
    np.testing.assert_array_equal(rows(np.concatenate([train, back[:, ::-1]])),
                                  rows(csr_edges(ds)))


def test_seeded_and_chunk_independent(tmp_path):
    edges = graph(num_edges=2000)
    a = split_dataset(tmp_path / "a", edges, split_seed=5)
    b = split_dataset(tmp_path / "b", edges, split_seed=5, chunk_rows=37)
    c = split_dataset(tmp_path / "c", edges, split_seed=6)
    for split in ("val", "test"):
        np.testing.assert_array_equal(a.link_edges(split), b.link_edges(split))
        np.testing.assert_array_equal(a.link_negatives(split), b.link_negatives(split))
        assert not np.array_equal(a.link_edges(split), c.link_edges(split))
    np.testing.assert_array_equal(a.link_edges("train"), b.link_edges("train"))
    negatives = a.link_negatives("val")
    assert negatives.shape == (len(a.link_edges("val")), 7)
    assert negatives.min() >= 0 and negatives.max() < N and len(np.unique(negatives)) > N // 2
    assert not np.array_equal(negatives[:len(a.link_negatives("test"))][:3],
                              a.link_negatives("test")[:3])
    info = a.info()
    assert info["link_split"] == {"train": len(a.link_edges("train")),
                                  "val": len(negatives), "test": len(a.link_edges("test")),
                                  "eval_negatives": 7}
    assert a.meta.provenance["ingest"]["edge_split"] == {
        "edge_split": [0.6, 0.2, 0.2], "split_seed": 5, "eval_negatives": 7}


def test_fractions_roughly_right(tmp_path):
    num_nodes = 4000
    edges = np.column_stack((np.arange(num_nodes), (np.arange(num_nodes) + 1) % num_nodes))
    edges = np.concatenate([edges, np.column_stack((edges[:, 0], (edges[:, 0] + 7) % N))])
    np.save(tmp_path / "e.npy", edges)
    ingest(IngestConfig(out=tmp_path / "ds", edges=tmp_path / "e.npy", undirected=True,
                        dedup=True, progress=False,
                        link=LinkSplitConfig(edge_split=(0.7, 0.1, 0.2), eval_negatives=2)))
    ds = Dataset(tmp_path / "ds")
    total = len(canonical(edges))
    shares = [len(ds.link_edges(s)) / total for s in ("train", "val", "test")]
    assert shares == pytest.approx([0.7, 0.1, 0.2], abs=0.025), shares  # 5 sigma at 8000


def test_synth_split(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--nodes", "500", "--feature-dim", "4",
                 "--edge-split", "0.8,0.1,0.1", "--eval-negatives", "9", "--split-seed", "3",
                 "--no-progress"]) == 0
    assert "link split:" in capsys.readouterr().out
    ds = Dataset(tmp_path / "s")
    graph_pairs = canonical(csr_edges(ds))
    for split in ("val", "test"):
        assert len(ds.link_edges(split)) > 50
        assert not canonical(ds.link_edges(split)) & graph_pairs
        assert ds.link_negatives(split).shape == (len(ds.link_edges(split)), 9)
    assert len(ds.link_edges("train")) == ds.meta.num_edges // 2
    assert ds.meta.provenance["sources"]["split_seed"] == "3"
    assert verify(tmp_path / "s", progress=False).clean
    synthesize(SynthConfig(out=tmp_path / "t", num_nodes=500, feature_dim=4, progress=False,
                           link=LinkSplitConfig(edge_split=(0.8, 0.1, 0.1), split_seed=3,
                                                eval_negatives=9)))
    np.testing.assert_array_equal(Dataset(tmp_path / "t").link_edges("val"),
                                  ds.link_edges("val"))


def test_disk_estimate_counts_the_link_arrays():
    sizes = {"num_nodes": 100, "num_edges": 1000, "feature_dim": 0, "feature_dtype": "float32",
             "labels": False, "splits": {}}
    link = {"link_train": 500, "link_val": 50, "link_test": 40, "eval_negatives": 1000}
    extra = dataset_bytes(**sizes, link=link) - dataset_bytes(**sizes)
    assert extra >= 500 * 2 * 4 + 90 * 2 * 8 + 90 * 1000 * 8


def test_cora(tmp_path, capsys, cora_dir):
    out = tmp_path / "cora"
    assert main(["ingest", "--edges", str(cora_dir / "edges.parquet"), "--out", str(out),
                 "--undirected", "--dedup", "--edge-split", "0.85,0.05,0.10",
                 "--no-progress"]) == 0
    ds = Dataset(out)
    table = pq.read_table(cora_dir / "edges.parquet")
    edges = np.column_stack((table["src"].to_numpy(), table["dst"].to_numpy()))
    graph_pairs = canonical(csr_edges(ds))
    val, test = canonical(ds.link_edges("val")), canonical(ds.link_edges("test"))
    assert not (val | test) & graph_pairs and not val & test
    assert graph_pairs | val | test == canonical(edges)
    assert len(ds.link_edges("train")) == len(graph_pairs) == ds.meta.num_edges // 2
    assert len(val) / len(canonical(edges)) == pytest.approx(0.05, abs=0.015)
    assert ds.link_negatives("test").shape == (len(test), 1000)
    assert "link split:" in capsys.readouterr().out


def write_edges(path: Path, edges: np.ndarray) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"src": edges[:, 0], "dst": edges[:, 1]}), path)
    else:
        np.save(path, edges)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_given_split_files(tmp_path, suffix):
    edges = graph()
    np.save(tmp_path / "e.npy", edges)
    val = write_edges(tmp_path / f"val{suffix}", edges[[100, 21]][:, ::-1].copy())
    test = write_edges(tmp_path / f"test{suffix}", edges[[150, 151, 152]])
    test_neg = np.arange(12).reshape(3, 4) % N
    np.save(tmp_path / "test_neg.npy", test_neg)
    assert main(["ingest", "--edges", str(tmp_path / "e.npy"), "--out", str(tmp_path / "ds"),
                 "--link-val", str(val), "--link-test", str(test), "--link-test-neg",
                 str(tmp_path / "test_neg.npy"), "--no-progress"]) == 0
    ds = Dataset(tmp_path / "ds")  # directed: both directions removed all the same
    np.testing.assert_array_equal(ds.link_edges("val"), edges[[100, 21]][:, ::-1])
    np.testing.assert_array_equal(ds.link_edges("test"), edges[[150, 151, 152]])
    held = canonical(edges[[100, 21, 150, 151, 152]])
    assert not held & canonical(csr_edges(ds))
    assert canonical(edges) - held == canonical(csr_edges(ds))
    np.testing.assert_array_equal(ds.link_negatives("test"), test_neg)
    assert ds.link_negatives("val").shape == (2, 4)  # drawn, as wide as the given ones


def write_ogb_link(root: Path, val: dict, test: dict, edges: np.ndarray) -> Path:
    (root / "raw").mkdir(parents=True)
    (root / "split" / "time").mkdir(parents=True)
    for name, text in (("edge.csv.gz", "".join(f"{u},{v}\n" for u, v in edges)),
                       ("num-node-list.csv.gz", f"{N}\n"),
                       ("num-edge-list.csv.gz", f"{len(edges)}\n")):
        with gzip.open(root / "raw" / name, "wt") as f:
            f.write(text)
    for name, data in (("train", {"edge": edges}), ("valid", val), ("test", test)):
        torch.save(data, root / "split" / "time" / f"{name}.pt")
    return root


def test_ogb_citation2(tmp_path):
    held = np.array([[0, 59], [1, 58], [2, 57], [3, 56], [4, 55], [5, 54]])
    train = np.concatenate([graph()[:300], held[[0, 5]][:, ::-1]])  # two to remove
    neg = np.random.default_rng(1).integers(0, N, (4, 1000))
    val = {"source_node": held[:4, 0], "target_node": held[:4, 1], "target_node_neg": neg}
    test = {"source_node": held[4:, 0], "target_node": held[4:, 1],
            "target_node_neg": neg[:2]}
    root = write_ogb_link(tmp_path / "ogbl", val, test, train)
    assert main(["ingest", "--ogb", str(root), "--out", str(tmp_path / "ds"),
                 "--no-progress"]) == 0
    ds = Dataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.link_edges("val"), held[:4])
    np.testing.assert_array_equal(ds.link_negatives("val"), neg)
    np.testing.assert_array_equal(ds.link_negatives("test"), neg[:2])
    assert canonical(csr_edges(ds)) == canonical(train) - canonical(held)
    assert ds.meta.provenance["ingest"]["importer"] == "ogb-link"


def test_ogb_collab_draws_negatives(tmp_path, capsys):
    edges = graph()
    shared = torch.tensor(edges[:50])
    val = {"edge": torch.tensor([[0, 59], [1, 58]]), "edge_neg": shared}
    test = {"edge": torch.tensor(edges[305:310]), "edge_neg": shared}
    root = write_ogb_link(tmp_path / "ogbl", val, test, edges[:300])
    assert main(["ingest", "--ogb", str(root), "--out", str(tmp_path / "ds"),
                 "--eval-negatives", "6", "--no-progress"]) == 0
    assert "edge_neg is one set of negatives shared" in capsys.readouterr().err
    ds = Dataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds.link_edges("test"), edges[305:310])
    assert ds.link_negatives("test").shape == (5, 6)


def _sum(tmp_path):
    return ["--edge-split", "0.8,0.1,0.2"], ["edge_split must sum to 1", "1.1"]


def _negative(tmp_path):
    return ["--edge-split", "1.1,-0.05,-0.05"], ["edge_split", ">= 0", "-0.05"]


def _no_train(tmp_path):
    return ["--edge-split", "0,0.5,0.5"], ["edge_split", "train fraction is 0"]


def _no_negatives(tmp_path):
    return ["--edge-split", "0.8,0.1,0.1", "--eval-negatives", "0"], ["eval_negatives", "0"]


def _empty_val(tmp_path):
    return (["--edge-split", "0.9999,0.00005,0.00005"],
            ["edge_split 0.9999,5e-05,5e-05 left the val split empty", "larger fraction"])


def _absent_edge(tmp_path):
    val = write_edges(tmp_path / "val.npy", np.array([[0, 1], [5, 9], [8, 8]]))
    np.save(tmp_path / "test.npy", np.array([[1, 2]]))
    return ["--link-val", val, "--link-test", tmp_path / "test.npy"], \
        [str(val), "row 1", "(5, 9) is not an edge of the input graph"]


def _past_n(tmp_path):
    np.save(tmp_path / "val.npy", np.array([[0, 1]]))
    test = write_edges(tmp_path / "test.parquet", np.array([[1, 2], [3, 99]]))
    return ["--link-val", tmp_path / "val.npy", "--link-test", test], \
        [str(test), "row 1", "99", "[0, 10)"]


def _val_and_test(tmp_path):
    np.save(tmp_path / "val.npy", np.array([[0, 1], [2, 3]]))
    np.save(tmp_path / "test.npy", np.array([[3, 2]]))
    return ["--link-val", tmp_path / "val.npy", "--link-test", tmp_path / "test.npy"], \
        ["val.npy: row 1: edge (2, 3) is also in the test edges"]


def _bad_negatives(tmp_path):
    np.save(tmp_path / "val.npy", np.array([[0, 1], [2, 3]]))
    np.save(tmp_path / "test.npy", np.array([[4, 5]]))
    np.save(tmp_path / "neg.npy", np.array([[1, 2], [3, 10]]))
    return ["--link-val", tmp_path / "val.npy", "--link-test", tmp_path / "test.npy",
            "--link-val-neg", tmp_path / "neg.npy"], ["neg.npy: row 1: node 10 out of range"]


def _val_alone(tmp_path):
    np.save(tmp_path / "val.npy", np.array([[0, 1]]))
    return ["--link-val", tmp_path / "val.npy"], ["link_val and link_test go together"]


def _split_and_files(tmp_path):
    np.save(tmp_path / "val.npy", np.array([[0, 1]]))
    return ["--edge-split", "0.8,0.1,0.1", "--link-val", tmp_path / "val.npy", "--link-test",
            tmp_path / "val.npy"], ["edge_split or the split files"]


BAD = [_sum, _negative, _no_train, _no_negatives, _empty_val, _absent_edge,
       _past_n, _val_and_test, _bad_negatives, _val_alone, _split_and_files]


@pytest.mark.parametrize("case", BAD, ids=lambda f: f.__name__.strip("_"))
def test_bad_input(tmp_path, capsys, case):
    edges = np.array([[i, (i + 1) % 10] for i in range(10)] * 3)
    np.save(tmp_path / "e.npy", edges)
    args, needles = case(tmp_path)
    out = tmp_path / "out" / "ds"
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--edges", str(tmp_path / "e.npy"), "--out", str(out), "--dedup",
              *map(str, args), "--no-progress"])
    assert_user_error(exit_info.value.code, capsys.readouterr().err, *needles)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no dataset, no tmp dir


def test_bad_ogb_link(tmp_path, capsys):
    edges = graph()
    bad = {"edge": edges[300:302], "why": fractions.Fraction(1, 2)}
    root = write_ogb_link(tmp_path / "ogbl", {"edge": np.array([[0, 59]])}, bad, edges[:300])
    out = tmp_path / "out" / "ds"
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--ogb", str(root), "--out", str(out), "--no-progress"])
    assert_user_error(exit_info.value.code, capsys.readouterr().err, "test.pt",
                      "weights only", "fractions.Fraction")
    assert not out.parent.exists() or not any(out.parent.iterdir())
    good = write_ogb_link(tmp_path / "good", {"edge": np.array([[0, 59]])},
                          {"edge": np.array([[1, 58]])}, edges[:300])
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--ogb", str(good), "--out", str(out), "--edge-split", "0.8,0.1,0.1",
              "--no-progress"])
    assert_user_error(exit_info.value.code, capsys.readouterr().err, "brings its own link split")
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--typed", "igbh", "--papers", "100", "--out", str(out),
              "--edge-split", "0.8,0.1,0.1"])
    assert_user_error(exit_info.value.code, capsys.readouterr().err, "--edge-split",
                      "without --typed")
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--ogb", str(good), "--out", str(out), "--edge-split", "0.8,x,0.1"])
    assert exit_info.value.code == 2
    assert "--edge-split: expected comma-separated fractions" in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())
