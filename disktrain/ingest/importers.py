"""Every way into a dataset: edge/feature files (:func:`ingest`), OGB's node property
prediction files and in-memory PyG data.

All go through :func:`disktrain.ingest.inputs.write_dataset`, as ``disktrain ingest`` does, so they
get its checks, its disk-space estimate and its atomic write.

- :func:`read_ogb` (``disktrain ingest --ogb DIR``): OGB's raw layout, every file a headerless,
  gzipped CSV streamed with pyarrow's reader in bounded memory::

      DIR/raw/edge.csv.gz           "src,dst" per line, one line per edge
      DIR/raw/num-node-list.csv.gz  one line: the node count
      DIR/raw/num-edge-list.csv.gz  one line: the edge count (optional; checked if present)
      DIR/raw/node-feat.csv.gz      one line of F numbers per node (optional)
      DIR/raw/node-label.csv.gz     one class id per node
      DIR/split/<name>/{train,valid,test}.csv.gz   one node id per line

  Features are written one chunk at a time; edges stream into the CSR build; labels and
  splits (O(num_nodes)) are read whole. Rows are numbered from 0 (the first line). OGB's
  binary layout (ogbn-papers100M: ``raw/data.npz``) is read by :func:`read_ogb_binary`,
  its zip members streamed; heterogeneous OGB datasets by
  :mod:`disktrain.ingest.typed_importers`; OGB's link property prediction layout
  (``split/<name>/valid.pt``: ogbl-citation2, ogbl-collab) by :func:`read_ogb_link`.
- :func:`from_pyg`: a ``torch_geometric.data.Data`` (or any object with its attributes) in
  memory. PyG itself is never imported.
"""

from __future__ import annotations

import pickle
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from disktrain.errors import DataError
from disktrain.ingest.arrays import NpzMember, PairEdges, stream_labels
from disktrain.ingest.csr import CSRConfig
from disktrain.ingest.edges import CsvEdges, check_ids, checked_chunks, open_edges
from disktrain.ingest.inputs import (
    FeatureSource,
    IngestConfig,
    Inputs,
    check_labels,
    check_splits,
    columns_block,
    count_nodes,
    open_features,
    read_labels,
    read_splits,
    stored_dtype,
    write_dataset,
)
from disktrain.ingest.linksplit import GivenLinks, check_negatives
from disktrain.storage.dataset import SPLITS

OGB_SPLIT_FILES = {"train": "train.csv.gz", "val": "valid.csv.gz", "test": "test.csv.gz"}
"""Our split name -> OGB's file in ``split/<name>/``."""
OGB_LINK_FILES = {"val": "valid.pt", "test": "test.pt"}
"""Our held-out split -> OGB's link prediction file in ``split/<name>/``."""
_CSV_BLOCK_BYTES = 1 << 20
"""Text per record batch: Arrow holds a few dozen blocks at once, so this bounds memory."""


def ingest(cfg: IngestConfig) -> Path:
    """Validate the inputs named by ``cfg`` and write the dataset directory ``cfg.out``."""
    for name, path in cfg.sources().items():
        if not Path(path).exists():
            raise FileNotFoundError(f"{name} file not found: {path}")
    if cfg.out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} already exists (pass overwrite to replace it)")
    if cfg.ogb is not None:
        inputs = read_ogb(cfg)
        return write_dataset(cfg.out, inputs, cfg.csr_config(), overwrite=cfg.overwrite,
                             importer="ogb-link" if inputs.links else "ogb", link=cfg.link,
                             chunk_rows=cfg.chunk_rows)
    edges = open_edges(cfg.edges, cfg.src_col, cfg.dst_col, cfg.chunk_rows)
    features = open_features(cfg.features) if cfg.features else None
    num_nodes, origin = count_nodes(cfg, edges, features)
    labels = read_labels(cfg.labels, num_nodes, origin) if cfg.labels else None
    splits = read_splits({s: getattr(cfg, s) for s in SPLITS if getattr(cfg, s)}, num_nodes)
    inputs = Inputs(num_nodes=num_nodes, num_nodes_from=origin,
                    edges=lambda: checked_chunks(edges, num_nodes),
                    num_input_edges=edges.num_rows or 0, edges_estimate=edges.estimate_rows(),
                    features=features, labels=labels, splits=splits, sources=cfg.sources())
    return write_dataset(cfg.out, inputs, cfg.csr_config(), overwrite=cfg.overwrite,
                         link=cfg.link, chunk_rows=cfg.chunk_rows)


