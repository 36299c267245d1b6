"""Disk space: estimate and check before writing, preallocate files written through memory maps.

``ingest``, ``synth`` and ``prepare`` estimate what they will write (upper bounds, within
~10-20% for realistic sizes: the data plus one filesystem block per file for block rounding
and metadata) and refuse up front with :func:`require_free` when the filesystem lacks it.

A write through a memory map into a full filesystem kills the process with SIGBUS; a file
preallocated with ``posix_fallocate`` has its blocks reserved, so a full disk surfaces as an
``ENOSPC`` error (:class:`DiskSpaceError`) before anything is written. Ordinary writes that
still meet a full disk (another process filled it after the check) are turned into a
:class:`DiskSpaceError` naming the file by :func:`disk_full_errors`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from disktrain.errors import DiskSpaceError

BLOCK_BYTES = 4096
"""Allocation unit assumed by the estimates (ext4, XFS and tmpfs use 4 KiB blocks)."""
_CODEC_TRAILER = 64
"""Bytes a chunk codec may add to a chunk file (a crc32c checksum adds 4)."""
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _existing(path: Path) -> Path:
    """``path`` or its closest existing parent (where the filesystem can be asked)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _human(nbytes: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes} B"


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes available to this user on the filesystem that holds (or will hold) ``path``."""
    return shutil.disk_usage(_existing(Path(path))).free


def require_free(path: str | os.PathLike, need: int, what: str) -> None:
    """Refuse up front when ``what`` would write ``need`` bytes under ``path`` and fewer are
    free."""
    free = free_bytes(path)
    if need > free:
        raise DiskSpaceError(f"{what}: needs about {need} bytes ({_human(need)}) under {path}, "
                             f"but only {free} bytes ({_human(free)}) are free")


@contextlib.contextmanager
def disk_full_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (``ENOSPC``, or ``EDQUOT``: quota exceeded) met in the block into a
    :class:`DiskSpaceError` naming the file (``path``, what is being written, when the
    error names none)."""
    try:
        yield
    except OSError as e:
        if e.errno not in _FULL:
            raise
        raise DiskSpaceError(f"{e.filename or path}: no space left on the device "
                             f"({free_bytes(path)} bytes free there)") from e


def preallocate(fd: int, nbytes: int, path: str | os.PathLike) -> None:
    """Reserve ``nbytes`` for the open file ``fd`` (named ``path`` in errors)."""
    if nbytes <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in _FULL:
            raise DiskSpaceError(f"{path}: no space left on the device to reserve {nbytes} "
                                 f"bytes ({free_bytes(path)} bytes free)") from None
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystem without fallocate
            os.ftruncate(fd, nbytes)
            return
        raise


# Estimates: upper bounds of what a step writes, file by file.

def array_bytes(chunk_bytes: int, num_chunks: int = 1, dirs_per_chunk: int = 0) -> int:
    """Disk use of a Zarr array of ``num_chunks`` chunk files of ``chunk_bytes`` each: every
    file rounded up to whole blocks (after a codec trailer), a block per chunk directory,
    and three blocks for its metadata file, its directory and its ``c/`` directory."""
    per_chunk = -(-(chunk_bytes + _CODEC_TRAILER) // BLOCK_BYTES) + dirs_per_chunk
    return (num_chunks * per_chunk + 3) * BLOCK_BYTES
