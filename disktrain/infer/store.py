"""A layer's output in layer-wise inference: one store per layer, written chunk by chunk,
resumable after a kill, read back as the next layer's input rows.

Layout (see docs/FORMAT.md)::

    OUT.layers/layer-<l>/zarr.json   attrs: the run's identity (dataset, checkpoint, layer,
                                     nodes, fanout cap, chunking), num_rows, width, complete
    OUT.layers/layer-<l>/features    float32 (num_rows, width): row i is node nodes[i]'s
                                     output (node i's without ``nodes``); row-chunked, a
                                     crc32c per chunk, as a dataset's features
    OUT.layers/layer-<l>/nodes       int64 (num_rows,) ascending node ids (a subset only)

A layer is written as ``layer-<l>.partial`` and renamed to ``layer-<l>`` once every chunk is
written. A rerun keeps the chunk files of a partial layer of the same identity that pass their
size and crc32c check and computes the others; a partial layer of another identity is
removed. The rows are read with the dataset's feature reader
(:class:`~disktrain.storage.dataset.FeatureRows`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

from disktrain.storage.atomic import replace_dir
from disktrain.storage.chunkfile import ChunkWriter, StoreRef, check_chunk, chunk_file
from disktrain.storage.dataset import (
    FeatureRows,
    create_features,
    read_small_array,
    write_small_array,
)
from disktrain.storage.diskspace import require_free
from disktrain.storage.io import disk_full_errors
from disktrain.storage.schema import ROWS, ArraySpec, StoreSchema, group_attrs

LAYER = StoreSchema((
    ArraySpec("features", ("num_rows", "width"), "float32", ROWS),
    ArraySpec("nodes", ("num_rows",), "int64", present="subset")))
"""A layer store's arrays."""
RERUN = "rerun disktrain infer (the layer is computed again)"


def layer_ref(path: Path) -> StoreRef:
    return StoreRef("layer store", path, RERUN)


def layer_dir(work: Path, layer: int) -> Path:
    return Path(work) / f"layer-{layer}"


def open_layer(work: Path, layer: int, identity: dict) -> tuple[FeatureRows, np.ndarray | None]:
    """The rows reader and node ids (None: every node) of complete layer ``layer`` of
    ``identity`` (KeyError when there is none such)."""
    path = layer_dir(work, layer)
    if _identity(path) != identity:
        raise KeyError(path)
    ref = layer_ref(path)
    rows = FeatureRows(path / "features", ref, shape=(identity["num_rows"], identity["width"]))
    nodes = read_small_array(path, "nodes", ref) if identity["subset"] else None
    return rows, nodes


def _identity(path: Path) -> dict | None:
    try:
        return group_attrs(path, layer_ref(path)).get("identity")
    except ValueError:  # missing or unreadable: not this layer
        return None


class LayerWriter:
    """Writes layer ``layer`` of ``identity`` (its ``num_rows``, ``width``, ``chunk_rows``;
    ``nodes``: the ids of its rows, None for every node) chunk by chunk: :attr:`pending`
    are the chunks left to write (resuming a partial layer), :meth:`put` takes rows in order
    from the first row of a pending chunk on, :meth:`finish` renames the layer into place.
    Free disk space for the layer is checked first (:class:`DiskSpaceError`)."""

    def __init__(self, work: Path, layer: int, identity: dict, nodes: np.ndarray | None,
                 *, attach: bool = False):
        """``attach``: write chunks into the partial layer another writer made (a worker's
        share of the pending chunks; that writer checks, resumes and finishes)."""
        self.final = layer_dir(work, layer)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.num_rows, self.width = identity["num_rows"], identity["width"]
        self.rows = identity["chunk_rows"]
        self.chunk_bytes = self.rows * self.width * 4
        self._pool = ChunkWriter(self.chunk_bytes, self._place, 1, 4)
        self._buf: np.ndarray | None = None
        if attach:
            return
        if self.partial.exists() and _identity(self.partial) != identity:
            shutil.rmtree(self.partial)
        resumed = self.partial.exists()
        num_chunks = -(-self.num_rows // self.rows) if self.width else 0
        self.pending = [c for c in range(num_chunks) if not resumed or
                        check_chunk(self._place(c)[0], self.chunk_bytes)[0] is not None]
        need = LAYER.disk_bytes({"num_rows": self.rows * len(self.pending), "width": self.width},
                                self.rows, without=("nodes",))
        require_free(work, need, f"infer: layer {layer}")
        if not resumed:
            self._create(identity, nodes)

    def _create(self, identity: dict, nodes: np.ndarray | None) -> None:
        tmp = self.partial.with_name(self.partial.name + ".new")
        shutil.rmtree(tmp, ignore_errors=True)
        with disk_full_errors(tmp):
            group = zarr.open_group(tmp, mode="w")
            create_features(group, self.num_rows, self.width, np.float32, self.rows)
            if nodes is not None:
                write_small_array(group, "nodes", nodes)
            group.attrs.update({"identity": identity, **identity})
        tmp.rename(self.partial)

    def _place(self, chunk: int) -> tuple[Path, None]:
        return chunk_file(self.partial / "features", chunk, 0), None

    def put(self, pos: int, rows: np.ndarray) -> None:
        """Rows ``pos .. pos + len(rows)`` of the layer (``pos`` continues the last call's
        rows, or starts a chunk)."""
        while len(rows):
            chunk, r0 = divmod(pos, self.rows)
            if self._buf is None:
                self._buf = self._pool.buffer()
            view = self._buf[:self.chunk_bytes].view(np.float32).reshape(self.rows, self.width)
            n = min(len(rows), self.rows - r0)
            view[r0:r0 + n] = rows[:n]
            pos, rows = pos + n, rows[n:]
            if r0 + n == self.rows or pos == self.num_rows:
                view[r0 + n:] = 0  # a partial last chunk is stored full-size, zero-padded
                self._pool.submit(chunk, self._buf)
                self._buf = None

    def finish(self, rename: bool = True) -> None:
        """Wait for every chunk, then rename the layer into place (not: a worker's share)."""
        self._pool.close()
        if rename:
            replace_dir(self.partial, self.final)

    def abort(self) -> None:
        """Stop writing (chunks not started are dropped; those written stay for a rerun)."""
        self._pool.close(cancel=True)
