"""Out-of-core CSR build from a re-iterable stream of edge chunks, in two passes.

1. Bucket: one pass over the edges groups each chunk's stored edges by bucket of
   ``bucket_rows`` consecutive rows (parallel over slices of the chunk) and appends them to a
   temporary spill file next to the output (the row within its bucket as uint16, the col as
   an index: 6 bytes per stored edge under 2**31 nodes). The edges are produced once.
2. Fill: bucket after bucket in row order, its edges are read back from every chunk of the
   spill file (a group of buckets at a time, ``memory_bytes`` at most, read ahead on a
   thread) and its rows built in cache: counts, offsets, fill, per-row sort and dedup
   (:func:`disktrain.kernels.csr.fill_bucket`, buckets in parallel). ``indptr`` and
   ``indices`` are appended front to back, past the page cache, their crc32c accumulated on
   the way (:class:`~disktrain.storage.chunkfile.ChunkFileWriter`).

Every output byte is written once and nothing is read back; the spill file is written once
and read once, mostly from the page cache. Whether it reaches the disk depends on how long
it lives: deleted within the kernel's dirty-page expiry, it is never written back (2**24
nodes); at 2**26 nodes (1.07B edges, a 6.4 GB spill file) about two thirds of it is. Memory:
a few edge chunks, two groups of buckets, and write buffers: nothing of size N or E.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Self

import numba
import numpy as np
import zarr
from tqdm.auto import tqdm

from disktrain.kernels import csr as kcsr
from disktrain.storage.chunkfile import ChunkFileWriter, create_flat
from disktrain.storage.dataset import CHECKSUM, chunk_file, index_dtype
from disktrain.storage.io import disk_full_errors, pread_full, preallocate, pwrite_all

EdgeChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""A function returning a fresh iterator of (src, dst) int64 chunks each time it is called."""

MAX_BUCKETS = 1 << 12
"""Buckets are widened beyond ``bucket_rows`` so that there are at most this many."""


