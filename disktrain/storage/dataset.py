"""The on-disk dataset format: one Zarr v3 group per dataset directory.

Layout (see docs/FORMAT.md)::

    DIR/zarr.json      group attributes: format_version, counts, dtypes, provenance
    DIR/indptr         int64 (N+1,)  CSR over in-neighbors, one uncompressed chunk
    DIR/indices        int32 (E,)    (int64 when N >= 2**31), one uncompressed chunk
    DIR/features       float32|float16 (N, F), row-chunked, uncompressed
    DIR/labels         int64 (N,)
    DIR/train|val|test int64 node ids

``indptr`` and ``indices`` are single chunks so they can be memory-mapped (sampling a graph
larger than RAM) and written through memory maps (out-of-core CSR build). Every chunk file of
every array is its raw little-endian bytes + their crc32c (Zarr's ``bytes`` + ``crc32c``
codecs, so ``zarr.open`` reads them); this module writes them and reads them back checked.
"""

from __future__ import annotations

import datetime as _dt
import errno
import getpass
import json
import math
import os
import shlex
import shutil
import sys
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import zarr

from disktrain.errors import DataError
from disktrain.storage.chunkfile import (
    CHECKSUM,
    CRC_BYTES,
    StoreRef,
    append_crc,
    check_chunk,
    chunk_file,
    crc_bytes,
    read_chunk,
)
from disktrain.storage.diskspace import array_bytes
from disktrain.storage.io import CREATE, aligned_buffer, open_direct, preallocate, round_up
from disktrain.storage.residency import (
    PMD_MAPPED_ENOUGH,
    RESIDENCIES,
    csr_budget,
    file_identity,
    load_checked,
    pmd_mapped_share,
)
from disktrain.storage.schema import (
    ROWS,
    ArrayMeta,
    ArraySpec,
    StoreSchema,
    group_attrs,
    read_array_meta,
)

FORMAT_VERSION = 2
FEATURE_CHUNK_BYTES = 4 << 20
SPLITS = ("train", "val", "test")
RERUN_DATASET = "re-create the dataset (disktrain ingest / disktrain synth)"


DATASET = StoreSchema((
    ArraySpec("indptr", ("num_nodes+1",), "int64", mapped=True),
    ArraySpec("indices", ("num_edges",), "index_dtype", mapped=True),
    ArraySpec("features", ("num_nodes", "feature_dim"), "feature_dtype", ROWS),
    ArraySpec("labels", ("num_nodes",), "int64", present="num_classes"),
    *(ArraySpec(split, (split,), "int64", present=False) for split in SPLITS),
    ArraySpec("link_train", ("link_train", 2), "index_dtype", present=False),
    *(ArraySpec(f"link_{split}", (f"link_{split}", 2), "int64", present=False)
      for split in SPLITS[1:]),
    *(ArraySpec(f"link_{split}_neg", (f"link_{split}", "eval_negatives"), "int64",
                present=False) for split in SPLITS[1:])))
"""The dataset's arrays (a split's length is its own). A dataset split for link prediction
(``ingest --edge-split``) holds its supervision edges as ``(src, dst)`` rows: ``link_train``
(every edge of the CSR once: one direction of an undirected graph's; memory-mapped),
``link_val`` and ``link_test`` (absent from the CSR, both directions) and, per val/test edge,
the ``eval_negatives`` destinations its ranking is against (``link_val_neg``,
``link_test_neg``)."""


Relation = tuple[str, str, str]
"""A typed graph's edge type: ``(src_type, rel, dst_type)``."""


def relation_name(rel: Relation) -> str:
    """A relation's folder under ``relations/``: ``src__rel__dst``."""
    return "__".join(rel)


@dataclass(frozen=True)
class NodeType:
    """A typed dataset's node type, as its attributes record it."""

    name: str
    num_nodes: int
    feature_dim: int
    feature_dtype: str = "float32"


def dataset_ref(path: str | Path) -> StoreRef:
    """The dataset at ``path``, for error messages."""
    return StoreRef("dataset", Path(path), RERUN_DATASET)


def new_id() -> str:
    """A fresh store identity (uuid4 hex)."""
    return uuid.uuid4().hex


