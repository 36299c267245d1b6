"""Layer-wise, full-neighbourhood inference: each layer computed for ranges of destination
nodes in ascending order, its input rows streamed from the layer below's store.

For a range of destinations, the CSR by destination gives their in-neighbours (read by range:
training's sampler at fanout -1, or at ``fanout_cap``, which draws a node's neighbours from
its own counter-based stream: the same ones whatever the range); the input rows of the range's
nodes are read in one ascending pass (each chunk holding some once, crc-checked); the block
(the destinations first among its source nodes, whole-graph in-degrees for GCN) goes through
the trained layer, in eval mode, the same code as training. A node's output row depends on
its own neighbourhood only, so any cut into ranges gives the same rows up to float32
rounding, and the same cut the same bytes: BLAS rounds a row of a product by where it falls
among the rows multiplied (MKL on AVX2 CPUs by its position in the kernel's row block), so
ranges cut elsewhere (another budget, a resumed run's chunks, Ray tasks) round differently.

SAGE and GCN aggregate linearly, so their layers never gather a row per edge or per
neighbour: a range's in-edges become weighted edges (:func:`first_hop_edges`, the pack-time
aggregate's) sorted by source row, and the input rows are summed into the range's float32
aggregates block by block (:func:`scatter_add_rows`, GIL-free) as they are read in order;
then ``conv.aggregated(x_dst, agg)``. The input is held in memory whole when it fits half the
budget (read once for the layer), else streamed in blocks for every range. Each destination
sums its edges in ascending source order whatever the cut.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from disktrain.infer.model import Trained
from disktrain.infer.store import LayerWriter, open_layer
from disktrain.kernels.aggregate import first_hop_edges, scatter_add_rows
from disktrain.kernels.rng import derive_key
from disktrain.kernels.sampling import sample_batches
from disktrain.loader.block import Block
from disktrain.models.gnn import MLP
from disktrain.storage.atomic import temporary_name
from disktrain.storage.dataset import FEATURE_CHUNK_BYTES, Dataset, FeatureRows

MIN_RANGE = 64
"""Nodes a range holds at least (but the last, when fewer are left): a range's fixed costs
(its input pass, its block) spread over enough rows."""


class Graph:
    """The dataset's CSR by destination, read by range, and what a range of destinations
    needs of it: their in-neighbours (all, or at most ``cap`` of them drawn with ``key``)."""

    def __init__(self, dataset: Dataset, cap: int, seed: int):
        self.dataset, self.cap = dataset, cap
        self.key = derive_key(seed)

    def neighbourhood(self, dst: np.ndarray):
        """The block of ascending ``dst``: ``(nodes, edge_src, edge_dst)``, ``nodes`` the
        destinations first, then their in-neighbours in order of first appearance."""
        batch = sample_batches(self.dataset.indptr, self.dataset.indices, dst,
                               np.array([0, len(dst)], np.int64), [self.cap or -1],
                               self.key).batch(0)
        src, dst_local = batch.hop(1)
        return batch.nodes, src, dst_local

    def degrees(self, ids: np.ndarray) -> np.ndarray:
        """In-degree of each of ``ids``, at most ``cap``."""
        deg = self.dataset.in_degrees(ids)
        return np.minimum(deg, self.cap) if self.cap else deg

    def needed(self, nodes: np.ndarray, hops: int, step: int = 1 << 16) -> list[np.ndarray]:
        """The nodes each of ``hops + 1`` layers computes for ``nodes``' outputs, top layer
        last: every layer the nodes of the one above and their (capped) in-neighbours."""
        sets = [nodes]
        for _ in range(hops):
            mask = np.zeros(self.dataset.num_nodes, bool)
            for a in range(0, len(sets[0]), step):
                mask[self.neighbourhood(sets[0][a:a + step])[0]] = True
            sets.insert(0, np.flatnonzero(mask))
        return sets


def ranges(graph: Graph | None, ids: np.ndarray, start: int, stop: int, per_node: int,
           per_edge: int, budget: int):
    """Cut positions ``[start, stop)`` of ``ids`` into ranges ``(a, b)`` whose cost
    (``per_node`` bytes a node, ``per_edge`` an in-edge) fits ``budget``, each at least
    :data:`MIN_RANGE` nodes (the last may hold fewer; none leaves fewer after it)."""
    a = start
    while a < stop:
        window = ids[a:min(stop, a + max(MIN_RANGE, budget // per_node))]
        edges = graph.degrees(window) if graph is not None else np.zeros(len(window), np.int64)
        cost = np.cumsum(edges * per_edge + per_node)
        b = a + max(MIN_RANGE, int(np.searchsorted(cost, budget, side="right")))
        b = stop if stop - b < MIN_RANGE else b
        yield a, b
        a = b


def range_costs(in_dim: int, out_dim: int) -> tuple[int, int]:
    """Bytes per node and per in-edge of a range, at most: the input rows of the sources (at
    most one per node and per edge), the edges (ids, a gathered row each as the layers
    aggregate) and the outputs."""
    row_in, row_out = 4 * in_dim, 4 * out_dim
    return row_in + 3 * row_out + 64, 2 * row_in + 2 * row_out + 64


def linear_costs(in_dim: int, out_dim: int) -> tuple[int, int]:
    """Bytes per node and per in-edge of a range of a linear (SAGE, GCN) layer, beside its
    :class:`Workspace`: the destinations' aggregates; an edge's source row, destination and
    weight, sorted."""
    return 4 * in_dim + 16, 16


BLOCK_BYTES = 64 << 20
"""Input rows summed per call, at most of the aggregation kernel (widened to float32 for it)."""
SUB_EDGES = 1 << 21
"""In-edges whose weighted edges are made at once (then kept compact, sorted by source), at
most."""
OUT_ROWS = 1 << 14
"""Destinations whose outputs are computed at once, from their aggregates, at most."""


@dataclass(frozen=True)
class Workspace:
    """What a range of a linear layer makes at once beside its nodes and edges, sized to a
    quarter of the budget at most: the weighted edges of ``sub_edges`` in-edges, an input
    block of ``block_bytes``, the outputs of ``out_rows`` destinations; ``bytes`` in all."""

    sub_edges: int
    block_bytes: int
    out_rows: int
    bytes: int

    @classmethod
    def of(cls, budget: int, in_dim: int, out_dim: int) -> Workspace:
        share = budget // 12
        sub = min(SUB_EDGES, max(1 << 10, share // 112))
        block = min(BLOCK_BYTES, max(1 << 20, share // 2))
        row = 4 * (2 * in_dim + 4 * out_dim)
        rows = min(OUT_ROWS, max(MIN_RANGE, share // row))
        return cls(sub, block, rows, sub * 112 + 2 * block + rows * row)




PROJECT_ROWS = 1 << 14
"""Rows projected per matrix product when a linear layer projects before aggregating: fixed
and aligned, so a row is rounded the same whether the input is held or streamed."""


class ProjectedInput:
    """A layer input's rows through ``lin`` (a bias-free map that commutes with the
    aggregation), for aggregating where the layer's output is narrower than its input;
    :meth:`gather` gives the rows themselves (the destinations' own)."""

    def __init__(self, base: LayerInput, lin: torch.nn.Linear):
        self.base, self.lin = base, lin
        self.num_rows, self.dim = base.num_rows, lin.out_features
        self.row_bytes, self.held, self.stored = 4 * self.dim, None, None
        self.position, self.gather = base.position, base.gather

    def hold(self, budget: int) -> bool:
        if self.held is None and self.num_rows * self.row_bytes <= budget:
            self.held = np.concatenate([rows for _, rows in self._project()]) if \
                self.num_rows else np.zeros((0, self.dim), np.float32)
        return self.held is not None

    def spill(self, work: Path) -> None:
        """Project every row once into a checked store under ``work`` (a directory of this
        process's, removed by the caller) and stream them from there: each range then reads
        the narrower rows instead of projecting every input row again."""
        identity = {"projected": True, "subset": False, "num_rows": self.num_rows,
                    "width": self.dim, "chunk_rows": max(1, min(
                        self.num_rows, FEATURE_CHUNK_BYTES // self.row_bytes))}
        work.mkdir(parents=True, exist_ok=True)
        out = LayerWriter(work, "projected", identity, None)
        try:
            for start, rows in self._project():
                out.put(start, rows)
        except BaseException:
            out.abort()
            raise
        out.finish()
        self.stored = LayerInput(*open_layer(work, "projected", identity))

    def blocks(self, block_bytes: int):
        if self.held is not None:
            yield from LayerInput.blocks(self, block_bytes)
        elif self.stored is not None:
            yield from self.stored.blocks(block_bytes)
        else:
            yield from self._project()

    @torch.no_grad()
    def _project(self):
        for start, rows in self.base.blocks(PROJECT_ROWS * 4 * self.base.dim):
            yield start, self.lin(torch.from_numpy(rows)).numpy()


class LayerInput:
    """The rows a layer reads: the dataset's features (the first layer) or the layer below's
    store (``nodes``: the ids of its rows, None for every node); held in memory by
    :meth:`hold` when they fit."""

    def __init__(self, rows: FeatureRows, nodes: np.ndarray | None):
        self.rows, self.nodes = rows, nodes
        self.held: np.ndarray | None = None
        meta = rows.rows_meta
        self.num_rows, self.dim, self.row_bytes = *meta.shape, meta.shape[1] * meta.dtype.itemsize

    def position(self, ids: np.ndarray) -> np.ndarray:
        """The store rows of ascending or unordered ``ids``."""
        return ids if self.nodes is None else np.searchsorted(self.nodes, ids)

    def hold(self, budget: int) -> bool:
        """Read every row into memory, in order, if they take at most ``budget`` bytes."""
        if self.held is None and self.num_rows * self.row_bytes <= budget:
            self.held = self.rows.feature_rows(0, self.num_rows)
        return self.held is not None

    def gather(self, ids: np.ndarray) -> torch.Tensor:
        """The rows of ``ids`` (any order), read in one ascending pass, as float32."""
        order = np.argsort(ids, kind="stable")
        pos = self.position(ids[order])
        rows = self.held[pos] if self.held is not None else self.rows.gather_sorted(pos)
        out = np.empty(rows.shape, np.float32)
        out[order] = rows
        return torch.from_numpy(out)

    def blocks(self, block_bytes: int):
        """``(start, rows)``: every row in order, as float32 blocks of about ``block_bytes``
        (from memory when held, else read)."""
        step = max(1, block_bytes // max(1, 4 * self.dim))
        for a in range(0, self.num_rows, step):
            b = min(self.num_rows, a + step)
            rows = self.held[a:b] if self.held is not None else self.rows.feature_rows(a, b)
            yield a, rows.astype(np.float32, copy=False)


def run_layer(trained: Trained, layer: int, graph: Graph, source: LayerInput,
              ids: np.ndarray, spans, writer, budget: int, progress: bool) -> None:
    """Compute layer ``layer`` of ``trained`` for positions ``spans`` (``(start, stop)``
    pairs) of ``ids`` (ascending node ids) and hand each range's rows to ``writer.put``."""
    model, dims = trained.model, trained.config.dims
    mlp = isinstance(model, MLP)
    op = model.lins[layer] if mlp else model.convs[layer]
    last = layer == len(dims) - 2
    linear = None if mlp else op.first_hop
    projected = bool(linear) and dims[layer + 1] < dims[layer]
    if projected:  # aggregate the narrower projected rows
        source = ProjectedInput(source, op.neighbour_projection)
    per_node, per_edge = (linear_costs if linear else range_costs)(source.dim, dims[layer + 1])
    work = Workspace.of(budget, dims[layer], dims[layer + 1])
    scratch = temporary_name(writer.final.with_name(f"projected-{layer}"))
    if linear:
        held = source.hold(budget // 2)
        budget -= budget // 2 if held else 0
        budget = max(1, budget - work.bytes)
        if projected and not held and _ranges_over(graph, ids, spans, per_node, per_edge, budget):
            source.spill(scratch)  # once, not once per range
    total = sum(b - a for a, b in spans)
    try:
        with tqdm(total=total, desc=f"infer: layer {layer}", unit="node", unit_scale=True,
                  disable=not progress) as bar:
            for start, stop in spans:
                for a, b in ranges(None if mlp else graph, ids, start, stop, per_node,
                                   per_edge, budget):
                    outs = (_aggregated(op, graph, source, ids[a:b], projected, work) if linear
                            else [(0, _forward(op, mlp, graph, source, ids[a:b]))])
                    for i, h in outs:
                        writer.put(a + i, (h if last else F.relu(h)).numpy())
                        bar.update(len(h))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ranges_over(graph: Graph, ids, spans, per_node: int, per_edge: int, budget: int) -> bool:
    """Whether ``spans`` take more than one range (each range streams every input row)."""
    count = 0
    for start, stop in spans:
        for _ in ranges(graph, ids, start, stop, per_node, per_edge, budget):
            count += 1
            if count > 1:
                return True
    return False


@torch.no_grad()
def _forward(op, mlp: bool, graph: Graph, source: LayerInput, dst: np.ndarray) -> torch.Tensor:
    """One layer's outputs for the destinations ``dst``."""
    if mlp:
        return op(source.gather(dst))
    nodes, src, dst_local = graph.neighbourhood(dst)
    degree = graph.dataset.in_degrees(nodes) if op.needs_degrees else None
    block = Block.from_numpy(src, dst_local, len(nodes), len(dst), degree)
    return op(source.gather(nodes), block)


def _aggregated(op, graph: Graph, source: LayerInput | ProjectedInput, dst: np.ndarray,
                projected: bool, work: Workspace):
    """A linear layer's (SAGE's mean, GCN's normalized sum) outputs for the destinations
    ``dst``, as ``(offset in dst, rows)`` in order: its weighted in-edges (made
    ``work.sub_edges`` at a time, kept sorted by source row) summed over the input rows in
    order, block by block (``projected``: rows already through the layer's neighbour map);
    then the outputs, ``work.out_rows`` destinations at a time."""
    cuts = _cuts(graph.degrees(dst), work.sub_edges)
    edges = [_weighted(op, graph, source, dst, i, j) for i, j in cuts]
    agg = np.zeros((len(dst), source.dim), np.float32)
    for start, rows in source.blocks(work.block_bytes):
        for pos, to, weight in edges:
            i, j = np.searchsorted(pos, [start, start + len(rows)])
            if i < j:
                scatter_add_rows(agg, rows, pos[i:j] - start, to[i:j], weight[i:j])
    finish = op.projected if projected else op.aggregated
    with torch.no_grad():
        step = work.out_rows
        for a in range(0, len(dst), step):
            b = len(dst) if len(dst) - a < step + MIN_RANGE else a + step
            # GCN's self loop is one of its weighted edges: it reads no own rows
            x_dst = source.gather(dst[a:b]) if op.first_hop == "mean" else None
            yield a, finish(x_dst, torch.from_numpy(agg[a:b]))
            if b == len(dst):
                break


def _cuts(degrees: np.ndarray, sub_edges: int) -> list[tuple[int, int]]:
    """Consecutive destinations in runs of about ``sub_edges`` in-edges (one at least)."""
    ends = np.searchsorted(np.cumsum(degrees, dtype=np.int64),
                           np.arange(sub_edges, int(degrees.sum()), sub_edges), side="right")
    bounds = np.unique(np.concatenate([[0], ends, [len(degrees)]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _weighted(op, graph: Graph, source, dst: np.ndarray, a: int, b: int):
    """The weighted in-edges of ``dst[a:b]``: ``(source row, destination in dst, weight)``,
    compact and sorted by source row (each destination sums in ascending source order)."""
    nodes, src, dst_local = graph.neighbourhood(dst[a:b])
    degree = graph.dataset.in_degrees(nodes) if op.needs_degrees else None
    src, dst_local, weight = first_hop_edges(op.first_hop, src, dst_local, b - a, degree)
    pos = source.position(nodes[src])
    order = np.argsort(pos, kind="stable")
    small = np.int32 if source.num_rows < 2**31 else np.int64
    return pos[order].astype(small), (dst_local[order] + a).astype(np.int32), weight[order]
