"""An IGBH-like synthetic typed graph with planted, learnable classes, at any scale, out of
core (``disktrain synth --typed igbh``).

Node types paper, author, institute, fos (field of study); relations cites (paper -> paper),
written_by (paper -> author), affiliated_to (author -> institute), topic (paper -> fos), and
the reverse of each (``rev_<rel>``, added by :func:`write_typed_dataset`). Sizes scale from the
number of papers: by default in IGBH-full's ratios, from the counts of DGL's IGBH download
script (``examples/graphbolt/rgcn/download.py``): 269,346,174 papers, 277,220,883 authors,
26,918 institutes, 712,960 fos; 3,996,442,004 cites, 716,761,549 written_by, 1,050,280,600
topic (per paper: 14.84, 2.66, 3.90) and 48,521,486 affiliated_to edges (0.175 per author).

Every node type is the node set of a homogeneous synthetic graph (:class:`SynthConfig`, its
own seed derived from ``seed``): planted classes, and features that are its class centroid
plus Gaussian noise (:func:`node_features`), so every type's features carry its class. cites
is the homogeneous generator's directed graph on the papers (:class:`EdgeGenerator`: R-MAT,
a fraction ``homophily`` of edges to a random paper of the citing paper's class). The other
relations (:func:`~disktrain.kernels.bipartite.bipartite_edges`) draw a uniform source and,
with probability ``homophily``, a random destination of the source's class, else a skewed one
(R-MAT's column marginal), so a paper's authors, fields and its authors' institutes lean to
its class: their features tell a relational model what a paper's own noisy features do not.

Out of core: edge ``e`` of a relation is a pure function of ``(seed, relation, e)``,
generated in chunks of ``chunk_edges`` on every pass (:func:`write_typed_dataset` reads each
relation twice and its reverse twice), and features in blocks of rows; the output does not
depend on the chunk size or the thread count. Memory: a chunk of edges, a block of features,
the CSR build's own budget (:class:`~disktrain.ingest.csr.CSRConfig`), and the papers' labels
and splits, which :class:`TypedInputs` holds (about 17 bytes per paper).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from disktrain.ingest.csr import EdgeChunks
from disktrain.ingest.inputs import FeatureSource
from disktrain.ingest.synth import (
    MAX_NODES,
    NODE_CHUNK,
    RMAT_PROBS,
    EdgeGenerator,
    SynthConfig,
    _check_int,
    _key,
    _perm_keys,
    class_centroids,
    node_features,
    node_labels,
    split_codes,
)
from disktrain.ingest.typed import TypedInputs, write_typed_dataset
from disktrain.kernels import bipartite as kbip
from disktrain.kernels.rng import derive_key
from disktrain.storage.dataset import SPLITS, Relation

NODE_TYPES = ("paper", "author", "institute", "fos")
"""The node types, the target type (papers: labels, splits) first."""
RELATIONS: tuple[Relation, ...] = (("paper", "cites", "paper"), ("paper", "written_by", "author"),
                                   ("author", "affiliated_to", "institute"),
                                   ("paper", "topic", "fos"))
SCHEMAS = ("igbh",)
"""Typed graphs ``synth --typed`` makes."""
_ZERO_BELOW = round((RMAT_PROBS[0] + RMAT_PROBS[2]) * 65536)
"""A skewed destination id's bit is 0 with R-MAT's left-column probability a + c."""
_TYPE_STREAM, _RELATION_STREAM = 1, 2


@dataclass(frozen=True, kw_only=True)
class TypedSynthConfig:
    """What ``disktrain synth --typed igbh`` generates. The fields it shares with
    :class:`SynthConfig` mean the same and have the same defaults."""

    out: str | Path
    """Dataset directory to create."""
    num_papers: int
    """Number of papers; the other types' counts scale from it."""
    author_ratio: float = 277_220_883 / 269_346_174
    """Authors per paper (IGBH-full: 1.029)."""
    institute_ratio: float = 26_918 / 269_346_174
    """Institutes per paper (IGBH-full: 1.0e-4); every type has at least num_classes nodes."""
    fos_ratio: float = 712_960 / 269_346_174
    """Fields of study per paper (IGBH-full: 2.6e-3)."""
    cites_degree: float = 3_996_442_004 / 269_346_174
    """Papers each paper cites, on average (IGBH-full: 14.84)."""
    written_by_degree: float = 716_761_549 / 269_346_174
    """Authors per paper, on average (IGBH-full: 2.66)."""
    topic_degree: float = 1_050_280_600 / 269_346_174
    """Fields of study per paper, on average (IGBH-full: 3.90)."""
    affiliated_to_degree: float = 48_521_486 / 277_220_883
    """Institutes per author, on average (IGBH-full: 0.175)."""
    feature_dim: int = 128
    """Features per node, every type."""
    feature_dtype: str = "float32"
    """float32 or float16."""
    num_classes: int = 10
    """Planted classes (the papers' labels)."""
    seed: int = 0
    """Everything written is a function of the seed (and the other parameters)."""
    homophily: float = 0.5
    """Fraction of each relation's edges drawn to a destination of the source's class."""
    noise: float = 0.6
    """Std of the Gaussian feature noise per dimension (class centroids have norm ~1)."""
    train_fraction: float = 0.6
    """Fraction of papers in the train split."""
    val_fraction: float = 0.2
    """Fraction of papers in the validation split."""
    test_fraction: float = 0.2
    """Fraction of papers in the test split (the three may sum to less than 1)."""
    chunk_edges: int = 1 << 22
    """Edges generated per chunk (bounds memory; the output does not depend on it)."""
    dedup: bool = False
    """Keep one copy of a relation's repeated edges."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""
    progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self):
        _check_int("num_papers", self.num_papers, 2, MAX_NODES)
        _check_int("num_classes", self.num_classes, 2, self.num_papers)
        _check_int("seed", self.seed, 0, (1 << 64) - 1)  # before it derives the types' seeds
        for name in ("author_ratio", "institute_ratio", "fos_ratio",
                     *(f"{rel}_degree" for _, rel, _ in RELATIONS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int | float)
                                               and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.type_configs()  # checks the fields the types share

    @property
    def node_counts(self) -> dict[str, int]:
        """Nodes per type: num_papers times the type's ratio (at least num_classes)."""
        ratios = {"author": self.author_ratio, "institute": self.institute_ratio,
                  "fos": self.fos_ratio}
        return {"paper": self.num_papers, **{
            t: max(self.num_classes, round(self.num_papers * r)) for t, r in ratios.items()}}

    @property
    def num_edges(self) -> dict[Relation, int]:
        """Generated edges per relation (the stored graph holds each twice: its reverse)."""
        counts = self.node_counts
        return {rel: round(counts[rel[0]] * getattr(self, f"{rel[1]}_degree"))
                for rel in RELATIONS}

    def type_configs(self) -> dict[str, SynthConfig]:
        """Each node type as a homogeneous synthetic graph's nodes (its classes, features,
        splits; the papers' ``avg_degree`` is cites_degree, whose graph is cites)."""
        counts = self.node_counts
        return {t: SynthConfig(
            out=self.out, num_nodes=counts[t], seed=derive_key(self.seed, _TYPE_STREAM, i),
            avg_degree=self.cites_degree if t == "paper" else 1.0, undirected=False,
            feature_dim=self.feature_dim, feature_dtype=self.feature_dtype,
            num_classes=self.num_classes, homophily=self.homophily, noise=self.noise,
            train_fraction=self.train_fraction, val_fraction=self.val_fraction,
            test_fraction=self.test_fraction, chunk_edges=self.chunk_edges, progress=False)
            for i, t in enumerate(NODE_TYPES)}


