"""Flag Aggregator (Almasi et al.): project the unit gradients onto a subspace fitted by IRLS.

Notation: x_i = g_i / ||g_i|| (zero gradients stay zero), X the d x n matrix of the x_i, Y a
d x r orthonormal basis, d_ij = x_i - x_j. The objective (the flag median with the paper's
pairwise-difference terms, weighted by mu = lambda / (n (n - 1)) as in the reference code):

    sum_i sqrt(max(0, 1 - ||Y^T x_i||^2)) + mu^2 sum_{i != j} sqrt(|1 - ||Y^T d_ij||^2|)

The reference scales each pairwise column d_ij by mu (its weight, like every IRLS weight, is
applied to the column, so the term's coefficient in the objective is mu^2), and keeps the
absolute value |1 - ||Y^T d_ij||^2| although ||d_ij|| reaches 2; both are reproduced here.

IRLS: with weights w_i = (|1 - ||Y^T x_i||^2| + eps)^(-1/4) and w_ij = mu (|1 -
||Y^T d_ij||^2| + eps)^(-1/4), the next Y is the top-r left singular vectors of the weighted
columns [w_i x_i, w_ij d_ij], computed in the n-dimensional span of X from the n x n Gram
matrix (cheap for d >> n): the columns are X S with S S^T = C = diag(w^2) + 2 sum_{i<j}
w_ij^2 (e_i - e_j)(e_i - e_j)^T.

Stopping rule: the first Y comes from uniform weights (w_i = 1, w_ij = mu), so the result is
deterministic (the reference starts from a random Y); a step whose Y does not lower the
objective is discarded and ends the loop; the loop also ends when the objective falls by <= tol
(relative) or after `iters` steps (the reference: an absolute fall <= 1e-10, or its n_its, 1 to
4 in its aggregation rules, keeping the previous Y when the last step raised the objective).

Output scaling: median_i ||g_i|| * Y Y^T mean_i(x_i). The reference returns Y Y^T sum_i x_i / r,
which discards magnitudes; this one equals the plain mean when all norms are equal and Y spans
every gradient, and its norm is at most the median norm: a minority of huge gradients can
neither inflate it nor, normalized to one unit vote each, outweigh the honest directions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from disktrain.robust.select import median
from disktrain.robust.stack import (
    check_stack,
    drop_nonfinite,
    finite_mask,
    gram,
    nan_vector,
    require,
)


def default_subspace(n: int, f: int) -> int:
    """The subspace dimension r used when none is given: f + 1, below n under the condition
    n >= 2f + 1 (the reference code's default is r = 1).

    Why r < n: with r = n the subspace spans every worker's gradient, the projection is the
    identity and the rule reduces to a mean of unit gradients rescaled to the median norm,
    whatever the IRLS weights. Why f + 1: the f attackers can claim at most f directions of
    the fit, so the top f + 1 always keep a direction held by the honest majority, while the
    directions beyond it, which fit few workers (lone attackers, honest noise), are left out.
    Measured on synthetic stacks (8 workers, honest gradients at cosine 0.55 to 0.9 to their
    mean, a colluding bloc orthogonal to it): r = 1 is the most robust until the bloc
    outweighs the honest direction (f = 3), then it follows the bloc (cosine 0 to the honest
    mean); r = f + 1 never failed and stayed within about 0.1 of r = n in cosine. In training
    (ByzFL's protocol, scripts/bench_robust.py, README) it did not beat r = n: without NNM
    the optimized ALIE, which searches its scale against this very rule, fits the small
    subspace; after NNM the two are within a few points.
    """
    require("flag", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    return f + 1


def _sqrt_psd(c: Tensor) -> Tensor:
    """The symmetric square root of a positive semi-definite matrix."""
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def _fit(g: Tensor, w: Tensor, pair_w: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Top-r left singular vectors of the weighted columns, as Y = X A; returns A and P = Y^T X.

    g: the Gram matrix X^T X of the unit gradients; w: row weights; pair_w: symmetric (n, n)
    pair weights (zero diagonal). Directions with a negligible singular value are dropped.
    """
    lap = torch.diag(pair_w.pow(2).sum(dim=1)) - pair_w.pow(2)  # sum_{i<j} w_ij^2 (ei-ej)(.)^T
    s = _sqrt_psd(torch.diag(w.pow(2)) + 2 * lap)
    evals, evecs = torch.linalg.eigh(s @ g @ s)
    evals, evecs = evals.flip(0)[:r], evecs.flip(1)[:, :r]
    keep = evals > evals[0].clamp_min(0) * 1e-10
    a = s @ evecs[:, keep] / evals[keep].sqrt()
    return a, a.T @ g


def _terms(p: Tensor) -> tuple[Tensor, Tensor]:
    """1 - ||Y^T x_i||^2 (n,) and 1 - ||Y^T d_ij||^2 (n, n) from P = Y^T X."""
    rows = 1 - p.pow(2).sum(dim=0)
    diff = p[:, :, None] - p[:, None, :]
    return rows, 1 - diff.pow(2).sum(dim=0)


def _objective(rows: Tensor, pairs: Tensor, mu: float) -> Tensor:
    off = ~torch.eye(rows.shape[0], dtype=torch.bool)
    return rows.clamp_min(0).sqrt().sum() + mu ** 2 * pairs.abs().sqrt()[off].sum()


def _irls(g: Tensor, r: int, lam: float, iters: int, tol: float,
          eps: float) -> tuple[Tensor, Tensor]:
    """IRLS on the unit Gram matrix g: A (Y = X A) and P = Y^T X of the fitted subspace."""
    n = g.shape[0]
    mu = lam / (n * (n - 1)) if n > 1 else 0.0
    off = 1 - torch.eye(n, dtype=g.dtype)
    a, p = _fit(g, torch.ones(n, dtype=g.dtype), mu * off, r)
    rows, pairs = _terms(p)
    objective = _objective(rows, pairs, mu)
    for _ in range(iters):
        w = (rows.abs() + eps) ** -0.25
        pair_w = mu * (pairs.abs() + eps) ** -0.25 * off
        cand_a, cand_p = _fit(g, w, pair_w, r)
        cand_rows, cand_pairs = _terms(cand_p)
        cand = _objective(cand_rows, cand_pairs, mu)
        if not cand < objective:
            break
        a, p, rows, pairs, previous, objective = cand_a, cand_p, cand_rows, cand_pairs, \
            objective, cand
        if previous - cand <= tol * previous:
            break
    return a, p


def _unit_gram(x: Tensor) -> tuple[Tensor, Tensor]:
    """The Gram matrix of the unit rows of x (float64, CPU) and the rows' norms."""
    raw = gram(x)
    norms = raw.diagonal().sqrt()
    inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    return inv[:, None] * raw * inv[None, :], norms


def _check(x: Tensor, r: int, lam: float) -> None:
    check_stack(x)
    if r < 1:
        raise ValueError(f"flag_aggregate needs r >= 1, got r={r}")
    if not 0 <= lam < float("inf"):
        raise ValueError(f"flag_aggregate needs a finite lambda >= 0, got lam={lam}")


def flag_basis(x: Tensor, r: int, *, lam: float = 0.0, iters: int = 100, tol: float = 1e-6,
               eps: float = 1e-8) -> Tensor:
    """The (d, r') orthonormal basis Y the aggregator fits to the finite rows of x (r' <= r:
    directions with a negligible singular value are dropped; r is clamped to n)."""
    _check(x, r, lam)
    y = x[finite_mask(x)]
    g, norms = _unit_gram(y)
    a, _ = _irls(g, min(r, y.shape[0]), lam, iters, tol, eps)
    inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    return y.T.double() @ (inv[:, None] * a).to(y.device)


def flag_aggregate(x: Tensor, r: int, iters: int = 100, tol: float = 1e-6,
                   eps: float = 1e-8, *, lam: float = 0.0) -> Tensor:
    """Flag Aggregator: median_i ||g_i|| * Y Y^T mean_i(x_i) with Y fitted by IRLS (module
    docstring: objective, pairwise terms `lam`, stopping rule, output scaling).

    Any n >= 1; r is clamped to n (r < 1 is an error); up to (n - 1) // 2 non-finite rows are
    dropped. RobustConfig's default r is default_subspace(n, f) = f + 1 < n.
    """
    n = check_stack(x)
    _check(x, r, lam)
    kept = drop_nonfinite(x, (n - 1) // 2)
    if kept is None:
        return nan_vector(x)
    x = kept[0]
    n = x.shape[0]
    g, norms = _unit_gram(x)
    a, _ = _irls(g, min(r, n), lam, iters, tol, eps)
    inv = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    coef = a @ (a.T @ g.sum(dim=1)) / n  # Y Y^T mean_i(x_i) = X coef
    coef = coef * median(norms[:, None])[0] * inv
    return coef.to(device=x.device, dtype=x.dtype) @ x
