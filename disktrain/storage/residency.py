"""Where a dataset's CSR lives while it is sampled: memory-mapped from its chunk files, or
read into anonymous memory backed by 2 MiB pages.

Sampling reads ``indptr`` and ``indices`` at random, so what it costs depends on the size of
the pages they are mapped with. Where the page cache holds the files in 2 MiB folios (Linux
6.16+ on ext4, 5.18+ on XFS, after a sequential read or write), the kernel maps them with
2 MiB entries and the memory map samples as fast as a copy in memory; where it holds them in
4 KiB pages (older kernels, files written through a memory map, pages read back at random),
nearly every read misses the TLB and the first read of each page faults: measured 1.15-2x the
CPU time per sampled edge on a 1B-edge graph. A copy in transparent huge pages
(``MADV_HUGEPAGE``) avoids that whatever the page cache holds, but costs a second pass over the
files and the allocation of its pages (1-12 CPU seconds for 4.8 GB on a VM), and cannot be
reclaimed. Hence the policies of :data:`RESIDENCIES`; the copy is read in one sequential pass
that also checks the chunk file's crc32c, and only within a budget, by default
:data:`DEFAULT_CSR_SHARE` of the memory available. It counts in the process's resident memory
as the map's touched pages do.
"""

from __future__ import annotations

import re
import threading
import weakref
from pathlib import Path

import numpy as np

from disktrain.storage.chunkfile import StoreRef, check_chunk
from disktrain.storage.io import aligned_buffer

HUGE_PAGE = 2 << 20
DEFAULT_CSR_SHARE = 0.5
"""Default budget of :func:`csr_budget`: this share of ``MemAvailable``."""
RESIDENCIES = ("auto", "map", "memory")
"""``map``: always memory-mapped. ``memory``: read into huge-page memory when within the
budget, else mapped. ``auto``: mapped, unless the kernel maps it in 4 KiB pages, then in
memory within the budget. The smaller array is the probe: checked through the page cache,
mapped, touched, its mapping looked up (:func:`pmd_mapped_share`); in 4 KiB pages, it is
copied from its map and the other read straight into memory (no file read twice, the larger
not through the page cache); else the other is checked and probed the same way."""
PMD_MAPPED_ENOUGH = 0.9
"""``auto`` keeps a map of which at least this share is mapped with 2 MiB entries."""
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ", re.MULTILINE)
_FILE_PMD = re.compile(r"^FilePmdMapped:\s+(\d+) kB", re.MULTILINE)

_LOADED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
"""Loaded chunk files by identity, shared by every dataset of the process that reads them."""
_LOADED_LOCK = threading.Lock()


def mem_available() -> int:
    """Bytes this process may still take: ``MemAvailable`` of ``/proc/meminfo``, or less
    where its memory cgroup (v1 or v2) leaves less: the group's limit less what it uses
    beyond page cache (0 where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = 0
    room = _cgroup_room()
    return available if room is None else min(available, room)


def _cgroup_room() -> int | None:
    """The memory cgroup's limit less its usage other than page cache (None: no limit)."""
    try:
        with open("/proc/self/cgroup") as f:
            groups = dict(line.rstrip("\n").split(":", 2)[1:] for line in f)
        if "memory" in groups:  # v1
            d = Path("/sys/fs/cgroup/memory") / groups["memory"].lstrip("/")
            limit, usage, cache = "memory.limit_in_bytes", "memory.usage_in_bytes", "cache"
        else:  # v2
            d = Path("/sys/fs/cgroup") / groups.get("", "/").lstrip("/")
            limit, usage, cache = "memory.max", "memory.current", "file"
        cap = (d / limit).read_text().strip()
        if cap == "max" or int(cap) >= 1 << 60:
            return None
        stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines())
        used = int((d / usage).read_text()) - int(stat.get(cache, 0))
        return max(0, int(cap) - used)
    except (OSError, ValueError):
        return None


def csr_budget(budget: int | None) -> int:
    """Bytes the CSR may take in memory: ``budget``, or by default (None)
    :data:`DEFAULT_CSR_SHARE` of the memory available now."""
    return int(DEFAULT_CSR_SHARE * mem_available()) if budget is None else budget


def pmd_mapped_share(array: np.ndarray) -> float:
    """Share of memory-mapped ``array`` (a whole mapping, e.g. an ``np.memmap`` at offset 0)
    that the kernel maps with 2 MiB entries, after reading one byte of every 2 MiB of it
    (``FilePmdMapped`` of its mapping in ``/proc/self/smaps``; 0 where unknown)."""
    if array.nbytes < HUGE_PAGE:
        return 1.0
    raw = array.reshape(-1).view(np.uint8)
    int(raw[::HUGE_PAGE].sum())  # fault every 2 MiB in
    try:
        with open("/proc/self/smaps") as f:
            smaps = "\n" + f.read()
    except OSError:
        return 0.0
    at = smaps.find(f"\n{array.ctypes.data:x}-")
    if at < 0:
        return 0.0
    after = _MAPPING.search(smaps, at + 2)
    found = _FILE_PMD.search(smaps, at, after.start() if after else len(smaps))
    return int(found.group(1)) * 1024 / array.nbytes if found else 0.0


def file_identity(path: Path) -> tuple | None:
    """Path, device, inode, size and modification time of ``path`` (None: no such file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def load_checked(path: Path, nbytes: int, dtype: np.dtype, shape: tuple[int, ...],
                 ref: StoreRef, array: str, checked: np.ndarray | None = None) -> np.ndarray:
    """The data of chunk file ``path`` (``nbytes`` + its crc32c) in 2 MiB-aligned memory
    advised ``MADV_HUGEPAGE``, read-only, checked while read, or copied from ``checked``: a
    mapping of the file this process checked already (its pages in the page cache, so not
    read from the disk twice); a file this process already loaded (same path, inode, size and
    modification time) and still holds is shared, not read again. Errors name ``path``."""
    key = file_identity(path)
    if key is None:
        raise ref.corrupt(array, path, "is missing")
    with _LOADED_LOCK:
        data = _LOADED.get(key)
        if data is None:  # copied, or read and checked in one sequential pass
            data = aligned_buffer(nbytes, HUGE_PAGE, hugepages=True)
            if checked is not None:
                data[:] = checked.reshape(-1).view(np.uint8)
            elif problem := check_chunk(path, nbytes, into=data)[0]:
                raise ref.corrupt(array, path, problem)
            data = data.view(dtype).reshape(shape)
            data.flags.writeable = False
            _LOADED[key] = data
    return data
