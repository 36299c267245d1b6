"""The final layer's rows in the format asked for, with each node's id and, for
``--predictions``, its predicted class and class probabilities: written block by block (a
layer-store chunk at a time), under a temporary name renamed into place once complete.

- ``zarr``: directory ``OUT`` with arrays ``nodes`` int64 (n,), ``embeddings`` float32
  (n, width), and ``prediction`` int64 (n,), ``probabilities`` float32 (n, classes); a
  crc32c per chunk, group attributes naming the dataset and checkpoint.
- ``npy``: directory ``OUT`` with ``nodes.npy``, ``embeddings.npy`` (and
  ``prediction.npy``, ``probabilities.npy``).
- ``parquet``: file ``OUT`` with columns ``node`` int64, ``embedding`` fixed-size list of
  float32 (and ``prediction`` int64, ``probabilities`` fixed-size list of float32), a row
  group per block (pyarrow's ParquetWriter: never the whole table in memory).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import zarr

from disktrain.storage.atomic import atomic_dir, temporary_name
from disktrain.storage.chunkfile import CHECKSUM
from disktrain.storage.io import disk_full_errors


def columns(ids: np.ndarray, rows: np.ndarray, predictions: bool) -> dict[str, np.ndarray]:
    """A block's columns: ``nodes``, ``embeddings`` and, with ``predictions``, the argmax
    ``prediction`` and softmax ``probabilities`` of the rows (the model's logits)."""
    out = {"nodes": ids.astype(np.int64), "embeddings": rows}
    if predictions:
        out["prediction"] = rows.argmax(1).astype(np.int64)
        out["probabilities"] = torch.softmax(torch.from_numpy(rows), 1).numpy()
    return out


def widths(width: int, num_classes: int, predictions: bool) -> dict[str, tuple[int, ...]]:
    """Each column's row shape."""
    out = {"nodes": (), "embeddings": (width,)}
    return out | ({"prediction": (), "probabilities": (num_classes,)} if predictions else {})


@contextlib.contextmanager
def writer(fmt: str, out: Path, num_rows: int, shapes: dict, block_rows: int, attrs: dict,
           overwrite: bool):
    """Yield ``put(start, columns)`` writing rows ``start ..`` of every column into ``out``
    in format ``fmt``; ``out`` appears only when the block ends without an error."""
    if fmt == "parquet":
        with _parquet(out, shapes, attrs, overwrite) as put:
            yield put
        return
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if fmt == "npy":
            arrays = {k: np.lib.format.open_memmap(tmp / f"{k}.npy", "w+", _dtype(k),
                                                   (num_rows, *s)) for k, s in shapes.items()}
        else:
            group = zarr.open_group(tmp, mode="w", attributes=attrs)
            arrays = {k: group.create_array(
                k, shape=(num_rows, *s), dtype=_dtype(k), chunks=(max(1, block_rows), *s),
                compressors=CHECKSUM, fill_value=0, config={"write_empty_chunks": True})
                for k, s in shapes.items()}

        def put(start: int, block: dict) -> None:
            for k, v in block.items():
                arrays[k][start:start + len(v)] = v

        yield put
        for a in arrays.values():
            if isinstance(a, np.memmap):
                a.flush()


def _dtype(column: str) -> np.dtype:
    return np.dtype(np.int64 if column in ("nodes", "prediction") else np.float32)


@contextlib.contextmanager
def _parquet(out: Path, shapes: dict, attrs: dict, overwrite: bool):
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite to replace it)")
    names = {"nodes": "node", "embeddings": "embedding"}
    fields = [pa.field(names.get(k, k), pa.list_(pa.float32(), s[0]) if s else pa.int64())
              for k, s in shapes.items()]
    schema = pa.schema(fields, metadata={k: str(v) for k, v in attrs.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out)
    try:
        with disk_full_errors(out), pq.ParquetWriter(tmp, schema) as pw:
            def put(start: int, block: dict) -> None:
                pw.write_table(pa.table([_arrow(block[k]) for k in shapes], schema=schema))

            yield put
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _arrow(values: np.ndarray) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
