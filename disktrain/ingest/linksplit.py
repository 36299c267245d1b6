"""Edge splits for link prediction, without leakage: which edges message passing sees (the
CSR) and which ones a model is evaluated on.

An :class:`EdgeSplit` wraps the edge chunk stream that :func:`disktrain.ingest.csr.build_csr`
takes (an ``EdgeChunks``) and passes on only the train edges; the validation and test edges
are held back, in memory (a small share of the edges), and stored by :meth:`EdgeSplit.write`
once the CSR is built:

- :class:`HashSplit` (``--edge-split 0.85,0.05,0.10``): each input edge goes to the split a
  counter-based hash of the seed and its canonical pair ``(min(u, v), max(u, v))`` picks
  (:func:`disktrain.kernels.linksplit.split_codes`), so both directions of an edge always land
  in the same split: nothing leaks for an undirected graph, nor for an input that lists both
  directions (Cora). The shares are approximate (each edge is a coin flip; on E edges a
  share is off by about ``sqrt(p (1 - p) / E)``), and the split depends on the seed and the
  edge alone, not on the input's order or chunking.
- :class:`GivenSplit` (``--link-val FILE --link-test FILE``, OGB's link layouts): the edges
  of the files are removed from the graph, both directions; each must be an edge of the input
  graph (either direction) unless the layout's graph holds train edges only (OGB's).

The dataset then holds (see :data:`disktrain.storage.dataset.DATASET`): ``link_train``, the
CSR's edges once each, written in one streaming pass over the CSR in row blocks; ``link_val``
and ``link_test``, the held-out edges, a hash split's deduplicated as canonical pairs for an
undirected graph (as pairs with ``dedup``), self loops dropped with ``drop_self_loops``, given
ones as given; and per held-out edge K negative destinations (``link_val_neg``,
``link_test_neg``), uniform over ``[0, N)`` (ogbl-citation2's protocol), drawn by a
counter-based generator of the seed (:func:`disktrain.kernels.linksplit.uniform_negatives`)
unless given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from disktrain.errors import DataError
from disktrain.ingest.csr import CSRConfig, EdgeChunks, place_chunk_file
from disktrain.ingest.edges import checked_chunks, open_edges
from disktrain.kernels import linksplit as klink
from disktrain.kernels.rng import derive_key
from disktrain.storage.chunkfile import ChunkFileWriter, create_flat
from disktrain.storage.dataset import open_flat_array, write_small_array

HELD = ("val", "test")
"""The splits held out of the graph."""
SUM_TOLERANCE = 1e-6
"""How far the edge split's fractions may sum from 1."""
_MAX_SEED = 2**64 - 1
_STREAMS = {"split": 1, "negatives": 2}
_BLOCK_EDGES = 1 << 22
"""CSR entries (and negatives) handled at once when writing."""


