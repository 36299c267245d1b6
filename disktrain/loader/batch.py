"""The batches of the data path: :class:`MiniBatch`, which the loader's stages fill one after
another, and :class:`Batch`, the public batch built from it (PyG's NeighborLoader layout and
our blocks, one object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from disktrain.loader.block import Block

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

    @classmethod
    def of(cls, mb: MiniBatch, x: torch.Tensor | None = None,
           y: torch.Tensor | None = None, x_agg: torch.Tensor | None = None) -> Batch:
        """The batch of the loader's ``mb``, sharing its tensors (its blocks, its global ids);
        ``x``, ``x_agg``: the features to carry instead of ``mb``'s (e.g. copies in another
        dtype); ``y``: the labels of every row (None: none)."""
        x, x_agg = (mb.x if x is None else x), (mb.x_agg if x_agg is None else x_agg)
        edge_index, nodes, edges = pyg_edge_index(mb.blocks)
        n_id = torch.from_numpy(np.asarray(mb.input_nodes).astype(np.int64, copy=False))
        return cls(x=x, edge_index=edge_index, n_id=n_id.to(x.device),
                   batch_size=mb.blocks[-1].num_dst if mb.blocks else x.shape[0],
                   num_sampled_nodes=nodes, num_sampled_edges=edges, blocks=mb.blocks,
                   x_agg=x_agg, y=y, index=mb.index, seconds=mb.seconds)

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def seed_labels(self) -> torch.Tensor | None:
        return None if self.y is None else self.y[:self.batch_size]

    def to_pyg(self):
        """This batch as a ``torch_geometric.data.Data`` (PyG must be installed)."""
        try:
            from torch_geometric.data import Data
        except ImportError as e:
            raise ImportError("Batch.to_pyg needs torch_geometric: pip install "
                              "'disktrain[bench]' (or torch-geometric)") from e
        data = Data(x=self.x, edge_index=self.edge_index, n_id=self.n_id,
                    batch_size=self.batch_size, num_sampled_nodes=self.num_sampled_nodes,
                    num_sampled_edges=self.num_sampled_edges)
        if self.y is not None:
            data.y = self.y
        return data


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