def index_dtype(num_nodes: int) -> np.dtype:
    """int32 node ids while they fit, else int64."""
    return np.dtype(np.int32) if num_nodes < 2**31 else np.dtype(np.int64)


def create_flat_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype,
                      overwrite: bool = False) -> np.ndarray:
    """Create a single-chunk array and return its data bytes as a writable memmap.

    The chunk file is preallocated (data + crc), so a full disk is a
    :class:`~disktrain.errors.DiskSpaceError` here, never SIGBUS later. Call
    :func:`finish_flat_array` once the data is written. A zero-size array has no chunk file
    (a plain empty ndarray is returned).
    """
    dtype = np.dtype(dtype)
    group.create_array(name, shape=shape, dtype=dtype, chunks=shape, compressors=CHECKSUM,
                       fill_value=0, overwrite=overwrite)
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    path = chunk_file(Path(group.store.root) / group.path / name, *[0] * len(shape))
    fd = open_direct(path, CREATE, False)[0]
    try:
        preallocate(fd, math.prod(shape) * dtype.itemsize + CRC_BYTES, path)
    finally:
        os.close(fd)
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r+", shape=shape)


def finish_flat_array(array: np.ndarray) -> None:
    """Flush an array from :func:`create_flat_array` and write its crc32c after the data."""
    if isinstance(array, np.memmap):
        array.flush()
        append_crc(array.filename, array.nbytes)


def seal_flat_array(root: str | Path, name: str) -> None:
    """Write the crc32c of a single-chunk array whose data was written with file writes
    (e.g. ``pwrite`` from several processes) rather than through its memmap."""
    meta = read_array_meta(Path(root) / name, StoreRef("store", Path(root), ""), name)
    if meta.size:
        append_crc(chunk_file(Path(root) / name, *[0] * len(meta.shape)), meta.chunk_bytes)


def open_flat_array(root: str | Path, name: str, mode: str = "r", *, verify: bool = False,
                    ref: StoreRef | None = None) -> np.ndarray:
    """Memory-map the data of a single-chunk array written by :func:`create_flat_array`.

    The chunk file's size is always checked; ``verify`` also checks its crc32c (reading the
    whole file in bounded slices). ``ref`` names the store in errors (default: a dataset).
    """
    ref = ref or dataset_ref(root)
    meta = read_array_meta(Path(root) / name, ref, name, one_chunk=True)
    if meta.size == 0:
        return np.zeros(meta.shape, meta.dtype)
    path = chunk_file(Path(root) / name, *[0] * len(meta.shape))
    if problem := check_chunk(path, meta.chunk_bytes, verify=verify)[0]:
        raise ref.corrupt(name, path, problem)
    return np.memmap(path, dtype=meta.dtype, mode=mode, shape=meta.shape)


_VERIFIED: set[tuple] = set()
_VERIFIED_LOCK = threading.Lock()


def verify_flat_once(root: str | Path, name: str, ref: StoreRef, ndim: int = 1) -> None:
    """Check an ``ndim``-D single-chunk array's crc32c unless this process already checked
    this very file (same path, inode, size and modification time)."""
    key = file_identity(chunk_file(Path(root) / name, *[0] * ndim))
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return
        open_flat_array(root, name, verify=True, ref=ref)
        if key:
            _VERIFIED.add(key)


def link_array(src_root: str | Path, dst_root: str | Path, name: str) -> None:
    """Make array ``name`` of ``dst_root`` the same files as ``src_root``'s: hard links (no
    bytes written; written arrays are never modified in place), copies across filesystems."""
    src, dst = Path(src_root) / name, Path(dst_root) / name
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(path, target)


def write_small_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """Write an in-memory array (labels, splits, offsets) as one checksummed chunk.

    Written straight to files (the Zarr v3 metadata, then the chunk: data + crc32c), which is
    several times faster than going through Zarr for the many small arrays of a sample store.
    """
    values = np.ascontiguousarray(values)
    if values.dtype.kind not in "biuf" or values.ndim == 0:
        raise ValueError(f"array {name!r}: expected an array of numbers, got {values.dtype} "
                         f"of shape {values.shape}")
    chunks = values.shape
    meta = {
        "shape": list(values.shape), "data_type": values.dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": False if values.dtype.kind == "b" else 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                   {"name": "crc32c"}],
        "attributes": {}, "zarr_format": 3, "node_type": "array", "storage_transformers": [],
    }
    array_dir = Path(group.store.root) / group.path / name
    array_dir.mkdir(parents=True)
    (array_dir / "zarr.json").write_text(json.dumps(meta, indent=2))
    if values.size:
        data = values.astype(values.dtype.newbyteorder("<"), copy=False).reshape(-1)
        data = data.view(np.uint8)
        path = chunk_file(array_dir, *[0] * len(chunks))
        path.parent.mkdir(parents=True)
        with open(path, "wb") as f:
            f.write(data.data)
            f.write(crc_bytes(data))


