"""Checks and helpers shared by the rules: the (n, d) stack, conditions on n and f, faulty rows.

Non-finite rows (a NaN or an Inf anywhere) are faulty by construction, so every rule drops them
before it computes and counts them into its f: a rule that tolerates f Byzantine workers runs on
the n - k finite rows with f - k, which meets its condition on n and f whenever n and f do. When
k > f (more faulty rows than the rule tolerates), the result is a NaN vector: the training loop
then reports (or skips, under on_nonfinite="skip") a non-finite step instead of training on an
aggregate the rule cannot vouch for. Rules without f (the median, the geometric median, Flag)
tolerate any minority, k <= (n - 1) // 2.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_stack(x: Tensor) -> int:
    """n, the number of rows of an (n, d) stack with n >= 1 (ValueError otherwise)."""
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"expected an (n, d) stack of gradients with n >= 1, got {tuple(x.shape)}")
    return x.shape[0]


def require(rule: str, n: int, f: int, ok: bool, condition: str) -> None:
    """ValueError naming the rule, n and f unless f >= 0 and `ok` (the rule's `condition`)."""
    if f < 0:
        raise ValueError(f"{rule}: f must be >= 0, got n={n}, f={f}")
    if not ok:
        raise ValueError(f"{rule} needs {condition}, got n={n}, f={f}")


def finite_mask(x: Tensor) -> Tensor:
    """(n,) bool: the rows whose every value is finite (one pass: a row's minimum and maximum
    are finite exactly then, NaN propagating through both)."""
    if x.shape[1] == 0:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return x.amin(dim=1).isfinite() & x.amax(dim=1).isfinite()  # faster than aminmax


def drop_nonfinite(x: Tensor, tolerated: int) -> tuple[Tensor, int] | None:
    """The finite rows of x and k, their count of dropped rows; None when k > tolerated."""
    keep = finite_mask(x)
    k = int((~keep).sum())
    if k > tolerated:
        return None
    return (x if k == 0 else x[keep]), k


def nan_vector(x: Tensor) -> Tensor:
    """The (d,) result of a rule that saw more faulty rows than it tolerates."""
    return torch.full((x.shape[1],), float("nan"), dtype=x.dtype, device=x.device)


def gram(x: Tensor) -> Tensor:
    """x x^T in float64 (products of float32 values are exact there), on the CPU."""
    xd = x.double()
    return (xd @ xd.T).cpu()


def squared_distances(x: Tensor) -> Tensor:
    """(n, n) float64 squared Euclidean distances between rows (from the Gram matrix)."""
    g = gram(x)
    sq = g.diagonal()
    return (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
