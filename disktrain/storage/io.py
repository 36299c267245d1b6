"""File I/O beneath every store: aligned buffers, whole reads and writes past the page cache
where the system allows, and a full disk reported as a :class:`DiskSpaceError`.

``O_DIRECT`` moves whole :data:`BLOCK` s between the device and aligned memory: no copy
through the page cache and no page-cache growth (which a memory cgroup counts); where a
filesystem or device refuses it (``EINVAL``: tmpfs on older kernels, some network and FUSE
filesystems), reads and writes go through the page cache. :data:`RWF_DONTCACHE` writes are
buffered, written back at once and dropped; where the kernel lacks them (``EOPNOTSUPP``,
``ENOSYS``) the caller falls back. A preallocated file (:func:`preallocate`) meets a full disk
before anything is written, not as SIGBUS in a memory map; :func:`disk_full_errors` names the
file of any other ``ENOSPC``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from disktrain.errors import DiskSpaceError

BLOCK = 4096
"""Alignment of ``O_DIRECT`` buffers, file offsets and sizes, and the filesystem block the
disk-space estimates assume (ext4, XFS and tmpfs use 4 KiB blocks)."""
O_DIRECT = getattr(os, "O_DIRECT", 0)
RWF_DONTCACHE = getattr(os, "RWF_DONTCACHE", 0x80)
"""``pwritev2`` flag (Linux 6.14+, ext4/XFS/btrfs): a buffered write whose pages the kernel
starts writing back at once and drops when written."""
_FULL = (errno.ENOSPC, errno.EDQUOT)


def round_up(nbytes: int) -> int:
    """``nbytes`` rounded up to whole :data:`BLOCK` s."""
    return -(-nbytes // BLOCK) * BLOCK


def aligned_buffer(nbytes: int, align: int = BLOCK, hugepages: bool = False) -> np.ndarray:
    """``nbytes`` of zeroed anonymous memory (uint8) starting on an ``align`` boundary,
    returned to the system once the array and its views are gone. ``hugepages`` advises
    transparent huge pages (fewer TLB misses for random access to a large buffer)."""
    area = mmap.mmap(-1, max(1, nbytes) + max(0, align - mmap.PAGESIZE),
                     flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hugepages and hasattr(mmap, "MADV_HUGEPAGE"):
        area.madvise(mmap.MADV_HUGEPAGE)
    whole = np.frombuffer(area, np.uint8)
    skip = -whole.ctypes.data % align
    return whole[skip:skip + nbytes]


def direct_span(address: int, nbytes: int) -> int:
    """Bytes at the start of ``nbytes`` bytes at memory ``address`` that one ``O_DIRECT``
    read or write can move: their whole :data:`BLOCK` s when ``address`` is aligned, else
    none."""
    return nbytes - nbytes % BLOCK if address % BLOCK == 0 else 0


_LIBC = ctypes.CDLL(None, use_errno=True)


def cached_prefix(fd: int, offset: int, nbytes: int) -> int:
    """Bytes from ``offset`` (a multiple of :data:`BLOCK`) of ``fd`` that the page cache
    holds before its first page that it does not, up to ``nbytes`` (``mincore`` of a map of
    them: nothing is read; 0 where that cannot be asked)."""
    if nbytes <= 0 or offset % mmap.PAGESIZE:
        return 0
    pages = np.zeros(-(-nbytes // mmap.PAGESIZE), np.uint8)
    try:
        with mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset) as m:
            view = np.frombuffer(m, np.uint8)
            failed = _LIBC.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(nbytes),
                                   pages.ctypes.data_as(ctypes.c_void_p))
            del view
    except (OSError, ValueError, BufferError):
        return 0
    missing = np.flatnonzero((pages & 1) == 0)
    return 0 if failed else nbytes if not len(missing) else int(missing[0]) * mmap.PAGESIZE


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes available to this user on the filesystem that holds (or will hold) ``path``
    (asked of its closest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


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


CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # open_direct flags: a file to (re)write


def open_direct(path: str | os.PathLike, flags: int, direct: bool) -> tuple[int, bool]:
    """Open ``path`` with ``flags`` (``O_CREAT``: its directory made if missing) and, if
    asked, ``O_DIRECT``; the descriptor and whether the filesystem refused ``O_DIRECT``
    (``EINVAL``: then opened without)."""
    if flags & os.O_CREAT:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if direct and O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT, 0o644), False
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644), direct


def set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where the filesystem refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)
    except OSError as e:
        if e.errno != errno.EINVAL:  # e.g. tmpfs
            raise
        return False
    return True


def pwrite_all(fd: int, buffers: list, offset: int, flags: int = 0) -> None:
    """Write ``buffers`` one after the other from ``offset`` (``pwritev2`` ``flags``),
    resuming short writes."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        n = os.pwritev(fd, views, offset, flags)
        offset += n
        _advance(views, n)


def pread_full(fd: int, buffers: list, offset: int) -> int:
    """Fill ``buffers`` one after the other from ``offset``, resuming short reads, until
    they are full or the file ends; the bytes read."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    got = 0
    while views and (n := os.preadv(fd, views, offset + got)):
        got += n
        _advance(views, n)
    return got


def _advance(views: list, n: int) -> None:
    """Drop the first ``n`` bytes of ``views`` (memoryviews, one after the other)."""
    while views and n >= len(views[0]):
        n -= len(views.pop(0))
    if views:
        views[0] = views[0][n:]


def write_blocks(fd: int, data: np.ndarray, offset: int, uncached: bool = True) -> bool:
    """Write ``data`` (aligned, whole blocks) at ``offset`` of ``fd`` past the page cache:
    with :data:`RWF_DONTCACHE` if ``uncached`` and the kernel has it, else with ``O_DIRECT``
    (set for this write only), else (refused) through the page cache. Returns whether
    ``RWF_DONTCACHE`` worked (``uncached`` for the next write)."""
    if uncached:
        try:
            pwrite_all(fd, [data], offset, RWF_DONTCACHE)
            return True
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    done = direct_span(data.ctypes.data, len(data))
    if done and O_DIRECT and set_direct(fd, True):
        try:
            pwrite_all(fd, [data[:done]], offset)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            done = 0
        set_direct(fd, False)
    else:
        done = 0
    pwrite_all(fd, [data[done:]], offset + done)
    return False


def read_at(fd: int, buffers: list, offset: int, direct: bool) -> tuple[int, bool]:
    """Fill ``buffers`` from ``offset`` of ``fd``: with ``direct`` (``fd`` has ``O_DIRECT``,
    the buffers are aligned whole blocks) in one read straight from the device, else (or
    where the device refuses it: ``EINVAL``) through the page cache, resuming short reads.
    The bytes read (fewer at the end of the file) and whether ``O_DIRECT`` was refused."""
    if direct:
        try:
            return os.preadv(fd, buffers, offset), False
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        set_direct(fd, False)
    return pread_full(fd, buffers, offset), direct
