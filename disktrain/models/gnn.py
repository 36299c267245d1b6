"""Node classifiers over a list of sampled blocks, and an MLP baseline that ignores the graph."""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from disktrain.loader.block import Block
from disktrain.models.gat import GATConv
from disktrain.models.gcn import GCNConv
from disktrain.models.link import DECODERS
from disktrain.models.sage import SAGEConv

MODELS = ("sage", "gcn", "gat", "mlp", "rsage", "rgat")
TYPED_MODELS = {"sage": "rsage", "gat": "rgat", "rsage": "rsage", "rgat": "rgat"}
"""On a typed graph: the model asked for -> the relational model trained (R-SAGE, R-GAT)."""
FIRST_HOP_OPTION = "--aggregate-first-hop / PackConfig.aggregate_first_hop"
"""The option that packs the first layer pre-aggregated, as errors name it."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which node classifier to train and its architecture; the sizes that come from the
    data (input width, classes, layers = sampled hops) are given to :meth:`sized`."""

    model: str = "sage"
    """One of ``MODELS``: "sage", "gcn", "gat", or "mlp" (baseline that ignores edges); on a
    typed graph "rsage" or "rgat" (a relational convolution per relation; "sage" and "gat"
    mean them there)."""
    hidden: int = 128
    """Width of every hidden layer's output (for GAT: all heads together)."""
    dropout: float = 0.5
    """Dropout probability on hidden activations, between layers."""
    input_dropout: float = 0.0
    """Dropout probability on the input features (as Kipf & Welling's GCN)."""
    heads: int = 4
    """GAT attention heads; ``hidden`` must be divisible by it. Ignored by other models."""
    attn_dropout: float = 0.0
    """GAT dropout probability on attention weights. Ignored by other models."""
    decoder: str = "dot"
    """Link prediction: how a pair of node embeddings is scored, "dot" or "mlp"
    (:mod:`disktrain.models.link`). Ignored by node classification."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.model not in MODELS:
            raise ValueError(f"{name}.model must be one of {MODELS}, got {self.model!r}")
        for field in self._positive_ints():
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}.{field} must be an int >= 1, got {value!r}")
        for field in ("dropout", "input_dropout", "attn_dropout"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}.{field} must be in [0, 1), got {value!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"{name}.decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.model == "gat" and self.hidden % self.heads:
            raise ValueError(f"{name}.hidden must be divisible by heads for model 'gat', "
                             f"got hidden={self.hidden}, heads={self.heads}")

    def _positive_ints(self) -> tuple[str, ...]:
        return ("hidden", "heads")

    @property
    def needs_degrees(self) -> bool:
        """Whether the model's layers read whole-graph in-degrees from their blocks
        (``Block.src_degree``), so the loader must attach them."""
        return self.model in _CONVS and _CONVS[self.model].needs_degrees

    @property
    def first_hop(self) -> str | None:
        """The aggregation (:mod:`disktrain.kernels.aggregate`) the model's first layer
        computes and can take pre-aggregated (``x_agg``): "mean" for sage, "gcn" for gcn; None
        for gat, with input dropout and for the MLP (which ignores ``x_agg``: it takes any)."""
        if self.model not in _CONVS or self._first_hop_refusal():
            return None
        return _CONVS[self.model].first_hop

    def check_first_hop(self, aggregate: str | None, source: str) -> None:
        """Raise ValueError unless the model trains on ``source``'s batches, pre-aggregated
        with ``aggregate`` (None: not pre-aggregated, which every model takes)."""
        if aggregate is None or self.model == "mlp" or aggregate == self.first_hop:
            return
        reason = self._first_hop_refusal() or (
            f"model {self.model!r} aggregates its first layer with "
            f"{_CONVS[self.model].first_hop!r}, not {aggregate!r}")
        fix = f"with {self.first_hop!r}" if self.first_hop else "without it"
        raise ValueError(f"{source}: packed with {FIRST_HOP_OPTION} = {aggregate!r}, but "
                         f"{reason}; prepare {fix}")

    def _first_hop_refusal(self) -> str | None:
        """Why the model cannot take a pre-aggregated first layer at all (None: it can)."""
        if self.model in ("rsage", "rgat"):
            return f"model {self.model!r} (typed graphs) takes no pre-aggregated first layer"
        if self.model == "gat":
            return "model 'gat' attends over every raw neighbour row"
        if self.input_dropout > 0:
            return (f"input_dropout = {self.input_dropout} drops raw rows, which does not "
                    "commute with aggregating them")
        return None

    def sized(self, *, in_dim: int, num_classes: int, num_layers: int) -> "GNNConfig":
        """This architecture for features of width ``in_dim``, ``num_classes`` logits and
        ``num_layers`` blocks (one per sampled hop); :func:`build_model` builds it."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}
        return GNNConfig(**fields, in_dim=in_dim, num_classes=num_classes,
                         num_layers=num_layers)


