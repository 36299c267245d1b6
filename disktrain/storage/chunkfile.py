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

:class:`ChunkFileWriter` writes one large chunk file front to back, :class:`ChunkWriter`
many chunks (feature chunk files, chunks of shard files); :func:`read_chunk` reads one whole,
:func:`check_chunk` streams through one (:func:`check_region`: a chunk anywhere in a file).
"""

from __future__ import annotations

import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import crc32c as _crc32c
import numpy as np
import zarr

from disktrain.errors import CorruptDataError
from disktrain.storage.io import (
    BLOCK,
    CREATE,
    aligned_buffer,
    cached_prefix,
    direct_span,
    disk_full_errors,
    open_direct,
    pread_full,
    preallocate,
    pwrite_all,
    read_at,
    round_up,
    set_direct,
    write_blocks,
)
from disktrain.storage.remote import fetch_missing

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


def crc32c(data, value: int = 0) -> int:
    """crc32c of a bytes-like object (numpy arrays included), continuing the crc ``value``
    of the bytes before it. The GIL is released over large buffers, so threads checksum
    chunks in parallel (the ``crc32c`` package; ``google_crc32c`` holds it)."""
    return _crc32c.crc32c(data, value)


def crc_bytes(data) -> bytes:
    """The 4 bytes stored after ``data``."""
    return crc32c(data).to_bytes(CRC_BYTES, "little")


def chunk_file(array_dir: str | Path, *index: int) -> Path:
    """Path of the chunk at grid ``index`` under Zarr v3's default chunk key encoding."""
    return Path(array_dir).joinpath("c", *(str(i) for i in index))


def _size_problem(size: int, nbytes: int) -> str:
    return f"has {size} bytes, expected {nbytes + CRC_BYTES} (truncated or overwritten)"


def read_chunk(path: str | os.PathLike, nbytes: int, ref: StoreRef, array: str,
               batches: range | None = None, verify: bool = True,
               into: np.ndarray | None = None) -> np.ndarray:
    """The ``nbytes`` data bytes (uint8) of chunk file ``path``, read once the file's size
    checked, their crc32c checked (unless not ``verify``); errors name ``ref``'s store,
    ``array``, ``path`` and ``batches``. ``into``: a page-aligned buffer of the file's whole
    blocks (``round_up``) to read into, straight from the device where the filesystem allows
    ``O_DIRECT``."""
    want, direct = nbytes + CRC_BYTES, into is not None
    buf = np.empty(want, np.uint8) if into is None else into
    try:
        fd, refused = _open_staged(path, lambda: open_direct(path, os.O_RDONLY, direct))
    except FileNotFoundError:
        raise ref.corrupt(array, path, "is missing", batches) from None
    try:
        size = got = os.fstat(fd).st_size
        if size == want:
            got = read_at(fd, [buf[:round_up(want) if direct else want]], 0,
                          direct and not refused)[0]
    finally:
        os.close(fd)
    if got != want:
        raise ref.corrupt(array, path, _size_problem(got, nbytes), batches)
    if verify and crc32c(buf[:nbytes]) != int.from_bytes(buf[nbytes:want], "little"):
        raise ref.corrupt(array, path, "failed its crc32c check (corrupted)", batches)
    return buf[:nbytes]


def _open_staged(path, open_file):
    """``open_file()``; a chunk file of a staged remote store not fetched yet is fetched
    first (:func:`disktrain.storage.remote.fetch_missing`)."""
    try:
        return open_file()
    except FileNotFoundError:
        if not fetch_missing(path):
            raise
        return open_file()