# OGB

def read_ogb(cfg: IngestConfig) -> Inputs:
    """The :class:`~disktrain.ingest.inputs.Inputs` of the OGB dataset directory ``cfg.ogb``: node
    count, labels and splits read and checked, edges and features ready to stream.

    ``cfg.ogb_split`` picks ``split/<name>/`` (default: the only one). ``cfg.num_nodes``, if
    given, must match ``num-node-list.csv.gz``. OGB lists each edge of ogbn-products and
    ogbn-proteins once and adds the reverse when loading (its ``add_inverse_edge``); pass
    ``undirected`` for the same graph. OGB's binary layout (``raw/data.npz``, as
    ogbn-papers100M's) is read by :func:`read_ogb_binary`.
    """
    root, raw = cfg.ogb, cfg.ogb / "raw"
    if is_link_ogb(root):
        return read_ogb_link(cfg)
    _check_layout(root)
    if (raw / "data.npz").exists():
        return read_ogb_binary(cfg)
    num_nodes, origin, edges, features = _ogb_graph(cfg)
    num_edges = edges.num_rows
    labels_path = raw / "node-label.csv.gz"
    labels = check_labels(labels_path, _read_column(
        labels_path, "class id per node",
        "multi-task labels, as ogbn-proteins', are not supported"), num_nodes, origin)
    splits, split_paths = ogb_splits(_split_dir(root, cfg.ogb_split), num_nodes, labels)
    sources = {"ogb": root, "edges": edges.path, "labels": labels_path, **split_paths}
    if features is not None:
        sources["features"] = features.path
    return Inputs(num_nodes=num_nodes, num_nodes_from=origin,
                  edges=lambda: edges.checked(num_nodes), num_input_edges=num_edges or 0,
                  edges_estimate=edges.estimate_rows(), features=features, labels=labels,
                  splits=splits, sources={k: str(Path(v).resolve()) for k, v in sources.items()})


def _ogb_graph(cfg: IngestConfig) -> tuple[int, str, OgbEdges, FeatureSource | None]:
    """The node count (and where it came from), edges and features (if any) of OGB's raw
    CSV layout."""
    raw = cfg.ogb / "raw"
    num_nodes = _read_count(raw / "num-node-list.csv.gz", "node")
    origin = f"the count in {raw / 'num-node-list.csv.gz'}"
    if cfg.num_nodes is not None and cfg.num_nodes != num_nodes:
        raise DataError(f"{raw / 'num-node-list.csv.gz'}: {num_nodes} nodes, but num_nodes "
                        f"is {cfg.num_nodes}")
    num_edges = None
    if (raw / "num-edge-list.csv.gz").exists():
        num_edges = _read_count(raw / "num-edge-list.csv.gz", "edge", allow_zero=True)
    edges = OgbEdges(raw / "edge.csv.gz", cfg.chunk_rows, num_edges)
    features = None
    if (raw / "node-feat.csv.gz").exists():
        features = csv_features(raw / "node-feat.csv.gz", num_nodes, origin)
    return num_nodes, origin, edges, features


def is_link_ogb(root: Path) -> bool:
    """Whether ``root`` is in OGB's link property prediction layout (``split/*/valid.pt``)."""
    return any((root / "split").glob(f"*/{OGB_LINK_FILES['val']}"))


