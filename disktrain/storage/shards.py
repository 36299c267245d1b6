"""Shard files: many checksummed chunks per file, as Zarr v3's ``sharding_indexed`` codec
lays them out, so that the number of files does not grow with the number of chunks.

An array chunked along its first axis into ``num_chunks`` chunks of ``chunk_bytes`` data
bytes is stored in shard files of ``per_shard`` chunks. Chunk ``k`` lies in shard
``k // per_shard`` at byte ``(k % per_shard) * stride``: its data, its crc32c (the inner
codecs ``bytes`` + ``crc32c``), then zeros up to the next 4 KiB boundary, so every chunk
starts on a block boundary and whole chunks move with ``O_DIRECT``. Each shard file ends
with its index (``index_location`` "end"): an ``(offset, nbytes)`` little-endian uint64 pair
per chunk (both ``2**64 - 1`` for a chunk past the array's end), then their crc32c. The
layout follows from those numbers alone, so each file is laid out (preallocated, its index
written) before any chunk: chunks are then written in any order, by any process that sees
the files, and ``zarr.open`` reads the array.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from disktrain.storage.chunkfile import CHECKSUM, CRC_BYTES, StoreRef, crc32c, crc_bytes
from disktrain.storage.io import (
    BLOCK,
    aligned_buffer,
    disk_full_errors,
    open_direct,
    preallocate,
    pwrite_all,
    read_at,
    round_up,
)
from disktrain.storage.remote import RemoteFiles

EMPTY = 2**64 - 1
"""Offset and size of a chunk the shard does not hold."""
KEY_ENCODING = {"name": "default", "configuration": {"separator": "."}}
"""Shard files ``c.K.0`` side by side in the array's directory."""
_IOV_CHUNKS = 512
"""Chunks per ``preadv`` (two buffers each, within the system's IOV_MAX of 1024)."""


