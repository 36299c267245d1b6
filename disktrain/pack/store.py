"""The packed store: per-batch feature rows laid out contiguously, checksummed, on disk.

Layout (a Zarr v3 group at ``DATASET/packed``)::

    zarr.json       attrs: format_version, configs, counts, duplication factor, complete,
                    store_id and the samples_id / dataset_id of the sample store and dataset
                    it was made from
    rows            (R, F) packed rows; chunks of ``chunk_rows`` rows with a crc32c codec
                    in shard files ``rows/c.K.0`` of many chunks each (Zarr's
                    ``sharding_indexed`` codec, see :mod:`disktrain.storage.shards`);
                    every batch starts on a chunk boundary, so one batch = whole chunks
    batch_rows      int64 (B+1,) first packed row of each batch (chunk-aligned)
    batch_packed    int64 (B,)   real (unpadded) packed rows of each batch
    slots           int64        per input row of every batch (with the first hop
                                 aggregated: per first-layer target): -1-s = GPU cache row
                                 s, s < n_cpu = CPU cache row s, else packed row s - n_cpu;
                                 an aggregating store packs a batch's targets' own rows,
                                 then their aggregates (``pack_config.aggregate_first_hop``)
    slot_offsets    int64 (B+1,)
    cache_rows      (n_gpu + n_cpu, F) the cached rows: GPU tier first, then CPU tier
    gpu_nodes, cpu_nodes   node ids of the cache rows

Every chunk of every array carries a crc32c. The trainer reads a batch's ``rows`` chunks
itself (one sequential range, every crc checked on every read); the shard indexes, ``slots``
and ``cache_rows`` are checked once when a :class:`PackedStore` opens them, the small arrays
when read.
``zarr.open`` reads the same store.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from disktrain.errors import DataError
from disktrain.sample.store import store_attrs
from disktrain.storage.chunkfile import StoreRef
from disktrain.storage.dataset import open_flat_array, read_small_array
from disktrain.storage.io import BLOCK, aligned_buffer
from disktrain.storage.remote import RemoteFiles
from disktrain.storage.schema import SHARDS, ArraySpec, StoreSchema, group_attrs, read_array_meta

STORE = "packed"
FORMAT_VERSION = 2
"""Version 2: ``rows`` in shard files of many chunks (version 1: a file per chunk)."""


PACKED = StoreSchema((
    ArraySpec("batch_rows", ("num_batches+1",), "int64", batches="bounds"),
    ArraySpec("slot_offsets", ("num_batches+1",), "int64", batches="bounds"),
    ArraySpec("batch_packed", ("num_batches",), "int64", batches="each"),
    ArraySpec("rows", ("padded_rows", "feature_dim"), "feature_dtype", SHARDS,
              batches="batch_rows"),
    ArraySpec("slots", ("num_slots",), "int64", mapped=True, batches="slot_offsets"),
    ArraySpec("cache_rows", ("num_cache_rows", "feature_dim"), "feature_dtype", mapped=True),
    ArraySpec("gpu_nodes", ("n_gpu",), "int64"), ArraySpec("cpu_nodes", ("n_cpu",), "int64")))
"""The store's arrays, sized by its attributes (``num_slots``: the rows its batches read), its
sample store's (``num_batches``) and its dataset's (``feature_dim``, ``feature_dtype``);
``num_cache_rows``: ``n_gpu + n_cpu``."""
PACKED_ATTRS = ("complete", "store_id", "n_gpu", "n_cpu", "pack_config")
"""The attributes the readers of a complete store rely on."""


def packed_ref(path: str | Path) -> StoreRef:
    """The packed store at ``path``, for error messages."""
    return StoreRef("packed store", Path(path), f"remove {path} and rerun disktrain prepare")


@runtime_checkable
class PackedSource(Protocol):
    """What the loader reads of a packed store: :class:`PackedStore` on disk,
    :class:`~disktrain.pack.memory.MemoryPacked` in memory (the arrays: as the module
    docstring says)."""

    feature_dim: int
    dtype: np.dtype
    n_gpu: int
    n_cpu: int
    tiers_id: str
    aggregate: str | None
    """The first-hop aggregation its batches carry (None: none)."""
    chunk_rows: int
    chunk_stride: int
    """Bytes a read of one packed chunk takes from storage."""
    batch_rows: np.ndarray
    batch_packed: np.ndarray

    def cache_rows(self) -> np.ndarray: ...
    def slots(self, b: int) -> np.ndarray: ...
    def read_packed(self, b: int, out: np.ndarray) -> np.ndarray: ...


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
        self.attrs = group_attrs(self.path, self.ref, PACKED_ATTRS)
        if not self.attrs["complete"]:
            raise DataError(f"{self.path}: packed store is incomplete")
        if (version := self.attrs.get("format_version", 1)) != FORMAT_VERSION:
            raise DataError(f"packed store {self.path} has format version {version}, not "
                            f"{FORMAT_VERSION} (written by another disktrain version); "
                            f"re-create it: {self.ref.rerun}")
        rows = read_array_meta(self.path / "rows", self.ref, "rows", shape=(None, None))
        self.chunk_rows = rows.chunks[0]
        self.feature_dim = rows.shape[1]
        self.dtype = rows.dtype
        self.n_gpu = int(self.attrs["n_gpu"])
        self.n_cpu = int(self.attrs["n_cpu"])
        self.store_id = str(self.attrs["store_id"])
        self.tiers_id = str(self.attrs.get("tiers_from") or self.store_id)
        """Stores with the same ``tiers_id`` have the same cache rows."""
        aggregate = self.attrs["pack_config"].get("aggregate_first_hop", "off")
        self.aggregate = None if aggregate == "off" else aggregate
        """The first-hop aggregation packed (``PackConfig.aggregate``; None: off)."""
        small = {name: read_small_array(self.path, name, self.ref)
                 for name in PACKED.read_whole}
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
        self._check_made_from(*store_attrs(dataset_path, root))
        self._slots = open_flat_array(self.path, "slots", verify=True, ref=self.ref)
        self._cache_rows: np.ndarray | None = None
        self.layout = rows.shard_layout(self.path / "rows")
        """Where each packed chunk lies in the shard files (on object storage for a staged
        store whose shards were not fetched: :class:`RemoteFiles`)."""
        if self.layout.num_shards and not self.layout.path(0).exists():
            self.layout = replace(self.layout, remote=RemoteFiles.of(self.layout.array_dir))
        self.chunk_stride = self.layout.stride
        shards = range(self.layout.num_shards)
        with ThreadPoolExecutor(16 if self.layout.remote else 1) as pool:  # remote: round trips
            problems = list(pool.map(self.layout.index_problem, shards))
        for shard, problem in zip(shards, problems):
            if problem:
                raise self.ref.corrupt("rows", self.layout.path(shard), problem,
                                       self.shard_batches(shard))

    def _check_made_from(self, samples: Path, attrs: dict) -> None:
        """Refuse a packed store that was not made from the sample store at ``samples``
        (``attrs``: its attributes) and its dataset."""
        ids = (self.attrs.get("samples_id"), self.attrs.get("dataset_id"))
        if ids != (attrs.get("store_id"), attrs.get("dataset_id")):
            raise DataError(
                f"packed store {self.path} was made from sample store {ids[0]!r} of dataset "
                f"{ids[1]!r}, but sample store {samples} is {attrs.get('store_id')!r} of "
                f"dataset {attrs.get('dataset_id')!r}; {self.ref.rerun}")
        batches, inputs = int(attrs["num_batches"]), int(attrs.get("num_input_nodes", -1))
        if self.aggregate is not None:  # its batches read their first-layer targets' rows only
            inputs = int(self.slot_offsets[-1])
        if (self.num_batches, int(self.slot_offsets[-1])) != (batches, inputs):
            raise DataError(
                f"packed store {self.path} holds {self.num_batches} batches of "
                f"{int(self.slot_offsets[-1])} input rows, but sample store {samples} "
                f"holds {batches} batches of {inputs}; {self.ref.rerun}")

    def shard_batches(self, shard: int) -> range:
        """The batches with packed rows in shard file ``shard``."""
        lo = shard * self.layout.per_shard * self.chunk_rows
        hi = lo + self.layout.chunks_in(shard) * self.chunk_rows
        return range(int(np.searchsorted(self.batch_rows, lo, side="right")) - 1,
                     int(np.searchsorted(self.batch_rows, hi, side="left")))

    @property
    def remote_files(self) -> RemoteFiles | None:
        """Where the packed rows are read from object storage (None: local shard files)."""
        return self.layout.remote

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
    """Read packed chunks with ``O_DIRECT``, straight into the caller's buffer, where it is
    aligned (:meth:`ShardLayout.read`); False (per store) reads through the page cache.
    Turns itself off when the filesystem refuses ``O_DIRECT``."""

    def read_packed(self, b: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read batch ``b``'s packed rows (one sequential range, one ``preadv`` per shard
        file it is in) and verify every chunk's checksum.

        ``out`` (at least the batch's padded rows, C-contiguous) is reused when given; where
        it starts on a 4 KiB boundary and chunks are whole blocks, it is read past the page
        cache (see :attr:`direct`). Returns the real rows, a view of ``out``.
        """
        start, stop = int(self.batch_rows[b]), int(self.batch_rows[b + 1])
        if out is None:
            out = aligned_buffer((stop - start) * self.feature_dim * self.dtype.itemsize)
            out = out.view(self.dtype).reshape(stop - start, self.feature_dim)
        if out.shape[0] < stop - start or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous with >= {stop - start} rows")
        flat = out.reshape(-1).view(np.uint8)[:out[:stop - start].nbytes]
        if self.layout.read(start // self.chunk_rows, flat, self.ref, "rows", range(b, b + 1),
                            verify=self.verify, direct=self.direct):
            self.direct = False
        return out[:int(self.batch_packed[b])]

    def info(self) -> dict:
        keys = ("n_gpu", "n_cpu", "packed_rows", "padded_rows", "distinct_packed_rows",
                "duplication_factor", "packed_bytes", "chunk_rows", "pack_config")
        return {k: self.attrs[k] for k in keys if k in self.attrs}


def packed_store_bytes(*, padded_rows: int, row_bytes: int, chunk_rows: int, shard_bytes: int,
                       num_slots: int, num_cache_rows: int, num_batches: int) -> int:
    """What ``pack_dataset`` writes (exact but for metadata): ``padded_rows`` packed rows in
    chunks of ``chunk_rows``, in shard files of about ``shard_bytes``, the slots, the cache
    rows and the per-batch offsets. For a resumed run pass zeros (its files are laid out,
    their blocks reserved)."""
    dims = {"num_batches": num_batches, "num_slots": num_slots, "padded_rows": padded_rows,
            "feature_dim": row_bytes, "feature_dtype": "u1",  # a row: row_bytes bytes
            "num_cache_rows": num_cache_rows,  # either tier: at most all the cache rows
            "n_gpu": num_cache_rows, "n_cpu": num_cache_rows}
    return PACKED.disk_bytes(dims, chunk_rows, shard_bytes) + BLOCK  # and the done/ directory
