"""The on-disk dataset format: one Zarr v3 group per dataset directory.

Layout (see docs/FORMAT.md)::

    DIR/zarr.json      group attributes: format_version, counts, dtypes, provenance
    DIR/indptr         int64 (N+1,)  CSR over in-neighbors, one uncompressed chunk
    DIR/indices        int32 (E,)    (int64 when N >= 2**31), one uncompressed chunk
    DIR/features       float32|float16 (N, F), row-chunked, uncompressed
    DIR/labels         int64 (N,)
    DIR/train|val|test int64 node ids

``indptr`` and ``indices`` are single raw chunks so they can be memory-mapped (sampling a
graph larger than RAM) and written through memory maps (out-of-core CSR build); they remain
ordinary Zarr arrays that ``zarr.open`` reads.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import itertools
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr

from disktrain.errors import DataError

FORMAT_VERSION = 1
FEATURE_CHUNK_BYTES = 4 << 20
SPLITS = ("train", "val", "test")


def index_dtype(num_nodes: int) -> np.dtype:
    """int32 node ids while they fit, else int64."""
    return np.dtype(np.int32) if num_nodes < 2**31 else np.dtype(np.int64)


def chunk_file(array_dir: str | Path, *index: int) -> Path:
    """Path of the chunk at grid ``index`` under Zarr v3's default chunk key encoding."""
    return Path(array_dir).joinpath("c", *(str(i) for i in index))


def create_flat_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype,
                      overwrite: bool = False) -> np.memmap:
    """Create a single-chunk uncompressed Zarr array and return its chunk as a writable memmap."""
    dtype = np.dtype(dtype)
    group.create_array(name, shape=shape, dtype=dtype, chunks=shape, compressors=None,
                       fill_value=0, overwrite=overwrite)
    path = chunk_file(Path(group.store.root) / group.path / name, *[0] * len(shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(np.prod(shape)) == 0:
        path.write_bytes(b"")
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="w+", shape=shape)


def open_flat_array(root: str | Path, name: str, mode: str = "r") -> np.ndarray:
    """Memory-map a single-chunk array written by :func:`create_flat_array`."""
    arr = zarr.open_array(Path(root) / name, mode="r")
    path = chunk_file(Path(root) / name, *[0] * arr.ndim)
    if arr.size == 0:
        return np.zeros(arr.shape, arr.dtype)
    if not path.exists():
        raise DataError(f"{path}: chunk file missing (array {name!r} of shape {arr.shape})")
    expected = arr.size * arr.dtype.itemsize
    if path.stat().st_size != expected:
        raise DataError(f"{path}: {path.stat().st_size} bytes, expected {expected} "
                        f"(array {name!r} truncated or corrupted)")
    return np.memmap(path, dtype=np.dtype(arr.dtype).newbyteorder("<"), mode=mode,
                     shape=arr.shape)


def write_small_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """Write an in-memory array (labels, splits) as one uncompressed chunk."""
    values = np.ascontiguousarray(values)
    arr = group.create_array(name, shape=values.shape, dtype=values.dtype,
                             chunks=values.shape or (1,), compressors=None, fill_value=0,
                             config={"write_empty_chunks": True})
    if values.size:
        arr[...] = values


def create_features(group: zarr.Group, num_nodes: int, feature_dim: int, dtype) -> zarr.Array:
    """Create the row-chunked feature array (~4 MiB chunks, uncompressed)."""
    dtype = np.dtype(dtype)
    rows = max(1, min(num_nodes, FEATURE_CHUNK_BYTES // max(1, feature_dim * dtype.itemsize)))
    return group.create_array("features", shape=(num_nodes, feature_dim), dtype=dtype,
                              chunks=(rows, feature_dim), compressors=None, fill_value=0)


def provenance(sources: dict[str, str] | None = None) -> dict:
    """Who made a dataset, from what, and when."""
    return {
        "command": shlex.join(sys.argv),
        "sources": dict(sources or {}),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "user": getpass.getuser(),
    }


@dataclass(frozen=True)
class DatasetMeta:
    """Group attributes of a dataset."""

    num_nodes: int
    num_edges: int
    feature_dim: int
    num_classes: int
    feature_dtype: str = "float32"
    index_dtype: str = "int32"
    provenance: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_attrs(cls, attrs: dict, where: str) -> DatasetMeta:
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{where}: format_version {version!r} is not {FORMAT_VERSION} "
                            "(not a disktrain dataset, or written by another version)")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in attrs.items() if k in names})