@dataclass(frozen=True)
class ShardLayout:
    """Where each chunk of a sharded array lies (see the module docstring)."""

    array_dir: Path
    ndim: int
    chunk_bytes: int
    """Data bytes of every chunk."""
    per_shard: int
    """Chunks per shard file (the last may hold fewer)."""
    num_chunks: int
    remote: RemoteFiles | None = None
    """The shard files on object storage, read by ranged GETs (a staged store's packed rows,
    :class:`~disktrain.storage.remote.RemoteFiles`); None: local files."""

    @classmethod
    def of(cls, array: zarr.Array, array_dir: str | os.PathLike) -> ShardLayout:
        """The layout of ``array`` (at ``array_dir``), as :func:`create_sharded` made it."""
        rows, size = int(array.chunks[0]), math.prod(array.shape)  # size 0: no chunk files
        return cls(Path(array_dir), array.ndim, math.prod(array.chunks) * array.dtype.itemsize,
                   int(array.shards[0]) // rows if array.shards else 1,
                   -(-int(array.shape[0]) // rows) if size else 0)

    @property
    def stride(self) -> int:
        """Bytes from one chunk's start to the next's: data, crc32c, zeros to a block."""
        return round_up(self.chunk_bytes + CRC_BYTES)

    @property
    def index_bytes(self) -> int:
        return 16 * self.per_shard + CRC_BYTES

    @property
    def num_shards(self) -> int:
        return -(-self.num_chunks // self.per_shard)

    def path(self, shard: int) -> Path:
        """The file of shard ``shard`` (Zarr's default key encoding, separator ".")."""
        return self.array_dir / ".".join(["c", str(shard), *["0"] * (self.ndim - 1)])

    def place(self, chunk: int) -> tuple[Path, int]:
        """The shard file holding chunk ``chunk`` and the byte it starts at."""
        shard, at = divmod(chunk, self.per_shard)
        return self._paths[shard], at * self.stride

    @cached_property
    def _paths(self) -> list[Path]:
        """:meth:`path` of every shard (:meth:`place` runs once per chunk written)."""
        return [self.path(s) for s in range(self.num_shards)]

    def chunks_in(self, shard: int) -> int:
        return min(self.per_shard, self.num_chunks - shard * self.per_shard)

    def file_bytes(self, shard: int) -> int:
        return self.chunks_in(shard) * self.stride + self.index_bytes

    def index(self, shard: int) -> bytes:
        """Shard ``shard``'s index, as it ends the file."""
        entries = np.full((self.per_shard, 2), EMPTY, "<u8")
        n = self.chunks_in(shard)
        entries[:n, 0] = np.arange(n, dtype=np.uint64) * self.stride
        entries[:n, 1] = self.chunk_bytes + CRC_BYTES
        return entries.tobytes() + crc_bytes(entries)

    def lay_out(self, shards: Iterable[int] | None = None) -> None:
        """Create every shard file (or those of ``shards``) at its full size (blocks
        reserved), its index in place."""
        self.array_dir.mkdir(parents=True, exist_ok=True)
        for s in range(self.num_shards) if shards is None else shards:
            path = self.path(s)
            with disk_full_errors(path):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    preallocate(fd, self.file_bytes(s), path)
                    pwrite_all(fd, [self.index(s)], self.file_bytes(s) - self.index_bytes)
                finally:
                    os.close(fd)

    def index_problem(self, shard: int) -> str | None:
        """What is wrong with shard ``shard``'s size and index (None: as the layout says)."""
        path = self.path(shard)
        try:
            size = self.remote.size(path.name) if self.remote else path.stat().st_size
        except FileNotFoundError:
            return "is missing"
        if size != self.file_bytes(shard):
            return (f"has {size} bytes, expected {self.file_bytes(shard)} (truncated or "
                    "overwritten)")
        if self.remote:
            stored = self.remote.read_at(path.name, size - self.index_bytes, self.index_bytes)
        else:
            with open(path, "rb") as f:
                f.seek(size - self.index_bytes)
                stored = f.read()
        if crc32c(stored[:-CRC_BYTES]) != int.from_bytes(stored[-CRC_BYTES:], "little"):
            return "has a shard index that failed its crc32c check (corrupted)"
        if stored != self.index(shard):
            return "has a shard index that does not match the store's layout (overwritten)"
        return None

    def read(self, first: int, data: np.ndarray, ref: StoreRef, array: str,
             batches: range | None = None, *, verify: bool = True, direct: bool = False) -> bool:
        """Read chunks ``first`` onwards into ``data`` (uint8, whole chunks' data bytes, one
        after the other) with one ``preadv`` (remote: one ranged GET) per shard they are
        in, and check every chunk's
        crc32c (unless not ``verify``); errors name ``ref``'s store, ``array``, the shard
        file and ``batches``.

        With ``direct``, where ``data`` and every chunk in it start on a 4 KiB boundary, the
        chunks come straight from the device into ``data``, their crc32c and padding into a
        small buffer. Returns whether the filesystem refused ``O_DIRECT`` (this read then
        went through the page cache; the caller should stop asking for ``direct``).
        """
        count, tail = len(data) // max(1, self.chunk_bytes), self.stride - self.chunk_bytes
        tails = aligned_buffer(count * tail)
        refused = (self._fetch if self.remote is not None else self._pread)(
            first, count, data, tails, ref, array, batches, direct)
        if verify:
            for j in range(count):
                if crc32c(data[j * self.chunk_bytes:(j + 1) * self.chunk_bytes]) != \
                        int.from_bytes(tails[j * tail:j * tail + CRC_BYTES], "little"):
                    shard, at = divmod(first + j, self.per_shard)
                    raise ref.corrupt(array, self.path(shard), f"holds chunk {at} (at byte "
                                      f"{at * self.stride}), which failed its crc32c check "
                                      "(corrupted)", batches)
        return refused

    def _pread(self, first: int, count: int, data: np.ndarray, tails: np.ndarray,
               ref: StoreRef, array: str, batches: range | None, direct: bool) -> bool:
        """:meth:`read`'s chunks from local shard files: one ``preadv`` per shard file."""
        tail = self.stride - self.chunk_bytes
        direct = direct and self.chunk_bytes % BLOCK == 0 and data.ctypes.data % BLOCK == 0
        refused, done = False, 0
        while done < count:
            shard, at = divmod(first + done, self.per_shard)
            n = min(count - done, self.per_shard - at)
            path = self.path(shard)
            try:
                fd, no = open_direct(path, os.O_RDONLY, direct and not refused)
            except FileNotFoundError:
                raise ref.corrupt(array, path, "is missing", batches) from None
            refused |= no
            try:
                for c in range(0, n, _IOV_CHUNKS):
                    k, m = done + c, min(_IOV_CHUNKS, n - c)
                    iov = [v for j in range(k, k + m) for v in (
                        data[j * self.chunk_bytes:(j + 1) * self.chunk_bytes],
                        tails[j * tail:(j + 1) * tail])]
                    got, no = read_at(fd, iov, (at + c) * self.stride, direct and not refused)
                    refused |= no
                    if got != m * self.stride:
                        raise ref.corrupt(array, path, f"is truncated (ends in chunk "
                                          f"{at + c + got // self.stride})", batches)
            finally:
                os.close(fd)
            done += n
        return refused

    def _fetch(self, first: int, count: int, data: np.ndarray, tails: np.ndarray,
               ref: StoreRef, array: str, batches: range | None, direct: bool) -> bool:
        """:meth:`read`'s chunks from object storage: one ranged GET per shard file."""
        cb, done = self.chunk_bytes, 0
        while done < count:
            shard, at = divmod(first + done, self.per_shard)
            n = min(count - done, self.per_shard - at)
            got = np.frombuffer(self.remote.read_at(self.path(shard).name, at * self.stride,
                                                    n * self.stride), np.uint8)
            if len(got) != n * self.stride:
                raise ref.corrupt(array, self.path(shard), "is truncated (ends in chunk "
                                  f"{at + len(got) // self.stride})", batches)
            got, tail = got.reshape(n, self.stride), self.stride - cb
            data[done * cb:(done + n) * cb].reshape(n, cb)[:] = got[:, :cb]
            tails[done * tail:(done + n) * tail].reshape(n, tail)[:] = got[:, cb:]
            done += n
        return False


def create_sharded(group: zarr.Group, name: str, shape: tuple[int, ...], dtype,
                   chunk_rows: int, shard_bytes: int, lay_out: bool = True) -> ShardLayout:
    """Create array ``name`` of ``group``: chunks of ``chunk_rows`` rows (a crc32c each), in
    shard files of about ``shard_bytes``, laid out (unless not ``lay_out``: its shard files
    are written elsewhere); its :class:`ShardLayout`."""
    dtype = np.dtype(dtype)
    chunk_bytes = chunk_rows * math.prod(shape[1:]) * dtype.itemsize
    per_shard = max(1, shard_bytes // round_up(chunk_bytes + CRC_BYTES))
    array = group.create_array(  # rows of no bytes: not sharded (nor stored)
        name, shape=shape, dtype=dtype, chunks=(chunk_rows, *shape[1:]),
        shards=(per_shard * chunk_rows, *shape[1:]) if chunk_bytes else None,
        compressors=CHECKSUM, fill_value=0, chunk_key_encoding=KEY_ENCODING)
    layout = ShardLayout.of(array, Path(group.store.root) / group.path / name)
    if lay_out:
        layout.lay_out()
    return layout