def read_small_array(root: str | Path, name: str, ref: StoreRef,
                     batches: range | None = None, verify: bool = True) -> np.ndarray:
    """Read a single-chunk array into memory, checking its crc32c.

    Errors name ``ref``'s store, the array, the chunk file and ``batches`` (those stored in
    the array, where it maps to batches). ``verify=False`` skips the crc (size still checked).
    """
    meta = read_array_meta(Path(root) / name, ref, name, one_chunk=True)
    if meta.size == 0:
        return np.zeros(meta.shape, meta.dtype)
    data = read_chunk(chunk_file(Path(root) / name, *[0] * len(meta.shape)), meta.chunk_bytes,
                      ref, name, batches, verify)
    return data.view(meta.dtype).reshape(meta.shape)


def create_features(group: zarr.Group, num_nodes: int, feature_dim: int, dtype,
                    chunk_rows: int = 0) -> zarr.Array:
    """Create the row-chunked feature array (~4 MiB chunks, or of ``chunk_rows`` rows; a
    crc32c each, every chunk written even when all zeros)."""
    dtype = np.dtype(dtype)
    rows = chunk_rows or FEATURE_CHUNK_BYTES // max(1, feature_dim * dtype.itemsize)
    rows = max(1, min(num_nodes, rows))
    return group.create_array("features", shape=(num_nodes, feature_dim), dtype=dtype,
                              chunks=(rows, feature_dim), compressors=CHECKSUM, fill_value=0,
                              config={"write_empty_chunks": True})


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
    dataset_id: str = field(default_factory=new_id)
    """This dataset's identity, new for every dataset written; derived stores record it."""
    node_types: list = field(default_factory=list)
    """A typed dataset's node types (:class:`NodeType` as dicts), the target type first: a
    type's nodes have the global ids that follow the types before it. Empty: one type."""
    relations: list = field(default_factory=list)
    """A typed dataset's relations: ``{"src", "rel", "dst", "num_edges"}`` each."""
    target_type: str = ""
    """The node type the labels and splits are of (a typed dataset)."""

    @classmethod
    def from_attrs(cls, attrs: dict, where: str) -> DatasetMeta:
        version = attrs.get("format_version")
        if version == 1:
            raise DataError(f"{where}: format_version 1 (written by an older disktrain, "
                            f"without checksums); {RERUN_DATASET}")
        if version != FORMAT_VERSION:
            raise DataError(f"{where}: format_version {version!r} is not {FORMAT_VERSION} "
                            "(not a disktrain dataset, or written by another version)")
        if not isinstance(attrs.get("dataset_id"), str) or not attrs["dataset_id"]:
            raise DataError(f"{where}: attribute dataset_id is missing or invalid "
                            f"({attrs.get('dataset_id')!r}); {RERUN_DATASET}")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in attrs.items() if k in names})


DATASET_ATTRS = ("num_nodes", "num_edges", "feature_dim", "num_classes")
"""The attributes a dataset's ``zarr.json`` must hold (the others have defaults)."""