def read_ogb_link(cfg: IngestConfig) -> Inputs:
    """The :class:`~disktrain.ingest.inputs.Inputs` of an OGB link property prediction
    dataset, its val/test edges as :class:`~disktrain.ingest.linksplit.GivenLinks`::

        raw/edge.csv.gz, raw/num-node-list.csv.gz, raw/num-edge-list.csv.gz (optional),
        raw/node-feat.csv.gz (optional)          as read_ogb reads them; no labels
        split/<name>/{valid,test}.pt              dicts of arrays (train.pt is not read)

    The ``.pt`` files are read with ``torch.load(weights_only=True)``, numpy's array globals
    allowed and nothing else (:func:`load_pt`). Two layouts: ogbl-citation2's
    ``source_node``, ``target_node`` (n,) and ``target_node_neg`` (n, K), the negatives
    stored as given; ogbl-collab's ``edge`` (n, 2), whose ``edge_neg`` is one set shared by
    all positives, not K per positive: per-positive negatives are drawn instead
    (``link.eval_negatives``, uniform; a note says so). OGB's graph (``raw/edge.csv.gz``)
    holds the train edges only: val/test edges are removed from it if there (both
    directions), not required to be.
    """
    root = cfg.ogb
    for name in ("edge.csv.gz", "num-node-list.csv.gz"):
        if not (root / "raw" / name).exists():
            raise DataError(f"{root / 'raw' / name}: file not found; expected OGB's link "
                            "property prediction layout")
    num_nodes, origin, edges, features = _ogb_graph(cfg)
    folder = _split_dir(root, cfg.ogb_split, files=tuple(OGB_LINK_FILES.values()))
    held, negatives = {}, {}
    for split, file in OGB_LINK_FILES.items():
        path = folder / file
        data = load_pt(path)
        held[split] = (str(path), _pt_pairs(path, data))
        if "target_node_neg" in data:
            negatives[split] = (f"{path}[target_node_neg]", check_negatives(
                f"{path}[target_node_neg]", _pt_array(path, data, "target_node_neg"),
                len(held[split][1]), num_nodes))
        elif "edge_neg" in data:
            print(f"note: {path}: edge_neg is one set of negatives shared by every edge; "
                  f"drawing {cfg.link.eval_negatives} per {split} edge instead "
                  "(--eval-negatives)", file=sys.stderr)
    sources = {"ogb": root, "edges": edges.path, **{f"link_{s}": p for s, (p, _) in held.items()}}
    if features is not None:
        sources["features"] = features.path
    return Inputs(num_nodes=num_nodes, num_nodes_from=origin,
                  edges=lambda: edges.checked(num_nodes), num_input_edges=edges.num_rows or 0,
                  edges_estimate=edges.estimate_rows(), features=features,
                  sources={k: str(Path(v).resolve()) for k, v in sources.items()},
                  links=GivenLinks(held, negatives, must_be_edges=False, source=str(folder)))


def load_pt(path: Path) -> dict:
    """A ``.pt`` file holding a dict, read with ``torch.load(weights_only=True)``: tensors,
    and numpy arrays of numbers (the globals their pickles name allowed), nothing else."""
    import torch
    from numpy._core import multiarray

    numbers = {type(np.dtype(c)) for c in "?bBhHiIlLqQefd"}
    allowed = [multiarray._reconstruct, np.ndarray, np.dtype, *numbers,
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]  # numpy 1's
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line),
                   str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise DataError(f"{path}: cannot read as a torch file of arrays, weights only "
                        f"({why})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: holds a {type(data).__name__}, expected a dict of arrays")
    return data


def _pt_array(path: Path, data: dict, key: str) -> np.ndarray:
    """``data[key]`` (a tensor or a numpy array) as a numpy array of integers."""
    value = data[key]
    torch = sys.modules["torch"]
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        kind = getattr(value, "dtype", type(value).__name__)
        raise DataError(f"{path}[{key!r}]: {kind}, expected an integer array")
    return value


def _pt_pairs(path: Path, data: dict) -> np.ndarray:
    """The (n, 2) edges of an OGB link split dict: ``edge`` (ogbl-collab), or
    ``source_node`` and ``target_node`` (ogbl-citation2)."""
    if "edge" in data:
        return _pt_array(path, data, "edge")
    if "source_node" in data and "target_node" in data:
        src, dst = (_pt_array(path, data, k) for k in ("source_node", "target_node"))
        if src.shape != dst.shape or src.ndim != 1:
            raise DataError(f"{path}: source_node {src.shape} and target_node {dst.shape}, "
                            "expected two (n,) arrays")
        return np.column_stack((src, dst))
    raise DataError(f"{path}: keys {sorted(map(str, data))}, expected 'edge' (ogbl-collab) or "
                    "'source_node' and 'target_node' (ogbl-citation2)")


