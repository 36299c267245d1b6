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
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from disktrain.errors import DiskSpaceError

BLOCK_BYTES = 4096
"""Allocation unit assumed by the estimates (ext4, XFS and tmpfs use 4 KiB blocks)."""
_CODEC_TRAILER = 64
"""Bytes a chunk codec may add to a chunk file (a crc32c checksum adds 4)."""
_FULL = (errno.ENOSPC, errno.EDQUOT)
_MARGIN = 1.1
"""Headroom on sizes measured from a sample of the work (the sample store's probe)."""


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

def _array_bytes(chunk_bytes: int, num_chunks: int = 1, dirs_per_chunk: int = 0) -> int:
    """Disk use of a Zarr array of ``num_chunks`` chunk files of ``chunk_bytes`` each: every
    file rounded up to whole blocks (after a codec trailer), a block per chunk directory,
    and three blocks for its metadata file, its directory and its ``c/`` directory."""
    per_chunk = -(-(chunk_bytes + _CODEC_TRAILER) // BLOCK_BYTES) + dirs_per_chunk
    return (num_chunks * per_chunk + 3) * BLOCK_BYTES


def dataset_bytes(*, num_nodes: int, num_edges: int, feature_dim: int, feature_itemsize: int,
                  labels: bool, split_sizes: Sequence[int],
                  csr_spill: bool = True) -> int:
    """What ``ingest`` or ``synth`` holds on disk at most (see docs/FORMAT.md for the arrays).

    ``num_edges`` counts the edges stored before dedup (reverse edges included). With
    ``csr_spill`` the CSR build's temporary spill file counts too
    (:func:`disktrain.csr.spill_bytes`, default build settings): ``ingest`` writes the
    features first, so the spill file is on disk with the whole dataset but the labels and
    splits. Dedup needs no room of its own (the build keeps no second indices array).
    """
    # dataset and csr import this module (preallocate), so what they define comes lazily.
    from disktrain.csr import spill_bytes
    from disktrain.dataset import FEATURE_CHUNK_BYTES, index_dtype

    indices = _array_bytes(num_edges * index_dtype(num_nodes).itemsize)
    total = _array_bytes((num_nodes + 1) * 8) + indices
    if csr_spill:
        total += _array_bytes(spill_bytes(num_nodes, num_edges))
    row_bytes = feature_dim * feature_itemsize
    if row_bytes:
        rows = max(1, min(num_nodes, FEATURE_CHUNK_BYTES // row_bytes))
        total += _array_bytes(rows * row_bytes, -(-num_nodes // rows), dirs_per_chunk=1)
    else:
        total += _array_bytes(0, 0)
    if labels:
        total += _array_bytes(num_nodes * 8)
    total += sum(_array_bytes(size * 8) for size in split_sizes)
    return total + 2 * BLOCK_BYTES  # the group's metadata and directory


def batch_bound(num_seeds: int, fanouts: Sequence[int], num_nodes: int,
                num_edges: int) -> tuple[int, int]:
    """The most input nodes and edges a batch of ``num_seeds`` seeds can have.

    Every node known at a hop samples up to ``fanout`` of its in-neighbors (all with -1);
    the nodes of a batch are distinct, so their rows hold at most ``num_edges`` edges.
    """
    nodes, edges = num_seeds, 0
    for fanout in fanouts:
        hop = num_edges if fanout == -1 else min(nodes * fanout, num_edges)
        edges += hop
        nodes = min(num_nodes, nodes + hop)
    return nodes, edges


def _batch_bytes(nodes: int, edges: int, num_layers: int) -> int:
    """Sample-store bytes of one batch: node ids (int64), edge src and dst (int32), and its
    node offset, hop counts and edge offsets (int64)."""
    return nodes * 8 + edges * 8 + (1 + (num_layers + 1) + num_layers) * 8


def sample_store_bytes(dataset, plan, num_groups: int | None = None, probes: int = 8) -> int:
    """What ``sample_dataset`` writes at most for ``plan`` (a ``SamplePlan``) over
    ``dataset`` (a ``Dataset``): ``num_groups`` groups of batches (default: all of them) and
    the access counts.

    A batch's size is measured on ``probes`` batches of epoch 0 sampled for real, plus 10%,
    and capped by what the fanouts allow (:func:`batch_bound`).
    """
    from disktrain.kernels.sampling import sample_batches  # numba: imported when needed
    from disktrain.sample.plan import sampling_key

    cfg, num_layers = plan.config, len(plan.config.fanouts)
    indptr = dataset.indptr
    num_edges = int(indptr[-1])
    order = plan.epoch_order(plan.config.first_epoch)
    picks = np.unique(np.linspace(0, plan.batches_per_epoch - 1, probes).round().astype(int))
    seeds = [plan.batch_seeds(int(b), order) for b in picks]
    offsets = np.zeros(len(seeds) + 1, np.int64)
    np.cumsum([len(s) for s in seeds], out=offsets[1:])
    got = sample_batches(indptr, dataset.indices, np.concatenate(seeds).astype(np.int64),
                         offsets, np.asarray(cfg.fanouts, np.int64),
                         sampling_key(cfg.seed, 0))
    scale = cfg.batch_size / np.diff(offsets) * _MARGIN  # measured sizes, per full batch
    measured = (math.ceil((np.diff(got.node_offsets) * scale).max()),
                math.ceil((np.diff(got.edge_offsets[::num_layers]) * scale).max()))

    def batch(num_seeds: int) -> int:
        most = batch_bound(num_seeds, cfg.fanouts, dataset.num_nodes, num_edges)
        return _batch_bytes(min(most[0], measured[0]), min(most[1], measured[1]), num_layers)

    full, last = batch(cfg.batch_size), len(plan.train_ids) % cfg.batch_size
    if num_groups is None or num_groups >= plan.num_groups:
        num_groups = plan.num_groups  # every epoch's last batch may be smaller
        data = plan.num_batches * full - (cfg.epochs * (full - batch(last)) if last else 0)
    else:
        data = min(plan.num_batches, num_groups * cfg.group_size) * full
    # Per group: six arrays (block rounding, metadata), the row directory of the 2-D
    # hop_counts, the group's metadata and directory.
    per_group = 6 * _array_bytes(0) + 3 * BLOCK_BYTES
    return (data + num_groups * per_group + _array_bytes(dataset.num_nodes * 4)
            + 3 * BLOCK_BYTES)  # the store's metadata, directory and groups/ directory


def packed_store_bytes(*, padded_rows: int, row_bytes: int, chunk_rows: int, num_slots: int,
                       num_cache_rows: int, num_batches: int) -> int:
    """What ``pack_dataset`` writes (exact but for metadata and block rounding):
    ``padded_rows`` packed rows in chunks of ``chunk_rows``, the slots, the cache rows and
    the per-batch offsets. For a resumed run pass only the padded rows still to write (and
    zeros for the rest, which already exist)."""
    chunk_bytes = chunk_rows * row_bytes
    return (_array_bytes(chunk_bytes, -(-padded_rows // chunk_rows), dirs_per_chunk=1)
            + _array_bytes(num_slots * 8)
            + _array_bytes(num_cache_rows * row_bytes)
            + 3 * _array_bytes((num_batches + 1) * 8)
            + 2 * _array_bytes(num_cache_rows * 8)
            + 3 * BLOCK_BYTES)  # the group's metadata and directory, the done/ directory
