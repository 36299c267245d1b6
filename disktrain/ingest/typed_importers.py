"""Importers of the published layouts of the large typed graphs: IGB / IGBH, MAG240M and OGB's
heterogeneous datasets (ogbn-mag), each streamed in bounded memory into
:func:`~disktrain.ingest.typed.write_typed_dataset` (IGB's homogeneous graph, only
``paper__cites__paper``, into :func:`~disktrain.ingest.inputs.write_dataset`).

Edges stream in chunks of ``chunk_rows`` and features in row blocks; labels and splits
(O(papers)) are held whole. A node type's count comes from its features' rows (IGB), the
dataset's ``meta.pt`` (MAG240M) or ``raw/num-node-dict.csv.gz`` (OGB). Labels are int64 with
-1 for an unlabelled node; splits hold labelled nodes only. Errors name the file, and the
row where there is one.

- IGB / IGBH (``--igb DIR``)::

      DIR/<size>/processed/<type>/node_feat.npy        (n, 1024) float32; no .npy header in
                                                       the large and full sizes' big files
      DIR/<size>/processed/<src>__<rel>__<dst>/edge_index.npy   (E, 2) int64
      DIR/<size>/processed/paper/node_label_19.npy     one float class id per paper (or
                                           node_label_2K.npy; headerless in large and full)

  IGB has no split on disk: the first 60% of the labelled papers train, the next 20%
  validate, the rest test (the IGB dataloader's ``IGB260MDGLDataset``). In the full size only
  a prefix of the papers has labels (:data:`IGB_FULL_LABELLED`).
- MAG240M (``--mag240m DIR``, OGB-LSC's ``mag240m_kddcup2021``)::

      DIR/meta.pt                  {"paper": n, "author": n, "institution": n, "num_classes": c}
      DIR/split_dict.pt            {"train": ids, "valid": ids, "test": ids}
      DIR/processed/paper/node_feat.npy     (n, 768) float16
      DIR/processed/paper/node_label.npy    (n,) float, NaN where unlabelled
      DIR/processed/<src>___<rel>___<dst>/edge_index.npy   (2, E) int64

  ``.pt`` files are read with ``torch.load(weights_only=True)``, only numpy arrays allowed
  beyond tensors and plain values. Authors and institutions have no features; MAG240M's
  hidden test labels leave its test split out.
- OGB heterogeneous (``--ogb DIR`` with ``raw/relations/``; ogbn-mag), headerless gzipped
  CSVs but for the node counts::

      DIR/raw/num-node-dict.csv.gz              a header line of type names, a line of counts
      DIR/raw/relations/<src>___<rel>___<dst>/edge.csv.gz        "src,dst" per line
      DIR/raw/relations/<src>___<rel>___<dst>/num-edge-list.csv.gz   (optional; checked)
      DIR/raw/node-feat/<type>/node-feat.csv.gz  (types without it have no features)
      DIR/raw/node-label/<type>/node-label.csv.gz    the target type: the one with labels
      DIR/split/<name>/<type>/{train,valid,test}.csv.gz
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from disktrain.errors import DataError, check_min
from disktrain.ingest.arrays import (
    FileElements,
    HeaderlessRows,
    PairEdges,
    is_npy,
    stream_labels,
)
from disktrain.ingest.csr import CSRConfig
from disktrain.ingest.edges import NpyEdges, NpyRows, checked_chunks
from disktrain.ingest.importers import (
    OgbEdges,
    _read_column,
    _read_count,
    _split_dir,
    csv_features,
    ogb_splits,
)
from disktrain.ingest.inputs import (
    FeatureSource,
    Inputs,
    check_labels,
    open_features,
    rows_features,
    write_dataset,
)
from disktrain.ingest.typed import TypedInputs, write_typed_dataset
from disktrain.storage.dataset import Relation

IGB_SIZES = ("tiny", "small", "medium", "large", "full")
IGB_LABEL_FILES = {19: "node_label_19.npy", 2983: "node_label_2K.npy"}
"""``--igb-classes`` -> the label file of ``processed/paper/``."""
IGB_FULL_LABELLED = {19: 227_130_858, 2983: 157_675_969}
"""Papers with a label in IGB(H)-full, a prefix of its 269,346,174 papers (the IGB
dataloader's and the MLPerf GNN reference's counts); the smaller sizes label every paper."""
IGB_SPLIT = (0.6, 0.2)
"""IGB's train and validation shares of the labelled papers, taken in id order."""
MAG240M_TYPES = ("paper", "author", "institution")


