"""Out-of-core CSR build from a re-iterable stream of edge chunks.

Two streaming passes over the edges: count in-degrees, then scatter source ids into the
memory-mapped ``indices`` array. Memory beyond the output memmaps is two int64 arrays of
length N (degrees / cursors) plus one edge chunk.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from disktrain.dataset import create_flat_array, finish_flat_array, index_dtype
from disktrain.kernels import csr as kcsr

EdgeChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""A function returning a fresh iterator of (src, dst) int64 chunks each time it is called."""


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


def _oriented(chunks: EdgeChunks, cfg: CSRConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row=dst, col=src) chunks, with reverse edges and self-loop filtering applied."""
    for src, dst in chunks():
        if cfg.drop_self_loops:
            keep = src != dst
            src, dst = src[keep], dst[keep]
        yield dst, src
        if cfg.undirected:
            yield src, dst


def build_csr(group: zarr.Group, chunks: EdgeChunks, num_nodes: int, num_input_edges: int,
              cfg: CSRConfig = CSRConfig()) -> int:
    """Write ``indptr``/``indices`` (single checksummed chunks) into ``group`` from ``chunks``;
    return the edge count.

    ``chunks`` must yield validated ids in ``[0, num_nodes)``; ``num_input_edges`` sizes the
    progress bars only.
    """
    total = num_input_edges * (2 if cfg.undirected else 1)
    degrees = np.zeros(num_nodes, np.int64)
    with tqdm(total=total, desc="csr: count", unit="edge", unit_scale=True,
              disable=not cfg.progress) as bar:
        for rows, _ in _oriented(chunks, cfg):
            kcsr.count_degrees(rows, degrees)
            bar.update(rows.shape[0])
    indptr = create_flat_array(group, "indptr", (num_nodes + 1,), np.int64)
    indptr[0] = 0
    np.cumsum(degrees, out=indptr[1:])
    num_edges = int(indptr[-1])
    del degrees
    cursor = np.array(indptr[:-1])
    idx_dtype = index_dtype(num_nodes)
    build_name = "_indices_build" if cfg.dedup else "indices"
    indices = create_flat_array(group, build_name, (num_edges,), idx_dtype)
    with tqdm(total=num_edges, desc="csr: scatter", unit="edge", unit_scale=True,
              disable=not cfg.progress) as bar:
        for rows, cols in _oriented(chunks, cfg):
            kcsr.scatter_edges(rows, cols.astype(idx_dtype, copy=False), cursor, indices)
            bar.update(rows.shape[0])
    del cursor
    kcsr.sort_rows(indptr, indices)
    if cfg.dedup:
        num_edges = int(kcsr.dedup_sorted_rows(indptr, indices))
        final = create_flat_array(group, "indices", (num_edges,), idx_dtype)
        step = 1 << 24
        for a in range(0, num_edges, step):
            b = min(a + step, num_edges)
            final[a:b] = indices[a:b]
        finish_flat_array(final)
        del indices, final
        _delete_array(group, build_name)
    else:
        finish_flat_array(indices)
    finish_flat_array(indptr)
    return num_edges


def _delete_array(group: zarr.Group, name: str) -> None:
    shutil.rmtree(Path(group.store.root) / group.path / name)
