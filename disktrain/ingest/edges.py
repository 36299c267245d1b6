"""Streaming edge-list readers: Parquet (file or directory), CSV and ``.npy`` pairs.

Every reader yields :class:`EdgeBatch` chunks of bounded size, each tagged with the file it
came from and the global row number of its first edge, and can be iterated any number of
times (the CSR build reads the edges twice). :func:`checked_chunks` turns a reader into the
validated ``(src, dst)`` int64 chunks that :func:`disktrain.ingest.csr.build_csr` consumes.

Rows are numbered from 0 over the whole edge list (all files of a directory, in sorted path
order; CSV rows exclude the header line).
"""

from __future__ import annotations

import bz2
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as pds

from disktrain.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".tsv.bz2")
NPY_SUFFIXES = (".npy",)
_CSV_BLOCK_BYTES = 16 << 20
_SAMPLE_BYTES = 1 << 20
"""Bytes read from each of three places of a CSV file to estimate its row count."""
_COMPRESSED_SAMPLE_BYTES = 4 << 20
"""Compressed bytes decompressed from the start of a CSV file to estimate its row count."""


@dataclass(frozen=True)
class EdgeBatch:
    """One chunk of an edge list, as read (ids not yet range-checked)."""

    src: pa.Array | np.ndarray
    dst: pa.Array | np.ndarray
    file: Path
    start: int
    """Global row number of the chunk's first edge."""


class EdgeReader:
    """A re-iterable edge list: ``batches()`` starts a fresh pass each time it is called."""

    path: Path
    src_label: str
    dst_label: str
    """How error messages name the src and dst columns, e.g. "column 'src'"."""
    num_rows: int | None
    """Edge count when known without reading the data (Parquet metadata, npy shape)."""

    def batches(self) -> Iterator[EdgeBatch]:
        raise NotImplementedError

    def estimate_rows(self) -> int:
        """The edge count if known, else an estimate meant as an upper bound (for the
        disk-space check before anything is written)."""
        assert self.num_rows is not None, "readers with an unknown count override this"
        return self.num_rows


