"""The packed store: per-batch feature rows laid out contiguously, checksummed, on disk.

Layout (a Zarr v3 group at ``DATASET/packed``)::

    zarr.json       attrs: configs, counts, duplication factor, complete, store_id and the
                    samples_id / dataset_id of the sample store and dataset it was made from
    rows            (R, F) packed rows; chunks of ``chunk_rows`` rows with a crc32c codec,
                    files ``rows/c.K.0`` (Zarr's default key encoding with separator ".":
                    no directory per chunk); every batch starts on a chunk boundary, so one
                    batch = whole chunks
    batch_rows      int64 (B+1,) first packed row of each batch (chunk-aligned)
    batch_packed    int64 (B,)   real (unpadded) packed rows of each batch
    slots           int64        per input row of every batch: -1-s = GPU cache row s,
                                 s < n_cpu = CPU cache row s, else packed row s - n_cpu
    slot_offsets    int64 (B+1,)
    cache_rows      (n_gpu + n_cpu, F) the cached rows: GPU tier first, then CPU tier
    gpu_nodes, cpu_nodes   node ids of the cache rows

Every chunk of every array carries a crc32c. The trainer reads a batch's ``rows`` chunks
itself (one sequential range, every crc checked on every read); ``slots`` and ``cache_rows``
are checked once when a :class:`PackedStore` opens them, the small arrays when read.
``zarr.open`` reads the same store.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Self

import numpy as np
import zarr

from disktrain.errors import DataError
from disktrain.sample.store import SampleStore
from disktrain.storage.chunkfile import StoreRef, crc_bytes, read_chunk
from disktrain.storage.dataset import open_flat_array, read_small_array
from disktrain.storage.diskspace import array_bytes
from disktrain.storage.io import (
    BLOCK,
    aligned_buffer,
    disk_full_errors,
    open_write,
    pwrite_all,
    write_direct,
    write_uncached,
)

STORE = "packed"


def packed_ref(path: str | Path) -> StoreRef:
    """The packed store at ``path``, for error messages."""
    return StoreRef("packed store", Path(path), f"remove {path} and rerun disktrain prepare")


ROWS_KEY_ENCODING = {"name": "default", "configuration": {"separator": "."}}
"""Packed chunks are files ``rows/c.K.0`` side by side: one file per chunk, no directory."""


def chunk_path(root: Path, chunk: int) -> Path:
    """The file of packed chunk ``chunk`` (rows ``chunk * chunk_rows`` onwards)."""
    return root / "rows" / f"c.{chunk}.0"


def write_chunk(root: Path, chunk: int, data: np.ndarray) -> None:
    """Write one packed chunk as Zarr's bytes + crc32c codecs would.

    Data and crc go out in one uncached write (``RWF_DONTCACHE``): its writeback starts
    at once and runs while the caller goes on, and no page stays cached or dirty. Where the
    kernel or filesystem lacks it, the data's whole 4 KiB blocks go straight to the disk
    (``O_DIRECT``) when ``data`` is page-aligned (see :func:`aligned_buffer`) and the
    filesystem allows it, the rest and the crc through the page cache.
    """
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    crc = crc_bytes(raw)
    path = chunk_path(root, chunk)
    with disk_full_errors(path):
        fd = open_write(path)
        try:
            if not write_uncached(fd, [raw, crc], 0):
                direct = write_direct(fd, raw, 0)
                pwrite_all(fd, [raw[direct:], crc], direct)
        finally:
            os.close(fd)


class ChunkWriter:
    """Writes packed chunks on a background thread, so file creation and writes (which
    release the GIL) overlap the caller's reading and gathering of rows.

    :meth:`buffer` hands out page-aligned chunk buffers (reused once written);
    :meth:`submit` queues one, blocking while ``depth`` are queued. :meth:`close` waits for
    every chunk and raises the first error the thread met (also raised by a later
    :meth:`submit`). Memory: the buffers the caller holds plus at most ``depth + 1``.
    """

    def __init__(self, root: Path, chunk_bytes: int, depth: int = 16):
        self.root, self.chunk_bytes = Path(root), chunk_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._free: list[np.ndarray] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self._thread.start()

    def buffer(self) -> np.ndarray:
        """A page-aligned uint8 buffer of ``chunk_bytes`` (contents undefined)."""
        try:
            return self._free.pop()
        except IndexError:
            return aligned_buffer(self.chunk_bytes)

    def submit(self, chunk: int, buf: np.ndarray) -> None:
        """Queue ``buf`` (from :meth:`buffer`, not to be touched again) as chunk ``chunk``."""
        if self._error is not None:
            raise self._error
        self._queue.put((chunk, buf))

    def close(self) -> None:
        """Wait for every queued chunk; raise the first error met."""
        self._join()
        if self._error is not None:
            raise self._error

    def _join(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:  # the caller's error wins; still wait for the thread
            self._join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    write_chunk(self.root, *item)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self._error = e
            self._free.append(item[1])


class PackedStore:
    """A complete packed store, read-only, checked against the sample store and the dataset
    it was made from."""

    def __init__(self, dataset_path: str | Path, verify: bool = True,
                 root: str | Path | None = None):
        """``root``: the directory holding the store and its sample store (default: the
        dataset's); ``verify=False`` skips the crc32c checks of packed chunks on every read
        (to measure their cost); the arrays read once when opened are checked either way."""
        self.path = Path(root if root is not None else dataset_path) / STORE
        self.verify = verify
        if not (self.path / "zarr.json").exists():
            raise DataError(f"{self.path}: no packed store (run `disktrain prepare` first)")
        self.ref = packed_ref(self.path)
        group = zarr.open_group(self.path, mode="r")
        self.attrs = dict(group.attrs)
        if not self.attrs.get("complete"):
            raise DataError(f"{self.path}: packed store is incomplete")
        rows = group["rows"]
        self.chunk_rows = int(rows.chunks[0])
        self.feature_dim = int(rows.shape[1])
        self.dtype = np.dtype(rows.dtype)
        self.n_gpu = int(self.attrs["n_gpu"])
        self.n_cpu = int(self.attrs["n_cpu"])
        self.store_id = str(self.attrs["store_id"])
        self.tiers_id = str(self.attrs.get("tiers_from") or self.store_id)
        """Stores with the same ``tiers_id`` have the same cache rows."""
        small = {name: read_small_array(self.path, name, self.ref) for name in
                 ("batch_rows", "batch_packed", "slot_offsets", "gpu_nodes", "cpu_nodes")}
        self.batch_rows = small["batch_rows"]
        self.batch_packed = small["batch_packed"]
        self.slot_offsets = small["slot_offsets"]
        self.gpu_nodes = small["gpu_nodes"]
        """Node id of each GPU-cache row."""
        self.cpu_nodes = small["cpu_nodes"]
        """Node id of each CPU-cache row."""
        self.num_batches = len(self.batch_packed)
        if (len(self.gpu_nodes), len(self.cpu_nodes)) != (self.n_gpu, self.n_cpu):
            raise DataError(f"packed store {self.path}: {len(self.gpu_nodes)} GPU and "
                            f"{len(self.cpu_nodes)} CPU cache nodes, but attributes say "
                            f"{self.n_gpu} and {self.n_cpu}; {self.ref.rerun}")
        self._check_made_from(SampleStore(dataset_path, root=root))
        self._slots = open_flat_array(self.path, "slots", verify=True, ref=self.ref)
        self._cache_rows: np.ndarray | None = None
        self._chunk_bytes = self.chunk_rows * self.feature_dim * self.dtype.itemsize
        self._chunk_prefix = str(chunk_path(self.path, 0))[:-len("0.0")]

    def _check_made_from(self, samples: SampleStore) -> None:
        """Refuse a packed store that was not made from ``samples`` (and its dataset)."""
        ids = (self.attrs.get("samples_id"), self.attrs.get("dataset_id"))
        if ids != (samples.store_id, samples.dataset_id):
            raise DataError(
                f"packed store {self.path} was made from sample store {ids[0]!r} of dataset "
                f"{ids[1]!r}, but sample store {samples.path} is {samples.store_id!r} of "
                f"dataset {samples.dataset_id!r}; {self.ref.rerun}")
        inputs = int(samples.attrs.get("num_input_nodes", -1))
        if (self.num_batches, int(self.slot_offsets[-1])) != (samples.num_batches, inputs):
            raise DataError(
                f"packed store {self.path} holds {self.num_batches} batches of "
                f"{int(self.slot_offsets[-1])} input rows, but sample store {samples.path} "
                f"holds {samples.num_batches} batches of {inputs}; {self.ref.rerun}")

    @property
    def max_padded_rows(self) -> int:
        return int(np.diff(self.batch_rows).max(initial=0))

    def cache_rows(self) -> np.ndarray:
        """All cached rows (GPU tier first), memory-mapped; crc-checked on the first call."""
        if self._cache_rows is None:
            self._cache_rows = open_flat_array(self.path, "cache_rows", verify=True,
                                               ref=self.ref)
        return self._cache_rows

    def slots(self, b: int) -> np.ndarray:
        """Where each input row of batch ``b`` comes from (see the module docstring)."""
        return self._slots[self.slot_offsets[b]:self.slot_offsets[b + 1]]

    direct = True
    """Read the whole 4 KiB blocks of packed chunks with ``O_DIRECT``, straight into the
    caller's buffer, wherever it is aligned (:func:`read_chunk`); False (per store) reads
    through the page cache. Turns itself off when the filesystem refuses ``O_DIRECT``."""

    def read_packed(self, b: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read batch ``b``'s packed rows (one sequential range) and verify every checksum.

        ``out`` (at least the batch's padded rows, C-contiguous) is reused when given; a
        chunk whose place in it starts on a 4 KiB boundary is read past the page cache (see
        :attr:`direct`). Returns the real rows, a view of ``out``.
        """
        start, stop = int(self.batch_rows[b]), int(self.batch_rows[b + 1])
        if out is None:
            out = aligned_buffer((stop - start) * self.feature_dim * self.dtype.itemsize)
            out = out.view(self.dtype).reshape(stop - start, self.feature_dim)
        if out.shape[0] < stop - start or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous with >= {stop - start} rows")
        flat = out.reshape(-1).view(np.uint8)
        first = start // self.chunk_rows
        for i, chunk in enumerate(range(first, stop // self.chunk_rows)):
            path = f"{self._chunk_prefix}{chunk}.0"  # chunk_path, without pathlib per chunk
            view = flat[i * self._chunk_bytes:(i + 1) * self._chunk_bytes]
            if read_chunk(path, view, self.ref, "rows", range(b, b + 1), verify=self.verify,
                          direct=self.direct):
                self.direct = False
        return out[:int(self.batch_packed[b])]

    def info(self) -> dict:
        keys = ("n_gpu", "n_cpu", "packed_rows", "padded_rows", "distinct_packed_rows",
                "duplication_factor", "packed_bytes", "chunk_rows", "pack_config")
        return {k: self.attrs[k] for k in keys if k in self.attrs}


def packed_store_bytes(*, padded_rows: int, row_bytes: int, chunk_rows: int, num_slots: int,
                       num_cache_rows: int, num_batches: int) -> int:
    """What ``pack_dataset`` writes (exact but for metadata and block rounding):
    ``padded_rows`` packed rows in chunks of ``chunk_rows``, the slots, the cache rows and
    the per-batch offsets. For a resumed run pass only the padded rows still to write (and
    zeros for the rest, which already exist)."""
    chunk_bytes = chunk_rows * row_bytes
    return (array_bytes(chunk_bytes, -(-padded_rows // chunk_rows), dirs_per_chunk=1)
            + array_bytes(num_slots * 8)
            + array_bytes(num_cache_rows * row_bytes)
            + 3 * array_bytes((num_batches + 1) * 8)
            + 2 * array_bytes(num_cache_rows * 8)
            + 3 * BLOCK)  # the group's metadata and directory, the done/ directory
