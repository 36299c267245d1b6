"""Per-chunk crc32c: compute, append and check, with errors that name what to redo.

Every chunk file disktrain writes is the chunk's raw bytes followed by their crc32c
(Castagnoli, little-endian uint32): what Zarr v3's ``bytes`` + ``crc32c`` codecs write, so
``zarr.open`` reads the same files. Large files are checksummed in bounded slices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from disktrain.errors import CorruptDataError

CRC_BYTES = 4
SLICE_BYTES = 64 << 20
"""Bytes read at a time when checksumming a large file (bounds memory)."""


@dataclass(frozen=True)
class StoreRef:
    """A store, for error messages: what it is, where it is, and the step that rewrites it."""

    kind: str
    """"dataset", "sample store" or "packed store"."""
    path: Path
    rerun: str
    """What the user should do when an array of the store is damaged."""

    def corrupt(self, array: str, path: str | os.PathLike, problem: str,
                batches: range | None = None) -> CorruptDataError:
        """The error for chunk file ``path`` of ``array``: store, array, file, batches, fix."""
        where = f"{self.kind} {self.path}: array {array!r}"
        if batches is not None and len(batches) == 1:
            where += f" (batch {batches.start})"
        elif batches is not None and len(batches):
            where += f" (batches {batches.start}..{batches.stop - 1})"
        return CorruptDataError(f"{where}: chunk file {path} {problem}; {self.rerun}")


def crc32c(data) -> int:
    """crc32c of a bytes-like object (numpy arrays included)."""
    return google_crc32c.value(data)


def crc_bytes(data) -> bytes:
    """The 4 bytes stored after ``data``."""
    return crc32c(data).to_bytes(CRC_BYTES, "little")


def _pread_full(fd: int, buf: np.ndarray, offset: int) -> int:
    """Read into ``buf`` at ``offset`` until it is full or the file ends; the bytes read."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _file_crc(fd: int, nbytes: int) -> int:
    """crc32c of the first ``nbytes`` of ``fd`` (which has them), ``SLICE_BYTES`` at a time."""
    buf = np.empty(min(nbytes, SLICE_BYTES), np.uint8)
    crc, pos = 0, 0
    while pos < nbytes:
        view = buf[:min(SLICE_BYTES, nbytes - pos)]
        if _pread_full(fd, view, pos) != len(view):
            raise OSError(f"file shrank while being read (at byte {pos})")
        crc = google_crc32c.extend(crc, view)
        pos += len(view)
    return crc


def append_crc(path: str | os.PathLike, nbytes: int) -> None:
    """Write the crc32c of the first ``nbytes`` of ``path`` right after them (the file was
    sized ``nbytes + CRC_BYTES`` when created)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, _file_crc(fd, nbytes).to_bytes(CRC_BYTES, "little"), nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_size(path, size: int, nbytes: int, ref: StoreRef, array: str,
                batches: range | None) -> None:
    if size != nbytes + CRC_BYTES:
        raise ref.corrupt(array, path, f"has {size} bytes, expected {nbytes + CRC_BYTES} "
                          "(truncated or overwritten)", batches)


def check_file(path: str | os.PathLike, nbytes: int, ref: StoreRef, array: str) -> None:
    """Check the size and crc32c of a large chunk file of ``nbytes`` data bytes, streaming."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ref.corrupt(array, path, "is missing") from None
    try:
        _check_size(path, os.fstat(fd).st_size, nbytes, ref, array, None)
        crc = bytearray(CRC_BYTES)
        os.preadv(fd, [crc], nbytes)
        if _file_crc(fd, nbytes) != int.from_bytes(crc, "little"):
            raise ref.corrupt(array, path, "failed its crc32c check (corrupted)")
    finally:
        os.close(fd)


def read_chunk(path: str | os.PathLike, nbytes: int, ref: StoreRef, array: str,
               batches: range | None = None, verify: bool = True) -> np.ndarray:
    """The ``nbytes`` data bytes (uint8) of a whole chunk file, after checking its size and
    (``verify``) its crc32c."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ref.corrupt(array, path, "is missing", batches) from None
    try:
        _check_size(path, os.fstat(fd).st_size, nbytes, ref, array, batches)
        buf = np.empty(nbytes + CRC_BYTES, np.uint8)
        got = _pread_full(fd, buf, 0)
    finally:
        os.close(fd)
    _check_size(path, got, nbytes, ref, array, batches)  # shrank while read
    data = buf[:nbytes]
    if verify and crc32c(data) != int.from_bytes(buf[nbytes:].tobytes(), "little"):
        raise ref.corrupt(array, path, "failed its crc32c check (corrupted)", batches)
    return data
