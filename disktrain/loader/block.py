"""One message-flow layer of a sampled mini-batch (the DGL / PyG "block" layout)."""

from dataclasses import dataclass, replace

import numpy as np
import torch

from disktrain.storage.dataset import Relation


@dataclass(frozen=True, eq=False)
class Block:
    """Bipartite edges ``src -> dst`` from ``num_src`` input nodes to ``num_dst`` output nodes.

    Ids are local to the block. The output nodes are the first ``num_dst`` input nodes
    (``x[:num_dst]`` are the dst nodes' own features), so a block's dst nodes are the next
    block's src nodes. Layers assume a block has no duplicate edges; edges ``i -> i`` are
    allowed and the layers that add self loops drop them first.
    """

    src: torch.Tensor
    """int64 (nnz,): local id of each edge's source, in ``[0, num_src)``."""
    dst: torch.Tensor
    """int64 (nnz,): local id of each edge's destination, in ``[0, num_dst)``."""
    num_src: int
    """Number of input nodes (rows of the features this layer reads)."""
    num_dst: int
    """Number of output nodes; they are input nodes ``0 .. num_dst - 1``."""
    src_degree: torch.Tensor | None = None
    """Optional (num_src,) in-degree of each src node in the whole graph (GCN uses it to
    normalize as on the full graph); the dst nodes' degrees are its first num_dst."""

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            t = getattr(self, name)
            if t.dtype != torch.int64 or t.dim() != 1:
                raise ValueError(f"Block.{name} must be a 1-D int64 tensor, got "
                                 f"{t.dtype}{list(t.shape)}")
        if self.src.shape != self.dst.shape or self.src.device != self.dst.device:
            raise ValueError(f"Block.src and Block.dst must match in shape and device, got "
                             f"{list(self.src.shape)} on {self.src.device} and "
                             f"{list(self.dst.shape)} on {self.dst.device}")
        if self.src_degree is not None and self.src_degree.shape != (self.num_src,):
            raise ValueError(f"Block.src_degree must have shape ({self.num_src},), got "
                             f"{list(self.src_degree.shape)}")
        if not 0 <= self.num_dst <= self.num_src:
            raise ValueError(f"Block needs 0 <= num_dst <= num_src, got num_dst={self.num_dst}"
                             f", num_src={self.num_src}")

    @property
    def num_edges(self) -> int:
        return self.src.shape[0]

    @property
    def device(self) -> torch.device:
        return self.src.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Block":
        """This block with its edge tensors on ``device`` (pinned sources copy asynchronously)."""
        return replace(self, src=self.src.to(device, non_blocking=non_blocking),
                       dst=self.dst.to(device, non_blocking=non_blocking),
                       src_degree=None if self.src_degree is None
                       else self.src_degree.to(device, non_blocking=non_blocking))

    @classmethod
    def from_numpy(cls, edge_src: np.ndarray, edge_dst: np.ndarray, num_src: int,
                   num_dst: int, src_degree: np.ndarray | None = None) -> "Block":
        """A block from integer edge arrays; ids are range-checked, copied only if not int64."""
        src = _edge_ids("edge_src", edge_src, num_src)
        dst = _edge_ids("edge_dst", edge_dst, num_dst)
        if src.shape != dst.shape:
            raise ValueError(f"edge_src and edge_dst must have the same length, got "
                             f"{src.shape[0]} and {dst.shape[0]}")
        degree = None if src_degree is None else torch.from_numpy(
            np.ascontiguousarray(src_degree[:num_src], dtype=np.int64))
        return cls(src=torch.from_numpy(src), dst=torch.from_numpy(dst), num_src=int(num_src),
                   num_dst=int(num_dst), src_degree=degree)


