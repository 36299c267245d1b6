"""Graph convolution (Kipf & Welling) with symmetric normalization on a block."""

from typing import ClassVar

import torch
from torch import nn

from disktrain.loader.block import Block, check_features, self_loop_edges


class GCNConv(nn.Module):
    """``H = D_dst^-1/2 (A + I) D_src^-1/2 X W + b`` on the bipartite block.

    ``A`` is the block's (num_dst, num_src) adjacency, ``A[d, s] = 1`` for an edge ``s -> d``,
    and ``I`` adds the self loop ``i -> i`` for every dst node ``i`` (existing ``i -> i`` edges
    are replaced, not doubled). The degrees are counted on ``A + I`` within the block:
    ``D_dst`` its row sums (in-degree + 1), ``D_src`` its column sums (the src node's out-degree
    in the block, + 1 if it is also a dst node). This is DGL ``GraphConv(norm="both")`` on the
    block with self loops added; on a whole graph (num_src == num_dst, symmetric A) it is
    exactly Kipf's ``D^-1/2 (A + I) D^-1/2``.

    When the block carries ``src_degree`` (whole-graph in-degrees), the degrees are those
    of the whole graph instead, and each dst node's sum over its sampled neighbors is scaled
    by (its degree / neighbors sampled): an unbiased estimate of the full-graph layer, and
    exactly Kipf's layer when every neighbor was sampled.
    """

    needs_degrees: ClassVar[bool] = True
    """Normalizes with whole-graph in-degrees (``Block.src_degree``) when its blocks carry them:
    a model of these layers asks the loader to attach them."""
    first_hop: ClassVar[str | None] = "gcn"
    """The aggregation (:mod:`disktrain.kernels.aggregate`) :meth:`aggregated` takes."""

    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def forward(self, x: torch.Tensor, block: Block) -> torch.Tensor:
        check_features(x, block, "GCNConv")
        src, dst = self_loop_edges(block)
        h = self.lin(x)
        if block.src_degree is None:
            deg_src = torch.bincount(src, minlength=block.num_src).to(h.dtype)
            deg_dst = torch.bincount(dst, minlength=block.num_dst).to(h.dtype)
            norm = (deg_src[src] * deg_dst[dst]).rsqrt()
        else:
            deg = block.src_degree.to(h.dtype) + 1
            sampled = torch.bincount(dst, minlength=block.num_dst).to(h.dtype) - 1
            scale = torch.where(sampled > 0, (deg[:block.num_dst] - 1) / sampled.clamp(min=1),
                                torch.ones_like(sampled))
            is_loop = torch.arange(len(src), device=src.device) >= len(src) - block.num_dst
            norm = (deg[src] * deg[dst]).rsqrt() * torch.where(is_loop, 1.0, scale[dst])
        out = h.new_zeros(block.num_dst, h.shape[1])
        out.index_add_(0, dst, h[src] * norm.unsqueeze(1))
        return out if self.bias is None else out + self.bias

    def aggregated(self, x_self: torch.Tensor, x_agg: torch.Tensor) -> torch.Tensor:
        """The layer's output from ``x_agg``, the dst nodes' normalized sums of the raw rows
        (self loop included, whole-graph degrees: pre-aggregated); ``x_self`` is not read."""
        out = self.lin(x_agg)
        return out if self.bias is None else out + self.bias

    @property
    def neighbour_projection(self) -> nn.Linear:
        """The bias-free map of the rows, which commutes with their normalized sum."""
        return self.lin

    def projected(self, x_self: torch.Tensor | None, p_agg: torch.Tensor) -> torch.Tensor:
        """The output from the normalized sum of the projected rows (``x_self`` not read)."""
        return p_agg if self.bias is None else p_agg + self.bias
