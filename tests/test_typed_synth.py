"""The IGBH-like synthetic typed graph: determinism (seed, chunk size, threads), the types,
relations and reverses it declares, learnable planted classes, option checks, the CLI."""

from pathlib import Path

import numba
import numpy as np
import pytest
from helpers import needs_two_threads

from disktrain.cli import build_parser, configs, main
from disktrain.ingest.synth import class_centroids, node_labels
from disktrain.ingest.typed_synth import (
    NODE_TYPES,
    RELATIONS,
    BipartiteEdges,
    TypedSynthConfig,
    relation_edges,
    synthesize_typed,
)
from disktrain.storage.dataset import SPLITS, Dataset

REVERSES = [(d, f"rev_{r}", s) for s, r, d in RELATIONS]


def _cfg(tmp_path, name="ds", **kw):
    base = {"num_papers": 1500, "feature_dim": 6, "num_classes": 4, "seed": 1,
            "chunk_edges": 4096, "progress": False}
    return TypedSynthConfig(out=tmp_path / name, **{**base, **kw})


def _arrays(path: Path) -> dict[str, np.ndarray]:
    ds = Dataset(path)
    out = {"labels": np.array(ds.labels), "features": ds.feature_rows(0, ds.meta.num_nodes)}
    out.update({s: np.array(ds.split(s)) for s in SPLITS})
    for rel in ds.relations:
        out.update(zip((f"{rel} indptr", f"{rel} indices"), map(np.array, ds.relation_csr(rel))))
    return out


