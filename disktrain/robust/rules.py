"""Aggregation rules: pure functions from an (n, d) stack of worker gradients to one (d,) gradient.

Every rule is deterministic (no global RNG), so ranks that aggregate the same stack stay
bit-identical; each states its condition on n and f (the Byzantine workers tolerated) and raises
ValueError naming the rule, n and f when it does not hold. Non-finite rows are dropped and
counted into f (see disktrain.robust.stack). The rules follow their common implementations;
where ByzFL (the EPFL library) uses another convention the docstring says so.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from disktrain.robust.select import median, middle_mean, order_stats
from disktrain.robust.stack import (
    check_stack,
    drop_nonfinite,
    nan_vector,
    require,
    squared_distances,
)

_BLOCK = 1 << 18
"""Columns per block of the mean around the median on a CPU."""


def mean(x: Tensor) -> Tensor:
    """Coordinate-wise mean. Tolerates no faulty worker (f = 0, any n >= 1): a non-finite row
    makes the result NaN."""
    check_stack(x)
    if drop_nonfinite(x, 0) is None:
        return nan_vector(x)
    return x.mean(dim=0)


def coordinate_median(x: Tensor) -> Tensor:
    """Coordinate-wise median; for even n the mean of the two middle values (ByzFL's
    torch.quantile(0.5) convention, not torch.median's lower one). Any n >= 1; robust to any
    minority, so up to (n - 1) // 2 non-finite rows are dropped."""
    n = check_stack(x)
    kept = drop_nonfinite(x, (n - 1) // 2)
    return nan_vector(x) if kept is None else median(kept[0])


def trimmed_mean(x: Tensor, f: int) -> Tensor:
    """Per coordinate, drop the f largest and f smallest values and average the rest.

    Condition: n >= 2f + 1 (ByzFL: 2f < n, the same).
    """
    n = check_stack(x)
    require("trimmed_mean", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    kept = drop_nonfinite(x, f)
    if kept is None:
        return nan_vector(x)
    y, k = kept
    return y.mean(dim=0) if f == k else middle_mean(y, f - k)


def meamed(x: Tensor, f: int) -> Tensor:
    """Mean around the median (ByzFL's Meamed): per coordinate, the mean of the n - f values
    closest to the coordinate-wise median.

    Condition: n >= 2f + 1. Of two values at the same distance the smaller is kept.
    """
    n = check_stack(x)
    require("meamed", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    kept = drop_nonfinite(x, f)
    if kept is None:
        return nan_vector(x)
    y, k = kept
    return _closest_to_median_mean(y, y.shape[0] - (f - k))


def _closest_to_median_mean(y: Tensor, keep: int) -> Tensor:
    """Per coordinate, the mean of the `keep` values of y closest to the median.

    They form a window of the sorted values: starting from all n, drop n - keep times the end
    value farther from the median (on a tie, the larger), then average the window in sorted
    order. Runs on column blocks on a CPU.
    """
    n, d = y.shape
    out = y.new_empty(d)
    block = _BLOCK if y.device.type == "cpu" else max(d, 1)
    ranks = torch.arange(n, device=y.device)[:, None]
    for start in range(0, d, block):
        s = order_stats(y[:, start:start + block], tuple(range(n)))
        med = (s[(n - 1) // 2] + s[n // 2]) / 2
        lo = torch.zeros(s.shape[1], dtype=torch.long, device=y.device)
        hi = torch.full_like(lo, n - 1)
        for _ in range(n - keep):
            low_farther = med - s.gather(0, lo[None])[0] > s.gather(0, hi[None])[0] - med
            lo, hi = lo + low_farther.long(), hi - (~low_farther).long()
        window = (ranks >= lo) & (ranks <= hi)
        out[start:start + block] = torch.where(window, s, 0).sum(dim=0) / keep
    return out


def krum_scores(x: Tensor, f: int) -> Tensor:
    """Krum score of every worker of a finite stack: the sum of squared distances to its
    n - f - 2 nearest others (ByzFL's Krum uses n - f - 1, so its Krum(f) is this Krum(f - 1)).

    Condition: n > 2f + 2.
    """
    n = check_stack(x)
    require("krum", n, f, n >= 2 * f + 3, "n > 2f + 2")
    return _scores(squared_distances(x), n - f - 2)


def _scores(dist: Tensor, neighbours: int) -> Tensor:
    """Sum of each row's `neighbours` smallest off-diagonal distances."""
    dist = dist.clone()
    dist.fill_diagonal_(math.inf)
    return dist.sort(dim=1).values[:, :max(neighbours, 0)].sum(dim=1)


def multi_krum(x: Tensor, f: int, m: int) -> Tensor:
    """Average of the m workers with the lowest Krum scores (ties: lowest index first).

    Condition: n > 2f + 2 and 1 <= m <= n. With k non-finite rows dropped, Krum runs with
    f - k on n - k rows (the same neighbour count) and m is capped at n - k. ByzFL's
    MultiKrum(f) averages n - f workers scored with n - f - 1 neighbours: multi_krum(x, f - 1,
    n - f) here.
    """
    n = check_stack(x)
    require("multi_krum", n, f, n >= 2 * f + 3, "n > 2f + 2")
    if not 1 <= m <= n:
        raise ValueError(f"multi_krum needs 1 <= m <= n, got m={m}, n={n}, f={f}")
    kept = drop_nonfinite(x, f)
    if kept is None:
        return nan_vector(x)
    y, k = kept
    best = torch.sort(krum_scores(y, f - k), stable=True).indices[:min(m, n - k)]
    return y[best.to(y.device)].mean(dim=0)


def krum(x: Tensor, f: int) -> Tensor:
    """The single worker gradient with the lowest Krum score. Condition: n > 2f + 2."""
    return multi_krum(x, f, 1)


def bulyan(x: Tensor, f: int) -> Tensor:
    """Bulyan (El Mhamdi et al., 2018) over Krum: select theta = n - 2f workers by repeated
    Krum (each round picks the lowest score among the remaining m workers, scored with
    max(m - f - 2, 0) neighbours, ties to the lowest index), then per coordinate average the
    beta = theta - 2f selected values closest to their median.

    Condition: n >= 4f + 3. Not in ByzFL.
    """
    n = check_stack(x)
    require("bulyan", n, f, n >= 4 * f + 3, "n >= 4f + 3")
    kept = drop_nonfinite(x, f)
    if kept is None:
        return nan_vector(x)
    y, k = kept
    f, n = f - k, n - k
    dist = squared_distances(y)
    remaining = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        sub = dist[remaining][:, remaining]
        scores = _scores(sub, len(remaining) - f - 2)
        chosen.append(remaining.pop(int(torch.sort(scores, stable=True).indices[0])))
    chosen.sort()
    return _closest_to_median_mean(y[chosen], n - 4 * f)


def geometric_median(x: Tensor, iters: int = 100, eps: float = 1e-8,
                     tol: float = 1e-6) -> Tensor:
    """Geometric median by smoothed Weiszfeld (distances floored at eps), from the mean.

    Stops after `iters` steps or when a step moves the estimate by <= tol * its norm. Any
    n >= 1 (breakdown point 1/2): up to (n - 1) // 2 non-finite rows are dropped. ByzFL's
    GeometricMedian starts from zero, floors distances at nu = 0.1 and runs a fixed T = 3
    steps; both converge to the same point.
    """
    n = check_stack(x)
    kept = drop_nonfinite(x, (n - 1) // 2)
    if kept is None:
        return nan_vector(x)
    x = kept[0]
    z = x.mean(dim=0)
    for _ in range(iters):
        w = 1 / torch.linalg.vector_norm(x - z, dim=1).clamp_min(eps)
        step = (w / w.sum()) @ x
        moved = torch.linalg.vector_norm(step - z)
        z = step
        if moved <= tol * torch.linalg.vector_norm(z):
            break
    return z


def centered_clipping(x: Tensor, f: int, tau: float, iters: int = 1,
                      center: Tensor | None = None) -> Tensor:
    """Centered clipping (Karimireddy et al., 2021): from v = center (default 0), `iters`
    times v <- v + mean_i clip(x_i - v, tau), where clip scales a vector to norm <= tau.

    Condition: n >= 2f + 1 (an honest majority; the paper's guarantee needs f / n well below
    1/2, with worker momentum and the previous aggregate as center, which
    disktrain.robust.config.Aggregator passes). f bounds the non-finite rows dropped; the
    arithmetic itself does not use it. ByzFL's CenteredClipping(L=iters, tau) is the same.
    """
    n = check_stack(x)
    require("centered_clipping", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    if not 0 < tau < math.inf:
        raise ValueError(f"centered_clipping needs a finite tau > 0, got tau={tau}")
    kept = drop_nonfinite(x, f)
    if kept is None:
        return nan_vector(x)
    y = kept[0]
    v = torch.zeros_like(y[0]) if center is None else center.to(y)
    for _ in range(iters):
        diff = y - v
        norms = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
        scale = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
        v = v + (diff * scale).mean(dim=0)
    return v

