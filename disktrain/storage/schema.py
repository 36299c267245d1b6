"""Store schemas: each store declares its arrays once (:class:`StoreSchema`), and
``disktrain verify``, the disk-space estimates and its readers follow; and an array as its
``zarr.json`` describes it (:class:`ArrayMeta`).

A shape is written in the names of the store's attributes (``num_nodes``, ``feature_dim``;
``name+1``: one more), a dtype as a NumPy type or the attribute naming one
(``feature_dtype``): the attributes, or the sizes a writer is about to write, give both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from disktrain.storage.chunkfile import CRC_BYTES
from disktrain.storage.diskspace import array_bytes
from disktrain.storage.io import BLOCK, round_up
from disktrain.storage.shards import ShardLayout

SINGLE, ROWS, SHARDS = "single", "rows", "shards"
"""Chunking: one chunk; a file per chunk of rows; chunks of rows in shard files
(:mod:`~disktrain.storage.shards`)."""
CHECKSUM_CODECS = ["bytes", "crc32c"]


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store."""

    name: str
    shape: tuple[str, ...]
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
        """The shape ``dims`` give (None where one is unknown)."""
        return tuple(None if (v := dims.get(d.removesuffix("+1"))) is None
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

    @property
    def chunk_bytes(self) -> int:
        """Data bytes of every chunk (edge chunks are full-size)."""
        return math.prod(self.chunks) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return math.prod(self.shape)