def _pairs(rows_indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A CSR's (row, column) pairs, sorted."""
    rows = np.repeat(np.arange(len(rows_indptr) - 1), np.diff(rows_indptr))
    return np.unique(np.stack([rows, np.asarray(indices, np.int64)], 1), axis=0)


def test_same_seed_same_dataset_whatever_the_chunk_size(tmp_path):
    """Edges are generated a chunk at a time (memory bounded by the chunk, not the graph):
    chunks of 7 edges or of all of them give the same dataset."""
    a = _arrays(synthesize_typed(_cfg(tmp_path, "a", chunk_edges=7)))
    b = _arrays(synthesize_typed(_cfg(tmp_path, "b", chunk_edges=1 << 22)))
    c = _arrays(synthesize_typed(_cfg(tmp_path, "c", seed=2)))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for name in ("labels", "features", "train", f"{RELATIONS[1]} indices"):
        assert not np.array_equal(a[name], c[name]), name


@needs_two_threads
def test_thread_count_does_not_change_edges(tmp_path):
    gen = BipartiteEdges(_cfg(tmp_path), RELATIONS[1])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = gen.chunk(0, gen.num_edges)
        numba.set_num_threads(2)
        two = gen.chunk(0, gen.num_edges)
    finally:
        numba.set_num_threads(before)
    for x, y in zip(one, two):
        np.testing.assert_array_equal(x, y)


def test_types_relations_and_reverses_as_declared(tmp_path):
    cfg = _cfg(tmp_path, feature_dtype="float16", train_fraction=0.5, val_fraction=0.1,
               test_fraction=0.1)
    ds = Dataset(synthesize_typed(cfg))
    counts = cfg.node_counts
    assert ds.type_names == list(NODE_TYPES)
    assert [t.num_nodes for t in ds.types] == [counts[t] for t in NODE_TYPES]
    assert counts == {"paper": 1500, "author": round(1500 * 277_220_883 / 269_346_174),
                      "institute": 4, "fos": 4}  # IGBH-full's ratios, at least num_classes
    assert all(t.feature_dim == 6 and t.feature_dtype == "float16" for t in ds.types)
    assert sorted(ds.relations) == sorted([*RELATIONS, *REVERSES])
    edges = cfg.num_edges
    assert edges[RELATIONS[0]] == round(1500 * 3_996_442_004 / 269_346_174)
    assert edges[RELATIONS[2]] == round(counts["author"] * 48_521_486 / 277_220_883)
    stored = {(r["src"], r["rel"], r["dst"]): r["num_edges"] for r in ds.meta.relations}
    for rel, back in zip(RELATIONS, REVERSES):
        src, dst = (np.concatenate(x) for x in zip(*relation_edges(cfg, rel)()))
        assert stored[rel] == stored[back] == src.size == edges[rel]
        assert src.max() < counts[rel[0]] and dst.max() < counts[rel[2]]
        by_dst = _pairs(*ds.relation_csr(rel))
        np.testing.assert_array_equal(by_dst, np.unique(np.stack([dst, src], 1), axis=0))
        flipped = _pairs(*ds.relation_csr(back))[:, ::-1]
        np.testing.assert_array_equal(np.unique(flipped, axis=0), by_dst)
    assert ds.meta.num_classes == 4 and ds.labels.shape == (1500,)
    sizes = [ds.split(s).size for s in SPLITS]
    assert sizes == [750, 150, 150]


def test_dedup_keeps_one_copy_of_each_edge(tmp_path):
    cfg = _cfg(tmp_path, num_papers=300, topic_degree=8.0, dedup=True)
    ds = Dataset(synthesize_typed(cfg))
    rel = ("paper", "topic", "fos")
    indptr, indices = ds.relation_csr(rel)
    assert _pairs(indptr, indices).shape[0] == indices.size < cfg.num_edges[rel]


def test_destinations_skewed_not_by_id(tmp_path):
    cfg = _cfg(tmp_path, num_papers=20_000, homophily=0.0, written_by_degree=4.0)
    _, dst = (np.concatenate(x) for x in zip(*relation_edges(cfg, RELATIONS[1])()))
    deg = np.bincount(dst, minlength=cfg.node_counts["author"])
    assert deg.max() > 15 * deg.mean()
    assert abs(np.corrcoef(np.arange(deg.size), deg)[0, 1]) < 0.1


def _classes(cfg: TypedSynthConfig) -> dict[str, np.ndarray]:
    return {t: node_labels(c, 0, c.num_nodes) for t, c in cfg.type_configs().items()}


@pytest.mark.parametrize("homophily", [0.0, 0.6])
def test_edges_prefer_the_sources_class(tmp_path, homophily):
    cfg = _cfg(tmp_path, num_papers=4000, homophily=homophily)
    classes = _classes(cfg)
    for rel in RELATIONS:
        src, dst = (np.concatenate(x) for x in zip(*relation_edges(cfg, rel)()))
        same = np.mean(classes[rel[0]][src] == classes[rel[2]][dst])
        tol = 0.04 if rel[1] != "affiliated_to" else 0.1  # ~700 edges
        assert same == pytest.approx(homophily + (1 - homophily) / 4, abs=tol), rel


def test_relations_tell_what_a_papers_own_features_do_not(tmp_path):
    """The planted signal a relational model learns: nearest class centroid on a paper's own
    features against on them and the means over its citations, authors and fields."""
    cfg = _cfg(tmp_path, num_papers=3000, feature_dim=32, noise=0.8)
    ds = Dataset(synthesize_typed(cfg))
    centroids = {t: class_centroids(c) for t, c in cfg.type_configs().items()}
    x = ds.feature_rows(0, ds.meta.num_nodes).astype(np.float64)
    dist = np.zeros((cfg.num_papers, cfg.num_classes))

    def add(rows: np.ndarray, t: str) -> None:
        """Squared distances of ``rows`` (NaN: no neighbors, adds nothing) to t's centroids."""
        d = ((rows[:, None, :] - centroids[t][None]) ** 2).sum(-1)
        dist[:] += np.nan_to_num(d)

    add(x[:cfg.num_papers], "paper")
    own = np.mean(dist.argmin(1) == ds.labels)
    for rel in [RELATIONS[0], *REVERSES]:
        if rel[2] != "paper":
            continue
        indptr, indices = ds.relation_csr(rel)
        rows = np.repeat(np.arange(cfg.num_papers), np.diff(indptr))
        sums = np.zeros((cfg.num_papers, x.shape[1]))
        np.add.at(sums, rows, x[ds.type_offsets[ds.type_index(rel[0])] + indices])
        with np.errstate(invalid="ignore"):
            add(sums / np.diff(indptr)[:, None], rel[0])
    related = np.mean(dist.argmin(1) == ds.labels)
    assert own < 0.75 and related > own + 0.2, (own, related)


@pytest.mark.parametrize("bad", [
    {"num_papers": 1}, {"num_papers": 10.5}, {"num_classes": 1}, {"num_classes": 2000},
    {"cites_degree": 0.0}, {"written_by_degree": float("nan")}, {"topic_degree": -1.0},
    {"affiliated_to_degree": True}, {"author_ratio": 0}, {"fos_ratio": float("inf")},
    {"feature_dim": 0}, {"feature_dtype": "int8"}, {"homophily": 1.5}, {"noise": -1.0},
    {"seed": -1}, {"chunk_edges": 0}, {"test_fraction": 1.2},
])
def test_bad_options_named_with_their_value(tmp_path, bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=name) as info:
        _cfg(tmp_path, **bad)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_cli_typed(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["synth", "--typed", "igbh", "--out", str(out), "--papers", "300"]
    assert configs(build_parser("synth").parse_args(argv)) == {
        "": TypedSynthConfig(out=out, num_papers=300)}  # the shared options' defaults agree
    assert main([*argv, "--feature-dim", "4", "--classes", "3", "--cites-degree", "5",
                 "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    ds = Dataset(out)
    assert ds.type_names == list(NODE_TYPES) and ds.meta.feature_dim == 4
    assert {r["rel"]: r["num_edges"] for r in ds.meta.relations}["cites"] == 1500


@pytest.mark.parametrize(("argv", "message"), [
    (["--typed", "igbh"], "synth: --papers N is required with --typed igbh"),
    ([], "synth: --nodes N is required (or --typed igbh --papers N)"),
    (["--typed", "igbh", "--papers", "50", "--nodes", "50"],
     "synth: --nodes only without --typed"),
    (["--nodes", "50", "--papers", "50", "--topic-degree", "2"],
     "synth: --papers, --topic-degree only with --typed"),
    (["--typed", "igbh", "--papers", "1"], "num_papers must be in [2, 281474976710656], got 1"),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "ds"), *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"disktrain: error: {message}\n"
    assert not (tmp_path / "ds").exists()
