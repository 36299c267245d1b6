"""Link prediction models: a node encoder (any of :mod:`disktrain.models.gnn`'s) and a decoder
that scores a pair of node embeddings (a logit: positive means linked)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from disktrain.loader.block import Block

DECODERS = ("dot", "mlp")


class DotDecoder(nn.Module):
    """``<h_src, h_dst>``: no parameters."""

    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return (src * dst).sum(dim=-1)


class MLPDecoder(nn.Module):
    """An MLP over ``h_src * h_dst`` (OGB's link predictor): ``width -> width -> 1``."""

    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(width, 1))

    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return self.mlp(src * dst).squeeze(-1)


def build_decoder(name: str, width: int, dropout: float = 0.0) -> nn.Module:
    """Decoder ``name`` (one of :data:`DECODERS`) of ``width``-wide embeddings."""
    if name not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {name!r}")
    return DotDecoder() if name == "dot" else MLPDecoder(width, dropout)


class LinkModel(nn.Module):
    """``forward(x, blocks, x_agg, edge_label_index)``: the encoder's embeddings of the
    seeds, then the decoder's logit for each pair ``edge_label_index`` (2, pairs) of
    positions among them."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor, blocks: Sequence[Block], x_agg: torch.Tensor | None,
                edge_label_index: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x, blocks, x_agg)
        return self.decoder(h[edge_label_index[0]], h[edge_label_index[1]])