def check_chunk(path: str | os.PathLike, nbytes: int, into: np.ndarray | None = None,
                slice_bytes: int = SLICE_BYTES, verify: bool = True) -> tuple[str | None, int]:
    """What is wrong with chunk file ``path`` of ``nbytes`` data bytes (None: nothing) and the
    bytes read: missing, size, crc32c (unless not ``verify``; see :func:`check_region`).
    Other ``OSError`` s are raised."""
    try:
        fd = _open_staged(path, lambda: os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        return "is missing", 0
    try:
        size = os.fstat(fd).st_size
        if size != nbytes + CRC_BYTES:
            return _size_problem(size, nbytes), 0
        if not verify:
            return None, 0
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
        return check_region(fd, 0, nbytes, into, slice_bytes)
    finally:
        os.close(fd)


def check_region(fd: int, offset: int, nbytes: int, into: np.ndarray | None = None,
                 slice_bytes: int = SLICE_BYTES) -> tuple[str | None, int]:
    """What is wrong with the ``nbytes`` data bytes at ``offset`` of ``fd`` and the crc32c
    after them (None: nothing), and the bytes read (see :func:`file_crc`)."""
    crc, got = file_crc(fd, offset, nbytes, into, slice_bytes)
    if got < nbytes:
        return f"shrank while being read (at byte {offset + got})", got
    if crc != int.from_bytes(os.pread(fd, CRC_BYTES, offset + nbytes), "little"):
        return "failed its crc32c check (corrupted)", nbytes + CRC_BYTES
    return None, nbytes + CRC_BYTES


def file_crc(fd: int, offset: int, nbytes: int, into: np.ndarray | None = None,
             slice_bytes: int = SLICE_BYTES) -> tuple[int, int]:
    """The crc32c of ``nbytes`` at ``offset`` of ``fd`` and the bytes read (fewer where the
    file ends before), read once, sequentially, ``slice_bytes`` at a time, or into ``into``
    (``nbytes``, kept) when given: what the page cache holds from ``offset`` on copied from
    it, the rest in whole blocks straight from the device where it is page-aligned and the
    filesystem allows ``O_DIRECT`` (a cold read through the page cache runs at a fraction of
    the disk's speed)."""
    buf = np.empty(min(nbytes, slice_bytes), np.uint8) if into is None else into
    crc, pos = 0, 0
    direct = into is not None and offset % BLOCK == 0 and direct_span(into.ctypes.data, nbytes)
    if direct and (cached := cached_prefix(fd, offset, nbytes)):  # no disk read, no O_DIRECT
        pos = pread_full(fd, [into[:cached]], offset)
        crc = crc32c(into[:pos])
    direct = direct and pos < nbytes and set_direct(fd, True)
    try:
        while pos < nbytes:
            view = buf[:min(slice_bytes, nbytes - pos)] if into is None else \
                into[pos:pos + min(slice_bytes, nbytes - pos)]
            if direct and (whole := direct_span(view.ctypes.data, len(view))):
                view = view[:whole]
                got, refused = read_at(fd, [view], offset + pos, True)
                direct = not refused
            else:  # the last partial block (or no O_DIRECT): through the page cache
                direct = direct and not set_direct(fd, False)
                got = pread_full(fd, [view], offset + pos)
            crc = crc32c(view[:got], crc)
            pos += got
            if got < len(view):
                break
    finally:
        if direct:
            set_direct(fd, False)
    return crc, pos


def append_crc(path: str | os.PathLike, nbytes: int) -> None:
    """Write the crc32c of the first ``nbytes`` of ``path`` right after them (the file was
    sized ``nbytes + CRC_BYTES`` when created)."""
    fd = os.open(path, os.O_RDWR)
    try:
        crc, got = file_crc(fd, 0, nbytes)
        if got < nbytes:
            raise OSError(f"{path}: file shrank while being read (at byte {got})")
        os.pwrite(fd, crc.to_bytes(CRC_BYTES, "little"), nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)


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
            self._fd = open_direct(self.path, CREATE, direct)[0]
            try:
                preallocate(self._fd, reserve + CRC_BYTES if reserve else 0, self.path)
            except BaseException:
                os.close(self._fd)
                raise
        self._crc, self._offset = 0, 0
        self._free = [aligned_buffer(block_bytes + BLOCK) for _ in range(2)]
        self._block, self._used = self._free.pop(), 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="chunk-file-writer")
        self._queued = threading.BoundedSemaphore(depth)
        self._error: BaseException | None = None

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
                if self._error is not None:
                    raise self._error
                self._queued.acquire()
                self._thread.submit(self._write, self._block, self._offset)
                self._offset += self._block_bytes
                self._block = self._free.pop() if self._free else \
                    aligned_buffer(self._block_bytes + BLOCK)
                self._used = 0
        self.nbytes += raw.size

    def close(self) -> int:
        """Write what is left and the crc32c, flush the file to the disk; return the number
        of data bytes."""
        try:
            self._thread.shutdown(wait=True)
            if self._error is not None:
                raise self._error
            with disk_full_errors(self.path):  # the crc after the data, zeros to a block
                crc = crc32c(self._block[:self._used], self._crc)
                end = self._used + CRC_BYTES
                self._block[self._used:end] = np.frombuffer(crc.to_bytes(CRC_BYTES, "little"),
                                                            np.uint8)
                self._block[end:round_up(end)] = 0
                pwrite_all(self._fd, [self._block[:round_up(end)]], self._offset)
                os.ftruncate(self._fd, self._offset + end)
                os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = -1
        return self.nbytes

    def abort(self) -> None:
        """Stop writing and remove the file (what :meth:`close` does on an error)."""
        self._thread.shutdown(wait=True, cancel_futures=True)
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

    def _write(self, block: np.ndarray, offset: int) -> None:
        """Checksum and write one full block (blocks are taken in order, by one thread)."""
        try:
            if self._error is None:
                data = block[:self._block_bytes]
                self._crc = crc32c(data, self._crc)
                with disk_full_errors(self.path):
                    pwrite_all(self._fd, [data], offset)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            self._error = e
        finally:
            self._free.append(block)
            self._queued.release()


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
    return ChunkFileWriter(path, nbytes)