def read_ogb_binary(cfg: IngestConfig) -> Inputs:
    """The :class:`~disktrain.ingest.inputs.Inputs` of an OGB dataset in OGB's binary layout
    (ogbn-papers100M's), every large array streamed out of its zip member::

        raw/data.npz         edge_index (2, E) int, node_feat (N, F), num_nodes_list (1,)
        raw/node-label.npz   node_label (N, 1) float, NaN for an unlabelled node
        split/<name>/{train,valid,test}.csv.gz

    An unlabelled node gets label -1; a split may hold labelled nodes only.
    """
    root, raw = cfg.ogb, cfg.ogb / "raw"
    data = raw / "data.npz"
    edges = PairEdges(NpzMember(data, "edge_index"), cfg.chunk_rows)
    feat = NpzMember(data, "node_feat")
    if len(feat.shape) != 2 or feat.dtype.kind not in "biuf":
        raise DataError(f"{feat.where}: array of shape {feat.shape} and dtype {feat.dtype}, "
                        "expected (num_nodes, feature_dim) numbers")
    num_nodes, origin = feat.shape[0], f"the rows of {feat.where}"
    with np.load(data, allow_pickle=False) as members:  # loads only the member asked for
        listed = members["num_nodes_list"].tolist() if "num_nodes_list" in members else None
    if listed is not None and sum(listed) != num_nodes:
        raise DataError(f"{data}[num_nodes_list]: {listed} nodes, but {feat.where} has "
                        f"{num_nodes} rows")
    if cfg.num_nodes is not None and cfg.num_nodes != num_nodes:
        raise DataError(f"{feat.where}: {num_nodes} rows, but num_nodes is {cfg.num_nodes}")
    features = FeatureSource(Path(feat.where), num_nodes, feat.shape[1],
                             stored_dtype(feat.dtype == np.float16), feat.rows)
    label = NpzMember(raw / "node-label.npz", "node_label")
    if label.shape not in ((num_nodes,), (num_nodes, 1)):
        raise DataError(f"{label.where}: labels of shape {label.shape}, expected "
                        f"({num_nodes}, 1) ({origin})")
    labels = stream_labels(label, num_nodes, cfg.chunk_rows)
    splits, split_paths = ogb_splits(_split_dir(root, cfg.ogb_split), num_nodes, labels)
    sources = {"ogb": root, "edges": data, "features": data, "labels": label.path,
               **split_paths}
    return Inputs(num_nodes=num_nodes, num_nodes_from=origin,
                  edges=lambda: checked_chunks(edges, num_nodes), num_input_edges=edges.num_rows,
                  edges_estimate=edges.num_rows, features=features, labels=labels,
                  splits=splits, sources={k: str(Path(v).resolve()) for k, v in sources.items()})


def ogb_splits(split_dir: Path, num_nodes: int, labels: np.ndarray,
               ) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """OGB's ``train``/``valid``/``test.csv.gz`` of ``split_dir`` read and checked (a split
    node must have a label, not -1), and their paths."""
    paths = {name: split_dir / file for name, file in OGB_SPLIT_FILES.items()}
    splits = check_splits({name: (path, _read_column(path, f"{name} node id"))
                           for name, path in paths.items()}, num_nodes)
    for name, ids in splits.items():
        unlabelled = np.flatnonzero(labels[ids] < 0)
        if unlabelled.size:
            raise DataError(f"{paths[name]}: {name} split row {int(unlabelled[0])}: node "
                            f"{int(ids[unlabelled[0]])} has no label")
    return splits, paths


def _check_layout(root: Path) -> None:
    raw = root / "raw"
    if not raw.is_dir():
        raise DataError(f"{root}: no raw/ directory; expected OGB's node property prediction "
                        "layout (raw/edge.csv.gz, raw/num-node-list.csv.gz, raw/node-feat.csv.gz, "
                        "raw/node-label.csv.gz, split/<name>/{train,valid,test}.csv.gz)")
    if (raw / "triplet-type-list.csv.gz").exists() or (raw / "edge_index_dict.npz").exists():
        raise DataError(f"{root}: a heterogeneous OGB dataset (as ogbn-mag) without "
                        "raw/relations/; `disktrain ingest --ogb` reads one with it "
                        "(disktrain.ingest.typed_importers)")
    binary = (raw / "data.npz").exists()
    for name in (("data.npz", "node-label.npz") if binary else
                 ("edge.csv.gz", "num-node-list.csv.gz", "node-label.csv.gz")):
        if not (raw / name).exists():
            raise DataError(f"{raw / name}: file not found; expected OGB's node property "
                            "prediction layout" + (" (binary: raw/data.npz)" if binary else ""))


