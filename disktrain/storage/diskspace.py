"""Disk space: estimate and check before writing.

``ingest``, ``synth`` and ``prepare`` estimate what they will write (upper bounds, within
~10-20% for realistic sizes: the data plus one filesystem block per file for block rounding
and metadata) and refuse up front with :func:`require_free` when the filesystem lacks it.
Writes that still meet a full disk are reported by
:func:`~disktrain.storage.io.disk_full_errors`.
"""

from __future__ import annotations

import os

from disktrain.errors import DiskSpaceError
from disktrain.storage.io import BLOCK, free_bytes

_CODEC_TRAILER = 64
"""Bytes a chunk codec may add to a chunk file (a crc32c checksum adds 4)."""


def _human(nbytes: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes} B"


def require_free(path: str | os.PathLike, need: int, what: str) -> None:
    """Refuse up front when ``what`` would write ``need`` bytes under ``path`` and fewer are
    free."""
    free = free_bytes(path)
    if need > free:
        raise DiskSpaceError(f"{what}: needs about {need} bytes ({_human(need)}) under {path}, "
                             f"but only {free} bytes ({_human(free)}) are free")


# Estimates: upper bounds of what a step writes, file by file.

def array_bytes(chunk_bytes: int, num_chunks: int = 1, dirs_per_chunk: int = 0) -> int:
    """Disk use of a Zarr array of ``num_chunks`` chunk files of ``chunk_bytes`` each: every
    file rounded up to whole blocks (after a codec trailer), a block per chunk directory,
    and three blocks for its metadata file, its directory and its ``c/`` directory."""
    per_chunk = -(-(chunk_bytes + _CODEC_TRAILER) // BLOCK) + dirs_per_chunk
    return (num_chunks * per_chunk + 3) * BLOCK
