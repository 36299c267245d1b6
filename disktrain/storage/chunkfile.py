"""Chunk files: a chunk's raw little-endian bytes, then their crc32c; written, read and checked.

A chunk file is what Zarr's ``bytes`` + ``crc32c`` codecs write (crc32c: Castagnoli,
little-endian uint32), so ``zarr.open`` reads the same files. Every store reads and writes
its chunk files here, on the file I/O of :mod:`disktrain.storage.io`; every read checks the
file's size and its crc32c, and errors name the store, the array, the file and the batches
(:class:`StoreRef`).

The writers build the file from page-aligned buffers of whole 4 KiB blocks, written with
``O_DIRECT`` where the filesystem allows it (else ordinary writes): each byte goes to the
disk once, no dirty page is left to write back, and a large output does not push the page
cache out. The crc is computed from the buffers as they are written (the file is never read
back); the last block is padded and the file truncated to its size.

* :class:`ChunkFileWriter`: one large chunk file (``indices``, ``indptr``, ``labels``) from
  pieces of any size, written from a background thread while the caller computes the next.
* :class:`ChunkFilePool`: many small chunk files (feature chunks), each filled by the
  caller in a buffer of the pool, then checksummed and written by the pool's threads.
* :func:`create_flat` makes a single-chunk array of a Zarr group and its writer.
* :func:`read_chunk` reads one chunk file whole (past the page cache where asked),
  :func:`check_chunk` streams through one in bounded slices (:func:`check_region`: a chunk
  anywhere in a file).
"""

from __future__ import annotations

import math
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import google_crc32c
import numpy as np
import zarr

from disktrain.errors import CorruptDataError
from disktrain.storage.io import (
    BLOCK,
    aligned_buffer,
    direct_span,
    disk_full_errors,
    open_direct,
    open_write,
    pread_full,
    preallocate,
    pwrite_all,
    read_direct,
    round_up,
    set_direct,
)

CRC_BYTES = 4
SLICE_BYTES = 64 << 20
"""Bytes read at a time when checksumming a large file (bounds memory)."""
CHECKSUM = (zarr.codecs.Crc32cCodec(),)
"""The codec after ``bytes`` of every array: a crc32c per chunk."""


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


def chunk_file(array_dir: str | Path, *index: int) -> Path:
    """Path of the chunk at grid ``index`` under Zarr v3's default chunk key encoding."""
    return Path(array_dir).joinpath("c", *(str(i) for i in index))


def _size_problem(size: int, nbytes: int) -> str:
    return f"has {size} bytes, expected {nbytes + CRC_BYTES} (truncated or overwritten)"


def read_chunk(path: str | os.PathLike, data: np.ndarray, ref: StoreRef, array: str,
               batches: range | None = None, *, verify: bool = True,
               direct: bool = False) -> bool:
    """Read chunk file ``path`` into ``data`` (uint8, its data bytes) after checking its
    size, and check its crc32c (unless not ``verify``); errors name ``ref``'s store,
    ``array``, ``path`` and ``batches``.

    With ``direct``, the whole blocks of ``data`` (:func:`~disktrain.storage.io.direct_span`)
    come straight from the device into it, the rest and the crc in the same read through a
    small bounce buffer. Without, or where ``data`` is not aligned: one ordinary read.
    Returns whether the filesystem refused ``O_DIRECT`` (then this read went through the
    page cache and the caller should stop asking for ``direct``).
    """
    want = len(data) + CRC_BYTES
    direct = direct and direct_span(data.ctypes.data, len(data)) > 0
    try:
        fd, refused = open_direct(path, os.O_RDONLY, direct)
    except FileNotFoundError:
        raise ref.corrupt(array, path, "is missing", batches) from None
    crc = bytearray(CRC_BYTES)
    try:
        size = got = os.fstat(fd).st_size
        if size == want:
            got = None
            if direct and not refused:
                got = read_direct(fd, [data, crc], 0, size)
                if got is None:  # the device refused the read: through the page cache
                    refused = True
                    set_direct(fd, False)
            if got is None:
                got = pread_full(fd, [data, crc], 0)
    finally:
        os.close(fd)
    if got != want:
        raise ref.corrupt(array, path, _size_problem(got, len(data)), batches)
    if verify and crc32c(data) != int.from_bytes(crc, "little"):
        raise ref.corrupt(array, path, "failed its crc32c check (corrupted)", batches)
    return refused


