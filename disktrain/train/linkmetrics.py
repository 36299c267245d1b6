"""Link prediction metrics, as OGB computes them: a positive edge ranked against its own
negatives (MRR, Hits@K; ogbl-citation2's protocol) and the area under the ROC curve over
every positive and negative score."""

from __future__ import annotations

import torch

HITS_AT = (10, 50, 100)


def ranks(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Each positive's rank among its negatives, 1 best: ``pos`` (P,) scores, ``neg`` (P, K);
    ties count half (OGB's mean of the optimistic and pessimistic ranks)."""
    if neg.ndim != 2 or pos.shape != neg.shape[:1]:
        raise ValueError(f"expected pos (P,) and neg (P, K) scores, got {tuple(pos.shape)} "
                         f"and {tuple(neg.shape)}")
    pos = pos.reshape(-1, 1)
    optimistic = (neg > pos).sum(dim=1)
    pessimistic = (neg >= pos).sum(dim=1)
    return 0.5 * (optimistic + pessimistic).to(torch.float64) + 1


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """The probability that a positive scores above a negative (ties half): the ROC AUC of
    every score in ``pos`` against every score in ``neg`` (Mann-Whitney U)."""
    scores = torch.cat((pos.reshape(-1), neg.reshape(-1))).to(torch.float64)
    n_pos, n_neg = pos.numel(), neg.numel()
    if not n_pos or not n_neg:
        raise ValueError(f"auc needs positives and negatives, got {n_pos} and {n_neg}")
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    upper = torch.cumsum(counts, 0).to(torch.float64)
    mid_rank = upper - (counts - 1) / 2.0  # 1-based rank, ties averaged
    pos_ranks = mid_rank[inverse[:n_pos]].sum()
    return float((pos_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def link_metrics(pos: torch.Tensor, neg: torch.Tensor, hits_at=HITS_AT) -> dict[str, float]:
    """MRR, Hits@K for each K of ``hits_at`` and AUC of positive scores ``pos`` (P,)
    against their negatives ``neg`` (P, K)."""
    r = ranks(pos, neg)
    out = {"mrr": float((1.0 / r).mean())}
    out.update({f"hits@{k}": float((r <= k).to(torch.float64).mean()) for k in hits_at})
    out["auc"] = auc(pos, neg)
    return out
