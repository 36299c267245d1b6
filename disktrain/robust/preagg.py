"""Pre-aggregators: (n, d) stack -> (n', d) stack, applied in a chain before any rule.

Each is deterministic (bucketing draws its permutation from a generator that every rank seeds
alike). A non-finite row is faulty: it takes no part in the arithmetic (it never mixes into, is
never averaged with, an honest row) and passes through unchanged, last, so that the rule after
the chain drops it and counts it into f (disktrain.robust.stack). The f of the rule after the
chain is unchanged: NNM keeps n rows; each Byzantine worker spoils at most one bucket.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from disktrain.robust.stack import check_stack, finite_mask, require, squared_distances


def _split(x: Tensor) -> tuple[Tensor, Tensor]:
    """The finite rows of x and the others (x itself, no copy, when every row is finite)."""
    keep = finite_mask(x)
    if bool(keep.all()):
        return x, x[:0]
    return x[keep], x[~keep]


def nnm(x: Tensor, f: int) -> Tensor:
    """Nearest-neighbour mixing (Allouah et al., 2023): every row becomes the mean of its
    n - f nearest rows (itself included; ties to the lowest index).

    Condition: n >= f + 1 (ByzFL's NNM: f < n). With k non-finite rows, the n - k finite
    rows mix among themselves with max(f - k, 0).
    """
    n = check_stack(x)
    require("nnm", n, f, n >= f + 1, "n >= f + 1")
    y, bad = _split(x)
    if y.shape[0] == 0:
        return x
    m = y.shape[0]
    keep = m - max(f - bad.shape[0], 0)
    near = torch.sort(squared_distances(y), dim=1, stable=True).indices[:, :keep]
    mix = torch.zeros((m, m), dtype=y.dtype).scatter_(1, near, 1 / keep)  # a matrix product:
    mixed = mix.to(y.device) @ y  # no (n, n - f, d) gather
    return torch.cat([mixed, bad]) if bad.shape[0] else mixed


def bucketing(x: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Bucketing (Karimireddy et al., 2022): shuffle the rows (torch.randperm with
    `generator`), average consecutive buckets of s: ceil(n / s) rows, the last bucket holding
    the remainder. Any n >= 1, s >= 1; the rule after it needs its own condition on
    ceil(n / s) rows with the same f (ByzFL's Bucketing(s) is the same).
    """
    check_stack(x)
    if s < 1:
        raise ValueError(f"bucketing needs a bucket size s >= 1, got s={s}")
    y, bad = _split(x)
    if y.shape[0] == 0:
        return x
    y = y[torch.randperm(y.shape[0], generator=generator).to(y.device)]
    full = y.shape[0] // s
    parts = [y[:full * s].view(full, s, -1).mean(dim=1)]
    if full * s < y.shape[0]:
        parts.append(y[full * s:].mean(dim=0, keepdim=True))
    return torch.cat([*parts, bad])


def clip(x: Tensor, c: float) -> Tensor:
    """Static clipping: every row scaled to norm <= c (ByzFL's Clipping(c), default 2.0).
    Any n >= 1, c > 0."""
    check_stack(x)
    if not 0 < c < math.inf:
        raise ValueError(f"clip needs a finite threshold c > 0, got c={c}")
    y, bad = _split(x)
    norms = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    scale = torch.where(norms > c, c / norms, torch.ones_like(norms))
    return torch.cat([y * scale, bad])