def _split_dir(root: Path, name: str | None, node_type: str = "",
               files: tuple[str, ...] = tuple(OGB_SPLIT_FILES.values())) -> Path:
    """``split/<name>/`` (``split/<name>/<node_type>/`` of a heterogeneous dataset), its
    ``files`` checked present; ``name`` None: the only split."""
    split = root / "split"
    found = sorted(p.name for p in split.iterdir() if p.is_dir()) if split.is_dir() else []
    if name is None:
        if not found:
            raise DataError(f"{split}: no split directory split/<name>/")
        if len(found) > 1:
            raise DataError(f"{split}: several splits ({', '.join(found)}); choose one with "
                            "--ogb-split")
        name = found[0]
    if name not in found:
        raise DataError(f"{split / name}: no such split; present: {', '.join(found) or '(none)'}")
    folder = split / name / node_type
    for file in files:
        if not (folder / file).exists():
            pickle = (" (split_dict.pt is a pickle, which disktrain does not load)"
                      if (split / name / "split_dict.pt").exists() else "")
            raise DataError(f"{folder / file}: split file not found{pickle}")
    return folder


class HeaderlessCsv:
    """A CSV file of numbers without a header line, streamed in record batches of
    ``block_bytes`` of text. Every row must have as many values as the first.

    Errors name the file, the row (from 0) and the value."""

    def __init__(self, path: Path, kind: pa.DataType, block_bytes: int | None = None,
                 labels: list[str] | None = None):
        self.path, self.kind = path, kind
        self.block_bytes = block_bytes or _CSV_BLOCK_BYTES
        head = _head(path)
        first = head.split(b"\n", 1)[0].rstrip(b"\r")
        self.empty = not head.strip()
        """No values at all (an empty file, or only blank lines): no rows."""
        self.num_columns = len(first.split(b",")) if not self.empty else 0
        if labels is not None and len(labels) != self.num_columns and not self.empty:
            raise DataError(f"{path}: row 0 has {self.num_columns} values "
                            f"({first.decode(errors='replace')!r}), expected {len(labels)}")
        self.names = [str(j) for j in range(self.num_columns)]
        """Arrow's column names."""
        self.labels = labels or [f"column {j}" for j in range(self.num_columns)]
        """The columns as error messages name them."""

    def _reader(self, kind: pa.DataType, skip_rows: int = 0) -> pcsv.CSVStreamingReader:
        return pcsv.open_csv(
            self.path,
            read_options=pcsv.ReadOptions(block_size=self.block_bytes, column_names=self.names,
                                          skip_rows_after_names=skip_rows, use_threads=False),
            # an empty line is a row (of missing values), so rows are lines
            parse_options=pcsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(self.names, kind),
                                                null_values=[""], quoted_strings_can_be_null=False))

    def batches(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(first row, record batch) over the whole file."""
        if self.empty:
            return
        start = 0
        try:
            for batch in self._reader(self.kind):
                yield start, batch
                start += batch.num_rows
        except pa.ArrowInvalid as e:
            raise self.error_at(start, e) from e

    def error_at(self, start: int, error: Exception) -> DataError:
        """The first malformed row at or after row ``start``: a wrong number of values, or a
        value that is not a number (an integer for integer columns)."""
        integer = pa.types.is_integer(self.kind)
        for row, line in _lines_from(self.path, start):
            values = line.rstrip(b"\r").decode(errors="replace").split(",")
            if len(values) != self.num_columns:
                return DataError(f"{self.path}: row {row}: {len(values)} values, expected "
                                 f"{self.num_columns} (as row 0)")
            for label, value in zip(self.labels, values, strict=True):
                if value and not _parses(value, integer):
                    kind = "an integer" if integer else "a number"
                    return DataError(f"{self.path}: row {row}, {label}: value {value!r} "
                                     f"is not {kind}")
        return DataError(f"{self.path}: {error}")


def _lines_from(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    """(row, line) of a (possibly compressed) text file from line ``start`` (0-based) on; the
    lines before are skipped by counting newlines, at the speed of decompression."""
    row, tail = 0, b""
    with pa.input_stream(str(path), compression="detect") as f:
        while block := f.read(1 << 20):
            data, tail = tail + block, b""
            if row < start:
                newlines = data.count(b"\n")
                if row + newlines < start:
                    row, tail = row + newlines, data[data.rfind(b"\n") + 1:]
                    continue
                at = -1
                for _ in range(start - row):
                    at = data.index(b"\n", at + 1)
                data, row = data[at + 1:], start
            *lines, tail = data.split(b"\n")
            for line in lines:
                yield row, line
                row += 1
    if tail:
        yield row, tail


def _head(path: Path) -> bytes:
    """The start of a (possibly compressed) text file, up to a non-blank line and past it."""
    head = b""
    try:
        with pa.input_stream(str(path), compression="detect") as f:
            while not head.strip() or b"\n" not in head.lstrip():
                block = f.read(1 << 16)
                if not block:
                    break
                head += block
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    return head


def _parses(value: str, integer: bool) -> bool:
    try:
        int(value) if integer else float(value)
    except ValueError:
        return False
    return True


def _read_column(path: Path, what: str, hint: str = "") -> np.ndarray:
    """A one-column integer CSV file, read whole, as int64; ``hint`` follows the error for
    more columns."""
    table = HeaderlessCsv(path, pa.int64())
    if table.num_columns > 1:
        raise DataError(f"{path}: {table.num_columns} values per row, expected one {what}"
                        + (f" ({hint})" if hint else ""))
    parts = []
    for start, batch in table.batches():
        column = batch.column(0)
        if column.null_count:
            row = start + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: row {row}: missing value (expected one {what})")
        parts.append(column.to_numpy())
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _read_count(path: Path, what: str, allow_zero: bool = False) -> int:
    counts = _read_column(path, f"{what} count")
    if counts.size != 1:
        raise DataError(f"{path}: {counts.size} rows, expected one {what} count (one graph)")
    if counts[0] < (0 if allow_zero else 1):
        raise DataError(f"{path}: row 0: {what} count {int(counts[0])} is not positive")
    return int(counts[0])


def csv_features(path: Path, num_nodes: int, origin: str = "") -> FeatureSource:
    """A headerless CSV of ``num_nodes`` rows of numbers (OGB's ``node-feat.csv.gz``) as a
    feature source: float32, streamed, the row count checked as it streams."""
    table = HeaderlessCsv(path, pa.float64())
    if table.empty:
        raise DataError(f"{path}: no feature rows")

    def blocks(_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        end = 0
        for start, batch in table.batches():
            end = start + batch.num_rows
            if end > num_nodes:
                raise DataError(f"{path}: more than {num_nodes} rows, but num_nodes is "
                                f"{num_nodes}" + (f" ({origin})" if origin else ""))
            yield start, columns_block(batch, path, start)
        if end != num_nodes:
            raise DataError(f"{path}: {end} rows, but num_nodes is {num_nodes}"
                            + (f" ({origin})" if origin else ""))

    return FeatureSource(path, num_nodes, table.num_columns, np.dtype(np.float32), blocks,
                         lambda j: table.labels[j])


class OgbEdges(CsvEdges):
    """OGB's ``edge.csv.gz``: "src,dst" per line, no header; ``num_edges`` (from
    ``num-edge-list.csv.gz``) is checked once a pass ends."""

    def __init__(self, path: Path, chunk_rows: int, num_edges: int | None = None):
        self.path, self.num_rows = path, num_edges
        self.src_label, self.dst_label = "column 0 (src)", "column 1 (dst)"
        # About 16 bytes a row for two ids; Arrow cuts blocks on bytes, not rows.
        self.table = HeaderlessCsv(path, pa.int64(),
                                   min(_CSV_BLOCK_BYTES, max(1 << 16, chunk_rows * 16)),
                                   labels=[self.src_label, self.dst_label])

    def estimate_rows(self) -> int:
        return super().estimate_rows() + (self.num_rows is None)  # no header line to skip

    def _reader(self, id_type: pa.DataType, skip_rows: int = 0) -> pcsv.CSVStreamingReader:
        return self.table._reader(id_type, skip_rows)

    def _conversion_error(self, start: int, error: Exception) -> DataError:
        return self.table.error_at(start, error)

    def checked(self, num_nodes: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Validated chunks, as :func:`disktrain.ingest.edges.checked_chunks`, and the count
        checked against ``num-edge-list.csv.gz``."""
        count = 0
        for src, dst in checked_chunks(self, num_nodes):
            count += src.shape[0]
            yield src, dst
        if self.num_rows is not None and count != self.num_rows:
            raise DataError(f"{self.path}: {count} edges, but "
                            f"{self.path.parent / 'num-edge-list.csv.gz'} says {self.num_rows}")


# PyG

def from_pyg(data, out_dir: str | Path, *, splits: dict | None = None,
             undirected: bool = False, dedup: bool = False, drop_self_loops: bool = False,
             overwrite: bool = False, progress: bool = True,
             chunk_rows: int = 1 << 20) -> Path:
    """Write a PyG graph held in memory as the dataset directory ``out_dir``.

    ``data``: a ``torch_geometric.data.Data`` or any object with its attributes (torch tensors
    or numpy arrays): ``edge_index`` (2, E), source -> target; optional ``x`` (N, F), stored
    float32 (float16 kept); ``y`` (N,) or (N, 1) integer class ids; ``train_mask``,
    ``val_mask``, ``test_mask`` (boolean of length N, or node ids); ``num_nodes`` (default:
    the rows of ``x``, else the largest id in ``edge_index`` + 1). ``splits``: ids per split
    (``train``, ``val`` or ``valid``, ``test``; as OGB's ``get_idx_split()``), used instead
    of the masks. ``undirected``, ``dedup``, ``drop_self_loops``: as ``disktrain ingest``.
    Errors (:class:`~disktrain.errors.DataError`) name the attribute and the value.

        import disktrain
        from torch_geometric.datasets import Planetoid
        disktrain.from_pyg(Planetoid("data", "Cora")[0], "cora")
    """
    node_types = getattr(sys.modules.get("torch_geometric.data"), "HeteroData", None)
    if node_types is not None and isinstance(data, node_types):
        raise DataError("data is a HeteroData; only homogeneous graphs are supported "
                        "(data.to_homogeneous() converts it)")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    edge_index = _attribute(data, "edge_index")
    if edge_index is None:
        raise DataError(f"data has no edge_index (a {type(data).__name__}); expected a "
                        "(2, num_edges) integer tensor")
    if edge_index.ndim != 2 or edge_index.shape[0] != 2 or edge_index.dtype.kind not in "iu":
        raise DataError(f"data.edge_index has shape {tuple(edge_index.shape)} and dtype "
                        f"{edge_index.dtype}, expected (2, num_edges) integers")
    if edge_index.shape[1] == 0:
        raise DataError("data.edge_index has no edges")
    x = _attribute(data, "x", keep_tensor=True)
    num_nodes, origin = _pyg_num_nodes(data, x, edge_index)
    for row, name in enumerate(("source", "target")):
        _, bad = check_ids(edge_index[row], num_nodes)
        if bad:
            raise DataError(f"data.edge_index[{row}, {bad[0]}] ({name} of edge {bad[0]}): "
                            f"{bad[1]} (num_nodes from {origin})")
    edge_index = edge_index.astype(np.int64, copy=False)
    y = _attribute(data, "y")
    labels = None
    if y is not None:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"data.y has shape {tuple(y.shape)} and dtype {y.dtype}, expected "
                            "(num_nodes,) integer class ids")
        labels = check_labels("data.y", y, num_nodes, origin)
    checked = check_splits(_pyg_splits(data, splits, num_nodes), num_nodes)
    num_edges = edge_index.shape[1]

    def edges() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, num_edges, chunk_rows):
            yield edge_index[0, a:a + chunk_rows], edge_index[1, a:a + chunk_rows]

    inputs = Inputs(num_nodes=num_nodes, num_nodes_from=origin, edges=edges,
                    num_input_edges=num_edges, edges_estimate=num_edges,
                    features=_tensor_features(x, num_nodes) if x is not None else None,
                    labels=labels, splits=checked)
    csr = CSRConfig(undirected=undirected, dedup=dedup, drop_self_loops=drop_self_loops,
                    progress=progress)
    return write_dataset(out, inputs, csr, overwrite=overwrite, importer="pyg")


