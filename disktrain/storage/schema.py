"""Store schemas: each store declares its arrays once (:class:`StoreSchema`), and
``disktrain verify``, the disk-space estimates and its readers follow; an array as its
``zarr.json`` describes it (:class:`ArrayMeta`); and the one reader of every store's metadata
(:func:`read_meta`, :func:`group_attrs`, :func:`read_array_meta`): a file that is missing, not
JSON, or lacks what its readers rely on is a :class:`~disktrain.errors.DataError` naming it and
the step that rewrites it.

A shape is written in the names of the store's attributes (``num_nodes``, ``feature_dim``;
``name+1``: one more; an int: that length), a dtype as a NumPy type or the attribute naming one
(``feature_dtype``): the attributes, or the sizes a writer is about to write, give both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from disktrain.errors import CorruptDataError, DataError
from disktrain.storage.chunkfile import CRC_BYTES, StoreRef
from disktrain.storage.diskspace import array_bytes
from disktrain.storage.io import BLOCK, round_up
from disktrain.storage.remote import fetch_missing
from disktrain.storage.shards import ShardLayout

SINGLE, ROWS, SHARDS = "single", "rows", "shards"
"""Chunking: one chunk; a file per chunk of rows; chunks of rows in shard files
(:mod:`~disktrain.storage.shards`)."""
CHECKSUM_CODECS = ["bytes", "crc32c"]


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store."""

    name: str
    shape: tuple[str | int, ...]
    dtype: str
    chunks: str = SINGLE
    mapped: bool = False
    """Memory-mapped by its readers, its crc32c checked once, when they open it (else read
    whole or a chunk at a time, the crc32c of every chunk checked on every read)."""
    batches: str | None = None
    """Which batches an element belongs to: ``"each"`` (element ``i``: batch ``i``),
    ``"bounds"`` (``i`` bounds batches ``i - 1`` and ``i``), ``"group"`` (all the group's),
    or the offsets array of the store whose ranges are the batches'."""
    present: bool | str = True
    """Whether the store has it: always; where written (False); or where written and
    wherever this attribute is set."""

    def shape_in(self, dims: Mapping) -> tuple:
        """The shape ``dims`` give (None where one is unknown); an int is a fixed length."""
        return tuple(d if isinstance(d, int) else
                     None if (v := dims.get(d.removesuffix("+1"))) is None
                     else v + d.endswith("+1") for d in self.shape)

    def disk_bytes(self, dims: Mapping, chunk_rows: int, shard_bytes: int) -> int:
        """Disk use at most, of the shape and dtype ``dims`` give, in chunks of
        ``chunk_rows`` rows (:data:`ROWS`, :data:`SHARDS`) and shards of ``shard_bytes``."""
        shape = self.shape_in(dims)
        row_bytes = math.prod(shape[1:]) * np.dtype(dims.get(self.dtype, self.dtype)).itemsize
        if self.chunks == SINGLE:
            return array_bytes(shape[0] * row_bytes)
        num_chunks = -(-shape[0] // chunk_rows)
        if self.chunks == ROWS:
            return array_bytes(chunk_rows * row_bytes, num_chunks * bool(row_bytes), 1)
        chunk_bytes = chunk_rows * row_bytes
        layout = ShardLayout(Path(), len(shape), chunk_bytes,
                             max(1, shard_bytes // round_up(chunk_bytes + CRC_BYTES)), num_chunks)
        return sum(round_up(layout.file_bytes(s)) for s in range(layout.num_shards)) + 3 * BLOCK


@dataclass(frozen=True)
class StoreSchema:
    """The arrays of a store, in the order verify checks them."""

    arrays: tuple[ArraySpec, ...]
    groups: tuple[ArraySpec, ...] = ()
    """The arrays of every group of batches, ``groups/<group>/<name>``."""

    def array(self, name: str) -> ArraySpec:
        """Its array ``name``."""
        return next(a for a in (*self.arrays, *self.groups) if a.name == name)

    @property
    def read_whole(self) -> tuple[str, ...]:
        """The single-chunk arrays its readers read whole, when opening the store."""
        return tuple(a.name for a in self.arrays if a.chunks == SINGLE and not a.mapped)

    def disk_bytes(self, dims: Mapping, chunk_rows: int = 1, shard_bytes: int = 0,
                   without=()) -> int:
        """Disk use at most of its arrays but ``without`` (see :meth:`ArraySpec.disk_bytes`),
        and a block each for the store's metadata and directory."""
        return 2 * BLOCK + sum(a.disk_bytes(dims, chunk_rows, shard_bytes)
                               for a in self.arrays if a.name not in without)


@dataclass(frozen=True)
class ArrayMeta:
    """An array as its ``zarr.json`` describes it."""

    shape: tuple[int, ...]
    dtype: np.dtype
    """Little-endian."""
    chunks: tuple[int, ...]
    codecs: list[str]
    checksummed: bool
    """Whether every chunk carries a crc32c (its codecs, a shard's inner ones, are
    :data:`CHECKSUM_CODECS`)."""
    per_shard: int | None = None
    """Chunks per shard file (None: a file per chunk)."""

    @classmethod
    def parse(cls, meta: dict) -> ArrayMeta:
        """From a parsed ``zarr.json`` (KeyError, TypeError or ValueError if it is bad)."""
        if meta["node_type"] != "array" or meta["chunk_grid"]["name"] != "regular":
            raise ValueError("not an array with a regular chunk grid")
        shape = tuple(int(s) for s in meta["shape"])
        chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        if len(chunks) != len(shape) or (math.prod(shape) and any(c < 1 for c in chunks)):
            raise ValueError(f"chunk shape {chunks} does not fit shape {shape}")
        codecs, names, shard = meta["codecs"], [c.get("name") for c in meta["codecs"]], None
        if names == ["sharding_indexed"]:
            shard, codecs = chunks, codecs[0]["configuration"]["codecs"]
            chunks = tuple(int(c) for c in meta["codecs"][0]["configuration"]["chunk_shape"])
            if chunks[0] < 1 or shard[0] % chunks[0] or not shard[1:] == chunks[1:] == shape[1:]:
                raise ValueError(f"shards {shard} not of whole chunks {chunks} along the first "
                                 "axis")
        dtype = np.dtype(meta["data_type"])
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
        if dtype.itemsize > 1 and endian != "little":
            raise ValueError(f"{endian}-endian chunks")
        return cls(shape, dtype.newbyteorder("<"), chunks, names,
                   [c.get("name") for c in codecs] == CHECKSUM_CODECS,
                   shard and shard[0] // chunks[0])

    def shape_problem(self, shape: tuple | None) -> str | None:
        """What is wrong with its shape if ``shape`` (None entries: any length) is expected
        (None: nothing)."""
        if shape is None or (len(shape) == len(self.shape) and all(
                want is None or want == got for want, got in zip(shape, self.shape))):
            return None
        return f"has shape {self.shape}, expected {tuple('*' if s is None else s for s in shape)}"

    def shard_layout(self, array_dir: str | Path) -> ShardLayout:
        """Where its chunks lie in the shard files under ``array_dir`` (a file per chunk:
        shards of one chunk)."""
        return ShardLayout(Path(array_dir), len(self.shape), self.chunk_bytes,
                           self.per_shard or 1,
                           -(-self.shape[0] // self.chunks[0]) if self.size else 0)

    @property
    def chunk_bytes(self) -> int:
        """Data bytes of every chunk (edge chunks are full-size)."""
        return math.prod(self.chunks) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _unreadable(ref: StoreRef, path: Path, problem: str) -> CorruptDataError:
    return CorruptDataError(f"{ref.kind} {ref.path}: metadata {path} {problem}; {ref.rerun}")


def read_meta(path: str | Path, ref: StoreRef) -> dict:
    """The JSON object in metadata file ``path`` (a ``zarr.json``) of ``ref``'s store;
    CorruptDataError naming it and ``ref.rerun`` when it is missing, unreadable or not a JSON
    object."""
    path = Path(path)
    try:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if not fetch_missing(path):  # a staged store's file not fetched yet
                raise
            data = path.read_bytes()
        meta = json.loads(data)
    except FileNotFoundError:
        raise _unreadable(ref, path, "is missing") from None
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise _unreadable(ref, path, f"is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise _unreadable(ref, path, f"holds a JSON {type(meta).__name__}, not an object")
    return meta


def group_attrs(path: str | Path, ref: StoreRef, required: Sequence[str] = ()) -> dict:
    """The attributes of the Zarr group at ``path`` (read with :func:`read_meta`); an error
    naming its ``zarr.json`` when it is not a group or lacks an attribute of ``required``."""
    file = Path(path) / "zarr.json"
    meta = read_meta(file, ref)
    attrs = meta.get("attributes", {})
    if meta.get("node_type") != "group" or not isinstance(attrs, dict):
        raise _unreadable(ref, file, f"is not a Zarr group's (node_type "
                          f"{meta.get('node_type')!r})")
    if missing := [k for k in required if k not in attrs]:
        raise _unreadable(ref, file, f"lacks the attribute(s) {', '.join(missing)}")
    return attrs


def read_array_meta(array_dir: str | Path, ref: StoreRef, name: str, *,
                    one_chunk: bool = False, shape: tuple | None = None) -> ArrayMeta:
    """Array ``name`` of ``ref``'s store as ``array_dir/zarr.json`` describes it: an error
    when it is missing, unreadable or without a crc32c per chunk, not of one chunk
    (``one_chunk``: its shape and chunk shape differ), or not of ``shape`` (None entries:
    any length)."""
    path = Path(array_dir) / "zarr.json"
    where = f"{ref.kind} {ref.path}: array {name!r}"
    if not path.exists() and not fetch_missing(path):
        raise DataError(f"{where} is missing ({path}); {ref.rerun}")
    raw = read_meta(path, ref)
    try:
        meta = ArrayMeta.parse(raw)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise _unreadable(ref, path, f"is unreadable ({type(e).__name__}: {e})") from None
    if not meta.checksummed:
        raise DataError(f"{where} has codecs {meta.codecs}, not {CHECKSUM_CODECS} (written "
                        f"without checksums); {ref.rerun}")
    problem = meta.shape_problem(shape)
    if not problem and one_chunk and meta.size and meta.chunks != meta.shape:
        problem = f"has chunks {meta.chunks}, not one chunk"
    if problem:
        raise CorruptDataError(f"{where} {problem} (metadata {path}); {ref.rerun}")
    return meta