@dataclass(frozen=True, kw_only=True)
class LinkSplitConfig:
    """How a dataset's edges are split for link prediction (nothing split by default)."""

    edge_split: tuple[float, float, float] | None = None
    """Shares of the input edges in train, val and test (summing to 1), e.g. (0.85, 0.05,
    0.10); each edge picked by a hash, so the shares are approximate."""
    split_seed: int = 0
    """Seed of the hash split and of the drawn negatives."""
    eval_negatives: int = 1000
    """Negative destinations drawn per val/test edge (OGB citation2's 1000), unless given."""
    link_val: Path | None = None
    """Instead of ``edge_split``: the val edges, an (E, 2) integer ``.npy`` or Parquet with
    the src/dst columns (CSV too); each must be an edge of the input graph."""
    link_test: Path | None = None
    """The test edges, as ``link_val``."""
    link_val_neg: Path | None = None
    """The val edges' negative destinations, an (E, K) integer ``.npy`` (default: drawn)."""
    link_test_neg: Path | None = None
    """The test edges' negative destinations, as ``link_val_neg``."""

    def __post_init__(self):
        for name in ("link_val", "link_test", "link_val_neg", "link_test_neg"):
            if (value := getattr(self, name)) is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.edge_split is not None:
            object.__setattr__(self, "edge_split", check_fractions(self.edge_split))
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or \
                not 0 <= self.split_seed <= _MAX_SEED:
            raise ValueError(f"split_seed must be an integer in [0, 2**64), got "
                             f"{self.split_seed!r}")
        if isinstance(self.eval_negatives, bool) or not isinstance(self.eval_negatives, int) \
                or self.eval_negatives < 1:
            raise ValueError(f"eval_negatives must be an integer >= 1, got "
                             f"{self.eval_negatives!r}")
        if self.edge_split is not None and self.files:
            raise ValueError("give edge_split or the split files (link_val, link_test), "
                             "not both")
        if (self.link_val is None) != (self.link_test is None):
            raise ValueError("link_val and link_test go together (a split file each)")
        for split in HELD:
            if getattr(self, f"link_{split}_neg") and not getattr(self, f"link_{split}"):
                raise ValueError(f"link_{split}_neg needs link_{split}")

    @property
    def enabled(self) -> bool:
        return self.edge_split is not None or self.link_val is not None

    @property
    def files(self) -> dict[str, Path]:
        """The split files given, by field name."""
        names = ("link_val", "link_test", "link_val_neg", "link_test_neg")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def check_fractions(values) -> tuple[float, float, float]:
    """``values`` as three fractions (train, val, test): finite, none negative, train and
    val and test above 0, summing to 1 within :data:`SUM_TOLERANCE`; else ValueError."""
    try:
        fractions = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"edge_split must be three fractions (train, val, test), got "
                         f"{values!r}") from None
    if len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions):
        raise ValueError(f"edge_split must be three fractions >= 0 (train, val, test), got "
                         f"{values!r}")
    if abs(sum(fractions) - 1) > SUM_TOLERANCE:
        raise ValueError(f"edge_split must sum to 1, got {fractions} (sum {sum(fractions):.9g})")
    for name, f in zip(("train", *HELD), fractions, strict=True):
        if f == 0:
            raise ValueError(f"edge_split: the {name} fraction is 0, it must be above 0 "
                             f"(got {fractions})")
    return fractions


@dataclass(frozen=True)
class GivenLinks:
    """Held-out edges (and their negatives) an importer read: ``{split: (where, array)}``."""

    edges: dict[str, tuple[str, np.ndarray]]
    negatives: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    must_be_edges: bool = True
    """Whether each must be an edge of the input graph (False: OGB's graph holds the train
    edges only)."""
    source: str = ""
    """Where they came from (the provenance)."""