@dataclass(frozen=True, kw_only=True)
class TypedIngestConfig:
    """What to import (exactly one of ``igb``, ``mag240m``, ``ogb``) and how."""

    out: Path
    """Dataset directory to create."""
    igb: Path | None = None
    """An IGB / IGBH download: the directory holding ``<size>/processed/``."""
    igb_size: str | None = None
    """Which of :data:`IGB_SIZES` under ``igb``; default: the only one there."""
    igb_classes: int = 19
    """19 (``node_label_19.npy``) or 2983 (``node_label_2K.npy``)."""
    igb_feature_dim: int = 1024
    """The row width of a headerless ``node_feat.npy`` (IGB's are 1024 float32)."""
    igb_labelled: int | None = None
    """Papers with a label (a prefix); default: :data:`IGB_FULL_LABELLED` for the full size,
    else every paper."""
    mag240m: Path | None = None
    """A MAG240M directory (``mag240m_kddcup2021``: ``meta.pt``, ``processed/``)."""
    ogb: Path | None = None
    """An OGB heterogeneous dataset directory (``raw/relations/``, as ogbn-mag's)."""
    ogb_split: str | None = None
    """Which ``split/<name>/`` of ``ogb``; default: its only one."""
    add_reverse: bool = True
    """Add ``(dst, rev_<rel>, src)`` for every relation (IGB's homogeneous graph: the reverse
    of every edge), so that every type receives messages from its neighbours of every
    relation, as the IGBH / MAG240M R-GAT references train."""
    dedup: bool = False
    """Keep one copy of repeated edges of a relation."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""
    progress: bool = True
    """Show progress bars."""
    chunk_rows: int = 1 << 20
    """Edges read per chunk (and label rows per block)."""

    def __post_init__(self):
        for name in ("out", "igb", "mag240m", "ogb"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        given = [n for n in ("igb", "mag240m", "ogb") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give one of igb, mag240m, ogb, got {given or 'none'}")
        check_min(self, 1, "chunk_rows", "igb_feature_dim")
        if self.igb_size is not None and self.igb_size not in IGB_SIZES:
            raise ValueError(f"igb_size must be one of {IGB_SIZES}, got {self.igb_size!r}")
        if self.igb_classes not in IGB_LABEL_FILES:
            raise ValueError(f"igb_classes must be 19 or 2983, got {self.igb_classes}")
        check_min(self, 0, "igb_labelled")
        for name, needs in (("igb_size", "igb"), ("igb_labelled", "igb"), ("ogb_split", "ogb")):
            if getattr(self, name) is not None and getattr(self, needs) is None:
                raise ValueError(f"{name} ({getattr(self, name)!r}) needs {needs}")

    @property
    def source(self) -> Path:
        return self.igb or self.mag240m or self.ogb


def is_typed_ogb(root: Path) -> bool:
    """Whether the OGB dataset ``root`` is heterogeneous (has ``raw/relations/``)."""
    return (Path(root) / "raw" / "relations").is_dir()


def ingest_typed(cfg: TypedIngestConfig) -> Path:
    """Read the dataset ``cfg`` names and write the dataset directory ``cfg.out``."""
    if not cfg.source.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {cfg.source}")
    if cfg.out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} already exists (pass overwrite to replace it)")
    importer = "igb" if cfg.igb else "mag240m" if cfg.mag240m else "ogb"
    inputs = {"igb": read_igb, "mag240m": read_mag240m, "ogb": read_ogb_typed}[importer](cfg)
    if isinstance(inputs, Inputs):
        csr = CSRConfig(undirected=cfg.add_reverse, dedup=cfg.dedup, progress=cfg.progress)
        return write_dataset(cfg.out, inputs, csr, overwrite=cfg.overwrite, importer=importer)
    return write_typed_dataset(cfg.out, inputs, add_reverse=cfg.add_reverse, dedup=cfg.dedup,
                               progress=cfg.progress, overwrite=cfg.overwrite,
                               importer=importer)


# IGB / IGBH

def read_igb(cfg: TypedIngestConfig) -> TypedInputs | Inputs:
    """The inputs of the IGB / IGBH download ``cfg.igb`` (see the module's docstring): typed,
    or homogeneous when it holds only papers and ``paper__cites__paper``."""
    size = cfg.igb_size or _only_size(cfg.igb)
    processed = cfg.igb / size / "processed"
    if not processed.is_dir():
        raise DataError(f"{processed}: not found; expected IGB's layout "
                        "DIR/<size>/processed/<type>/node_feat.npy")
    folders = sorted(p for p in processed.iterdir() if p.is_dir())
    features = {p.name: _igb_features(p / "node_feat.npy", cfg.igb_feature_dim)
                for p in folders if "__" not in p.name and (p / "node_feat.npy").exists()}
    if "paper" not in features:
        raise DataError(f"{processed / 'paper' / 'node_feat.npy'}: file not found")
    readers = {_relation(p, "__"): NpyEdges(p / "edge_index.npy", cfg.chunk_rows)
               for p in folders if "__" in p.name and (p / "edge_index.npy").exists()}
    if not readers:
        raise DataError(f"{processed}: no <src>__<rel>__<dst>/edge_index.npy")
    counts = {t: f.num_rows for t, f in features.items()}
    labels, where = _igb_labels(processed / "paper", cfg, size, counts["paper"])
    splits = _leading_splits(labels)
    sources = {"igb": str(processed.resolve()), "labels": str(where.resolve()),
               **dict.fromkeys(splits, f"IGB's split of the labelled papers {IGB_SPLIT}")}
    if list(counts) == ["paper"] and list(readers) == [("paper", "cites", "paper")]:
        reader, n = readers["paper", "cites", "paper"], counts["paper"]
        return Inputs(num_nodes=n, num_nodes_from=f"the rows of {features['paper'].path}",
                      edges=lambda: checked_chunks(reader, n), num_input_edges=reader.num_rows,
                      edges_estimate=reader.num_rows, features=features["paper"],
                      labels=labels, splits=splits, sources=sources)
    return TypedInputs(node_counts=counts, target_type="paper",
                       relations={r: partial(checked_chunks, e) for r, e in readers.items()},
                       num_input_edges={r: e.num_rows for r, e in readers.items()},
                       features=features, labels=labels, splits=splits, sources=sources)


def _only_size(root: Path) -> str:
    found = [s for s in IGB_SIZES if (root / s / "processed").is_dir()]
    if len(found) != 1:
        raise DataError(f"{root}: {'several IGB sizes' if found else 'no IGB size'} "
                        f"({', '.join(found) or 'expected <size>/processed/'}); choose one "
                        f"with --igb-size ({', '.join(IGB_SIZES)})")
    return found[0]


def _igb_features(path: Path, dim: int) -> FeatureSource:
    """A ``.npy`` file, or IGB's headerless float32 rows of ``dim`` values."""
    return open_features(path) if is_npy(path) else rows_features(
        HeaderlessRows(path, np.dtype(np.float32), dim))


def _igb_labels(folder: Path, cfg: TypedIngestConfig, size: str,
                num_papers: int) -> tuple[np.ndarray, Path]:
    """int64 labels of the papers (-1 past the labelled prefix, or where NaN) and their file."""
    path = folder / IGB_LABEL_FILES[cfg.igb_classes]
    if not path.exists():
        present = ", ".join(sorted(p.name for p in folder.glob("node_label*"))) or "none"
        raise DataError(f"{path}: file not found (--igb-classes {cfg.igb_classes}; label "
                        f"files present: {present})")
    rows = NpyRows(path) if is_npy(path) else HeaderlessRows(path, np.dtype(np.float32), 1)
    count = int(np.prod(rows.shape))
    if count > num_papers or (len(rows.shape) == 2 and rows.shape[1] != 1):
        raise DataError(f"{path}: labels of shape {rows.shape}, expected at most one per paper "
                        f"({num_papers} papers)")
    labelled = cfg.igb_labelled
    if labelled is None:
        labelled = IGB_FULL_LABELLED[cfg.igb_classes] if size == "full" else num_papers
    return stream_labels(FileElements(rows), num_papers, cfg.chunk_rows, min(labelled, count),
                         cfg.igb_classes), path


def _leading_splits(labels: np.ndarray) -> dict[str, np.ndarray]:
    """IGB's split: the labelled nodes in id order, :data:`IGB_SPLIT` of them to train and
    validate, the rest to test."""
    ids = np.flatnonzero(labels >= 0)
    train, val = (int(len(ids) * share) for share in IGB_SPLIT)
    return {"train": ids[:train], "val": ids[train:train + val], "test": ids[train + val:]}


# MAG240M

def read_mag240m(cfg: TypedIngestConfig) -> TypedInputs:
    """The typed inputs of the MAG240M directory ``cfg.mag240m`` (see the module's
    docstring)."""
    root, processed = cfg.mag240m, cfg.mag240m / "processed"
    meta = load_pt(root / "meta.pt")
    counts = {}
    for t in MAG240M_TYPES:
        count = meta.get(t)
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise DataError(f"{root / 'meta.pt'}: {t!r}: {count!r}, expected a positive node "
                            f"count (keys present: {sorted(meta)})")
        counts[t] = int(count)
    classes = meta.get("num_classes")
    paper = processed / "paper"
    features = {"paper": open_features(paper / "node_feat.npy")}
    label_rows = NpyRows(paper / "node_label.npy")
    if label_rows.shape != (counts["paper"],):
        raise DataError(f"{label_rows.path}: labels of shape {label_rows.shape}, expected "
                        f"({counts['paper']},) (papers in meta.pt)")
    labels = stream_labels(FileElements(label_rows), counts["paper"], cfg.chunk_rows,
                           num_classes=int(classes) if classes else None)
    readers = {_relation(p, "___"): PairEdges(FileElements(NpyRows(p / "edge_index.npy")),
                                              cfg.chunk_rows)
               for p in sorted(processed.iterdir()) if "___" in p.name}
    if not readers:
        raise DataError(f"{processed}: no <src>___<rel>___<dst>/edge_index.npy")
    splits = _mag240m_splits(root / "split_dict.pt", labels)
    where = str((root / "split_dict.pt").resolve())
    return TypedInputs(node_counts=counts, target_type="paper",
                       relations={r: partial(checked_chunks, e) for r, e in readers.items()},
                       num_input_edges={r: e.num_rows for r, e in readers.items()},
                       features=features, labels=labels, splits=splits,
                       sources={"mag240m": str(root.resolve()),
                                "labels": str(label_rows.path.resolve()),
                                **dict.fromkeys(splits, where)})


def _mag240m_splits(path: Path, labels: np.ndarray) -> dict[str, np.ndarray]:
    """``train``, ``valid`` (our ``val``) and ``test`` of ``split_dict.pt``, as int64; a split
    none of whose nodes has a label (MAG240M's test: its labels are hidden) is left out."""
    stored = load_pt(path)
    splits = {}
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        if theirs not in stored:
            continue
        ids = np.asarray(stored[theirs]).reshape(-1)
        if ids.dtype.kind not in "iu":
            raise DataError(f"{path}: {theirs!r} holds {ids.dtype}, expected integer node ids")
        if ids.size and ids.min() >= 0 and ids.max() < len(labels) and (labels[ids] < 0).all():
            continue  # out-of-range ids are check_splits' to name
        splits[ours] = ids
    return splits


def load_pt(path: Path) -> dict:
    """The dict a ``torch.save`` file holds, read with ``torch.load(weights_only=True)``
    (tensors, plain values and numpy arrays only: no pickled code runs)."""
    import torch

    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            value = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read with torch.load(weights_only=True) ({e})") from e
    if not isinstance(value, dict):
        raise DataError(f"{path}: holds a {type(value).__name__}, expected a dict")
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in value.items()}