class FeatureRows:
    """Reads a row-chunked, checksummed 2-D array (a dataset's ``features``, a layer of
    layer-wise inference, :mod:`disktrain.infer.store`): rows by range, or the rows of
    ascending ids in one ordered pass, every chunk crc-checked when read."""

    def __init__(self, rows_dir: str | Path, ref: StoreRef, shape: tuple | None = None):
        self.rows_dir, self.ref = Path(rows_dir), ref
        self._features = read_array_meta(self.rows_dir, ref, self.rows_dir.name, shape=shape)
        self._last_chunk: tuple[int, np.ndarray | None] = (-1, None)

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk file."""
        return self._features.chunks[0]

    @property
    def rows_meta(self) -> ArrayMeta:
        """The array's shape, dtype and chunking."""
        return self._features

    def feature_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the features, read as whole chunk files, each crc-checked.

        The last chunk read is kept, so ascending calls read every chunk once.
        """
        rows, dim = self._features.chunks
        out = np.empty((stop - start, dim), self._features.dtype)
        pos = start
        while pos < stop and dim:
            c, r0 = divmod(pos, rows)
            n = min(stop - pos, rows - r0)
            out[pos - start:pos - start + n] = self._feature_chunk(c)[r0:r0 + n]
            pos += n
        return out

    def _feature_chunk(self, c: int) -> np.ndarray:
        """Feature chunk ``c`` (all its rows), checked; the last one read is kept."""
        last, chunk = self._last_chunk
        if last != c or chunk is None:
            data = read_chunk(chunk_file(self.rows_dir, c, 0),
                              self._features.chunk_bytes, self.ref, "features")
            chunk = data.view(self._features.dtype).reshape(self._features.chunks)
            self._last_chunk = (c, chunk)
        return chunk

    def iter_sorted(self, ids: np.ndarray, max_read_bytes: int = 64 << 20):
        """Read the feature rows of ascending ``ids`` in one ordered pass, each chunk once.

        Yields ``(i, j, rows)``: ``rows`` are the features of ``ids[i:j]``, from chunk files
        spanning at most ``max_read_bytes`` (at least one chunk), in a buffer that the step
        after next reuses (copy what must outlive it). Two threads read the chunk files of the
        next span and copy out its rows while the caller uses this one, past the page cache
        where the filesystem allows: a pass over the whole feature file neither copies it
        through the page cache nor evicts what the cache holds.
        """
        chunks, bounds = self._chunk_bounds(ids)
        span = max(1, max_read_bytes // max(1, self._features.chunk_bytes))
        spans = [range(s, min(s + span, len(chunks))) for s in range(0, len(chunks), span)]
        most = max((int(bounds[s.stop] - bounds[s.start]) for s in spans), default=0)
        bufs = [np.empty((most, self._features.shape[1]), self._features.dtype) for _ in range(2)]
        with _Copier(self, ids, chunks, bounds, direct=True) as copier:
            ahead = copier.start(spans[0], bufs[0]) if spans else []
            for n, s in enumerate(spans):
                copier.wait(ahead)
                if n + 1 < len(spans):
                    ahead = copier.start(spans[n + 1], bufs[(n + 1) % 2])
                i, j = int(bounds[s.start]), int(bounds[s.stop])
                yield i, j, bufs[n % 2][:j - i]

    def gather_sorted(self, ids: np.ndarray) -> np.ndarray:
        """Feature rows of ascending ``ids``: each chunk holding some read once, on two
        threads, through the page cache (repeated calls find it there)."""
        out = np.empty((len(ids), self._features.shape[1]), self._features.dtype)
        chunks, bounds = self._chunk_bounds(ids)
        with _Copier(self, ids, chunks, bounds, direct=False) as copier:
            copier.wait(copier.start(range(len(chunks)), out))
        return out

    def _chunk_bounds(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The feature chunks holding ascending ``ids`` (ascending, distinct) and, for each,
        where its ids start in ``ids`` (one more entry: ``len(ids)``)."""
        if not self._features.shape[1] or not len(ids):
            return np.zeros(0, np.int64), np.zeros(1, np.int64)
        of = np.asarray(ids, np.int64) // self._features.chunks[0]
        starts = np.flatnonzero(of[1:] != of[:-1]) + 1
        return of[np.concatenate(([0], starts))], np.concatenate(([0], starts, [len(ids)]))

    def _read_feature_chunk(self, c: int, buf: np.ndarray | None) -> tuple[np.ndarray, object]:
        """Feature chunk ``c``'s data bytes, checked, and ``buf``: read into ``buf`` (past the
        page cache where allowed) or, without one, through the page cache."""
        return read_chunk(chunk_file(self.rows_dir, c, 0), self._features.chunk_bytes,
                          self.ref, "features", into=buf), buf


