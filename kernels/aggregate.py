"""First-hop aggregation at pack time: the first layer's parameter-free neighbour aggregate,
as weighted edges, and the kernel that sums raw rows into it.

Offline sampling fixes which neighbours each first-layer target aggregates, and for a
mean-GraphSAGE or a GCN that aggregation is linear in the raw features:
``agg[i] = sum_e weight[e] * x[src[e]]`` over the weighted edges ``src[e] -> i`` that
:func:`first_hop_edges` makes from the batch's first block. The packer sums each raw row into
the aggregates of every batch that reads it while it reads the rows in order; the first layer
then reads ``agg`` (and its targets' own rows) instead of every sampled neighbour's row.
"""

from __future__ import annotations

import numba as nb
import numpy as np

AGGREGATIONS = ("mean", "gcn")
"""``mean``: the mean over a target's sampled in-edges (``SAGEConv``'s ``mean_by_dst``);
``gcn``: ``GCNConv``'s normalized sum with a self loop and whole-graph degrees."""


def first_hop_edges(kind: str, edge_src: np.ndarray, edge_dst: np.ndarray, num_dst: int,
                    in_degree: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, dst, weight)``: the weighted edges whose sums into each of the ``num_dst``
    targets are the first layer's aggregate of the block ``edge_src -> edge_dst`` (local ids;
    the targets are src nodes ``0 .. num_dst - 1``).

    ``mean``: every edge, weight ``1 / (in-edges of its dst)``. ``gcn`` (needs ``in_degree``,
    the whole-graph in-degree of every src node): edges ``i -> i`` dropped, one self loop per
    target, the edge ``j -> i`` weighted ``s_i / sqrt(d_j d_i)`` (``d = in_degree + 1``;
    ``s_i = (d_i - 1) / sampled_i`` scales a partial sample of ``i``'s neighbours up) and the
    loop ``1 / d_i``, as :class:`~disktrain.models.gcn.GCNConv` normalizes with degrees.
    Weights are float64, computed once per edge.
    """
    src, dst = np.asarray(edge_src, np.int64), np.asarray(edge_dst, np.int64)
    if kind == "mean":
        count = np.bincount(dst, minlength=num_dst)
        return src, dst, 1.0 / count[dst]
    if kind != "gcn":
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {kind!r}")
    if in_degree is None:
        raise ValueError("gcn aggregation needs the whole-graph in-degree of every src node")
    keep = src != dst
    src, dst = src[keep], dst[keep]
    deg = np.asarray(in_degree, np.float64) + 1.0
    sampled = np.bincount(dst, minlength=num_dst).astype(np.float64)
    scale = np.where(sampled > 0, (deg[:num_dst] - 1.0) / np.maximum(sampled, 1.0), 1.0)
    loop = np.arange(num_dst, dtype=np.int64)
    weight = np.concatenate([scale[dst] / np.sqrt(deg[src] * deg[dst]), 1.0 / deg[:num_dst]])
    return np.concatenate([src, loop]), np.concatenate([dst, loop]), weight


@nb.njit(nogil=True, cache=True)
def scatter_add_rows(out, rows, take, dst, weight):
    """``out[dst[e]] += weight[e] * rows[take[e]]`` for every ``e``, in float32 or wider
    (``out``'s dtype); without the GIL."""
    dim = out.shape[1]
    for e in range(take.shape[0]):
        r, o, w = take[e], dst[e], weight[e]
        for c in range(dim):
            out[o, c] += w * rows[r, c]
