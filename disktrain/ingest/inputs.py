"""Ingest: validate user files (edges, features, labels, splits) and write a dataset directory.

Everything streams: edges in chunks of ``chunk_rows`` (twice, for the two-pass CSR build, plus
a first scan when the node count has to be found), features in row blocks of one Zarr chunk.
Memory beyond the output memory maps is O(num_nodes) (degrees, labels, split markers) plus
one chunk. The dataset is written under a temporary name and renamed into place at the end,
so a failure leaves nothing behind that looks like a dataset.

Every source (these files, OGB's layout and in-memory PyG data in :mod:`disktrain.ingest.importers`)
becomes :class:`Inputs` (sizes, labels and splits checked; edges and features still to
stream), which :func:`write_dataset` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr
from tqdm.auto import tqdm

from disktrain.errors import DataError, check_min
from disktrain.ingest.csr import CSRConfig, EdgeChunks, build_csr, spill_bytes
from disktrain.ingest.edges import (
    PARQUET_SUFFIXES,
    EdgeReader,
    NpyRows,
    parquet_fragments,
    scan_edges,
)
from disktrain.ingest.linksplit import GivenLinks, LinkSplitConfig, edge_split
from disktrain.storage.atomic import atomic_dir
from disktrain.storage.dataset import (
    SPLITS,
    DatasetMeta,
    create_features,
    dataset_bytes,
    index_dtype,
    provenance,
    write_small_array,
)
from disktrain.storage.diskspace import require_free
from disktrain.storage.lock import write_lock

_INPUTS = ("edges", "features", "labels", *SPLITS, "ogb")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """What to ingest and how."""

    out: Path
    """Dataset directory to create."""
    edges: Path | None = None
    """Edge list: a Parquet file or a directory of Parquet files, a CSV file with a header
    line (``.csv``/``.tsv``, optionally ``.gz``/``.bz2``), or an (E, 2) integer ``.npy``.
    Required unless ``ogb`` is given."""
    ogb: Path | None = None
    """Instead of ``edges`` and the other files: an OGB node property prediction dataset
    directory (``raw/``, ``split/``; see :func:`disktrain.ingest.importers.read_ogb`)."""
    ogb_split: str | None = None
    """Which ``split/<name>/`` of ``ogb`` to use; default: its only one."""
    features: Path | None = None
    """Node features, row i for node i: a 2-D ``.npy`` of any numeric dtype, or Parquet with
    numeric columns (one per feature) or a single list column. Stored as float32 (float16 is
    kept). None stores a (num_nodes, 0) feature array."""
    labels: Path | None = None
    """Node labels: a 1-D integer ``.npy``, one non-negative class id per node."""
    train: Path | None = None
    """Training node ids: a 1-D integer ``.npy``."""
    val: Path | None = None
    """Validation node ids: a 1-D integer ``.npy``."""
    test: Path | None = None
    """Test node ids: a 1-D integer ``.npy``."""
    src_col: str = "src"
    """Source id column of a Parquet or CSV edge list."""
    dst_col: str = "dst"
    """Destination id column of a Parquet or CSV edge list."""
    undirected: bool = False
    """Add the reverse of every edge."""
    dedup: bool = False
    """Keep one copy of repeated edges."""
    drop_self_loops: bool = False
    """Drop edges (v, v)."""
    num_nodes: int | None = None
    """Node count. Default: the feature row count if features are given, else the largest
    node id in the edges + 1 (found by an extra pass over the edges)."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""
    progress: bool = True
    """Show progress bars."""
    chunk_rows: int = 1 << 20
    """Edges read per chunk; bounds the memory used by the edge stream."""
    link: LinkSplitConfig = field(default_factory=LinkSplitConfig)
    """The edge split for link prediction (none by default; an OGB link dataset brings its
    own, :func:`disktrain.ingest.importers.read_ogb_link`)."""

    def __post_init__(self):
        for name in ("out", *_INPUTS):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        check_min(self, 1, "num_nodes", "chunk_rows")
        if self.src_col == self.dst_col:
            raise ValueError(f"src_col and dst_col must differ, both are {self.src_col!r}")
        if (self.edges is None) == (self.ogb is None):
            raise ValueError("give either edges or ogb (an OGB dataset directory), not "
                             + ("both" if self.edges else "neither"))
        if self.ogb is not None:
            extra = [n for n in ("features", "labels", *SPLITS) if getattr(self, n)]
            if extra:
                raise ValueError(f"ogb reads the features, labels and splits from {self.ogb}; "
                                 f"do not give {', '.join(extra)} too")
        elif self.ogb_split is not None:
            raise ValueError(f"ogb_split ({self.ogb_split!r}) needs ogb")

    def csr_config(self) -> CSRConfig:
        return CSRConfig(undirected=self.undirected, dedup=self.dedup,
                         drop_self_loops=self.drop_self_loops, progress=self.progress)

    def sources(self) -> dict[str, str]:
        """The input files given, as absolute paths."""
        files = {n: getattr(self, n) for n in _INPUTS if getattr(self, n)}
        return {n: str(path.resolve()) for n, path in {**files, **self.link.files}.items()}


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """A dataset's inputs, checked as far as possible before writing: node count, labels and
    splits in memory, edges and features still to stream (and checked as they stream)."""

    num_nodes: int
    num_nodes_from: str
    """Where the node count came from (for error messages and the provenance)."""
    edges: EdgeChunks
    """Validated ``(src, dst)`` int64 chunks, a fresh pass per call."""
    num_input_edges: int
    """The input edge count, 0 if unknown (sizes progress bars and the CSR build's spill)."""
    edges_estimate: int
    """The input edge count, or an upper-bound estimate of it (for the disk-space check)."""
    features: FeatureSource | None = None
    labels: np.ndarray | None = None
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """Input name -> where it came from (recorded in the provenance)."""
    links: GivenLinks | None = None
    """The val/test edges of a dataset that brings its link split (OGB's link layouts)."""