class Dataset(FeatureRows):
    """A dataset directory opened read-only: CSR, features, labels, splits (a typed dataset
    opens as a :class:`TypedDataset`).

    The CSR (``indptr`` and ``indices``) is memory-mapped or read into huge-page memory, as
    policy ``csr`` (one of :data:`~disktrain.storage.residency.RESIDENCIES`) says, within
    ``csr_budget`` bytes for both (default: :data:`~disktrain.storage.residency.DEFAULT_CSR_SHARE` of
    the memory available when first used); see :mod:`disktrain.storage.residency`.
    Every read is checked against the chunks' crc32c: ``indptr`` and ``indices`` once per
    process, on first use (before they are mapped, or as they are read into memory);
    ``labels`` and the splits when loaded; each feature chunk when read
    (:meth:`feature_rows`).
    """

    def __new__(cls, path: str | Path, **_):
        typed = False
        if cls is Dataset and (Path(path) / "zarr.json").exists():
            try:
                typed = bool(json.loads((Path(path) / "zarr.json").read_text())
                             .get("attributes", {}).get("node_types"))
            except (OSError, ValueError, AttributeError):
                pass  # __init__ names the problem
        return super().__new__(TypedDataset if typed else cls)

    def __init__(self, path: str | Path, *, csr: str = "auto", csr_budget: int | None = None):
        self.path = Path(path)
        if csr not in RESIDENCIES:
            raise ValueError(f"csr must be one of {RESIDENCIES}, got {csr!r}")
        if csr_budget is not None and csr_budget < 0:
            raise ValueError(f"csr_budget must be >= 0 bytes, got {csr_budget}")
        self.csr = csr
        self.csr_budget = csr_budget
        self._csr_in_memory = False
        if not (self.path / "zarr.json").exists():
            raise DataError(f"{self.path}: not a dataset directory (no zarr.json)")
        self.ref = dataset_ref(self.path)
        self.meta = DatasetMeta.from_attrs(group_attrs(self.path, self.ref, DATASET_ATTRS),
                                           str(self.path))
        self._flat: dict[str, np.ndarray] = {}
        self._small: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._last_chunk: tuple[int, np.ndarray | None] = (-1, None)
        self.rows_dir = self.path / "features"
        self._open_features()

    def _open_features(self) -> None:
        self._features = self._array_meta("features")
        self.features = zarr.open_group(self.path, mode="r")["features"]  # checked above

    @property
    def dataset_id(self) -> str:
        return self.meta.dataset_id

    @property
    def indptr(self) -> np.ndarray:
        """int64 (N+1,), in memory or memory-mapped; crc-checked once per process on first
        use."""
        return self._csr("indptr")

    @property
    def indices(self) -> np.ndarray:
        """Sources of each row's in-edges, held like :attr:`indptr`; checked like it."""
        return self._csr("indices")

    @property
    def csr_in_memory(self) -> bool:
        """Whether the CSR was read into memory rather than memory-mapped (opens it)."""
        self._csr("indices")
        return self._csr_in_memory

    def _csr(self, name: str) -> np.ndarray:
        array = self._flat.get(name)
        if array is None:
            with self._lock:
                if name not in self._flat:
                    self._flat.update(self._open_csr())
                array = self._flat[name]
        return array

    def _open_csr(self) -> dict[str, np.ndarray]:
        """``indptr`` and ``indices``, placed by the residency policy, checked."""
        metas = {a.name: self._array_meta(a.name, one_chunk=True)
                 for a in DATASET.arrays if a.mapped}
        fits = self.csr != "map" and \
            sum(m.chunk_bytes for m in metas.values()) <= csr_budget(self.csr_budget)
        maps = {}
        if not fits or self.csr == "auto":  # auto: the smaller first, the probe
            for name in sorted(metas, key=lambda n: metas[n].chunk_bytes):
                verify_flat_once(self.path, name, self.ref)
                maps[name] = open_flat_array(self.path, name, ref=self.ref)
                if fits and pmd_mapped_share(maps[name]) < PMD_MAPPED_ENOUGH:
                    break  # 4 KiB pages: the rest read straight into memory
            else:
                return maps
        self._csr_in_memory = True  # (auto: the maps checked just now copied)
        return {name: load_checked(chunk_file(self.path / name, 0), meta.chunk_bytes,
                                   meta.dtype, meta.shape, self.ref, name, maps.get(name))
                if meta.size else np.zeros(meta.shape, meta.dtype)
                for name, meta in metas.items()}

    def _array_meta(self, name: str, one_chunk: bool = False) -> ArrayMeta:
        """Array ``name`` as its ``zarr.json`` describes it, checked against the shape the
        dataset's attributes give (see :func:`read_array_meta`)."""
        return read_array_meta(self.path / name, self.ref, name, one_chunk=one_chunk,
                               shape=DATASET.array(name).shape_in(asdict(self.meta)))

    def has(self, name: str) -> bool:
        """Whether the dataset holds array ``name`` (labels and each split are optional)."""
        return (self.path / name / "zarr.json").exists()

    def _load(self, name: str) -> np.ndarray:
        if name not in self._small:
            if not self.has(name):
                raise DataError(f"{self.path}: dataset has no {name!r} array")
            self._small[name] = read_small_array(self.path, name, self.ref)
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

    @property
    def has_link_split(self) -> bool:
        """Whether the dataset holds edges split for link prediction (``link_train``...)."""
        return self.has("link_train")

    def link_edges(self, split: str) -> np.ndarray:
        """(E, 2) ``(src, dst)`` supervision edges of ``split``: ``train`` memory-mapped
        (crc-checked once per process), ``val``/``test`` read into memory."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        name = f"link_{split}"
        if not self.has(name):
            raise DataError(f"{self.path}: dataset has no link prediction split ({name!r}); "
                            "ingest it with --edge-split")
        if split != "train":
            return self._load(name)
        if name not in self._flat:
            verify_flat_once(self.path, name, self.ref, ndim=2)
            self._flat[name] = open_flat_array(self.path, name, ref=self.ref)
        return self._flat[name]

    def link_negatives(self, split: str) -> np.ndarray:
        """(E, K) per ``val``/``test`` edge of :meth:`link_edges`, the destinations ranked
        against it (its source kept), fixed at ingest."""
        if split not in SPLITS[1:]:
            raise ValueError(f"link negatives are stored for val and test, not {split!r}")
        return self._load(f"link_{split}_neg")

    def in_degrees(self, nodes: np.ndarray) -> np.ndarray:
        """Whole-graph in-degree of each node in ``nodes``."""
        indptr = self.indptr
        return indptr[nodes + 1] - indptr[nodes]

    def info(self) -> dict:
        """The dataset's attributes plus the arrays present."""
        out = asdict(self.meta)
        out["path"] = str(self.path)
        out["splits"] = {s: self._array_meta(s).shape[0] for s in SPLITS if self.has(s)}
        if self.has_link_split:
            out["link_split"] = {s: self._array_meta(f"link_{s}").shape[0] for s in SPLITS
                                 if self.has(f"link_{s}")}
            if self.has("link_val_neg"):
                out["link_split"]["eval_negatives"] = self._array_meta("link_val_neg").shape[1]
        return out


