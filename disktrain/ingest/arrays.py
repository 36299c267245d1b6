"""NumPy arrays too large to load, read piece by piece: ``.npy`` members of a ``.npz`` (a zip,
deflated or stored), headerless ``.npy`` files (IGB's large and full sizes), (2, E) edge
arrays (OGB's and MAG240M's ``edge_index``), and float labels with NaN for unlabelled nodes.

Every reader here holds one block at a time; a zip member is decompressed as it is read
(seeking forward in one decompresses and discards what it skips).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from disktrain.errors import DataError
from disktrain.ingest.edges import EdgeBatch, EdgeReader, NpyRows

NPY_MAGIC = b"\x93NUMPY"
"""The first bytes of every ``.npy`` file: without them a file is a headerless array."""
_SKIP_BYTES = 1 << 18
"""Bytes read at a time to skip to a position in a zip member."""


class NpzMember:
    """The array ``name`` of the ``.npz`` file ``path``, streamed in element order."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        self.where = f"{self.path}[{name}]"
        try:
            with zipfile.ZipFile(self.path) as z, z.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}[version]
                shape, self.fortran_order, self.dtype = read(f)
                self.offset = f.tell()
        except KeyError as e:  # no such member, or an unknown .npy version
            raise DataError(f"{self.path}: no readable array {name!r} ({e})") from e
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise DataError(f"{self.where}: cannot read as a .npy array in a .npz ({e})") from e
        self.shape = tuple(int(n) for n in shape)
        if self.dtype.hasobject:
            raise DataError(f"{self.where}: array of Python objects, expected numbers")

    def elements(self, start: int, count: int, step: int) -> Iterator[np.ndarray]:
        """Flat elements ``[start, start + count)`` in the file's order, ``step`` at a time."""
        size = self.dtype.itemsize
        with zipfile.ZipFile(self.path) as z, z.open(f"{self.name}.npy") as f:
            skip = self.offset + start * size  # read past in small blocks (a zip member's
            while skip:                        # seek reads 16 MiB at once)
                skip -= len(self._read(f, min(skip, _SKIP_BYTES)))
            for a in range(0, count, step):
                yield np.frombuffer(self._read(f, min(step, count - a) * size), self.dtype)

    def _read(self, f, size: int) -> bytes:
        data = f.read(size)
        if len(data) != size:
            raise DataError(f"{self.where}: member truncated (array of shape {self.shape} "
                            "ends early)")
        return data

    def rows(self, step: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block of ``step`` rows) of a C-order array, in order."""
        if self.fortran_order and len(self.shape) > 1:
            raise DataError(f"{self.where}: a Fortran-order array cannot be streamed by row")
        width = int(np.prod(self.shape[1:]))
        for i, flat in enumerate(self.elements(0, self.shape[0] * width, step * width)):
            yield i * step, flat.reshape(-1, *self.shape[1:])


class FileElements:
    """The flat elements of a ``.npy`` file (:class:`~disktrain.ingest.edges.NpyRows`), read
    with plain file reads, in the interface of :meth:`NpzMember.elements`."""

    def __init__(self, rows: NpyRows):
        self.rows, self.where = rows, str(rows.path)
        self.shape, self.dtype, self.fortran_order = rows.shape, rows.dtype, rows.fortran_order

    def elements(self, start: int, count: int, step: int) -> Iterator[np.ndarray]:
        for a in range(0, count, step):
            yield self.rows.read_flat(start + a, min(step, count - a))


class PairEdges(EdgeReader):
    """A (2, E) integer array, row 0 the sources, row 1 the destinations (OGB's and
    MAG240M's ``edge_index``), from a :class:`NpzMember` or :class:`FileElements`. In C order
    the two rows are two runs of the file, read side by side; in Fortran order the pairs
    are interleaved."""

    def __init__(self, array: NpzMember | FileElements, chunk_rows: int):
        self.array, self.path, self.chunk_rows = array, Path(array.where), chunk_rows
        self.src_label, self.dst_label = "edge_index[0] (src)", "edge_index[1] (dst)"
        if len(array.shape) != 2 or array.shape[0] != 2 or array.dtype.kind not in "iu":
            raise DataError(f"{array.where}: edge array of shape {array.shape} and dtype "
                            f"{array.dtype}, expected (2, num_edges) integers")
        self.num_rows = array.shape[1]

    def batches(self) -> Iterator[EdgeBatch]:
        num, step = self.num_rows, self.chunk_rows
        if self.array.fortran_order:
            pairs = (flat.reshape(-1, 2) for flat in self.array.elements(0, 2 * num, 2 * step))
            runs = ((p[:, 0], p[:, 1]) for p in pairs)
        else:
            runs = zip(self.array.elements(0, num, step), self.array.elements(num, num, step),
                       strict=True)
        for i, (src, dst) in enumerate(runs):
            yield EdgeBatch(src, dst, self.path, i * step)


class HeaderlessRows(NpyRows):
    """A file of raw ``dtype`` values, ``dim`` per row, without a ``.npy`` header (IGB's large
    and full ``node_feat.npy``): its row count is the file size over the row size."""

    def __init__(self, path: Path, dtype: np.dtype, dim: int):
        self.path, self.dtype, self.offset, self.fortran_order = Path(path), dtype, 0, False
        size, row = self.path.stat().st_size, dim * dtype.itemsize
        if size % row:
            raise DataError(f"{path}: no .npy header, and its {size} bytes are not whole rows "
                            f"of {dim} {dtype} values ({row} bytes); is the feature width "
                            f"{dim} right?")
        self.shape = (size // row, dim)


def is_npy(path: Path) -> bool:
    """Whether ``path`` starts with the ``.npy`` magic."""
    with open(path, "rb") as f:
        return f.read(len(NPY_MAGIC)) == NPY_MAGIC


def float_labels(where: str | Path, values: np.ndarray, start: int = 0,
                 num_classes: int | None = None) -> np.ndarray:
    """Class ids stored as numbers (OGB's and MAG240M's float labels, NaN for an unlabelled
    node) as int64, -1 for NaN; ``start`` numbers the rows in errors. Refused: a value that
    is not a whole number >= 0 (or ``>= num_classes``)."""
    values = np.asarray(values).reshape(-1)
    labelled = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
    with np.errstate(invalid="ignore"):
        bad = labelled & (~np.isfinite(values) | (values < 0) | (values != np.floor(values))
                          | (values >= (num_classes or np.inf)))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        limit = f" in [0, {num_classes})" if num_classes else " >= 0"
        raise DataError(f"{where}: row {start + row}: label {values[row]} is not a class id"
                        f"{limit} (NaN marks an unlabelled node)")
    return np.where(labelled, values, -1).astype(np.int64)


def stream_labels(array: NpzMember | FileElements, num: int, step: int,
                  labelled: int | None = None, num_classes: int | None = None) -> np.ndarray:
    """int64 labels of ``num`` nodes from the first ``labelled`` (default: ``num``) elements
    of ``array``, read ``step`` at a time (:func:`float_labels`: -1 where NaN), -1 after
    them."""
    labels = np.full(num, -1, np.int64)
    for i, block in enumerate(array.elements(0, num if labelled is None else labelled, step)):
        labels[i * step:i * step + len(block)] = float_labels(array.where, block, i * step,
                                                              num_classes)
    return labels