@dataclass(frozen=True, kw_only=True)
class CSRConfig:
    """How edges become the in-neighbor CSR."""

    undirected: bool = False
    """Add the reverse of every edge."""
    dedup: bool = False
    """Keep one copy of repeated edges."""
    drop_self_loops: bool = False
    """Drop edges (v, v)."""
    progress: bool = True
    """Show tqdm progress bars (edges/s)."""
    bucket_rows: int = 1 << 16
    """Rows built at once (a power of two): small enough that a bucket's counts and
    indices stay in the CPU caches (a few MB at tens of edges per row), large enough that
    each chunk gives every bucket a run of edges to read back at once. Widened to give at
    most :data:`MAX_BUCKETS` buckets."""
    memory_bytes: int = 128 << 20
    """Spill bytes read back at once (twice: one group of buckets is read ahead while the
    previous is built). A bucket larger than this is read alone."""

    def __post_init__(self):
        for name in ("bucket_rows", "memory_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.bucket_rows & (self.bucket_rows - 1):
            raise ValueError(f"bucket_rows must be a power of two, got {self.bucket_rows}")


@dataclass(frozen=True)
class Buckets:
    """How rows are cut into buckets, and how the spill file stores an edge."""

    num_nodes: int
    """Rows (dst nodes)."""
    shift: int
    """A bucket holds rows ``[b << shift, (b + 1) << shift)``."""
    index: np.dtype
    """The cols (src node ids): int32 under 2**31 nodes, else int64."""
    num_cols: int
    """Src nodes (``num_nodes`` but for a relation between two node types)."""

    @classmethod
    def of(cls, num_nodes: int, cfg: CSRConfig, num_cols: int | None = None) -> Buckets:
        shift = max(cfg.bucket_rows.bit_length() - 1,
                    math.ceil(math.log2(max(1, num_nodes / MAX_BUCKETS))))
        cols = num_nodes if num_cols is None else num_cols
        return cls(num_nodes, shift, index_dtype(max(num_nodes, cols)), cols)

    @property
    def count(self) -> int:
        return -(-self.num_nodes // (1 << self.shift))

    @property
    def bits(self) -> int:
        """Bits of the largest src node id."""
        return (self.num_cols - 1).bit_length()

    @property
    def local(self) -> np.dtype:
        """Rows within a bucket: uint16 when they fit, else uint32."""
        return np.dtype(np.uint16 if self.shift <= 16 else np.uint32)

    @property
    def edge_bytes(self) -> int:
        """Spill bytes per stored edge."""
        return self.local.itemsize + self.index.itemsize

    def rows(self, b: int) -> int:
        """Rows in bucket ``b`` (the last may be short)."""
        return min(self.num_nodes, (b + 1) << self.shift) - (b << self.shift)


def spill_bytes(num_nodes: int, num_edges: int, cfg: CSRConfig = CSRConfig(),
                num_cols: int | None = None) -> int:
    """Disk space the temporary spill file takes while the CSR of ``num_edges`` stored edges
    (reverse edges included, before dedup) is built: 6 bytes per edge under 2**31 nodes
    with the default ``bucket_rows``."""
    return num_edges * Buckets.of(num_nodes, cfg, num_cols).edge_bytes


def plan_groups(bucket_edges: np.ndarray, edge_bytes: int,
                memory_bytes: int) -> list[tuple[int, int]]:
    """Consecutive bucket groups ``[b0, b1)`` covering all buckets, each as long as its
    edges (``edge_bytes`` each) fit in ``memory_bytes``; a group holds at least one bucket."""
    cost = np.concatenate([[0], np.cumsum(bucket_edges, dtype=np.int64)]) * edge_bytes
    groups, b0 = [], 0
    while b0 < len(bucket_edges):
        b1 = int(np.searchsorted(cost, cost[b0] + memory_bytes, side="right")) - 1
        b1 = min(max(b1, b0 + 1), len(bucket_edges))
        groups.append((b0, b1))
        b0 = b1
    return groups


def build_csr(group: zarr.Group, chunks: EdgeChunks, num_nodes: int, num_input_edges: int,
              cfg: CSRConfig = CSRConfig(), num_cols: int | None = None) -> int:
    """Write ``indptr``/``indices`` (single checksummed chunks) into ``group`` from ``chunks``;
    return the edge count.

    ``chunks`` must yield validated ids in ``[0, num_nodes)``; ``num_input_edges`` sizes the
    progress bars and reserves the spill file's space (0: unknown). ``num_cols``: a bipartite
    CSR (one relation of a typed graph) of ``num_nodes`` dst rows over ``num_cols`` src ids.
    """
    root = Path(group.store.root) / group.path
    layout = Buckets.of(num_nodes, cfg, num_cols)
    threads = numba.get_num_threads()
    scratch = root / "_indices.partial"
    stored = num_input_edges * (2 if cfg.undirected else 1)
    with _Spill(root / "_edges.spill", layout, spill_bytes(num_nodes, stored, cfg, num_cols)) \
            as spill, ThreadPoolExecutor(threads, thread_name_prefix="csr") as pool:
        with tqdm(total=num_input_edges, desc="csr: bucket", unit="edge", unit_scale=True,
                  disable=not cfg.progress) as bar:
            for src, dst in chunks():
                cuts = np.linspace(0, len(src), threads + 1).astype(np.int64)
                parts = [(src[a:b], dst[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
                for edges in pool.map(lambda p: _partition(p, layout, cfg), parts):
                    spill.append(*edges)
                bar.update(len(src))
        spill.finish()
        with create_flat(group, "indptr", (num_nodes + 1,), np.int64) as indptr, \
                ChunkFileWriter(scratch, spill.num_edges * layout.index.itemsize) as indices:
            num_edges = _fill(spill, pool, threads, indptr, indices, cfg)
    place_chunk_file(group, "indices", (num_edges,), layout.index, scratch)
    return num_edges


def place_chunk_file(group: zarr.Group, name: str, shape: tuple[int, ...], dtype,
                     scratch: Path) -> None:
    """Declare the single-chunk array ``name`` of ``group`` and make ``scratch`` (its data
    and crc32c, written by a :class:`~disktrain.storage.chunkfile.ChunkFileWriter` before
    its length was known) its chunk file; a zero-size array has none (``scratch`` removed)."""
    group.create_array(name, shape=shape, dtype=dtype, chunks=shape, compressors=CHECKSUM,
                       fill_value=0)
    if math.prod(shape):
        final = chunk_file(Path(group.store.root) / group.path / name, *[0] * len(shape))
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch, final)
    else:
        scratch.unlink()


def _partition(edges: tuple[np.ndarray, np.ndarray], layout: Buckets,
               cfg: CSRConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk slice's stored edges grouped by bucket: (local rows, cols, bucket offsets)."""
    src, dst = edges
    room = len(src) * (2 if cfg.undirected else 1)
    rows = np.empty(room, layout.local)
    cols = np.empty(room, layout.index)
    offsets = np.empty(layout.count + 1, np.int64)
    n = kcsr.partition(src, dst, cfg.undirected, cfg.drop_self_loops, layout.shift, offsets,
                       rows, cols)
    return rows[:n], cols[:n], offsets


def _fill(spill: _Spill, pool: ThreadPoolExecutor, threads: int, indptr: ChunkFileWriter,
          indices: ChunkFileWriter, cfg: CSRConfig) -> int:
    """Build every bucket's rows on the pool's ``threads`` threads, appending them in order
    to ``indptr`` and ``indices``; return the number of indices."""
    layout = spill.layout
    written = 0
    with tqdm(total=spill.num_edges, desc="csr: fill", unit="edge", unit_scale=True,
              disable=not cfg.progress) as bar:
        for b0, b1, rows, cols, segments in spill.groups(cfg.memory_bytes):
            build = partial(_build_bucket, layout=layout, rows=rows, cols=cols,
                            segments=segments, b0=b0, dedup=cfg.dedup)
            pending: deque = deque()
            for b in range(b0, b1):
                pending.append(pool.submit(build, b))
                if len(pending) == 2 * threads:  # bounds the built buckets held
                    written = _append(*pending.popleft().result(), written, indptr, indices)
            while pending:
                written = _append(*pending.popleft().result(), written, indptr, indices)
            bar.update(len(rows))
    indptr.write(np.array([written], np.int64))
    return written


def _append(starts: np.ndarray, out: np.ndarray, written: int, indptr: ChunkFileWriter,
            indices: ChunkFileWriter) -> int:
    """Write a built bucket after the ``written`` indices before it; return the new total."""
    starts[:-1] += written
    indptr.write(starts[:-1])
    indices.write(out)
    return written + len(out)


def _build_bucket(b: int, *, layout: Buckets, rows: np.ndarray, cols: np.ndarray,
                  segments: np.ndarray, b0: int, dedup: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ``b``'s row starts (from 0) and indices, from its segments of a group."""
    lo, hi = segments[:, b - b0], segments[:, b - b0 + 1]
    starts = np.empty(layout.rows(b) + 1, np.int64)
    out = np.empty(int((hi - lo).sum()), layout.index)
    n = kcsr.fill_bucket(rows, cols, lo, hi, layout.bits, dedup, starts, out)
    return starts, out[:n]


class _Spill:
    """The stored edges of the bucketing pass in a temporary file, chunk slice after chunk
    slice: its local rows, then its cols, each grouped by bucket; the bucket offsets of every
    slice stay in memory. Written by a background thread; read back a group of buckets at a
    time, the next group read ahead (:meth:`groups`)."""

    def __init__(self, path: Path, layout: Buckets, reserve: int):
        self.path, self.layout = path, layout
        self.num_edges = 0
        self._slices: list[tuple[int, int, np.ndarray]] = []  # rows at, cols at, offsets
        self._bucket_edges = np.zeros(layout.count, np.int64)
        with disk_full_errors(path):
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                preallocate(self._fd, reserve, path)
            except BaseException:
                os.close(self._fd)
                path.unlink(missing_ok=True)
                raise
        self._end = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="csr-spill")
        self._pending: list = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        """Stop writing, close and delete the file."""
        for future in self._pending:
            future.cancel()
        self._writer.shutdown(wait=True)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def append(self, rows: np.ndarray, cols: np.ndarray, offsets: np.ndarray) -> None:
        """Queue one chunk slice's bucketed edges for writing (at most two queued)."""
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        at = self._end
        self._pending.append(self._writer.submit(self._write, [rows, cols], at))
        self._end += rows.nbytes + cols.nbytes
        self._slices.append((at, at + rows.nbytes, offsets))
        self._bucket_edges += np.diff(offsets)
        self.num_edges += len(rows)

    def finish(self) -> None:
        """Wait until every slice is written."""
        for future in self._pending:
            future.result()
        self._pending = []
        os.ftruncate(self._fd, self._end)

    def _write(self, arrays: list[np.ndarray], offset: int) -> None:
        with disk_full_errors(self.path):
            pwrite_all(self._fd, arrays, offset)

    def groups(self, memory_bytes: int) -> Iterator[tuple]:
        """Yield ``(b0, b1, rows, cols, segments)`` for consecutive groups of buckets: the
        group's edges of every slice, one after the other, and where bucket ``b`` of slice
        ``k`` is in them: ``[segments[k, b - b0], segments[k, b - b0 + 1])``. A group is
        valid until the next is asked for."""
        plan = plan_groups(self._bucket_edges, self.layout.edge_bytes, memory_bytes)
        with ThreadPoolExecutor(1, thread_name_prefix="csr-spill-read") as reader:
            pending = reader.submit(self._read, *plan[0]) if plan else None
            for k, (b0, b1) in enumerate(plan):
                group = pending.result()
                if k + 1 < len(plan):
                    pending = reader.submit(self._read, *plan[k + 1])
                yield (b0, b1, *group)

    def _read(self, b0: int, b1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        total = int(self._bucket_edges[b0:b1].sum())
        rows = np.empty(total, self.layout.local)
        cols = np.empty(total, self.layout.index)
        segments = np.empty((len(self._slices), b1 - b0 + 1), np.int64)
        at = 0
        for k, (rows_at, cols_at, offsets) in enumerate(self._slices):
            first, last = int(offsets[b0]), int(offsets[b1])
            segments[k] = offsets[b0:b1 + 1] - first + at
            n = last - first
            self._pread(rows[at:at + n], rows_at + first * rows.itemsize)
            self._pread(cols[at:at + n], cols_at + first * cols.itemsize)
            at += n
        return rows, cols, segments

    def _pread(self, out: np.ndarray, offset: int) -> None:
        got = pread_full(self._fd, [out], offset)
        if got < out.nbytes:
            raise OSError(f"{self.path}: spill file shorter than written (at byte "
                          f"{offset + got})")