class ChunkWriter:
    """Writes whole chunks on ``threads`` background threads, each where ``place(chunk)``
    says: ``(path, offset)`` in a laid-out file (a shard), or ``(path, None)``, a chunk file
    of its own.

    :meth:`buffer` hands out page-aligned buffers of a chunk's whole blocks (reused once
    written); the caller fills their first ``chunk_bytes`` and :meth:`submit` checksums one
    (in the caller's thread: callers on several threads checksum in parallel, and the
    writers only write) and queues it, blocking while ``depth`` are queued or being written.
    Each goes out with its crc32c and zeros to the next block in one write: uncached
    (``RWF_DONTCACHE``) where the kernel has it, else with ``O_DIRECT`` where the filesystem
    allows it, else through the page cache.
    :meth:`close` waits for every chunk and raises the first error met (also raised by a
    later :meth:`submit`; chunks queued after it are dropped). Memory: the buffers the caller
    holds plus at most ``depth``.

    The threads start on the first chunk and take chunks from a queue, handing a slot back
    per chunk written (both queues are ``queue.SimpleQueue``: a chunk costs no lock or
    future made in Python, and packing writes tens of thousands).
    """

    def __init__(self, chunk_bytes: int, place, threads: int = 1, depth: int = 16):
        if threads < 1 or depth < 1:
            raise ValueError(f"threads and depth must be >= 1, got {threads} and {depth}")
        self.chunk_bytes, self.place = chunk_bytes, place
        self._work: queue.SimpleQueue = queue.SimpleQueue()  # (chunk, buffer); None: stop
        self._slots: queue.SimpleQueue = queue.SimpleQueue()  # a token per chunk that may wait
        for _ in range(depth):
            self._slots.put(None)
        self._threads = [threading.Thread(target=self._loop, name=f"chunk-writer_{i}",
                                          daemon=True) for i in range(threads)]
        self._started = self._closed = self._cancel = False
        self._free: list[np.ndarray] = []
        self._files: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._uncached = True
        self._error: BaseException | None = None

    def buffer(self) -> np.ndarray:
        """A page-aligned uint8 buffer: ``chunk_bytes`` for the data (contents undefined),
        then room for the crc and the zeros to the next block."""
        try:
            return self._free.pop()  # atomic: callers may share the writer across threads
        except IndexError:
            return aligned_buffer(round_up(self.chunk_bytes + CRC_BYTES))

    def submit(self, chunk: int, buf: np.ndarray) -> None:
        """Queue ``buf`` (from :meth:`buffer`, filled; not to be touched again) as chunk
        ``chunk``."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("a chunk submitted to a closed ChunkWriter")
        if not self.chunk_bytes:  # an array of no bytes has no files
            return
        if not self._started:
            with self._lock:
                if not self._started:
                    for t in self._threads:
                        t.start()
                    self._started = True
        size = self.chunk_bytes  # checksummed here: the writer's thread only writes
        buf[size:size + CRC_BYTES] = np.frombuffer(crc_bytes(buf[:size]), np.uint8)
        buf[size + CRC_BYTES:] = 0
        self._slots.get()
        self._work.put((chunk, buf))

    def close(self, cancel: bool = False) -> None:
        """Wait for every queued chunk; raise the first error met. ``cancel``: drop the
        chunks not started, raise nothing (the caller has an error of its own)."""
        if not self._closed:
            self._closed, self._cancel = True, cancel
            if self._started:
                for _ in self._threads:
                    self._work.put(None)
                for t in self._threads:
                    t.join()
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()
        if self._error is not None and not cancel:
            raise self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(cancel=kind is not None)

    def _loop(self) -> None:
        while (item := self._work.get()) is not None:
            chunk, buf = item
            try:
                if self._error is None and not self._cancel:
                    self._write(chunk, buf)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                self._error = self._error or e
            finally:
                self._free.append(buf)
                self._slots.put(None)

    def _write(self, chunk: int, buf: np.ndarray) -> None:
        """Write chunk ``chunk`` (data, crc32c and zeros in ``buf``) at its place."""
        size = self.chunk_bytes
        path, offset = self.place(chunk)
        with disk_full_errors(path):
            if offset is None:
                fd = open_direct(path, CREATE, False)[0]
                try:
                    self._uncached = write_blocks(fd, buf, 0, self._uncached)
                    os.ftruncate(fd, size + CRC_BYTES)
                finally:
                    os.close(fd)
                return
            fd = self._files.get(path)
            if fd is None:
                with self._lock:
                    if path not in self._files:
                        self._files[path] = os.open(path, os.O_WRONLY)
                    fd = self._files[path]
            self._uncached = write_blocks(fd, buf, offset, self._uncached)
