"""The batches of the data path: :class:`MiniBatch`, which the loader's stages fill one after
another, and :class:`Batch`, the public batch built from it (PyG's NeighborLoader layout and
our blocks, one object)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from disktrain.loader.block import Block, HeteroBlock

if TYPE_CHECKING:
    from disktrain.pack.slots import RowLayout


class CopyEvent(Protocol):
    """What the buffer pool needs of a ``torch.cuda.Event`` recorded after a buffer's copy."""

    def record(self, stream=None) -> None: ...
    def query(self) -> bool: ...
    def synchronize(self) -> None: ...


@dataclass(eq=False)
class MiniBatch:
    """One pre-sampled batch on its way through the loader's stages
    (:mod:`disktrain.loader.pipeline`), each filling its fields: read fills ``buffer``; assemble
    ``x`` (a view of ``buffer``), ``blocks``, ``labels``, ``input_nodes`` and ``layout`` on
    the host; copy moves ``x``, ``blocks`` and ``labels`` to the device and sets ``copied``.
    The consumer gets it after the copy."""

    index: int
    """The pre-sampled batch this is (its id in its sample store)."""
    x: torch.Tensor | None = None
    """(num_rows, F) features of ``input_nodes``, in the stored dtype (on the host after
    assemble, on the device after copy)."""
    x_agg: torch.Tensor | None = None
    """With a pre-aggregated first layer (``--aggregate-first-hop``): the first-layer
    aggregate of ``x``'s rows (then only the first layer's dst nodes; ``blocks`` the layers
    above it), like ``x``; None without."""
    blocks: list[Block] = field(default_factory=list)
    """Per layer, input layer first; block 0's source ids are rows of ``x``. With the first
    hop aggregated at pack time, the layers above the first: ``x`` holds the first layer's
    targets' own rows and ``x_agg`` their aggregates."""
    labels: torch.Tensor | None = None
    """The seeds' labels (None for a dataset without labels)."""
    edge_label_index: torch.Tensor | None = None
    """An edge batch (link prediction): (2, pairs) int64 source and destination of each
    supervision pair, as positions among the seeds (rows of the model's output), positives
    first; None for node batches."""
    edge_label: torch.Tensor | None = None
    """An edge batch: float32 1 for each positive pair of ``edge_label_index``, 0 for a
    negative one."""
    input_nodes: np.ndarray | None = None
    """Global id of each row of ``x`` (the sample store's order, last hop reordered: see
    :mod:`disktrain.pack.slots`)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time this batch spent in each stage (read, assemble, copy)."""
    buffer: torch.Tensor | None = field(default=None, repr=False)
    """The loader's host buffer the batch is read and assembled in (reused after it)."""
    layout: RowLayout | None = field(default=None, repr=False)
    """Where each input row came from and went."""
    copied: CopyEvent | None = field(default=None, repr=False)
    """Recorded on the copy stream after the batch's copy (None on a CPU)."""
    release: Callable[[], None] | None = field(default=None, repr=False)
    """Gives ``buffer`` back to the loader before the next batch is asked for: for a consumer
    that no longer reads it (its features copied out); the loader gives it back then if not."""
    type_rows: dict[str, tuple[int, int, int]] | None = None
    """A typed batch: per node type with features, its rows ``[start, stop)`` of ``x`` and
    its feature width (``x`` is as wide as the widest type); None for one type."""
    n_id_dict: dict[str, torch.Tensor] | None = None
    """A typed batch: per node type in it, its nodes' ids local to the type (int64), in the
    order of the rows of ``x_dict`` and of the blocks' ids; None for one type."""

    @property
    def x_dict(self) -> dict[str, torch.Tensor] | None:
        """A typed batch's features per node type (views of ``x``); None for one type."""
        return None if self.type_rows is None else {
            t: self.x[a:b, :width] for t, (a, b, width) in self.type_rows.items()}

    @property
    def inputs(self) -> tuple:
        """What the models take: ``(x, blocks, x_agg)``, or ``(x_dict, blocks, n_id_dict)``
        for a typed batch."""
        if self.type_rows is not None:
            return self.x_dict, self.blocks, self.n_id_dict
        return self.x, self.blocks, self.x_agg