@dataclass(frozen=True, kw_only=True)
class GNNConfig(ModelConfig):
    """A :class:`ModelConfig` with the sizes the data decides; see :func:`build_model`."""

    in_dim: int
    """Width of the input node features."""
    num_classes: int
    """Number of output logits per seed node."""
    num_layers: int = 2
    """Number of layers; a GNN consumes one block per layer."""

    def _positive_ints(self) -> tuple[str, ...]:
        return ("in_dim", "hidden", "num_classes", "num_layers", "heads")

    @property
    def dims(self) -> list[int]:
        """Input and output width of each layer: ``[in_dim, hidden, ..., num_classes]``."""
        return [self.in_dim] + [self.hidden] * (self.num_layers - 1) + [self.num_classes]


def build_model(cfg: GNNConfig) -> nn.Module:
    """The model ``cfg`` describes; ``model(x, blocks)`` returns logits for the seed nodes."""
    return MLP(cfg) if cfg.model == "mlp" else GNN(cfg)


class GNN(nn.Module):
    """One convolution per block, ReLU and dropout between layers.

    ``forward(x, blocks)``: ``x`` holds the features of ``blocks[0]``'s src nodes (the farthest
    hop); ``blocks[-1]``'s dst nodes are the seeds, whose logits (num_seeds, num_classes) are
    returned. ``blocks[i].num_dst`` must equal ``blocks[i + 1].num_src``.
    ``forward(x, blocks, x_agg)``: the first layer pre-aggregated (``cfg.first_hop``): ``x``
    and ``x_agg`` hold its dst nodes' own rows and their aggregate, ``blocks`` the layers above
    it (none for one layer); the same logits, up to rounding.
    """

    def __init__(self, cfg: GNNConfig) -> None:
        super().__init__()
        dims = cfg.dims
        self.convs = nn.ModuleList(
            _conv(cfg, dims[i], dims[i + 1], i == cfg.num_layers - 1)
            for i in range(cfg.num_layers)
        )
        self.dropout = cfg.dropout
        self.input_dropout = cfg.input_dropout
        self.first_hop_refusal = cfg._first_hop_refusal()

    def forward(self, x: torch.Tensor, blocks: Sequence[Block],
                x_agg: torch.Tensor | None = None) -> torch.Tensor:
        if x_agg is not None and self.first_hop_refusal:
            raise ValueError(f"GNN: x_agg given ({FIRST_HOP_OPTION}), but "
                             f"{self.first_hop_refusal}")
        first = 0 if x_agg is None else 1  # layers whose input comes pre-aggregated
        _check_blocks(blocks, len(self.convs) - first,
                      " above the pre-aggregated first" if first else "")
        h = F.dropout(x, p=self.input_dropout, training=self.training)
        for i, conv in enumerate(self.convs):
            h = conv(h, blocks[i - first]) if i >= first else conv.aggregated(h, x_agg)
            if i < len(self.convs) - 1:
                h = F.dropout(F.relu(h), p=self.dropout, training=self.training)
        return h


class MLP(nn.Module):
    """Baseline with the GNN's widths that sees only the seeds' own features: the first
    ``blocks[-1].num_dst`` rows of ``x``, or all of them without blocks; ``x_agg`` is ignored."""

    def __init__(self, cfg: GNNConfig) -> None:
        super().__init__()
        dims = cfg.dims
        self.lins = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(cfg.num_layers))
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, blocks: Sequence[Block],
                x_agg: torch.Tensor | None = None) -> torch.Tensor:
        h = x[: blocks[-1].num_dst] if blocks else x
        for i, lin in enumerate(self.lins):
            h = lin(h)
            if i < len(self.lins) - 1:
                h = F.dropout(F.relu(h), p=self.dropout, training=self.training)
        return h


_CONVS = {"sage": SAGEConv, "gcn": GCNConv, "gat": GATConv}
"""Model name -> its convolution class (which declares ``needs_degrees``)."""


def _conv(cfg: GNNConfig, in_dim: int, out_dim: int, last: bool) -> nn.Module:
    """Layer ``in_dim -> out_dim`` of ``cfg``'s model (``last``: the output layer)."""
    if cfg.model != "gat":
        return _CONVS[cfg.model](in_dim, out_dim)
    # Hidden layers concatenate heads of hidden // heads each; the last layer averages them.
    per_head = out_dim if last else out_dim // cfg.heads
    return GATConv(in_dim, per_head, heads=cfg.heads, concat=not last,
                   attn_dropout=cfg.attn_dropout)


def _check_blocks(blocks: Sequence[Block], num_layers: int, which: str = "") -> None:
    if len(blocks) != num_layers:
        raise ValueError(f"GNN: expected {num_layers} blocks (one per layer{which}), "
                         f"got {len(blocks)}")
    for i in range(num_layers - 1):
        if blocks[i].num_dst != blocks[i + 1].num_src:
            raise ValueError(f"GNN: blocks[{i}].num_dst = {blocks[i].num_dst} must equal "
                             f"blocks[{i + 1}].num_src = {blocks[i + 1].num_src}")