def _numpy_globals() -> list:
    """What unpickling a numpy array takes, under the names numpy 1 and 2 write."""
    core = np._core if hasattr(np, "_core") else np.core
    found = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    found += [(core.multiarray._reconstruct, f"numpy.{name}.multiarray._reconstruct")
              for name in ("core", "_core")]
    return found + [type(np.dtype(t)) for t in (np.int64, np.int32, np.float32, np.float64)]


# OGB heterogeneous

def read_ogb_typed(cfg: TypedIngestConfig) -> TypedInputs:
    """The typed inputs of the OGB heterogeneous dataset ``cfg.ogb`` (see the module's
    docstring)."""
    root, raw = cfg.ogb, cfg.ogb / "raw"
    counts = _num_node_dict(raw / "num-node-dict.csv.gz")
    origin = f"the count in {raw / 'num-node-dict.csv.gz'}"
    readers = {}
    for folder in sorted(p for p in (raw / "relations").iterdir() if p.is_dir()):
        count = folder / "num-edge-list.csv.gz"
        readers[_relation(folder, "___")] = OgbEdges(
            folder / "edge.csv.gz", cfg.chunk_rows,
            _read_count(count, "edge", allow_zero=True) if count.exists() else None)
    features = {t: csv_features(raw / "node-feat" / t / "node-feat.csv.gz", n, origin)
                for t, n in counts.items() if (raw / "node-feat" / t / "node-feat.csv.gz").exists()}
    labelled = sorted(p.parent.name for p in (raw / "node-label").glob("*/node-label.csv.gz"))
    if len(labelled) != 1:
        raise DataError(f"{raw / 'node-label'}: labels for {labelled or 'no type'}; expected "
                        "one target type's node-label.csv.gz")
    target = labelled[0]
    if target not in counts:
        raise DataError(f"{raw / 'node-label' / target}: type {target!r} is not in "
                        f"{raw / 'num-node-dict.csv.gz'} ({list(counts)})")
    path = raw / "node-label" / target / "node-label.csv.gz"
    labels = check_labels(path, _read_column(
        path, "class id per node", "multi-task labels are not supported"), counts[target], origin)
    splits, split_paths = ogb_splits(_split_dir(root, cfg.ogb_split, target), counts[target],
                                     labels)
    return TypedInputs(node_counts=counts, target_type=target,
                       relations={r: (lambda e=e: e.checked(None)) for r, e in readers.items()},
                       num_input_edges={r: e.num_rows or 0 for r, e in readers.items()},
                       features=features, labels=labels, splits=splits,
                       sources={"ogb": str(root.resolve()), "labels": str(path.resolve()),
                                **{k: str(v.resolve()) for k, v in split_paths.items()}})


def _num_node_dict(path: Path) -> dict[str, int]:
    """OGB's ``num-node-dict.csv.gz``: a header line of type names, one line of counts."""
    try:
        table = pcsv.read_csv(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if table.num_rows != 1:
        raise DataError(f"{path}: {table.num_rows} rows of counts, expected one (one graph)")
    counts = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        value = column[0].as_py()
        if not isinstance(value, int) or value < 1:
            raise DataError(f"{path}: row 0, type {name!r}: count {value!r} is not a positive "
                            "integer")
        counts[name] = value
    return counts


# shared

def _relation(folder: Path, sep: str) -> Relation:
    parts = folder.name.split(sep)
    if len(parts) != 3 or not all(parts):
        raise DataError(f"{folder}: a relation folder's name must be "
                        f"<src>{sep}<rel>{sep}<dst>")
    return parts[0], parts[1], parts[2]