def check_chunk(path: str | os.PathLike, nbytes: int, into: np.ndarray | None = None,
                slice_bytes: int = SLICE_BYTES) -> tuple[str | None, int]:
    """What is wrong with chunk file ``path`` of ``nbytes`` data bytes (None: nothing) and the
    bytes read: missing, size, crc32c (see :func:`check_region`). Other ``OSError`` s are
    raised."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "is missing", 0
    try:
        size = os.fstat(fd).st_size
        if size != nbytes + CRC_BYTES:
            return _size_problem(size, nbytes), 0
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
        return check_region(fd, 0, nbytes, into, slice_bytes)
    finally:
        os.close(fd)


def check_region(fd: int, offset: int, nbytes: int, into: np.ndarray | None = None,
                 slice_bytes: int = SLICE_BYTES) -> tuple[str | None, int]:
    """What is wrong with the ``nbytes`` data bytes at ``offset`` of ``fd`` and the crc32c
    after them (None: nothing), and the bytes read. They are read once, sequentially,
    ``slice_bytes`` at a time, or into ``into`` (``nbytes``, kept) when given."""
    buf = np.empty(min(nbytes, slice_bytes), np.uint8) if into is None else into
    crc, pos = 0, 0
    while pos < nbytes:
        view = buf[:min(slice_bytes, nbytes - pos)] if into is None else \
            into[pos:pos + slice_bytes]
        got = pread_full(fd, [view], offset + pos)
        crc = google_crc32c.extend(crc, view[:got])
        if got < len(view):
            return f"shrank while being read (at byte {offset + pos + got})", pos + got
        pos += got
    stored = os.pread(fd, CRC_BYTES, offset + nbytes)
    if crc != int.from_bytes(stored, "little"):
        return "failed its crc32c check (corrupted)", nbytes + len(stored)
    return None, nbytes + CRC_BYTES


def check_file(path: str | os.PathLike, nbytes: int, ref: StoreRef, array: str) -> None:
    """Check the size and crc32c of a large chunk file of ``nbytes`` data bytes, streaming."""
    problem, _ = check_chunk(path, nbytes)
    if problem:
        raise ref.corrupt(array, path, problem)


def append_crc(path: str | os.PathLike, nbytes: int) -> None:
    """Write the crc32c of the first ``nbytes`` of ``path`` right after them (the file was
    sized ``nbytes + CRC_BYTES`` when created)."""
    fd = os.open(path, os.O_RDWR)
    try:
        buf, crc, pos = np.empty(min(nbytes, SLICE_BYTES), np.uint8), 0, 0
        while pos < nbytes:
            view = buf[:min(SLICE_BYTES, nbytes - pos)]
            if pread_full(fd, [view], pos) != len(view):
                raise OSError(f"{path}: file shrank while being read (at byte {pos})")
            crc = google_crc32c.extend(crc, view)
            pos += len(view)
        os.pwrite(fd, crc.to_bytes(CRC_BYTES, "little"), nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(fd: int, block: np.ndarray, used: int, offset: int, crc: int) -> int:
    """Append ``crc`` after the ``used`` bytes of the page-aligned ``block`` (which has room
    for it), write the block's whole 4 KiB blocks at ``offset``, and cut the file to size.

    Returns the file size."""
    block[used:used + CRC_BYTES] = np.frombuffer(crc.to_bytes(CRC_BYTES, "little"), np.uint8)
    end = used + CRC_BYTES
    padded = round_up(end)
    block[end:padded] = 0
    pwrite_all(fd, [block[:padded]], offset)
    os.ftruncate(fd, offset + end)
    return offset + end


class ChunkFileWriter:
    """Writes one chunk file front to back: :meth:`write` appends data, :meth:`close` adds
    its crc32c.

    Pieces are copied into page-aligned blocks of ``block_bytes``; a background thread
    checksums and writes each full block while the caller goes on (at most ``depth`` blocks
    queued, so memory stays ``(depth + 2) * block_bytes``). ``reserve`` bytes (the data's
    size or an upper bound on it) are allocated on the disk first, so a full disk is met
    before anything is written. Errors of the thread are raised by the next call.
    """

    def __init__(self, path: str | os.PathLike, reserve: int = 0, *,
                 block_bytes: int = 16 << 20, depth: int = 2, direct: bool = True):
        if block_bytes < BLOCK or block_bytes % BLOCK:
            raise ValueError(f"block_bytes must be a positive multiple of {BLOCK}, "
                             f"got {block_bytes}")
        self.path = Path(path)
        self.nbytes = 0
        """Data bytes written so far."""
        self._block_bytes = block_bytes
        with disk_full_errors(self.path):
            self._fd = open_write(self.path, direct)
            try:
                preallocate(self._fd, reserve + CRC_BYTES if reserve else 0, self.path)
            except BaseException:
                os.close(self._fd)
                raise
        self._crc = 0
        self._offset = 0
        self._free = [aligned_buffer(block_bytes + BLOCK) for _ in range(2)]
        self._block, self._used = self._free.pop(), 0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chunk-file-writer", daemon=True)
        self._thread.start()

    def write(self, data: np.ndarray) -> None:
        """Append the bytes of ``data`` (any contiguous array)."""
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        pos = 0
        while pos < raw.size:
            n = min(raw.size - pos, self._block_bytes - self._used)
            self._block[self._used:self._used + n] = raw[pos:pos + n]
            self._used += n
            pos += n
            if self._used == self._block_bytes:
                self._put(self._block)
                self._block, self._used = self._take_free(), 0
        self.nbytes += raw.size

    def close(self) -> int:
        """Write what is left and the crc32c, flush the file to the disk; return the number
        of data bytes."""
        try:
            self._join()
            with disk_full_errors(self.path):
                crc = google_crc32c.extend(self._crc, self._block[:self._used])
                _finish(self._fd, self._block, self._used, self._offset, crc)
                os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = -1
        return self.nbytes

    def abort(self) -> None:
        """Stop writing and remove the file (what :meth:`close` does on an error)."""
        self._join(raise_error=False)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            self.abort()
        elif self._fd >= 0:
            self.close()

    def _put(self, block: np.ndarray | None) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)

    def _take_free(self) -> np.ndarray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return aligned_buffer(self._block_bytes + BLOCK)

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                data = block[:self._block_bytes]
                self._crc = google_crc32c.extend(self._crc, data)
                with disk_full_errors(self.path):
                    pwrite_all(self._fd, [data], self._offset)
                self._offset += self._block_bytes
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                self._error = e
            with self._lock:
                self._free.append(block)

    def _join(self, raise_error: bool = True) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_error and self._error is not None:
            raise self._error


def create_flat(group: zarr.Group, name: str, shape: tuple[int, ...],
                dtype) -> ChunkFileWriter | None:
    """Create the single-chunk array ``name`` of ``group`` (``bytes`` + ``crc32c`` codecs)
    and return the writer of its chunk file, sized for the whole array; None for a
    zero-size array (which has no chunk file)."""
    dtype = np.dtype(dtype)
    group.create_array(name, shape=shape, dtype=dtype, chunks=shape, compressors=CHECKSUM,
                       fill_value=0)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return None
    path = chunk_file(Path(group.store.root) / group.path / name, *[0] * len(shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    return ChunkFileWriter(path, nbytes)


class ChunkFilePool:
    """Writes whole chunk files of ``chunk_bytes`` data bytes on ``threads`` threads.

    :meth:`buffer` hands out a page-aligned buffer for one chunk (blocking while ``depth``
    are in use), the caller fills it, :meth:`submit` checksums and writes it in the
    background and takes the buffer back. :meth:`close` waits for all and raises the first
    error.
    """

    def __init__(self, chunk_bytes: int, threads: int = 2, depth: int = 8,
                 direct: bool = True):
        self.chunk_bytes, self.direct = chunk_bytes, direct
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="chunk-files")
        self._free: queue.Queue = queue.Queue()
        for _ in range(depth):
            self._free.put(aligned_buffer(round_up(chunk_bytes + CRC_BYTES)))
        self._pending: list[Future] = []

    def buffer(self) -> np.ndarray:
        """A page-aligned uint8 buffer whose first ``chunk_bytes`` are for the chunk's data
        (contents undefined; a few more bytes follow, for the crc and block padding)."""
        return self._free.get()

    def submit(self, path: str | os.PathLike, buf: np.ndarray) -> None:
        """Write the data of ``buf`` (from :meth:`buffer`, filled; not to be touched again) as
        the chunk file ``path``."""
        for future in [f for f in self._pending if f.done()]:
            future.result()  # raises the error of a chunk already written
            self._pending.remove(future)
        self._pending.append(self._pool.submit(self._write, Path(path), buf))

    def close(self) -> None:
        """Wait for every chunk file; raise the first error met."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:  # the caller's error stands; stop what has not started
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _write(self, path: Path, buf: np.ndarray) -> None:
        try:
            crc = google_crc32c.value(buf[:self.chunk_bytes])
            with disk_full_errors(path):
                fd = open_write(path, self.direct)
                try:
                    _finish(fd, buf, self.chunk_bytes, 0, crc)
                finally:
                    os.close(fd)
        finally:
            self._free.put(buf)