class Dataset:
    """A dataset directory opened read-only: CSR memmaps, features, labels, splits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise DataError(f"{self.path}: not a dataset directory (no zarr.json)")
        self.group = zarr.open_group(self.path, mode="r")
        self.meta = DatasetMeta.from_attrs(dict(self.group.attrs), str(self.path))
        self.indptr = open_flat_array(self.path, "indptr")
        self.indices = open_flat_array(self.path, "indices")
        self.features = self.group["features"]
        self._small: dict[str, np.ndarray] = {}

    def _load(self, name: str) -> np.ndarray:
        if name not in self._small:
            if name not in self.group:
                raise DataError(f"{self.path}: dataset has no {name!r} array")
            self._small[name] = np.asarray(self.group[name][...])
        return self._small[name]

    @property
    def num_nodes(self) -> int:
        return self.meta.num_nodes

    @property
    def labels(self) -> np.ndarray:
        return self._load("labels")

    def split(self, name: str) -> np.ndarray:
        """Node ids of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self._load(name)

    def in_degrees(self, nodes: np.ndarray) -> np.ndarray:
        """Whole-graph in-degree of each node in ``nodes``."""
        return self.indptr[nodes + 1] - self.indptr[nodes]

    def feature_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the features, read straight from the raw chunk files.

        Sequential and far cheaper than Zarr's generic read path; a missing chunk file is
        Zarr's fill value (zeros).
        """
        f = self.features
        rows, dim = f.chunks[0], f.shape[1]
        dtype = np.dtype(f.dtype)
        out = np.empty((stop - start, dim), dtype)
        pos = start
        while pos < stop:
            c, r0 = divmod(pos, rows)
            n = min(stop - pos, rows - r0)
            path = chunk_file(self.path / "features", c, 0)
            if path.exists():
                got = np.fromfile(path, dtype=dtype.newbyteorder("<"), count=n * dim,
                                  offset=r0 * dim * dtype.itemsize)
                if got.size != n * dim:
                    raise DataError(f"{path}: feature chunk {c} is truncated ({path.stat().st_size}"
                                    f" bytes; rows {r0}..{r0 + n} of {rows} needed)")
                out[pos - start:pos - start + n] = got.reshape(n, dim)
            else:
                out[pos - start:pos - start + n] = 0
            pos += n
        return out

    def iter_sorted(self, ids: np.ndarray, max_gap_bytes: int = 256 << 10,
                    max_read_bytes: int = 64 << 20):
        """Read the feature rows of ascending ``ids`` in order, as coalesced sequential ranges.

        Yields ``(i, j, rows)``: ``rows`` are the features of ``ids[i:j]``. Neighboring ids
        closer than ``max_gap_bytes`` share one read; a read spans at most ``max_read_bytes``.
        """
        row_bytes = max(1, self.meta.feature_dim * np.dtype(self.features.dtype).itemsize)
        gap_rows = max(1, max_gap_bytes // row_bytes)
        span_rows = max(1, max_read_bytes // row_bytes)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ids) > gap_rows) + 1, [len(ids)]])
        for run_start, run_end in itertools.pairwise(starts):
            i = int(run_start)
            while i < run_end:
                lo = int(ids[i])
                j = i + int(np.searchsorted(ids[i:run_end], lo + span_rows))
                hi = int(ids[j - 1]) + 1
                yield i, j, self.feature_rows(lo, hi)[ids[i:j] - lo]
                i = j

    def gather_sorted(self, ids: np.ndarray) -> np.ndarray:
        """Feature rows of ascending ``ids``, read in order (see :meth:`iter_sorted`)."""
        out = np.empty((len(ids), self.meta.feature_dim), np.dtype(self.features.dtype))
        for i, j, rows in self.iter_sorted(ids):
            out[i:j] = rows
        return out

    def info(self) -> dict:
        """The dataset's attributes plus the arrays present."""
        out = asdict(self.meta)
        out["path"] = str(self.path)
        out["splits"] = {s: int(self.group[s].shape[0]) for s in SPLITS if s in self.group}
        return out
