"""The packed store: per-batch feature rows laid out contiguously, checksummed, on disk.

Layout (a Zarr v3 group at ``DATASET/packed``)::

    zarr.json       attrs: configs, counts, duplication factor, complete
    rows            (R, F) packed rows; chunks of ``chunk_rows`` rows with a crc32c codec;
                    every batch starts on a chunk boundary, so one batch = whole chunks
    batch_rows      int64 (B+1,) first packed row of each batch (chunk-aligned)
    batch_packed    int64 (B,)   real (unpadded) packed rows of each batch
    slots           int64        per input row of every batch: -1-s = GPU cache row s,
                                 s < n_cpu = CPU cache row s, else packed row s - n_cpu
    slot_offsets    int64 (B+1,)
    cache_rows      (n_gpu + n_cpu, F) the cached rows: GPU tier first, then CPU tier
    gpu_nodes, cpu_nodes   node ids of the cache rows

The trainer reads a batch's chunk files itself (one sequential range, crc verified);
``zarr.open`` reads the same store.
"""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c
import numpy as np
import zarr

from disktrain.dataset import chunk_file, open_flat_array
from disktrain.errors import DataError

STORE = "packed"
CRC_BYTES = 4


def chunk_path(root: Path, chunk: int) -> Path:
    """The file of packed chunk ``chunk`` (rows ``chunk * chunk_rows`` onwards)."""
    return chunk_file(root / "rows", chunk, 0)


def write_chunk(root: Path, chunk: int, data: np.ndarray) -> None:
    """Write one packed chunk as Zarr's bytes + crc32c codecs would."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    crc = np.uint32(google_crc32c.value(raw)).tobytes()
    path = chunk_path(root, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(raw.data)
        f.write(crc)


class PackedStore:
    """A complete packed store, read-only."""

    def __init__(self, dataset_path: str | Path):
        self.path = Path(dataset_path) / STORE
        if not (self.path / "zarr.json").exists():
            raise DataError(f"{self.path}: no packed store (run `disktrain prepare` first)")
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
        self.batch_rows = np.asarray(group["batch_rows"][...])
        self.batch_packed = np.asarray(group["batch_packed"][...])
        self.slot_offsets = np.asarray(group["slot_offsets"][...])
        self.num_batches = len(self.batch_packed)
        self._slots = open_flat_array(self.path, "slots")
        self._chunk_bytes = self.chunk_rows * self.feature_dim * self.dtype.itemsize
        self._chunk_prefix = str(chunk_path(self.path, 0))[:-len("0/0")]

    @property
    def max_padded_rows(self) -> int:
        return int(np.diff(self.batch_rows).max(initial=0))

    def cache_rows(self) -> np.ndarray:
        """All cached rows (GPU tier first), memory-mapped."""
        return open_flat_array(self.path, "cache_rows")

    def slots(self, b: int) -> np.ndarray:
        """Where each input row of batch ``b`` comes from (see the module docstring)."""
        return self._slots[self.slot_offsets[b]:self.slot_offsets[b + 1]]

    def read_packed(self, b: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read batch ``b``'s packed rows (one sequential range) and verify every checksum.

        ``out`` (at least the batch's padded rows, C-contiguous) is reused when given.
        Returns the real rows, a view of ``out``.
        """
        start, stop = int(self.batch_rows[b]), int(self.batch_rows[b + 1])
        if out is None:
            out = np.empty((stop - start, self.feature_dim), self.dtype)
        if out.shape[0] < stop - start or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous with >= {stop - start} rows")
        flat = out.reshape(-1).view(np.uint8)
        crc = bytearray(CRC_BYTES)
        first = start // self.chunk_rows
        for i, chunk in enumerate(range(first, stop // self.chunk_rows)):
            path = f"{self._chunk_prefix}{chunk}/0"  # chunk_path, without pathlib per chunk
            view = flat[i * self._chunk_bytes:(i + 1) * self._chunk_bytes]
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise DataError(f"packed batch {b}: chunk file {path} is missing") from None
            try:
                got = os.preadv(fd, [view, crc], 0)
            finally:
                os.close(fd)
            if got != self._chunk_bytes + CRC_BYTES:
                raise DataError(f"packed batch {b}: chunk file {path} is truncated "
                                f"({got} of {self._chunk_bytes + CRC_BYTES} bytes)")
            if google_crc32c.value(view) != int.from_bytes(crc, "little"):
                raise DataError(f"packed batch {b}: chunk file {path} failed its crc32c "
                                "check (corrupted)")
        return out[:int(self.batch_packed[b])]

    def info(self) -> dict:
        keys = ("n_gpu", "n_cpu", "packed_rows", "padded_rows", "distinct_packed_rows",
                "duplication_factor", "packed_bytes", "chunk_rows", "pack_config")
        return {k: self.attrs[k] for k in keys if k in self.attrs}