def open_edges(path: str | Path, src_col: str = "src", dst_col: str = "dst",
               chunk_rows: int = 1 << 20) -> EdgeReader:
    """Open an edge list, choosing the reader from the path (a directory means Parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"edge list not found: {path}")
    name = path.name.lower()
    if path.is_dir() or name.endswith(PARQUET_SUFFIXES):
        return ParquetEdges(path, src_col, dst_col, chunk_rows)
    if name.endswith(CSV_SUFFIXES):
        return CsvEdges(path, src_col, dst_col, chunk_rows)
    if name.endswith(NPY_SUFFIXES):
        return NpyEdges(path, chunk_rows)
    raise DataError(f"{path}: unknown edge list format; expected a Parquet file or directory "
                    f"({', '.join(PARQUET_SUFFIXES)}), CSV ({', '.join(CSV_SUFFIXES)}) "
                    "or an (E, 2) integer .npy array")


class ParquetEdges(EdgeReader):
    """A Parquet file or a directory of Parquet files, two integer columns read."""

    def __init__(self, path: Path, src_col: str, dst_col: str, chunk_rows: int):
        self.path, self.columns, self.chunk_rows = path, [src_col, dst_col], chunk_rows
        self.src_label, self.dst_label = f"column {src_col!r}", f"column {dst_col!r}"
        self.fragments = parquet_fragments(path)
        for fragment in self.fragments:
            _check_columns(Path(fragment.path), fragment.physical_schema, (src_col, dst_col))
        self.num_rows = sum(f.count_rows() for f in self.fragments)

    def batches(self) -> Iterator[EdgeBatch]:
        start = 0
        for fragment in self.fragments:
            for batch in fragment.to_batches(columns=self.columns,
                                             batch_size=self.chunk_rows, batch_readahead=1,
                                             fragment_readahead=1):
                yield EdgeBatch(batch.column(0), batch.column(1), Path(fragment.path), start)
                start += batch.num_rows


def parquet_fragments(path: Path) -> list[pds.ParquetFileFragment]:
    """The files of a Parquet file or directory, in sorted path order."""
    try:
        dataset = pds.dataset(path, format="parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet: {e}") from e
    fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    if not fragments:
        raise DataError(f"{path}: no Parquet files in this directory")
    return fragments


class CsvEdges(EdgeReader):
    """A CSV file with a header line, streamed block by block."""

    def __init__(self, path: Path, src_col: str, dst_col: str, chunk_rows: int):
        self.path, self.columns, self.num_rows = path, [src_col, dst_col], None
        self.src_label, self.dst_label = f"column {src_col!r}", f"column {dst_col!r}"
        # About 16 bytes a row for two ids; Arrow cuts blocks on bytes, not rows.
        self.block_bytes = max(1 << 16, min(_CSV_BLOCK_BYTES, chunk_rows * 16))
        delimiter = "\t" if ".tsv" in path.name.lower() else ","
        self.parse = pcsv.ParseOptions(delimiter=delimiter)
        try:
            header = pcsv.open_csv(path, parse_options=self.parse).schema
        except pa.ArrowInvalid as e:
            raise DataError(f"{path}: cannot read as CSV: {e}") from e
        _check_columns(path, header, (src_col, dst_col), integer_types=False)

    def estimate_rows(self) -> int:
        """The edge count once a pass has counted it, else an estimate from the line
        lengths of samples of the file (its start, middle and end; the start of a compressed
        file), with 5% (10% when compressed) to spare."""
        if self.num_rows is not None:
            return self.num_rows
        size = self.path.stat().st_size
        if self.path.name.lower().endswith((".gz", ".bz2")):
            return self._estimate_compressed(size)
        with open(self.path, "rb") as f:
            if size <= 3 * _SAMPLE_BYTES:
                return max(0, _count_lines(f.read()) - 1)  # the header line
            lines_per_byte = 0.0
            for at in (0, (size - _SAMPLE_BYTES) // 2, size - _SAMPLE_BYTES):
                f.seek(at)
                lines_per_byte = max(lines_per_byte, f.read(_SAMPLE_BYTES).count(b"\n")
                                     / _SAMPLE_BYTES)
        return math.ceil(size * lines_per_byte * 1.05)

    def _estimate_compressed(self, size: int) -> int:
        if self.path.name.lower().endswith(".gz"):
            decompress = zlib.decompressobj(wbits=47).decompress  # gzip or zlib header
        else:
            decompress = bz2.BZ2Decompressor().decompress
        with open(self.path, "rb") as f:
            head = f.read(_COMPRESSED_SAMPLE_BYTES)
        try:
            text = decompress(head)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{self.path}: cannot decompress ({e})") from e
        if len(head) == size:  # the whole file
            return max(0, _count_lines(text) - 1)
        return math.ceil(text.count(b"\n") / len(head) * size * 1.1)

    def _reader(self, id_type: pa.DataType, skip_rows: int = 0) -> pcsv.CSVStreamingReader:
        return pcsv.open_csv(
            self.path,
            read_options=pcsv.ReadOptions(block_size=self.block_bytes,
                                          skip_rows_after_names=skip_rows),
            parse_options=self.parse,
            convert_options=pcsv.ConvertOptions(include_columns=self.columns,
                                                column_types=dict.fromkeys(self.columns,
                                                                           id_type)))

    def batches(self) -> Iterator[EdgeBatch]:
        start = 0
        try:  # Arrow parses the first block when the reader opens, the rest as it goes.
            for batch in self._reader(pa.int64()):
                yield EdgeBatch(batch.column(0), batch.column(1), self.path, start)
                start += batch.num_rows
        except pa.ArrowInvalid as e:
            raise self._conversion_error(start, e) from e

    def _conversion_error(self, start: int, error: Exception) -> DataError:
        """Find the first id that is not an integer at or after row ``start``."""
        integer = r"^\s*[+-]?[0-9]+\s*$"
        try:
            for batch in self._reader(pa.string(), skip_rows=start):
                for name, column in zip(self.columns, batch.columns, strict=True):
                    ok = pc.fill_null(pc.match_substring_regex(column, integer), True)
                    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
                    if bad.size:
                        row = int(bad[0])
                        return DataError(f"{self.path}: column {name!r} row {start + row}: "
                                         f"value {column[row].as_py()!r} is not an integer "
                                         "node id")
                start += batch.num_rows
        except pa.ArrowInvalid:  # not a conversion error: a malformed line, say
            pass
        return DataError(f"{self.path}: {error}")


class NpyEdges(EdgeReader):
    """An (E, 2) integer ``.npy`` array: column 0 is src, column 1 is dst."""

    def __init__(self, path: Path, chunk_rows: int):
        self.path, self.src_label, self.dst_label = path, "column 0 (src)", "column 1 (dst)"
        self.chunk_rows = chunk_rows
        self.rows = NpyRows(path)
        if len(self.rows.shape) != 2 or self.rows.shape[1] != 2:
            raise DataError(f"{path}: edge array has shape {self.rows.shape}, "
                            "expected (num_edges, 2) with columns src, dst")
        if self.rows.dtype.kind not in "iu":
            raise DataError(f"{path}: edge array has dtype {self.rows.dtype}, "
                            "expected an integer dtype")
        self.num_rows = self.rows.shape[0]

    def batches(self) -> Iterator[EdgeBatch]:
        for a in range(0, self.num_rows, self.chunk_rows):
            block = self.rows.read(a, min(a + self.chunk_rows, self.num_rows))
            yield EdgeBatch(block[:, 0], block[:, 1], self.path, a)


class NpyRows:
    """Row slices of a 2-D ``.npy`` file, read with plain file reads.

    Unlike a memory map, pages read this way do not stay mapped into the process, so
    resident memory stays at one slice however large the file is.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"file not found: {self.path}")
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}[version]
                shape, self.fortran_order, self.dtype = read_header(f)
            except (ValueError, KeyError) as e:
                raise DataError(f"{self.path}: cannot read as a .npy array ({e})") from e
            self.offset = f.tell()
        self.shape = tuple(int(n) for n in shape)
        if self.dtype.hasobject:
            raise DataError(f"{self.path}: array of Python objects, expected numbers")

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` as an in-memory array."""
        rows, cols = b - a, self.shape[1]
        if not self.fortran_order:
            return self.read_flat(a * cols, rows * cols).reshape(rows, cols)
        out = np.empty((rows, cols), self.dtype)
        for j in range(cols):  # column-major file: one read per column
            out[:, j] = self.read_flat(j * self.shape[0] + a, rows)
        return out

    def read_flat(self, first: int, count: int) -> np.ndarray:
        """Flat elements ``[first, first + count)`` in the file's order."""
        flat = np.fromfile(self.path, self.dtype, count,
                           offset=self.offset + first * self.dtype.itemsize)
        if flat.size != count:
            raise DataError(f"{self.path}: file truncated (array of shape {self.shape} "
                            f"ends early)")
        return flat


def _count_lines(text: bytes) -> int:
    """Lines of ``text``, the last one counted even without a final newline."""
    return text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)


def _check_columns(file: Path, schema: pa.Schema, wanted: tuple[str, ...],
                   integer_types: bool = True) -> None:
    for name in wanted:
        if name not in schema.names:
            raise DataError(f"{file}: no column {name!r}; columns present: "
                            f"{', '.join(map(repr, schema.names)) or '(none)'}")
        kind = schema.field(name).type
        if integer_types and not pa.types.is_integer(kind):
            raise DataError(f"{file}: column {name!r} has type {kind}, "
                            "expected integer node ids")


def check_ids(values: pa.Array | np.ndarray, num_nodes: int | None
               ) -> tuple[np.ndarray, tuple[int, str] | None]:
    """``values`` as int64, and (row, problem) for the first id not in ``[0, num_nodes)``.

    ``num_nodes=None`` checks only that ids are present and non-negative.
    """
    if isinstance(values, pa.Array):
        if values.null_count:
            row = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
            return values, (row, "missing node id (null)")
        values = values.to_numpy()
    limit = np.iinfo(np.int64).max if num_nodes is None else num_nodes
    if values.size and (values.min() < 0 or values.max() >= limit):
        row = int(np.flatnonzero((values < 0) | (values >= limit))[0])
        value = int(values[row])
        if value < 0:
            problem = "negative node id"
        elif num_nodes is None:
            problem = "node id too large for int64"
        else:
            problem = f"node id out of range [0, {num_nodes})"
        return values, (row, f"{problem}: {value}")
    return values.astype(np.int64, copy=False), None


def checked_chunks(reader: EdgeReader, num_nodes: int | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield validated ``(src, dst)`` int64 chunks.

    Raises :class:`DataError` naming the file, column, row and value of the first bad id
    (the earliest row; src before dst within a row), or if the edge list is empty.
    """
    num_rows = 0
    for batch in reader.batches():
        src, src_bad = check_ids(batch.src, num_nodes)
        dst, dst_bad = check_ids(batch.dst, num_nodes)
        found = [(bad[0], label, bad[1]) for bad, label in ((src_bad, reader.src_label),
                                                             (dst_bad, reader.dst_label)) if bad]
        if found:
            row, label, problem = min(found, key=lambda f: f[0])
            raise DataError(f"{batch.file}: {label} row {batch.start + row}: {problem}")
        num_rows += src.shape[0]
        yield src, dst
    if num_rows == 0:
        raise DataError(f"{reader.path}: edge list is empty")


@dataclass(frozen=True)
class EdgeStats:
    """What one pass over an edge list finds."""

    num_edges: int
    max_id: int


def scan_edges(reader: EdgeReader, progress=None) -> EdgeStats:
    """Count the edges and find the largest node id (one validating pass); the count is
    recorded as ``reader.num_rows`` if the reader did not know it."""
    num_edges, max_id = 0, -1
    for src, dst in checked_chunks(reader):
        num_edges += src.shape[0]
        if src.size:
            max_id = max(max_id, int(src.max()), int(dst.max()))
        if progress is not None:
            progress.update(src.shape[0])
    if reader.num_rows is None:
        reader.num_rows = num_edges
    return EdgeStats(num_edges, max_id)