@dataclass(eq=False)
class Batch:
    """One sampled mini-batch on its device.

    PyG's fields, as ``torch_geometric.loader.NeighborLoader`` (directed, without
    replacement) makes them: ``x`` holds the rows of ``n_id`` (seeds first, then each hop's
    new nodes), ``edge_index`` the sampled edges source -> target in local ids, hop by hop
    (the seeds' in-edges first; each node's in-edges from one sample, see
    :func:`pyg_edge_index`), so ``model(batch.x, batch.edge_index)[:batch.batch_size]`` works for
    any PyG model and PyG's ``trim_to_layer`` works with ``num_sampled_nodes`` /
    ``num_sampled_edges``. ``blocks`` are the sampled edges per layer (input layer first;
    every layer samples all its dst nodes, as DGL) for disktrain's own models:
    ``model(batch.x, batch.blocks)``.
    """

    x: torch.Tensor
    """(num_nodes, F) features of ``n_id``, in the dtype the loader was asked for."""
    edge_index: torch.Tensor
    """(2, E) int64: row 0 source, row 1 target, local ids (rows of ``x``)."""
    n_id: torch.Tensor
    """(num_nodes,) int64 global id of each row of ``x``."""
    batch_size: int
    """Seeds: the first ``batch_size`` rows of ``x`` (and entries of ``y``)."""
    num_sampled_nodes: list[int]
    """Nodes per hop: the seeds, then the nodes first reached at hop 1, 2, ..."""
    num_sampled_edges: list[int]
    """Edges per hop, hop 1 (into the seeds) first; they are ``edge_index``'s column runs."""
    blocks: list[Block]
    """Per layer, input layer (farthest hop) first: ``blocks[-1]`` holds the seeds' in-edges."""
    x_agg: torch.Tensor | None = None
    """With a pre-aggregated first layer: the first-layer aggregate of ``x``'s rows, which are
    then the first layer's dst nodes alone (``blocks``: the layers above it); pass it on,
    ``model(batch.x, batch.blocks, batch.x_agg)``. None without."""
    y: torch.Tensor | None = None
    """(num_nodes,) int64 labels of ``n_id`` (None for a dataset without labels); the seeds'
    are ``y[:batch_size]``."""
    index: int = -1
    """The pre-sampled batch this is (its id in its sample store)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time the batch spent in the loader's stages."""
    edge_label_index: torch.Tensor | None = None
    """An edge batch (link prediction; PyG's ``LinkNeighborLoader`` layout): (2, pairs)
    int64 local ids (rows of ``x``, all among the first ``batch_size``: the pairs'
    endpoints are the seeds) of each pair scored, positives first; None for node batches."""
    edge_label: torch.Tensor | None = None
    """An edge batch: float32 1 for each positive pair of ``edge_label_index``, 0 for each
    negative."""
    x_dict: dict[str, torch.Tensor] | None = None
    """A typed batch (PyG's ``HeteroData`` layout): per node type with features, the rows of
    its nodes (views of ``x``, which holds them type after type); None for one type."""
    edge_index_dict: dict[tuple[str, str, str], torch.Tensor] | None = None
    """A typed batch: per relation, its sampled edges (2, E) in ids local to the batch's
    nodes of each type, hop by hop as ``edge_index``."""
    n_id_dict: dict[str, torch.Tensor] | None = None
    """A typed batch: per node type, its nodes' ids local to the type (the target type's
    seeds first); ``n_id`` then holds the global ids of ``x``'s rows."""

    @classmethod
    def of(cls, mb: MiniBatch, x: torch.Tensor | None = None,
           y: torch.Tensor | None = None, x_agg: torch.Tensor | None = None) -> Batch:
        """The batch of the loader's ``mb``, sharing its tensors (its blocks, its global ids);
        ``x``, ``x_agg``: the features to carry instead of ``mb``'s (e.g. copies in another
        dtype); ``y``: the labels of every row (None: none), of a typed batch the labels of
        its target type's nodes."""
        x, x_agg = (mb.x if x is None else x), (mb.x_agg if x_agg is None else x_agg)
        if mb.type_rows is not None:
            return cls._typed(mb, x, y)
        edge_index, nodes, edges = pyg_edge_index(mb.blocks)
        n_id = torch.from_numpy(np.asarray(mb.input_nodes).astype(np.int64, copy=False))
        return cls(x=x, edge_index=edge_index, n_id=n_id.to(x.device),
                   batch_size=mb.blocks[-1].num_dst if mb.blocks else x.shape[0],
                   num_sampled_nodes=nodes, num_sampled_edges=edges, blocks=mb.blocks,
                   x_agg=x_agg, y=y, index=mb.index, seconds=mb.seconds,
                   edge_label_index=mb.edge_label_index, edge_label=mb.edge_label)

    @classmethod
    def _typed(cls, mb: MiniBatch, x: torch.Tensor, y: torch.Tensor | None) -> Batch:
        edge_index, nodes, edges = pyg_edge_index_dict(mb.blocks)
        target = next(iter(mb.n_id_dict))  # the target type comes first
        n_id = torch.from_numpy(np.asarray(mb.input_nodes).astype(np.int64, copy=False))
        return cls(x=x, edge_index=torch.zeros((2, 0), dtype=torch.int64, device=x.device),
                   n_id=n_id.to(x.device), batch_size=mb.blocks[-1].num_dst[target],
                   num_sampled_nodes=nodes, num_sampled_edges=edges, blocks=mb.blocks, y=y,
                   index=mb.index, seconds=mb.seconds,
                   x_dict={t: x[a:b, :w] for t, (a, b, w) in mb.type_rows.items()},
                   edge_index_dict=edge_index, n_id_dict=mb.n_id_dict)

    @property
    def inputs(self) -> tuple:
        """What disktrain's models take: ``model(*batch.inputs)`` is ``model(x, blocks,
        x_agg)``, or ``model(x_dict, blocks, n_id_dict)`` for a typed batch."""
        if self.x_dict is not None:
            return self.x_dict, self.blocks, self.n_id_dict
        return self.x, self.blocks, self.x_agg

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def seed_labels(self) -> torch.Tensor | None:
        return None if self.y is None else self.y[:self.batch_size]

    def to_pyg(self):
        """This batch as a ``torch_geometric.data.Data``, or a ``HeteroData`` for a typed
        batch (PyG must be installed)."""
        try:
            from torch_geometric.data import Data, HeteroData
        except ImportError as e:
            raise ImportError("Batch.to_pyg needs torch_geometric: pip install "
                              "'disktrain[bench]' (or torch-geometric)") from e
        if self.n_id_dict is not None:
            data = HeteroData()
            for t, ids in self.n_id_dict.items():
                data[t].n_id = ids
                data[t].num_nodes = ids.shape[0]
                if t in self.x_dict:
                    data[t].x = self.x_dict[t]
            for rel, edges in self.edge_index_dict.items():
                data[rel].edge_index = edges
            target = next(iter(self.n_id_dict))
            data[target].batch_size = self.batch_size
            if self.y is not None:
                data[target].y = self.y
            return data
        data = Data(x=self.x, edge_index=self.edge_index, n_id=self.n_id,
                    batch_size=self.batch_size, num_sampled_nodes=self.num_sampled_nodes,
                    num_sampled_edges=self.num_sampled_edges)
        if self.y is not None:
            data.y = self.y
        if self.edge_label_index is not None:
            data.edge_label_index, data.edge_label = self.edge_label_index, self.edge_label
        return data