class BipartiteEdges(EdgeGenerator):
    """A relation between two types in chunks: callable, returning a fresh iterator (the
    generator's chunking over :func:`~disktrain.kernels.bipartite.bipartite_edges`)."""

    def __init__(self, cfg: TypedSynthConfig, rel: Relation):
        types = cfg.type_configs()
        src, dst = types[rel[0]], types[rel[2]]
        self.num_edges, self.chunk_edges = cfg.num_edges[rel], cfg.chunk_edges
        self._args = (src.num_nodes, dst.num_nodes, dst.scale, np.uint64(_ZERO_BELOW),
                      float(cfg.homophily), cfg.num_classes,
                      np.uint64(derive_key(cfg.seed, _RELATION_STREAM, RELATIONS.index(rel))),
                      _key(src.seed, "classes"), _key(dst.seed, "classes"),
                      _perm_keys(dst.seed, "graph_perm"))

    def chunk(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(src, dst) int64 of edges [start, stop), ids local to each type."""
        src = np.empty(stop - start, np.int64)
        dst = np.empty(stop - start, np.int64)
        kbip.bipartite_edges(start, src, dst, *self._args)
        return src, dst


def relation_edges(cfg: TypedSynthConfig, rel: Relation) -> EdgeChunks:
    """The seeded edge stream of relation ``rel`` (one of :data:`RELATIONS`)."""
    if rel[0] == rel[2]:
        return EdgeGenerator(cfg.type_configs()[rel[0]])
    return BipartiteEdges(cfg, rel)


def _features(cfg: SynthConfig, name: str) -> FeatureSource:
    centroids = class_centroids(cfg)

    def blocks(rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, cfg.num_nodes, rows):
            yield a, node_features(cfg, a, min(a + rows, cfg.num_nodes), centroids)

    return FeatureSource(Path(f"synthetic {name} features"), cfg.num_nodes, cfg.feature_dim,
                         np.dtype(cfg.feature_dtype), blocks)


def _splits(cfg: SynthConfig) -> dict[str, np.ndarray]:
    parts = {s: [] for s in SPLITS}
    for a in range(0, cfg.num_nodes, NODE_CHUNK):
        codes = split_codes(cfg, a, min(a + NODE_CHUNK, cfg.num_nodes))
        for k, s in enumerate(SPLITS):
            parts[s].append(np.flatnonzero(codes == k) + a)
    return {s: np.concatenate(ids) for s, ids in parts.items()}


def synthesize_typed(cfg: TypedSynthConfig) -> Path:
    """Generate the typed dataset ``cfg`` describes into ``cfg.out`` (atomically, through
    :func:`write_typed_dataset` with reverse relations); return its path."""
    types = cfg.type_configs()
    papers = types["paper"]
    params = {k: str(v) for k, v in asdict(cfg).items()
              if k not in ("out", "overwrite", "progress", "chunk_edges")}
    inputs = TypedInputs(
        node_counts=cfg.node_counts, target_type="paper",
        relations={rel: relation_edges(cfg, rel) for rel in RELATIONS},
        num_input_edges=cfg.num_edges,
        features={t: _features(c, t) for t, c in types.items()},
        labels=node_labels(papers, 0, papers.num_nodes), splits=_splits(papers),
        sources={"generator": "igbh-like typed R-MAT", **params})
    return write_typed_dataset(cfg.out, inputs, add_reverse=True, dedup=cfg.dedup,
                               progress=cfg.progress, overwrite=cfg.overwrite,
                               importer="synth --typed igbh")