def write_dataset(out: Path, inputs: Inputs, csr: CSRConfig, *, overwrite: bool = False,
                  importer: str | None = None, link: LinkSplitConfig | None = None,
                  chunk_rows: int = 1 << 20) -> Path:
    """Write ``inputs`` as the dataset directory ``out`` (under a temporary name, renamed
    into place when complete), after checking the disk has room; ``importer`` is recorded in
    the provenance. ``link``: split the edges for link prediction
    (:mod:`disktrain.ingest.linksplit`), as do ``inputs.links``."""
    features, labels, num_nodes = inputs.features, inputs.labels, inputs.num_nodes
    split = edge_split(inputs.edges, link, num_nodes, csr, inputs.links, chunk_rows)
    edges_bound = inputs.edges_estimate * (2 if csr.undirected else 1)
    need = dataset_bytes(num_nodes=num_nodes, num_edges=edges_bound,
                         feature_dim=features.dim if features else 0,
                         feature_dtype=features.dtype if features else np.float32,
                         labels=labels is not None,
                         splits={name: ids.size for name, ids in inputs.splits.items()},
                         spill=spill_bytes(num_nodes, edges_bound),
                         link=split.bounds(inputs.edges_estimate) if split else None)
    require_free(out, need, "ingest")
    with write_lock(out, "ingest"), atomic_dir(out, overwrite=overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w")
        write_features(group, features, num_nodes, csr.progress)
        num_edges = build_csr(group, split or inputs.edges, num_nodes, inputs.num_input_edges,
                              csr)
        if split:
            split.write(group)
        if labels is not None:
            write_small_array(group, "labels", labels)
        for name, ids in inputs.splits.items():
            write_small_array(group, name, ids)
        source = provenance(inputs.sources)
        source["ingest"] = {"undirected": csr.undirected, "dedup": csr.dedup,
                            "drop_self_loops": csr.drop_self_loops,
                            "num_nodes_from": inputs.num_nodes_from}
        if importer is not None:
            source["ingest"]["importer"] = importer
        if split:
            source["ingest"]["edge_split"] = split.settings()
        meta = DatasetMeta(
            num_nodes=num_nodes, num_edges=num_edges,
            feature_dim=features.dim if features else 0,
            num_classes=int(labels.max()) + 1 if labels is not None and labels.size else 0,
            feature_dtype=str(features.dtype if features else np.dtype(np.float32)),
            index_dtype=str(index_dtype(num_nodes)), provenance=source)
        group.attrs.update(asdict(meta))
    return out


def count_nodes(cfg: IngestConfig, edges: EdgeReader,
               features: FeatureSource | None) -> tuple[int, str]:
    """The node count and where it came from (for error messages)."""
    if cfg.num_nodes is not None:
        origin = "given as num_nodes"
        if features is not None and features.num_rows != cfg.num_nodes:
            raise DataError(f"{features.path}: {features.num_rows} feature rows, but num_nodes "
                            f"is {cfg.num_nodes}")
        return cfg.num_nodes, origin
    if features is not None:
        if features.num_rows == 0:
            raise DataError(f"{features.path}: no feature rows")
        return features.num_rows, f"the feature row count of {features.path}"
    with tqdm(total=edges.num_rows, desc="edges: scan", unit="edge", unit_scale=True,
              disable=not cfg.progress) as bar:
        stats = scan_edges(edges, bar)
    return stats.max_id + 1, f"the largest node id in {edges.path} + 1"


# Labels and splits: small (O(num_nodes)) arrays, read whole.

def _read_ids(path: Path, what: str) -> np.ndarray:
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:  # not an .npy file
        raise DataError(f"{path}: cannot read the {what} as a .npy array ({e})") from e
    if values.ndim != 1:
        raise DataError(f"{path}: {what} array has shape {values.shape}, expected 1-D")
    if values.dtype.kind not in "iu":
        raise DataError(f"{path}: {what} array has dtype {values.dtype}, expected integers")
    return values


def read_labels(path: Path, num_nodes: int, origin: str = "") -> np.ndarray:
    """Labels as int64, one non-negative class id per node."""
    return check_labels(path, _read_ids(path, "labels"), num_nodes, origin)


def check_labels(where: str | Path, labels: np.ndarray, num_nodes: int,
                 origin: str = "") -> np.ndarray:
    """1-D integer ``labels`` as int64, after checking there is one non-negative class id per
    node; errors start with ``where`` (a file, an attribute)."""
    if labels.shape[0] != num_nodes:
        raise DataError(f"{where}: {labels.shape[0]} labels, but num_nodes is {num_nodes}"
                        + (f" ({origin})" if origin else ""))
    if labels.size and labels.min() < 0:
        row = int(np.flatnonzero(labels < 0)[0])
        raise DataError(f"{where}: row {row}: negative label {int(labels[row])}")
    return labels.astype(np.int64, copy=False)


def read_splits(paths: dict[str, Path], num_nodes: int) -> dict[str, np.ndarray]:
    """Split id arrays as int64: ids in range, no id twice in a split or in two splits."""
    return check_splits({name: (path, _read_ids(path, f"{name} split"))
                         for name, path in paths.items()}, num_nodes)


def check_splits(splits: dict[str, tuple[str | Path, np.ndarray]],
                 num_nodes: int) -> dict[str, np.ndarray]:
    """``{split: (where, 1-D integer ids)}`` -> ``{split: int64 ids}``, after checking the ids
    are in range, none twice in a split or in two splits; errors start with ``where``."""
    owner = np.zeros(num_nodes, np.int8)  # 1 + index of the split holding each node
    names = list(splits)
    out = {}
    for i, (name, (path, ids)) in enumerate(splits.items()):
        bad = np.flatnonzero((ids < 0) | (ids >= num_nodes))
        if bad.size:
            raise DataError(f"{path}: {name} split row {int(bad[0])}: node id "
                            f"{int(ids[bad[0]])} out of range [0, {num_nodes})")
        ids = ids.astype(np.int64, copy=False)
        taken = np.flatnonzero(owner[ids])
        if taken.size:
            node = int(ids[taken[0]])
            raise DataError(f"{path}: node {node} is in both the {names[owner[node] - 1]} and "
                            f"the {name} split")
        owner[ids] = i + 1
        if np.count_nonzero(owner == i + 1) != ids.size:
            sorted_ids = np.sort(ids)
            node = int(sorted_ids[np.flatnonzero(np.diff(sorted_ids) == 0)[0]])
            raise DataError(f"{path}: node {node} appears more than once in the {name} split")
        out[name] = ids
    return out


# Features: streamed in row blocks from .npy or Parquet.

@dataclass(frozen=True)
class FeatureSource:
    """A feature matrix to stream: its shape, stored dtype and a block reader."""

    path: Path
    num_rows: int
    dim: int
    dtype: np.dtype
    """Stored dtype: float16 if the input is float16, else float32."""
    blocks: Callable[[int], Iterator[tuple[int, np.ndarray]]]
    """blocks(rows) yields (first row, 2-D block) covering all rows in order."""
    column: Callable[[int], str] = lambda j: f"column {j}"
    """Name of feature column j, for error messages."""


def open_features(path: Path) -> FeatureSource:
    """Open a feature file (``.npy`` or Parquet) and check its shape and dtype."""
    name = path.name.lower()
    if path.is_dir() or name.endswith(PARQUET_SUFFIXES):
        return _parquet_features(path)
    if name.endswith(".npy"):
        return rows_features(NpyRows(path))
    raise DataError(f"{path}: unknown feature format; expected .npy or Parquet")


def stored_dtype(float16: bool) -> np.dtype:
    """The dtype features are stored in: float16 kept, anything else float32."""
    return np.dtype(np.float16 if float16 else np.float32)


def rows_features(rows: NpyRows) -> FeatureSource:
    """A 2-D array of numbers read by :class:`~disktrain.ingest.edges.NpyRows` (a ``.npy``
    file, or IGB's headerless rows) as a feature source."""
    path = rows.path
    if len(rows.shape) != 2:
        raise DataError(f"{path}: feature array has shape {rows.shape}, expected "
                        "(num_nodes, feature_dim)")
    if rows.dtype.kind not in "biuf":
        raise DataError(f"{path}: feature array has dtype {rows.dtype}, expected numbers")
    num_rows = rows.shape[0]

    def blocks(step: int) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, num_rows, step):
            yield a, rows.read(a, min(a + step, num_rows))

    return FeatureSource(path, num_rows, rows.shape[1], stored_dtype(rows.dtype == np.float16),
                         blocks)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _parquet_features(path: Path) -> FeatureSource:
    fragments = parquet_fragments(path)
    schema = fragments[0].physical_schema
    num_rows = sum(f.count_rows() for f in fragments)
    is_list = (len(schema) == 1 and (pa.types.is_list(schema[0].type)
                                     or pa.types.is_large_list(schema[0].type)
                                     or pa.types.is_fixed_size_list(schema[0].type)))
    if is_list:
        value_type = schema[0].type.value_type
        if not _is_number(value_type):
            raise DataError(f"{path}: list column {schema[0].name!r} holds {value_type}, "
                            "expected numbers")
        head = fragments[0].head(1).column(0)
        dim = len(head[0].values) if len(head) and head[0].is_valid else 0
        types = [value_type]
    else:
        for f in schema:
            if not _is_number(f.type):
                raise DataError(f"{path}: column {f.name!r} has type {f.type}, expected numeric "
                                "feature columns or a single list column")
        dim, types = len(schema), [f.type for f in schema]

    def blocks(step: int) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for fragment in fragments:
            for batch in fragment.to_batches(columns=schema.names, batch_size=step,
                                             batch_readahead=1, fragment_readahead=1):
                file = Path(fragment.path)
                block = (_list_block(batch.column(0), dim, file, start) if is_list else
                         columns_block(batch, file, start))
                yield start, block
                start += batch.num_rows

    column = (lambda j: f"column {schema[0].name!r}[{j}]") if is_list else (
        lambda j: f"column {schema.names[j]!r}")
    float16 = all(pa.types.is_float16(t) for t in types)
    return FeatureSource(path, num_rows, dim, stored_dtype(float16), blocks, column)