def pyg_edge_index_dict(blocks: list[HeteroBlock]) -> tuple[dict, list[int], list[int]]:
    """(edge_index_dict, num_sampled_nodes, num_sampled_edges) of a typed batch's blocks,
    as :func:`pyg_edge_index` lays out one type's: per relation, hop by hop, the edges into
    the nodes of its dst type first reached at the hop before; the counts summed over the
    types (over the relations)."""
    hops = blocks[::-1]
    parts: dict = {}
    first: dict[str, int] = {}
    edges = []
    for block in hops:
        total = 0
        for rel, (src, dst) in block.edges.items():
            keep = dst >= first.get(rel[2], 0)
            parts.setdefault(rel, []).append(torch.stack((src[keep], dst[keep])))
            total += int(parts[rel][-1].shape[1])
        edges.append(total)
        first = dict(block.num_dst)
    sizes = [sum(hops[0].num_dst.values())] + [sum(b.num_src.values()) for b in hops] \
        if hops else [0]
    return ({rel: torch.cat(p, dim=1) for rel, p in parts.items()},
            [int(n) for n in np.diff([0, *sizes])], edges)


def pyg_edge_index(blocks: list[Block]) -> tuple[torch.Tensor, list[int], list[int]]:
    """(edge_index, num_sampled_nodes, num_sampled_edges) of a batch's blocks.

    A block's dst nodes are the first ``num_dst`` of its src nodes, so block ids are already
    the batch's local ids; the hops are the blocks in reverse. Our blocks sample every dst
    node at every layer (DGL's semantics); PyG samples each node once, at the hop after the
    one that first reached it. So hop ``k``'s edges here are those of its block into the
    nodes first reached at hop ``k - 1`` (the seeds for hop 1): every node's in-edges come
    from one sample, and ``edge_index`` has PyG's hop-by-hop layout, which ``trim_to_layer``
    relies on. (Nodes reached only through a later re-sample of an earlier node keep their
    row in ``x`` and ``n_id``, without edges.)
    """
    hops = blocks[::-1]  # the seeds' block first
    device = blocks[0].src.device if blocks else torch.device("cpu")
    parts, edges, first = [], [], 0
    for block in hops:
        keep = block.dst >= first  # dst nodes first reached at the hop before
        parts.append(torch.stack((block.src[keep], block.dst[keep])))
        edges.append(int(parts[-1].shape[1]))
        first = block.num_dst
    edge_index = (torch.cat(parts, dim=1) if parts
                  else torch.zeros((2, 0), dtype=torch.int64, device=device))
    sizes = [hops[0].num_dst] + [b.num_src for b in hops] if hops else [0]
    return edge_index, [int(n) for n in np.diff([0, *sizes])], edges