class _Copier:
    """Copies the feature rows of ascending ``ids`` out of the chunk files holding them, on two
    threads, each chunk crc-checked: ``direct``, read into a page-aligned buffer per thread
    with ``O_DIRECT`` where the filesystem allows (else buffered into it); otherwise through
    the page cache. ``chunks`` and ``bounds``: :meth:`Dataset._chunk_bounds` of ``ids``.
    Leaving the ``with`` block cancels the copies not started and waits for the others."""

    def __init__(self, dataset: Dataset, ids: np.ndarray, chunks: np.ndarray,
                 bounds: np.ndarray, direct: bool):
        self.dataset, self.ids, self.chunks, self.bounds = dataset, ids, chunks, bounds
        self.rows = dataset._features.chunks[0]
        self.nbytes = round_up(dataset._features.chunk_bytes + CRC_BYTES) if direct else 0
        self.scratch = threading.local()
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="feature-read")
        self.pending: list = []

    def start(self, ks: range, out: np.ndarray) -> list:
        """Start copying the rows of chunks ``chunks[ks]`` into ``out`` (from its row 0)."""
        base = self.bounds[ks.start]
        futures = [self.pool.submit(self._copy, k, out[self.bounds[k] - base:
                                                       self.bounds[k + 1] - base]) for k in ks]
        self.pending += futures
        return futures

    def wait(self, futures: list) -> None:
        """Wait for ``futures`` (from :meth:`start`); raise the first error met."""
        for f in futures:
            f.result()

    def _copy(self, k: int, out: np.ndarray) -> None:
        buf = getattr(self.scratch, "buf", None)
        if buf is None and self.nbytes:
            buf = self.scratch.buf = aligned_buffer(self.nbytes)
        data = self.dataset._read_feature_chunk(int(self.chunks[k]), buf)[0]
        rows = data.view(self.dataset._features.dtype).reshape(self.dataset._features.chunks)
        a, b = self.bounds[k], self.bounds[k + 1]
        np.take(rows, self.ids[a:b] - int(self.chunks[k]) * self.rows, axis=0, out=out)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True)