class EdgeSplit:
    """An edge chunk stream split for link prediction: calling it yields a fresh pass over
    the train edges (for :func:`~disktrain.ingest.csr.build_csr`); after a whole pass
    :meth:`write` stores the split in the dataset group."""

    def __init__(self, edges: EdgeChunks, cfg: LinkSplitConfig, num_nodes: int,
                 csr: CSRConfig):
        self.edges, self.cfg, self.num_nodes, self.csr = edges, cfg, num_nodes, csr
        self.held: dict[str, np.ndarray] = {}
        """The val and test edges of the last whole pass: (E, 2) int64 each."""
        self.negatives: dict[str, tuple[str, np.ndarray]] = {}
        """Given negatives by split (the others are drawn)."""

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._start()
        for src, dst in self.edges():
            codes = self._codes(src, dst)
            train = codes == 0
            yield (src, dst) if train.all() else (src[train], dst[train])
            self._seen(src, dst, codes)
        self._finish()

    def _start(self) -> None:
        pass

    def _codes(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _seen(self, src: np.ndarray, dst: np.ndarray, codes: np.ndarray) -> None:
        pass

    def _finish(self) -> None:
        pass

    def settings(self) -> dict:
        """What the provenance records."""
        return {"edge_split": list(self.cfg.edge_split or ()), "split_seed": self.cfg.split_seed,
                "eval_negatives": self.num_negatives}

    @property
    def num_negatives(self) -> int:
        """K: the given negatives' width, else ``eval_negatives``."""
        return next((a.shape[1] for _, a in self.negatives.values()), self.cfg.eval_negatives)

    def bounds(self, num_input_edges: int) -> dict[str, int]:
        """Upper bounds of the link arrays' sizes (for the disk-space check)."""
        held = self.held_bounds(num_input_edges)
        return {"link_train": num_input_edges, **{f"link_{s}": held[s] for s in HELD},
                "eval_negatives": self.num_negatives}

    def held_bounds(self, num_input_edges: int) -> dict[str, int]:
        raise NotImplementedError

    def write(self, group: zarr.Group) -> dict[str, int]:
        """Store ``link_train`` (from the CSR in ``group``), the held-out edges and their
        negatives; return the arrays' lengths."""
        sizes = {"train": write_link_train(group, self.csr)}
        for k, split in enumerate(HELD):
            write_small_array(group, f"link_{split}", self.held[split])
            sizes[split] = len(self.held[split])
            if split in self.negatives:
                write_small_array(group, f"link_{split}_neg", self.negatives[split][1])
            else:
                key = derive_key(self.cfg.split_seed, _STREAMS["negatives"], k)
                write_negatives(group, f"link_{split}_neg", key, sizes[split],
                                self.num_negatives, self.num_nodes)
        return sizes


class HashSplit(EdgeSplit):
    """Train, val and test by a hash of each edge's canonical pair (module docstring)."""

    def __init__(self, edges: EdgeChunks, cfg: LinkSplitConfig, num_nodes: int,
                 csr: CSRConfig):
        super().__init__(edges, cfg, num_nodes, csr)
        train, val, _ = cfg.edge_split
        self._bounds = np.array([_threshold(train), _threshold(train + val)], np.uint64)
        self._key = np.uint64(derive_key(cfg.split_seed, _STREAMS["split"]))
        self._parts: dict[str, list[np.ndarray]] = {}
        self._num_input = 0

    def _start(self) -> None:
        self._parts, self._num_input = {split: [] for split in HELD}, 0

    def _codes(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        codes = np.empty(len(src), np.int8)
        klink.split_codes(src, dst, self._key, self._bounds, codes)
        return codes

    def _seen(self, src: np.ndarray, dst: np.ndarray, codes: np.ndarray) -> None:
        self._num_input += len(src)
        for k, split in enumerate(HELD, 1):
            mine = codes == k
            if mine.any():
                self._parts[split].append(np.column_stack((src[mine], dst[mine])))

    def _finish(self) -> None:
        self.held = {split: self._normal(parts) for split, parts in self._parts.items()}
        for k, split in enumerate(HELD, 1):
            if not len(self.held[split]):
                raise DataError(
                    f"edge_split {','.join(f'{f:g}' for f in self.cfg.edge_split)} left the "
                    f"{split} split empty ({self._num_input} input edges, "
                    f"{self.cfg.edge_split[k]:g} of them expected): give it a larger fraction")

    def _normal(self, parts: list[np.ndarray]) -> np.ndarray:
        """Held-out edges as stored: self loops dropped if the graph drops them; canonical
        pairs, once each, for an undirected graph; pairs once each with dedup."""
        edges = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        if self.csr.drop_self_loops:
            edges = edges[edges[:, 0] != edges[:, 1]]
        if self.csr.undirected:
            edges = np.sort(edges, axis=1)
        if self.csr.undirected or self.csr.dedup:
            edges = np.unique(edges, axis=0)
        return edges.astype(np.int64, copy=False)

    def held_bounds(self, num_input_edges: int) -> dict[str, int]:
        shares = dict(zip(HELD, self.cfg.edge_split[1:], strict=True))
        return {s: math.ceil(f * num_input_edges * 1.1) + 64 for s, f in shares.items()}


def _threshold(fraction: float) -> int:
    """The uint64 hash value below which a share ``fraction`` of hashes lie."""
    return min(int(fraction * 2.0**64), 2**64 - 1)


class GivenSplit(EdgeSplit):
    """The val and test edges given (files, OGB's split): removed from the graph in both
    directions and, if ``given.must_be_edges``, checked to be edges of it."""

    def __init__(self, edges: EdgeChunks, cfg: LinkSplitConfig, num_nodes: int,
                 csr: CSRConfig, given: GivenLinks):
        super().__init__(edges, cfg, num_nodes, csr)
        if num_nodes > 2**32:
            raise DataError(f"given link splits need num_nodes <= 2**32, got {num_nodes}")
        self.given = given
        for where, pairs in given.edges.values():
            _check_pairs(where, pairs, num_nodes)
        self.held = {split: a for split, (_, a) in given.edges.items()}
        self.negatives = dict(given.negatives)
        keys = {split: _pair_keys(a[:, 0], a[:, 1], num_nodes) for split, a in self.held.items()}
        self._check_disjoint(keys)
        self._keys, inverse = np.unique(np.concatenate(list(keys.values())), return_inverse=True)
        cuts = np.cumsum([0, *(len(k) for k in keys.values())])
        self._inverse = {s: inverse[a:b] for s, a, b in zip(keys, cuts[:-1], cuts[1:], strict=True)}
        self._found = np.zeros(len(self._keys), bool)
        self._check_negatives()

    def _check_disjoint(self, keys: dict[str, np.ndarray]) -> None:
        both = np.flatnonzero(np.isin(keys["val"], keys["test"]))
        if both.size:
            row = int(both[0])
            u, v = (int(x) for x in self.held["val"][row])
            raise DataError(f"{self.given.edges['val'][0]}: row {row}: edge ({u}, {v}) is also "
                            f"in the test edges ({self.given.edges['test'][0]})")

    def _check_negatives(self) -> None:
        widths = {a.shape[1] for _, a in self.negatives.values()}
        if len(widths) > 1:
            raise DataError(f"the val and test negatives differ in width ({sorted(widths)} "
                            "per edge); they must match")

    def _start(self) -> None:
        self._found[:] = False

    def _codes(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        keys = _pair_keys(src, dst, self.num_nodes)
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        hit = self._keys[at] == keys
        self._found[at[hit]] = True
        return hit.astype(np.int8)

    def _finish(self) -> None:
        if not self.given.must_be_edges:
            return
        for split, (where, edges) in self.given.edges.items():
            missing = np.flatnonzero(~self._found[self._inverse[split]])
            if missing.size:
                row = int(missing[0])
                u, v = (int(x) for x in edges[row])
                raise DataError(f"{where}: row {row}: ({u}, {v}) is not an edge of the input "
                                "graph (in either direction)")

    def settings(self) -> dict:
        return {"given": self.given.source, "eval_negatives": self.num_negatives,
                "split_seed": self.cfg.split_seed,
                "negatives_given": sorted(self.negatives)}

    def held_bounds(self, num_input_edges: int) -> dict[str, int]:
        return {s: len(a) for s, a in self.held.items()}


def _check_pairs(where: str, pairs: np.ndarray, num_nodes: int) -> None:
    """DataError naming ``where`` and the row unless ``pairs`` is (E >= 1, 2) node ids."""
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype.kind not in "iu":
        raise DataError(f"{where}: edges of shape {pairs.shape} and dtype {pairs.dtype}, "
                        "expected (E, 2) integers")
    if not len(pairs):
        raise DataError(f"{where}: no edges")
    bad = np.flatnonzero(((pairs < 0) | (pairs >= num_nodes)).any(axis=1))
    if bad.size:
        row = int(bad[0])
        node = int(pairs[row, 0] if not 0 <= pairs[row, 0] < num_nodes else pairs[row, 1])
        raise DataError(f"{where}: row {row}: node {node} out of range [0, {num_nodes})")


def _pair_keys(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """One uint64 per canonical pair ``(min, max)`` (``num_nodes <= 2**32``)."""
    lo, hi = np.minimum(src, dst).astype(np.uint64), np.maximum(src, dst).astype(np.uint64)
    return lo * np.uint64(num_nodes) + hi


def edge_split(edges: EdgeChunks, cfg: LinkSplitConfig | None, num_nodes: int,
               csr: CSRConfig, given: GivenLinks | None = None,
               chunk_rows: int = 1 << 20) -> EdgeSplit | None:
    """The split ``cfg`` asks for (or the ``given`` one of an importer) of ``edges``; None
    for none."""
    cfg = cfg or LinkSplitConfig()
    if given is not None:
        if cfg.enabled:
            raise DataError(f"{given.source}: the dataset brings its own link split; do not "
                            "give edge_split or link_val/link_test too")
        return GivenSplit(edges, cfg, num_nodes, csr, given)
    if cfg.edge_split is not None:
        return HashSplit(edges, cfg, num_nodes, csr)
    if cfg.link_val is not None:
        return GivenSplit(edges, cfg, num_nodes, csr, read_given(cfg, num_nodes, chunk_rows))
    return None


def read_given(cfg: LinkSplitConfig, num_nodes: int, chunk_rows: int) -> GivenLinks:
    """The split files of ``cfg``, read whole and checked: ids in ``[0, num_nodes)``, each
    negatives file one row per edge of its split."""
    edges, negatives = {}, {}
    for split in HELD:
        path = getattr(cfg, f"link_{split}")
        reader = open_edges(path, chunk_rows=chunk_rows)
        parts = list(checked_chunks(reader, num_nodes))
        edges[split] = (str(path), np.column_stack((np.concatenate([p[0] for p in parts]),
                                                    np.concatenate([p[1] for p in parts]))))
        if (neg := getattr(cfg, f"link_{split}_neg")) is not None:
            negatives[split] = (str(neg), read_negatives(neg, len(edges[split][1]), num_nodes))
    return GivenLinks(edges, negatives, source=f"{cfg.link_val}, {cfg.link_test}")


def read_negatives(path: Path, num_edges: int, num_nodes: int) -> np.ndarray:
    """An (E, K) integer ``.npy`` of negative destinations as int64, checked."""
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read the negatives as a .npy array ({e})") from e
    return check_negatives(str(path), values, num_edges, num_nodes)


def check_negatives(where: str, values: np.ndarray, num_edges: int,
                    num_nodes: int) -> np.ndarray:
    """(E, K) integer negatives as int64, after checking the shape and the range."""
    if values.ndim != 2 or values.shape[0] != num_edges or values.shape[1] < 1 or \
            values.dtype.kind not in "iu":
        raise DataError(f"{where}: negatives of shape {values.shape} and dtype {values.dtype}, "
                        f"expected ({num_edges}, K) integers, a row per edge of the split")
    bad = np.flatnonzero(((values < 0) | (values >= num_nodes)).any(axis=1))
    if bad.size:
        row = int(bad[0])
        col = int(np.flatnonzero((values[row] < 0) | (values[row] >= num_nodes))[0])
        raise DataError(f"{where}: row {row}: node {int(values[row, col])} out of range "
                        f"[0, {num_nodes})")
    return values.astype(np.int64, copy=False)


def write_link_train(group: zarr.Group, csr: CSRConfig) -> int:
    """Write ``link_train``, the edges of the CSR in ``group`` once each as ``(src, dst)``
    rows, in one pass over the CSR in row blocks; return its length.

    A directed graph's every entry; an undirected one's (stored in both directions) entries
    with ``src < dst``, and each self loop once (stored twice, as any edge, unless the
    build deduplicated them)."""
    root = Path(group.store.root) / group.path
    indptr, indices = (open_flat_array(root, name) for name in ("indptr", "indices"))
    scratch = root / "_link_train.partial"
    with ChunkFileWriter(scratch, 2 * indices.nbytes) as out:
        for a, b in _row_blocks(indptr, _BLOCK_EDGES):
            src = np.asarray(indices[indptr[a]:indptr[b]])
            dst = np.repeat(np.arange(a, b, dtype=indices.dtype), np.diff(indptr[a:b + 1]))
            if csr.undirected:
                keep = src < dst
                loops = np.flatnonzero(src == dst)  # each row's loops adjacent, twice each
                keep[loops if csr.dedup else loops[::2]] = True
                src, dst = src[keep], dst[keep]
            out.write(np.column_stack((src, dst)))
        count = out.nbytes // (2 * indices.dtype.itemsize)
    place_chunk_file(group, "link_train", (count, 2), indices.dtype, scratch)
    return count


def _row_blocks(indptr: np.ndarray, block_edges: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges ``[a, b)`` covering every row, each of about ``block_edges``
    entries (one row at least)."""
    num_rows, a = len(indptr) - 1, 0
    while a < num_rows:
        b = int(np.searchsorted(indptr, indptr[a] + block_edges, side="right")) - 1
        b = min(max(b, a + 1), num_rows)
        yield a, b
        a = b


def write_negatives(group: zarr.Group, name: str, key: int, num_edges: int, k: int,
                    num_nodes: int) -> None:
    """Array ``name``: ``(num_edges, k)`` destinations uniform over ``[0, num_nodes)`` of
    the counter-based stream ``key``, written in row blocks."""
    rows = max(1, _BLOCK_EDGES // k)
    with create_flat(group, name, (num_edges, k), np.int64) as out:
        for a in range(0, num_edges, rows):
            block = np.empty((min(rows, num_edges - a), k), np.int64)
            klink.uniform_negatives(np.uint64(key), a, num_nodes, block)
            out.write(block)

