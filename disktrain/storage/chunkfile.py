"""Chunk files written front to back, past the page cache: data, then its crc32c.

A chunk file is what Zarr's ``bytes`` + ``crc32c`` codecs write: the chunk's raw
little-endian bytes, then their crc32c. The writers here build the file from page-aligned
buffers of whole 4 KiB blocks, written with ``O_DIRECT`` where the filesystem allows it (else
ordinary writes): each byte goes to the disk once, no dirty page is left to write back, and a
large output does not push the page cache out. The crc is computed from the buffers as they
are written (the file is never read back); the last block is padded and the file truncated to
its size.

* :class:`ChunkFileWriter`: one large chunk file (``indices``, ``indptr``, ``labels``) from
  pieces of any size, written from a background thread while the caller computes the next.
* :class:`ChunkFilePool`: many small chunk files (feature chunks), each filled by the
  caller in a buffer of the pool, then checksummed and written by the pool's threads.
* :func:`create_flat` makes a single-chunk array of a Zarr group and its writer.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Self

import google_crc32c
import numpy as np
import zarr

from disktrain.storage.checksum import CRC_BYTES
from disktrain.storage.diskspace import disk_full_errors, preallocate

BLOCK = 4096
"""Alignment of ``O_DIRECT`` buffers, file offsets and write sizes."""
CHECKSUM = (zarr.codecs.Crc32cCodec(),)
"""The codec after ``bytes`` of every array: a crc32c per chunk."""


def chunk_file(array_dir: str | Path, *index: int) -> Path:
    """Path of the chunk at grid ``index`` under Zarr v3's default chunk key encoding."""
    return Path(array_dir).joinpath("c", *(str(i) for i in index))


def page_buffer(nbytes: int, hugepages: bool = False) -> np.ndarray:
    """A zeroed, page-aligned uint8 buffer of ``nbytes`` in anonymous memory, returned to the
    system when the last view of it goes. ``hugepages`` asks for transparent huge pages
    (fewer TLB misses for random access to a large buffer)."""
    buf = mmap.mmap(-1, max(1, nbytes))
    if hugepages and hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, np.uint8)[:nbytes]


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _open(path: Path, direct: bool) -> int:
    """Create (truncate) ``path`` for writing, with ``O_DIRECT`` if asked and allowed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644)
        except OSError as e:  # EINVAL: a filesystem without O_DIRECT (tmpfs)
            if e.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """Write ``data`` at ``offset``, resuming short writes."""
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _finish(fd: int, block: np.ndarray, used: int, offset: int, crc: int) -> int:
    """Append ``crc`` after the ``used`` bytes of the page-aligned ``block`` (which has room
    for it), write the block's whole 4 KiB blocks at ``offset``, and cut the file to size.

    Returns the file size."""
    block[used:used + CRC_BYTES] = np.frombuffer(crc.to_bytes(CRC_BYTES, "little"), np.uint8)
    end = used + CRC_BYTES
    padded = _round_up(end)
    block[end:padded] = 0
    _pwrite_all(fd, block[:padded], offset)
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
            self._fd = _open(self.path, direct)
            try:
                preallocate(self._fd, reserve + CRC_BYTES if reserve else 0, self.path)
            except BaseException:
                os.close(self._fd)
                raise
        self._crc = 0
        self._offset = 0
        self._free = [page_buffer(block_bytes + BLOCK) for _ in range(2)]
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
        return page_buffer(self._block_bytes + BLOCK)

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                data = block[:self._block_bytes]
                self._crc = google_crc32c.extend(self._crc, data)
                with disk_full_errors(self.path):
                    _pwrite_all(self._fd, data, self._offset)
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
            self._free.put(page_buffer(_round_up(chunk_bytes + CRC_BYTES)))
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
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = _open(path, self.direct)
                try:
                    _finish(fd, buf, self.chunk_bytes, 0, crc)
                finally:
                    os.close(fd)
        finally:
            self._free.put(buf)