class TypedDataset(Dataset):
    """A typed dataset: node types with global ids (the target type's first, so its local ids
    are global ids: labels and splits need no mapping), a CSR per relation by destination in
    ids local to each type, and per-type features.

    Layout::

        DIR/zarr.json                      attrs as a dataset's, plus node_types, relations,
                                           target_type (:class:`DatasetMeta`)
        DIR/types/<type>/                  the type's nodes as a dataset without edges: its
                                           own attrs and ``features`` (n_t, F_t) (F_t may be 0)
        DIR/relations/<src>__<rel>__<dst>/ indptr int64 (n_dst+1,), indices (E_r,) src ids
        DIR/labels, DIR/train|val|test     of the target type

    Feature rows are read by global id as one feature space: each type's rows zero-padded to
    the widest type's width (``feature_dim``), in ``feature_dtype`` (float16 only when every
    featured type stores float16); a featureless type has no rows to read.
    """

    def _open_features(self) -> None:
        self.types = [NodeType(**t) for t in self.meta.node_types]
        self.type_names = [t.name for t in self.types]
        self.type_offsets = np.concatenate(
            ([0], np.cumsum([t.num_nodes for t in self.types]))).astype(np.int64)
        self.relations: list[Relation] = [(r["src"], r["rel"], r["dst"])
                                          for r in self.meta.relations]
        if self.type_offsets[-1] != self.meta.num_nodes or \
                self.types[0].name != self.meta.target_type:
            raise DataError(f"{self.path}: node_types do not add up to num_nodes "
                            f"{self.meta.num_nodes} or do not start with the target type "
                            f"{self.meta.target_type!r}; {RERUN_DATASET}")
        for src, rel, dst in self.relations:
            if src not in self.type_names or dst not in self.type_names:
                raise DataError(f"{self.path}: relation {(src, rel, dst)} names an unknown "
                                f"node type; {RERUN_DATASET}")
        self._by_type = {t.name: Dataset(self.path / "types" / t.name)
                         for t in self.types if t.feature_dim}
        for t in self.types:
            if t.feature_dim and self._by_type[t.name].meta.dataset_id != self.dataset_id:
                raise DataError(f"{self.path / 'types' / t.name}: belongs to another dataset "
                                f"(dataset_id); {RERUN_DATASET}")
        self._dtype = np.dtype(self.meta.feature_dtype)
        self.features = _FeatureShape((self.meta.num_nodes, self.meta.feature_dim), self._dtype)

    @property
    def indptr(self) -> np.ndarray:
        raise DataError(f"{self.path}: a typed dataset has a CSR per relation "
                        "(relation_csr), not one")

    indices = indptr

    def relation_csr(self, rel: Relation) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr, indices)`` of relation ``rel``: memory-mapped, crc-checked once per
        process."""
        root = self.path / "relations" / relation_name(rel)
        key = relation_name(rel)
        if key not in self._flat:
            with self._lock:
                for name in ("indptr", "indices"):
                    verify_flat_once(root, name, self.ref)
                self._flat[key] = tuple(open_flat_array(root, name, ref=self.ref)
                                        for name in ("indptr", "indices"))
        return self._flat[key]

    def type_dataset(self, name: str) -> Dataset:
        """Node type ``name``'s nodes as a dataset of their own (features by local id)."""
        if name not in self._by_type:
            raise DataError(f"{self.path}: node type {name!r} has no features")
        return self._by_type[name]

    def type_index(self, name: str) -> int:
        if name not in self.type_names:
            raise ValueError(f"unknown node type {name!r} (types: {self.type_names})")
        return self.type_names.index(name)

    def in_degrees(self, nodes: np.ndarray) -> np.ndarray:
        raise DataError(f"{self.path}: whole-graph degrees (GCN's normalization) are not "
                        "defined for a typed dataset")

    def _per_type(self, ids: np.ndarray):
        """``(type, local ids, [i, j))`` for each featured type among ascending ``ids``."""
        cuts = np.searchsorted(ids, self.type_offsets)
        for k, t in enumerate(self.types):
            i, j = int(cuts[k]), int(cuts[k + 1])
            if j > i and not t.feature_dim:
                raise DataError(f"{self.path}: node type {t.name!r} has no features to read "
                                f"(global id {int(ids[i])})")
            if j > i:
                yield self._by_type[t.name], ids[i:j] - self.type_offsets[k], i, j

    def _wide(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` in the common dtype, zero-padded to ``feature_dim``."""
        if rows.shape[1] == self.meta.feature_dim and rows.dtype == self._dtype:
            return rows
        out = np.zeros((rows.shape[0], self.meta.feature_dim), self._dtype)
        out[:, :rows.shape[1]] = rows
        return out

    def feature_rows(self, start: int, stop: int) -> np.ndarray:
        return self.gather_sorted(np.arange(start, stop, dtype=np.int64))

    def gather_sorted(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), self.meta.feature_dim), self._dtype)
        for part, local, i, j in self._per_type(np.asarray(ids, np.int64)):
            out[i:j] = self._wide(part.gather_sorted(local))
        return out

    def iter_sorted(self, ids: np.ndarray, max_read_bytes: int = 64 << 20):
        for part, local, i, _ in self._per_type(np.asarray(ids, np.int64)):
            for a, b, rows in part.iter_sorted(local, max_read_bytes):
                yield i + a, i + b, self._wide(rows)

    def info(self) -> dict:
        """As a dataset's, with ``node_types`` and ``relations`` by name."""
        out = super().info()
        out["node_types"] = {t.name: {"num_nodes": t.num_nodes, "features": (
            f"{t.feature_dim} {t.feature_dtype}" if t.feature_dim else "none")}
            for t in self.types}
        out["relations"] = {relation_name((r["src"], r["rel"], r["dst"])): r["num_edges"]
                            for r in self.meta.relations}
        return out


@dataclass(frozen=True)
class _FeatureShape:
    """What readers ask of a dataset's ``features`` array: its shape and dtype."""

    shape: tuple[int, int]
    dtype: np.dtype


def dataset_bytes(*, num_nodes: int, num_edges: int, feature_dim: int, feature_dtype,
                  labels: bool, splits: Mapping[str, int], spill: int = 0,
                  link: Mapping[str, int] | None = None) -> int:
    """What ``ingest`` or ``synth`` holds on disk at most: the arrays of :data:`DATASET`,
    ``labels`` or not, the ``splits`` of these sizes, the link prediction arrays if ``link``
    gives their sizes (``link_train``, ``link_val``, ``link_test``: edges, upper bounds;
    ``eval_negatives``: K).

    ``num_edges`` counts the edges stored before dedup (reverse edges included). ``spill``:
    the bytes of the CSR build's temporary spill file, if it is on disk with the dataset
    (:func:`disktrain.ingest.csr.spill_bytes`; ``ingest`` writes the features first, so the
    spill file is on disk with the whole dataset but the labels and splits). Dedup needs no
    room of its own (the build keeps no second indices array).
    """
    dims = {"num_nodes": num_nodes, "num_edges": num_edges, "feature_dim": feature_dim,
            "feature_dtype": feature_dtype, "index_dtype": index_dtype(num_nodes), **splits,
            **(link or {})}
    row_bytes = feature_dim * np.dtype(feature_dtype).itemsize
    rows = max(1, min(num_nodes, FEATURE_CHUNK_BYTES // max(1, row_bytes)))
    without = [s for s in SPLITS if s not in splits] + ([] if labels else ["labels"]) + \
        ([] if link else [a.name for a in DATASET.arrays if a.name.startswith("link_")])
    return DATASET.disk_bytes(dims, rows, without=without) + (array_bytes(spill) if spill else 0)