def _first_null(column: pa.Array) -> int | None:
    if not column.null_count:
        return None
    return int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])


def columns_block(batch: pa.RecordBatch, file: Path, start: int) -> np.ndarray:
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        row = _first_null(column)
        if row is not None:
            raise DataError(f"{file}: row {start + row}, column {name!r}: missing value (null)")
    return np.column_stack([c.to_numpy(zero_copy_only=False) for c in batch.columns])


def _list_block(column: pa.Array, dim: int, file: Path, start: int) -> np.ndarray:
    row = _first_null(column)
    if row is not None:
        raise DataError(f"{file}: row {start + row}: missing feature list (null)")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != dim)
    if wrong.size:
        row = int(wrong[0])
        raise DataError(f"{file}: row {start + row}: feature list of length "
                        f"{int(lengths[row])}, expected {dim} (the length of row 0)")
    values = column.flatten()
    row = _first_null(values)
    if row is not None:
        raise DataError(f"{file}: row {start + row // dim}: missing value (null) at "
                        f"list position {row % dim}")
    return values.to_numpy(zero_copy_only=False).reshape(-1, dim)


def _finite(block: np.ndarray, start: int, source: FeatureSource) -> np.ndarray:
    """``block`` in the stored dtype, after checking every value is finite there."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        stored = block.astype(source.dtype, copy=False)
    if stored.dtype.kind == "f" and not np.isfinite(stored).all():
        row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(stored)))
        value = block[row, col]
        why = "is not finite" if not np.isfinite(value) else f"overflows {source.dtype}"
        raise DataError(f"{source.path}: row {start + row}, {source.column(col)}: value "
                        f"{value} {why}")
    return stored


def rechunk(blocks: Iterator[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """Regroup row blocks into blocks of exactly ``rows`` rows (the last may be shorter).

    A yielded block may be a reused buffer: use it before asking for the next one.
    """
    buffer, fill = None, 0
    for block in blocks:
        i = 0
        while i < block.shape[0]:
            if fill == 0 and block.shape[0] - i >= rows:
                yield block[i:i + rows]
                i += rows
                continue
            if buffer is None:
                buffer = np.empty((rows, *block.shape[1:]), block.dtype)
            n = min(rows - fill, block.shape[0] - i)
            buffer[fill:fill + n] = block[i:i + n]
            fill, i = fill + n, i + n
            if fill == rows:
                yield buffer
                fill = 0
    if fill:
        yield buffer[:fill]


def write_features(group: zarr.Group, source: FeatureSource | None, num_nodes: int,
                   progress: bool = False) -> zarr.Array:
    """Create ``features`` in ``group`` and fill it from ``source`` chunk by chunk."""
    if source is None:
        return create_features(group, num_nodes, 0, np.float32)
    array = create_features(group, num_nodes, source.dim, source.dtype)
    rows = array.chunks[0]
    checked = (_finite(block, start, source) for start, block in source.blocks(rows))
    row = 0
    with tqdm(total=num_nodes, desc="features", unit="row", unit_scale=True,
              disable=not progress) as bar:
        for block in rechunk(checked, rows):
            array[row:row + block.shape[0]] = block
            row += block.shape[0]
            bar.update(block.shape[0])
    assert row == num_nodes, (row, num_nodes)
    return array
