"""Node classifiers over typed mini-batches: R-SAGE and R-GAT (a convolution per relation,
their outputs summed or averaged per destination type, as PyG's ``HeteroConv``)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from disktrain.loader.block import HeteroBlock
from disktrain.models.gat import softmax_by_dst
from disktrain.models.sage import mean_by_dst
from disktrain.storage.dataset import Relation, relation_name

HETERO_MODELS = ("rsage", "rgat")
AGGREGATIONS = ("sum", "mean")


@dataclass(frozen=True, kw_only=True)
class HeteroGNNConfig:
    """A typed-graph classifier: its graph's schema, the architecture and the output sizes."""

    model: str = "rsage"
    """One of ``HETERO_MODELS``: "rsage" (a SAGE convolution per relation) or "rgat"
    (a GAT convolution per relation, without self loops)."""
    feature_dims: Mapping[str, int]
    """Node type -> width of its input features; 0 for a featureless type, which learns an
    embedding per node instead (``embedding_dim``)."""
    num_nodes: Mapping[str, int]
    """Node type -> its number of nodes (sizes a featureless type's embedding table)."""
    relations: Sequence[Relation]
    """The edge types ``(src_type, rel, dst_type)`` the model convolves over."""
    target_type: str
    """The type whose nodes are classified."""
    num_classes: int
    """Number of output logits per target node."""
    num_layers: int = 2
    """Number of layers; the model consumes one block per layer."""
    hidden: int = 128
    """Width of every hidden layer's output (for R-GAT: all heads together)."""
    heads: int = 4
    """R-GAT attention heads; ``hidden`` must be divisible by it. Ignored by R-SAGE."""
    dropout: float = 0.5
    """Dropout probability on hidden activations, between layers."""
    embedding_dim: int = 64
    """Width of a featureless type's learned embeddings."""
    aggr: str = "sum"
    """How a type's outputs from its relations combine: "sum" or "mean"."""

    needs_degrees: ClassVar[bool] = False
    """Its layers read no whole-graph degrees from their blocks."""
    first_hop: ClassVar[str | None] = None
    """It takes no pre-aggregated first layer."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field, value, allowed in (("model", self.model, HETERO_MODELS),
                                      ("aggr", self.aggr, AGGREGATIONS)):
            if value not in allowed:
                raise ValueError(f"{name}.{field} must be one of {allowed}, got {value!r}")
        for field in ("num_classes", "num_layers", "hidden", "heads", "embedding_dim"):
            _check_int(f"{name}.{field}", getattr(self, field), 1)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout!r}")
        if self.model == "rgat" and self.hidden % self.heads:
            raise ValueError(f"{name}.hidden must be divisible by heads for model 'rgat', "
                             f"got hidden={self.hidden}, heads={self.heads}")
        if not self.feature_dims or set(self.num_nodes) != set(self.feature_dims):
            raise ValueError(f"{name}.num_nodes must name the node types of feature_dims "
                             f"({list(self.feature_dims)}), got {list(self.num_nodes)}")
        for t, dim in self.feature_dims.items():
            _check_int(f"{name}.feature_dims[{t!r}]", dim, 0)
            _check_int(f"{name}.num_nodes[{t!r}]", self.num_nodes[t], 1)
        if not self.relations:
            raise ValueError(f"{name}.relations must name at least one relation")
        for rel in self.relations:
            if len(rel) != 3 or rel[0] not in self.feature_dims or rel[2] not in \
                    self.feature_dims:
                raise ValueError(f"{name}.relations: {rel!r} must be (src_type, rel, dst_type) "
                                 f"with types among {list(self.feature_dims)}")
        if self.target_type not in self.feature_dims:
            raise ValueError(f"{name}.target_type {self.target_type!r} is not a node type "
                             f"(types: {list(self.feature_dims)})")
        self.layer_relations()

    def layer_relations(self) -> list[list[Relation]]:
        """Per layer, first to last, the relations whose outputs reach the target's logits
        (the others' convolutions would be computed for nothing and are not built)."""
        layers, needed = [], {self.target_type: "it is the target type"}
        for layer in reversed(range(self.num_layers)):
            rels = [tuple(r) for r in self.relations if r[2] in needed]
            for t, why in needed.items():
                if all(r[2] != t for r in rels):
                    raise ValueError(
                        f"{type(self).__name__}.relations: node type {t!r} is the destination "
                        f"of no relation, so layer {layer} gives it no output, but {why}; add "
                        "the reverse relations")
            for rel in rels:
                needed.setdefault(rel[0], f"relation {rel} reads it in layer {layer}")
            layers.append(rels)
        return layers[::-1]


def _check_int(where: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where} must be an int >= {low}, got {value!r}")


class RelSAGEConv(nn.Module):
    """PyG's ``SAGEConv((src_dim, dst_dim), out_dim)`` over one relation:
    ``lin_neigh(mean over a dst's in-edges of x_src) + lin_self(x_dst)`` (the bias is
    ``lin_neigh``'s, PyG's ``lin_l``; ``lin_self`` is its ``lin_r``). A dst node without
    in-edges aggregates zeros."""

    def __init__(self, src_dim: int, dst_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin_neigh = nn.Linear(src_dim, out_dim)
        self.lin_self = nn.Linear(dst_dim, out_dim, bias=False)

    def forward(self, x_src: torch.Tensor, x_dst: torch.Tensor, src: torch.Tensor,
                dst: torch.Tensor) -> torch.Tensor:
        return self.lin_neigh(mean_by_dst(x_src, src, dst, x_dst.shape[0])) + self.lin_self(x_dst)


class RelGATConv(nn.Module):
    """PyG's ``GATConv((src_dim, dst_dim), out_dim, heads, concat, add_self_loops=False)``
    over one relation: per head, ``e_sd = LeakyReLU(a_src . W_src x_s + a_dst . W_dst x_d,
    0.2)``, softmax over each dst node's in-edges, ``out_d = sum_s alpha_sd W_src x_s``; heads
    concatenated or averaged (``concat=False``), then ``+ b``. A dst node without in-edges
    outputs ``b``."""

    def __init__(self, src_dim: int, dst_dim: int, out_dim: int, *, heads: int,
                 concat: bool, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.heads, self.out_dim, self.concat = heads, out_dim, concat
        self.negative_slope = negative_slope
        self.lin_src = nn.Linear(src_dim, heads * out_dim, bias=False)
        self.lin_dst = nn.Linear(dst_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))
        self.bias = nn.Parameter(torch.zeros(heads * out_dim if concat else out_dim))
        for weight in (self.lin_src.weight, self.lin_dst.weight, self.att_src, self.att_dst):
            nn.init.xavier_uniform_(weight)

    def forward(self, x_src: torch.Tensor, x_dst: torch.Tensor, src: torch.Tensor,
                dst: torch.Tensor) -> torch.Tensor:
        num_dst = x_dst.shape[0]
        h = self.lin_src(x_src).view(-1, self.heads, self.out_dim)
        score_src = (h * self.att_src).sum(-1)
        score_dst = (self.lin_dst(x_dst).view(-1, self.heads, self.out_dim)
                     * self.att_dst).sum(-1)
        logits = F.leaky_relu(score_src[src] + score_dst[dst], self.negative_slope)
        alpha = softmax_by_dst(logits, dst, num_dst)
        out = h.new_zeros(num_dst, self.heads, self.out_dim)
        out.index_add_(0, dst, h[src] * alpha.unsqueeze(2))
        return (out.flatten(1) if self.concat else out.mean(1)) + self.bias


class HeteroGNN(nn.Module):
    """A convolution per relation and layer, ReLU and dropout between layers.

    ``forward(x_dict, blocks, n_id_dict)``: ``x_dict[t]`` holds the features of
    ``blocks[0]``'s input nodes of each featured type ``t``, ``n_id_dict[t]`` the ids (local
    to the type) of those of each featureless type; returns the logits
    (``blocks[-1].num_dst[target_type]``, num_classes) of the last block's target nodes.
    Each layer is PyG's ``HeteroConv({rel: conv}, aggr=cfg.aggr)``: a type's output is the
    sum (or mean) of its relations' convolutions; a type that is the destination of no
    relation has no output. Relations whose outputs do not reach the logits are not built.

    A featureless type's embedding table lives in memory, as parameters:
    ``num_nodes[t] * embedding_dim * 4`` bytes (float32), and as much again for its gradient
    and for each of Adam's two moments.
    """

    def __init__(self, cfg: HeteroGNNConfig) -> None:
        super().__init__()
        self.target = cfg.target_type
        self.dropout, self.aggr = cfg.dropout, cfg.aggr
        self.feature_dims = dict(cfg.feature_dims)
        self.relations = {relation_name(r): tuple(r) for r in cfg.relations}
        layers = cfg.layer_relations()
        self.input_types = [t for t in cfg.feature_dims
                            if any(t in (r[0], r[2]) for r in layers[0])]
        """The types whose features (or embeddings) the first layer reads."""
        self.embeddings = nn.ModuleDict({
            t: nn.Embedding(cfg.num_nodes[t], cfg.embedding_dim)
            for t in self.input_types if not cfg.feature_dims[t]})
        dims = {t: d or cfg.embedding_dim for t, d in cfg.feature_dims.items()}
        self.layers = nn.ModuleList()
        for i, rels in enumerate(layers):
            last = i == cfg.num_layers - 1
            out = cfg.num_classes if last else cfg.hidden
            self.layers.append(nn.ModuleDict({
                relation_name(r): _conv(cfg, dims[r[0]], dims[r[2]], out, last) for r in rels}))
            dims = dict.fromkeys(dims, cfg.hidden)

    def forward(self, x_dict: Mapping[str, torch.Tensor], blocks: Sequence[HeteroBlock],
                n_id_dict: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        self._check_blocks(blocks)
        h = self._inputs(x_dict, n_id_dict or {}, blocks[0])
        for i, (convs, block) in enumerate(zip(self.layers, blocks)):
            outs: dict[str, list[torch.Tensor]] = {}
            for key, conv in convs.items():
                s, _, d = rel = self.relations[key]
                edges = block.edges.get(rel)
                if edges is None:
                    edges = (h[s].new_empty(0, dtype=torch.int64),) * 2
                x_dst = h[d][: block.num_dst.get(d, 0)]
                outs.setdefault(d, []).append(conv(h[s], x_dst, *edges))
            h = {t: torch.stack(v).sum(0) if self.aggr == "sum" else torch.stack(v).mean(0)
                 for t, v in outs.items()}
            if i < len(self.layers) - 1:
                h = {t: F.dropout(F.relu(v), p=self.dropout, training=self.training)
                     for t, v in h.items()}
        return h[self.target]

    def _inputs(self, x_dict: Mapping[str, torch.Tensor],
                n_id_dict: Mapping[str, torch.Tensor],
                block: HeteroBlock) -> dict[str, torch.Tensor]:
        """The first layer's input rows per type it reads: features or embeddings."""
        h = {}
        for t in self.input_types:
            num = block.num_src.get(t, 0)
            if t in self.embeddings:
                ids = n_id_dict.get(t)
                if ids is None or ids.shape != (num,):
                    raise ValueError(f"HeteroGNN: node type {t!r} is featureless, so "
                                     f"n_id_dict[{t!r}] must hold its {num} input nodes' ids, "
                                     f"got {None if ids is None else list(ids.shape)}")
                h[t] = self.embeddings[t](ids)
            else:
                x = x_dict.get(t)
                if x is None or x.shape != (num, self.feature_dims[t]):
                    raise ValueError(f"HeteroGNN: x_dict[{t!r}] must have shape ({num}, "
                                     f"{self.feature_dims[t]}) to match blocks[0].num_src, "
                                     f"got {None if x is None else list(x.shape)}")
                h[t] = x
        return h

    def _check_blocks(self, blocks: Sequence[HeteroBlock]) -> None:
        if len(blocks) != len(self.layers):
            raise ValueError(f"HeteroGNN: expected {len(self.layers)} blocks (one per layer), "
                             f"got {len(blocks)}")
        known = set(self.relations.values())
        for i, block in enumerate(blocks):
            unknown = [r for r in block.edges if r not in known]
            if unknown:
                raise ValueError(f"HeteroGNN: blocks[{i}] holds relation {unknown[0]}, which "
                                 f"the model does not know (relations: {sorted(known)})")
        for i in range(len(blocks) - 1):
            a, b = blocks[i], blocks[i + 1]
            for t in sorted(a.num_dst.keys() | b.num_src.keys()):
                if a.num_dst.get(t, 0) != b.num_src.get(t, 0):
                    raise ValueError(f"HeteroGNN: blocks[{i}].num_dst[{t!r}] = "
                                     f"{a.num_dst.get(t, 0)} must equal blocks[{i + 1}]"
                                     f".num_src[{t!r}] = {b.num_src.get(t, 0)}")


def _conv(cfg: HeteroGNNConfig, src_dim: int, dst_dim: int, out_dim: int,
          last: bool) -> nn.Module:
    """One relation's convolution in a layer of ``cfg``'s model (``last``: the output layer)."""
    if cfg.model == "rsage":
        return RelSAGEConv(src_dim, dst_dim, out_dim)
    # Hidden layers concatenate heads of hidden // heads each; the last layer averages them.
    return RelGATConv(src_dim, dst_dim, out_dim if last else out_dim // cfg.heads,
                      heads=cfg.heads, concat=not last)
