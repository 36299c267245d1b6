"""Gradient aggregation rules: pure functions from an (n, d) stack of worker gradients to (d,).

Every rule is deterministic (no global RNG), so ranks that aggregate the same stack stay
bit-identical. The robust rules follow their common implementations (e.g. ByzFL); `f` is the
number of Byzantine workers tolerated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def _check_stack(x: Tensor) -> int:
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"expected an (n, d) stack of gradients with n >= 1, got {tuple(x.shape)}")
    return x.shape[0]


def _check_f(f: int, n: int, need: int, rule: str, condition: str) -> None:
    if f < 0:
        raise ValueError(f"{rule}: f must be >= 0, got f={f}")
    if n < need:
        raise ValueError(f"{rule} needs {condition}, got n={n}, f={f}")


def _median(x: Tensor) -> Tensor:
    """Median along dim 0: the mean of the two middle values when the count is even."""
    s = x.sort(dim=0).values
    n = s.shape[0]
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _gram(x: Tensor) -> Tensor:
    """x x^T in float64 (products of float32 values are exact there), on the CPU."""
    xd = x.double()
    return (xd @ xd.T).cpu()


def mean(x: Tensor) -> Tensor:
    """Coordinate-wise mean (no Byzantine tolerance)."""
    _check_stack(x)
    return x.mean(dim=0)


def coordinate_median(x: Tensor) -> Tensor:
    """Coordinate-wise median; for even n the mean of the two middle values."""
    _check_stack(x)
    return _median(x)


def trimmed_mean(x: Tensor, f: int) -> Tensor:
    """Per coordinate, drop the f largest and f smallest values and average the rest.

    Requires n >= 2f + 1.
    """
    n = _check_stack(x)
    _check_f(f, n, 2 * f + 1, "trimmed_mean", "n >= 2f + 1")
    return x.sort(dim=0).values[f:n - f].mean(dim=0)


def krum_scores(x: Tensor, f: int) -> Tensor:
    """Krum score of every worker: sum of squared distances to its n - f - 2 nearest others."""
    n = _check_stack(x)
    _check_f(f, n, 2 * f + 3, "krum", "n > 2f + 2")
    g = _gram(x)
    sq = g.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    dist.fill_diagonal_(math.inf)
    return dist.sort(dim=1).values[:, :n - f - 2].sum(dim=1)


def multi_krum(x: Tensor, f: int, m: int) -> Tensor:
    """Average of the m workers with the lowest Krum scores (ties: lowest index first).

    Requires n > 2f + 2 and 1 <= m <= n.
    """
    n = _check_stack(x)
    if not 1 <= m <= n:
        raise ValueError(f"multi_krum needs 1 <= m <= n, got m={m}, n={n}")
    best = torch.sort(krum_scores(x, f), stable=True).indices[:m]
    return x[best.to(x.device)].mean(dim=0)


def krum(x: Tensor, f: int) -> Tensor:
    """The single worker gradient with the lowest Krum score. Requires n > 2f + 2."""
    return multi_krum(x, f, 1)


def geometric_median(x: Tensor, iters: int = 100, eps: float = 1e-8,
                     tol: float = 1e-6) -> Tensor:
    """Geometric median by smoothed Weiszfeld (distances floored at eps), from the mean.

    Stops after `iters` steps or when a step moves the estimate by <= tol * its norm.
    """
    _check_stack(x)
    z = x.mean(dim=0)
    for _ in range(iters):
        w = 1 / torch.linalg.vector_norm(x - z, dim=1).clamp_min(eps)
        step = (w / w.sum()) @ x
        moved = torch.linalg.vector_norm(step - z)
        z = step
        if moved <= tol * torch.linalg.vector_norm(z):
            break
    return z


def _flag_subspace(g: Tensor, w: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Top-r left singular vectors of X diag(w), as Y = X A; returns A and the ratios ||Y^T x_i||^2.

    g is the Gram matrix X^T X of the unit gradients; directions with a negligible singular
    value (fewer than r independent columns) are dropped.
    """
    evals, evecs = torch.linalg.eigh(w[:, None] * g * w[None, :])
    evals, evecs = evals.flip(0)[:r], evecs.flip(1)[:, :r]
    keep = evals > evals[0].clamp_min(0) * 1e-10
    a = w[:, None] * evecs[:, keep] / evals[keep].sqrt()
    return a, ((a.T @ g) ** 2).sum(dim=0)


def _flag_objective(ratios: Tensor) -> Tensor:
    return (1 - ratios).clamp_min(0).sqrt().sum()