def _numpy(value, name: str, keep_tensor: bool = False):
    """An attribute's value as a numpy array (a torch tensor, on its device, with
    ``keep_tensor``)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.is_sparse or value.layout != torch.strided:
            raise DataError(f"data.{name} is a sparse tensor; pass data.{name}.to_dense()")
        value = value.detach()
        return value if keep_tensor else _tensor_numpy(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DataError(f"data.{name} has dtype {value.dtype}, expected numbers")
        return value
    raise DataError(f"data.{name} is a {type(value).__name__}, expected a torch tensor or a "
                    "numpy array")


def _tensor_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:  # no numpy twin: widen (exactly)
        tensor = tensor.float()
    if tensor.is_complex():
        raise DataError(f"tensor of dtype {tensor.dtype}, expected real numbers")
    return tensor.numpy()


def _attribute(data, name: str, keep_tensor: bool = False):
    value = getattr(data, name, None)
    return None if value is None else _numpy(value, name, keep_tensor)


def _pyg_num_nodes(data, x, edge_index: np.ndarray) -> tuple[int, str]:
    with warnings.catch_warnings():  # PyG's warning when it guesses from edge_index
        warnings.simplefilter("ignore")
        given = getattr(data, "num_nodes", None)
    if given is not None:
        if x is not None and x.shape[0] != int(given):
            raise DataError(f"data.x has {x.shape[0]} rows, but data.num_nodes is {int(given)}")
        return int(given), "data.num_nodes"
    if x is not None:
        if x.ndim != 2:
            raise DataError(f"data.x has shape {tuple(x.shape)}, expected (num_nodes, "
                            "num_features)")
        return int(x.shape[0]), "the rows of data.x"
    return int(edge_index.max()) + 1, "the largest id in data.edge_index + 1"


def _pyg_splits(data, splits: dict | None,
                num_nodes: int) -> dict[str, tuple[str, np.ndarray]]:
    """``{split: (where, ids)}`` from ``splits`` or, for the splits it lacks, the masks."""
    out = {}
    given = {("val" if k == "valid" else k): v for k, v in (splits or {}).items()}
    unknown = set(given) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits: unknown names {sorted(unknown)}; expected train, val "
                         "(or valid), test")
    for name in SPLITS:
        if name in given:
            where, value = f"splits[{name!r}]", _numpy(given[name], f"splits[{name!r}]")
        else:
            where, value = f"data.{name}_mask", _attribute(data, f"{name}_mask")
            if value is None:
                continue
        if value.dtype == np.bool_:
            if value.shape != (num_nodes,):
                several = (f"; several splits: pick one, e.g. {where}[:, 0]"
                           if value.ndim == 2 else "")
                raise DataError(f"{where} has shape {tuple(value.shape)}, expected "
                                f"({num_nodes},){several}")
            value = np.flatnonzero(value)
        elif value.ndim != 1 or value.dtype.kind not in "iu":
            raise DataError(f"{where} has shape {tuple(value.shape)} and dtype {value.dtype}, "
                            "expected a boolean mask or 1-D integer node ids")
        out[name] = (where, value)
    return out


def _tensor_features(x, num_nodes: int) -> FeatureSource:
    """``x`` (a torch tensor or a numpy array) as a feature source, copied to the host block
    by block: float16 and float32 kept, other dtypes stored as float32."""
    if x.ndim != 2 or x.shape[0] != num_nodes:
        raise DataError(f"data.x has shape {tuple(x.shape)}, expected ({num_nodes}, "
                        "num_features)")
    array = x if isinstance(x, np.ndarray) else None
    stored = stored_dtype(str(x.dtype).removeprefix("torch.") == "float16")

    def blocks(rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, num_nodes, rows):
            block = array[a:a + rows] if array is not None else _tensor_numpy(x[a:a + rows])
            if block.dtype.kind not in "biuf":
                raise DataError(f"data.x has dtype {block.dtype}, expected numbers")
            yield a, block

    return FeatureSource(Path("data.x"), num_nodes, int(x.shape[1]), stored, blocks)
