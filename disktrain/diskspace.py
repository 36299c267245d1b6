"""Disk space: check before writing, preallocate files written through memory maps.

A write through a memory map into a full filesystem kills the process with SIGBUS; a file
preallocated with ``posix_fallocate`` has its blocks reserved, so a full disk surfaces as an
``ENOSPC`` error (:class:`DiskSpaceError`) before anything is written.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from disktrain.errors import DiskSpaceError


def _existing(path: Path) -> Path:
    """``path`` or its closest existing parent (where the filesystem can be asked)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes available to this user on the filesystem that holds (or will hold) ``path``."""
    return shutil.disk_usage(_existing(Path(path))).free


def require_free(path: str | os.PathLike, need: int, what: str) -> None:
    """Refuse up front when ``what`` would write ``need`` bytes under ``path`` and fewer are
    free."""
    free = free_bytes(path)
    if need > free:
        raise DiskSpaceError(f"{what}: needs about {need} bytes ({need / 2**30:.2f} GiB) under "
                             f"{path}, but only {free} bytes ({free / 2**30:.2f} GiB) are free")


def preallocate(fd: int, nbytes: int, path: str | os.PathLike) -> None:
    """Reserve ``nbytes`` for the open file ``fd`` (named ``path`` in errors)."""
    if nbytes <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskSpaceError(f"{path}: no space left on the device to reserve {nbytes} "
                                 f"bytes ({free_bytes(path)} bytes free)") from None
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystem without fallocate
            os.ftruncate(fd, nbytes)
            return
        raise