@dataclass(frozen=True, eq=False)
class HeteroBlock:
    """One layer of a typed mini-batch (PyG ``HeteroData`` / DGL hetero block layout).

    Per node type, the output nodes are the first ``num_dst`` input nodes of that type, so a
    block's ``num_dst`` is the next block's ``num_src`` type by type. A type absent from
    ``num_src`` / ``num_dst`` has no nodes; a relation absent from ``edges`` has no edges.
    """

    edges: dict[Relation, tuple[torch.Tensor, torch.Tensor]]
    """Relation -> ``(src, dst)`` int64 (nnz,) edge tensors, ids local to the layer's nodes of
    each type: ``src < num_src[src_type]``, ``dst < num_dst[dst_type]``."""
    num_src: dict[str, int]
    """Node type -> its input nodes (rows of that type's features this layer reads)."""
    num_dst: dict[str, int]
    """Node type -> its output nodes, the type's input nodes ``0 .. num_dst - 1``."""

    def __post_init__(self) -> None:
        for rel, (src, dst) in self.edges.items():
            for name, t in (("src", src), ("dst", dst)):
                if t.dtype != torch.int64 or t.dim() != 1:
                    raise ValueError(f"HeteroBlock relation {rel}: {name} must be a 1-D int64 "
                                     f"tensor, got {t.dtype}{list(t.shape)}")
            if src.shape != dst.shape or src.device != dst.device:
                raise ValueError(f"HeteroBlock relation {rel}: src and dst must match in shape "
                                 f"and device, got {list(src.shape)} on {src.device} and "
                                 f"{list(dst.shape)} on {dst.device}")
        for t in self.num_src.keys() | self.num_dst.keys():
            if not 0 <= self.num_dst.get(t, 0) <= self.num_src.get(t, 0):
                raise ValueError(f"HeteroBlock needs 0 <= num_dst <= num_src for node type "
                                 f"{t!r}, got num_dst={self.num_dst.get(t, 0)}, "
                                 f"num_src={self.num_src.get(t, 0)}")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "HeteroBlock":
        """This block with its edge tensors on ``device`` (pinned sources copy asynchronously)."""
        return replace(self, edges={
            rel: (src.to(device, non_blocking=non_blocking),
                  dst.to(device, non_blocking=non_blocking))
            for rel, (src, dst) in self.edges.items()})

    @classmethod
    def from_numpy(cls, edges: dict[Relation, tuple[np.ndarray, np.ndarray]],
                   num_src: dict[str, int], num_dst: dict[str, int]) -> "HeteroBlock":
        """A block from integer edge arrays per relation; ids are range-checked, copied only
        if not int64."""
        tensors = {}
        for rel, (edge_src, edge_dst) in edges.items():
            src = _edge_ids(f"relation {rel}: edge_src", edge_src, num_src.get(rel[0], 0))
            dst = _edge_ids(f"relation {rel}: edge_dst", edge_dst, num_dst.get(rel[2], 0))
            if src.shape != dst.shape:
                raise ValueError(f"relation {rel}: edge_src and edge_dst must have the same "
                                 f"length, got {src.shape[0]} and {dst.shape[0]}")
            tensors[rel] = (torch.from_numpy(src), torch.from_numpy(dst))
        return cls(edges=tensors, num_src={t: int(n) for t, n in num_src.items()},
                   num_dst={t: int(n) for t, n in num_dst.items()})


def self_loop_edges(block: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's edges without ``i -> i`` edges, then one self loop ``i -> i`` per dst node."""
    keep = block.src != block.dst
    loop = torch.arange(block.num_dst, device=block.device)
    return torch.cat([block.src[keep], loop]), torch.cat([block.dst[keep], loop])


def _edge_ids(name: str, ids: np.ndarray, bound: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array, got {ids.dtype}{list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= bound):
        bad = int(np.argmax((ids < 0) | (ids >= bound)))
        raise ValueError(f"{name}[{bad}] = {int(ids[bad])} is out of range [0, {bound})")
    return np.ascontiguousarray(ids, dtype=np.int64)


def check_features(x: torch.Tensor, block: Block, layer: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a 2-D tensor with one row per src node of ``block``."""
    if x.dim() != 2 or x.shape[0] != block.num_src:
        raise ValueError(f"{layer}: x must have shape ({block.num_src}, in_dim) to match "
                         f"block.num_src, got {list(x.shape)}")