def flag_aggregate(x: Tensor, r: int, iters: int = 100, tol: float = 1e-6,
                   eps: float = 1e-8) -> Tensor:
    """Flag Aggregator (Almasi et al.): project the unit gradients onto a subspace fitted by IRLS.

    With x_i = g_i / ||g_i|| (zero gradients stay zero) and Y a d x r orthonormal basis, IRLS
    lowers sum_i sqrt(max(0, 1 - ||Y^T x_i||^2)): w_i = (|1 - ||Y^T x_i||^2| + eps)^(-1/4) and
    Y = top-r left singular vectors of X diag(w), computed from the n x n Gram matrix (cheap for
    d >> n). The first Y uses w_i = 1 (top-r principal directions of the unit gradients), so
    the result is deterministic; a Y that does not lower the objective is discarded, and the
    loop stops when the objective falls by <= tol (relative) or after `iters` steps. The
    optional pairwise terms (lambda > 0) are not implemented.

    Output: median_i ||g_i|| * Y Y^T mean_i(x_i). The reference's Y Y^T sum_i x_i / r discards
    magnitudes; this one equals the plain mean when all norms are equal and Y spans every
    gradient, and its norm is at most the median norm: a minority of huge gradients can neither
    inflate it nor, normalized to one unit vote each, outweigh the honest directions.

    r is clamped to n (r < 1 is an error). RobustConfig's default is r = n: Y then spans every
    gradient, the result is median_i ||g_i|| * mean_i(x_i), and with f attackers its cosine to
    the honest sum s = sum_honest x_i is >= (||s|| - f) / (||s|| + f). In measurements a
    smaller r (n - f, n - 2f, f + 1) was no more robust and cut the honest signal: a lone
    attacker fits one dimension exactly, the most profitable dimension for this concave
    objective, so it stays in Y. r = 1 does project out attackers orthogonal to the honest
    direction, but fails outright when a colluding bloc outweighs that direction.
    """
    n = _check_stack(x)
    if r < 1:
        raise ValueError(f"flag_aggregate needs r >= 1, got r={r}")
    r = min(r, n)
    raw = _gram(x)
    norms = raw.diagonal().sqrt()
    inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    g = inv[:, None] * raw * inv[None, :]
    a, ratios = _flag_subspace(g, torch.ones(n, dtype=g.dtype), r)
    objective = _flag_objective(ratios)
    for _ in range(iters):
        cand_a, cand_ratios = _flag_subspace(g, ((1 - ratios).abs() + eps) ** -0.25, r)
        cand = _flag_objective(cand_ratios)
        if not cand < objective:
            break
        a, ratios, objective, previous = cand_a, cand_ratios, cand, objective
        if previous - cand <= tol * previous:
            break
    coef = a @ (a.T @ g.sum(dim=1)) / n  # Y Y^T mean_i(x_i) = X coef
    coef = coef * _median(norms) * inv
    return coef.to(device=x.device, dtype=x.dtype) @ x


@dataclass(frozen=True, kw_only=True)
class RobustConfig:
    """Which aggregation rule combines the workers' gradients, and its parameters."""

    aggregator: str = "mean"
    """One of AGGREGATORS: mean, median, trimmed-mean, krum, multi-krum, geomed, flag."""
    f: int = 0
    """Byzantine workers tolerated: trimmed-mean, krum and multi-krum use it; median, geomed
    and flag check n >= 2f + 1; mean ignores it."""
    subspace: int = 0
    """Flag's r (0: n, every worker; see flag_aggregate)."""
    m: int = 0
    """Workers multi-krum averages (0: n - f)."""
    max_iters: int = 100
    """Iteration cap of geomed (Weiszfeld) and flag (IRLS)."""
    tol: float = 1e-6
    """Relative stopping tolerance of geomed and flag."""

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"RobustConfig.aggregator {self.aggregator!r} is unknown; "
                             f"choose one of {', '.join(AGGREGATORS)}")
        for name in ("f", "subspace", "m"):
            if getattr(self, name) < 0:
                raise ValueError(f"RobustConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_iters < 1:
            raise ValueError(f"RobustConfig.max_iters must be >= 1, got {self.max_iters}")
        if not 0 <= self.tol < math.inf:
            raise ValueError(f"RobustConfig.tol must be finite and >= 0, got {self.tol}")


AGGREGATORS: dict[str, Callable[[Tensor, RobustConfig], Tensor]] = {
    "mean": lambda x, cfg: mean(x),
    "median": lambda x, cfg: coordinate_median(x),
    "trimmed-mean": lambda x, cfg: trimmed_mean(x, cfg.f),
    "krum": lambda x, cfg: krum(x, cfg.f),
    "multi-krum": lambda x, cfg: multi_krum(x, cfg.f, cfg.m or x.shape[0] - cfg.f),
    "geomed": lambda x, cfg: geometric_median(x, iters=cfg.max_iters, tol=cfg.tol),
    "flag": lambda x, cfg: flag_aggregate(x, cfg.subspace or x.shape[0], iters=cfg.max_iters,
                                          tol=cfg.tol),
}
"""Name -> rule applied to an (n, d) stack under a RobustConfig."""

_MAJORITY = ("median", "geomed", "flag")
"""Rules whose only requirement is an honest majority, n >= 2f + 1."""


def aggregate(x: Tensor, cfg: RobustConfig) -> Tensor:
    """Combine an (n, d) stack of worker gradients into one (d,) gradient by cfg's rule.

    Raises ValueError (naming n and f) when the rule cannot tolerate f of n workers.
    """
    n = _check_stack(x)
    if cfg.aggregator in _MAJORITY:
        _check_f(cfg.f, n, 2 * cfg.f + 1, cfg.aggregator, "n >= 2f + 1")
    return AGGREGATORS[cfg.aggregator](x, cfg)
