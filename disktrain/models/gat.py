"""Graph attention convolution (Velickovic et al.), multi-head."""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from disktrain.loader.block import Block, check_features, self_loop_edges


class GATConv(nn.Module):
    """Multi-head attention over each dst node's in-edges plus its self loop.

    Per head ``k`` with ``h = W x`` (``W`` shared by src and dst, since dst nodes are src
    nodes): ``e_sd = LeakyReLU(a_src . h_s + a_dst . h_d, negative_slope)``, ``alpha_sd`` the
    softmax of ``e_sd`` over the in-edges of ``d`` (its self loop included, so every row is
    defined), dropout ``attn_dropout`` on ``alpha`` while training, and
    ``out_d = sum_s alpha_sd h_s``. Heads are concatenated (``heads * out_dim`` outputs) or,
    with ``concat=False`` as in a last layer, averaged (``out_dim`` outputs); then ``+ b``.
    """

    needs_degrees: ClassVar[bool] = False
    """Reads no whole-graph degrees from its blocks."""
    first_hop: ClassVar[str | None] = None
    """Takes no pre-aggregated first layer: it attends over every raw neighbour row."""

    def __init__(self, in_dim: int, out_dim: int, *, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, attn_dropout: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        self.heads, self.out_dim, self.concat = heads, out_dim, concat
        self.negative_slope, self.attn_dropout = negative_slope, attn_dropout
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))
        width = heads * out_dim if concat else out_dim
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None
        for weight in (self.lin.weight, self.att_src, self.att_dst):
            nn.init.xavier_uniform_(weight)

    def forward(self, x: torch.Tensor, block: Block) -> torch.Tensor:
        check_features(x, block, "GATConv")
        h = self.lin(x).view(-1, self.heads, self.out_dim)
        src, dst, alpha = self._attend(h, block)
        out = h.new_zeros(block.num_dst, self.heads, self.out_dim)
        out.index_add_(0, dst, h[src] * alpha.unsqueeze(2))
        out = out.flatten(1) if self.concat else out.mean(1)
        return out if self.bias is None else out + self.bias

    def attention(self, x: torch.Tensor,
                  block: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(src, dst, alpha)``: the edges attended over (self loops last) and their weights.

        ``alpha`` is (num_edges, heads); for each dst node and head its weights sum to 1
        (before attention dropout, which applies only in training mode).
        """
        check_features(x, block, "GATConv")
        return self._attend(self.lin(x).view(-1, self.heads, self.out_dim), block)

    def _attend(self, h: torch.Tensor,
                block: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src, dst = self_loop_edges(block)
        score_src = (h * self.att_src).sum(-1)
        score_dst = (h[: block.num_dst] * self.att_dst).sum(-1)
        logits = F.leaky_relu(score_src[src] + score_dst[dst], self.negative_slope)
        alpha = softmax_by_dst(logits, dst, block.num_dst)
        alpha = F.dropout(alpha, p=self.attn_dropout, training=self.training)
        return src, dst, alpha


def softmax_by_dst(logits: torch.Tensor, dst: torch.Tensor, num_dst: int) -> torch.Tensor:
    """Softmax of (num_edges, heads) ``logits`` over the edges sharing each ``dst`` id.

    Every dst id in ``[0, num_dst)`` that appears gets weights summing to 1; the max is
    subtracted first for stability (detached: softmax does not depend on the shift).
    """
    index = dst.unsqueeze(1).expand_as(logits)
    peak = logits.new_full((num_dst, logits.shape[1]), float("-inf"))
    peak = peak.scatter_reduce(0, index, logits.detach(), reduce="amax")
    weights = (logits - peak[dst]).exp()
    total = weights.new_zeros(num_dst, logits.shape[1]).index_add_(0, dst, weights)
    return weights / total[dst]
