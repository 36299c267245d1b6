"""GraphSAGE convolution with mean aggregation."""

from typing import ClassVar

import torch
from torch import nn

from disktrain.loader.block import Block, check_features


class SAGEConv(nn.Module):
    """``h_dst = W_self x_dst + b + W_neigh mean_{src -> dst} x_src``.

    A dst node without in-edges aggregates zeros. The neighbour projection is applied before
    or after aggregating, whichever costs fewer operations on this block (the same result up
    to rounding): projecting first multiplies every src row, aggregating first moves ``in_dim``
    values per edge. Sampled blocks have many more src than dst nodes, so aggregating first
    usually wins even when ``out_dim < in_dim`` (1.7x faster per batch measured at 256 -> 128,
    fanouts 10,10).
    """

    needs_degrees: ClassVar[bool] = False
    """Reads no whole-graph degrees from its blocks."""
    first_hop: ClassVar[str | None] = "mean"
    """The aggregation (:mod:`disktrain.kernels.aggregate`) :meth:`aggregated` takes."""

    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        self.lin_self = nn.Linear(in_dim, out_dim, bias=bias)
        self.lin_neigh = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, block: Block) -> torch.Tensor:
        check_features(x, block, "SAGEConv")
        d_in, d_out = self.lin_neigh.in_features, self.lin_neigh.out_features
        project_first = block.num_src * d_in * d_out + block.num_edges * d_out
        aggregate_first = block.num_edges * d_in + block.num_dst * d_in * d_out
        edges = block.src, block.dst, block.num_dst
        if project_first < aggregate_first:
            return self.lin_self(x[: block.num_dst]) + mean_by_dst(self.lin_neigh(x), *edges)
        return self.aggregated(x[: block.num_dst], mean_by_dst(x, *edges))

    def aggregated(self, x_self: torch.Tensor, x_agg: torch.Tensor) -> torch.Tensor:
        """The layer's output from the dst nodes' own rows ``x_self`` and their neighbours'
        mean ``x_agg`` (pre-aggregated: :func:`mean_by_dst` of the raw rows)."""
        return self.lin_self(x_self) + self.lin_neigh(x_agg)

    @property
    def neighbour_projection(self) -> nn.Linear:
        """The bias-free map of neighbour rows, which commutes with their mean."""
        return self.lin_neigh

    def projected(self, x_self: torch.Tensor, p_agg: torch.Tensor) -> torch.Tensor:
        """The output from ``x_self`` and the mean of the neighbours' projected rows
        (:attr:`neighbour_projection` applied before aggregating)."""
        return self.lin_self(x_self) + p_agg


def mean_by_dst(h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                num_dst: int) -> torch.Tensor:
    """(num_dst, d): mean of ``h[src]`` over the edges ``src -> dst`` into each dst node;
    zeros where none. ``h`` holds the source nodes' rows, which need not be dst nodes."""
    total = h.new_zeros(num_dst, h.shape[1]).index_add_(0, dst, h[src])
    deg = torch.bincount(dst, minlength=num_dst).clamp_(min=1).to(h.dtype)
    return total / deg.unsqueeze(1)
