"""RobustConfig (which rule, which pre-aggregators, their parameters), the registries, and the
step that applies them: aggregate (one stack) and Aggregator (across steps)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from disktrain.errors import check_min
from disktrain.robust.flag import default_subspace, flag_aggregate
from disktrain.robust.preagg import bucketing, clip, nnm
from disktrain.robust.rules import (
    bulyan,
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    meamed,
    mean,
    multi_krum,
    trimmed_mean,
)
from disktrain.robust.stack import check_stack, require


@dataclass(frozen=True, kw_only=True)
class RobustConfig:
    """Which aggregation rule combines the workers' gradients, after which pre-aggregators."""

    aggregator: str = "mean"
    """One of AGGREGATORS: mean, median, trimmed-mean, meamed, krum, multi-krum, bulyan,
    geomed, centered-clipping, flag."""
    f: int = 0
    """Byzantine workers tolerated: every rule but mean checks its condition on n and f (see
    each rule's docstring) and counts non-finite rows into it; mean tolerates none."""
    subspace: int = 0
    """Flag's r (0: disktrain.robust.flag.default_subspace(n, f) = f + 1, below n); flag
    only."""
    m: int = 0
    """Workers multi-krum averages (0: n - f)."""
    max_iters: int = 100
    """Iteration cap of geomed (Weiszfeld) and flag (IRLS)."""
    tol: float = 1e-6
    """Relative stopping tolerance of geomed and flag."""
    pre_aggregate: tuple[str, ...] = ()
    """Pre-aggregators (PRE_AGGREGATORS: nnm, bucketing, clip) applied in this order to the
    stack before the rule, e.g. ("nnm", "clip")."""
    bucket_size: int = 2
    """Bucketing's s: rows averaged per bucket."""
    clip_norm: float = 2.0
    """Static clipping's threshold c (ByzFL's default)."""
    cc_tau: float = 100.0
    """Centered clipping's radius tau (ByzFL's default)."""
    cc_iters: int = 1
    """Centered clipping's iterations L (ByzFL's default)."""
    flag_lambda: float = 0.0
    """Flag's weight lambda of the pairwise-difference terms (0: none); flag only."""
    seed: int = 0
    """Seed of bucketing's permutations (with the step count: the same on every rank)."""

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"RobustConfig.aggregator {self.aggregator!r} is unknown; "
                             f"choose one of {', '.join(AGGREGATORS)}")
        object.__setattr__(self, "pre_aggregate", tuple(self.pre_aggregate))
        for name in self.pre_aggregate:
            if name not in PRE_AGGREGATORS:
                raise ValueError(f"RobustConfig.pre_aggregate {name!r} is unknown; choose from "
                                 f"{', '.join(PRE_AGGREGATORS)}")
        check_min(self, 0, "f", "subspace", "m", "seed", owner="RobustConfig.")
        check_min(self, 1, "max_iters", "bucket_size", "cc_iters", owner="RobustConfig.")
        for name in ("clip_norm", "cc_tau"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"RobustConfig.{name} must be finite and > 0, "
                                 f"got {getattr(self, name)}")
        for name in ("tol", "flag_lambda"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"RobustConfig.{name} must be finite and >= 0, "
                                 f"got {getattr(self, name)}")
        if self.f and self.aggregator == "mean":
            raise ValueError(f"RobustConfig.f={self.f} (byzantine workers) needs a robust "
                             "aggregator (the mean tolerates no faulty worker); pick one")
        for name in ("subspace", "flag_lambda"):
            if getattr(self, name) and self.aggregator != "flag":
                raise ValueError(f"RobustConfig.{name}={getattr(self, name)} applies to "
                                 f"aggregator 'flag' only, got aggregator {self.aggregator!r}")


Rule = Callable[[Tensor, RobustConfig, Tensor | None], Tensor]
"""(stack, config, the previous step's aggregate or None) -> aggregate."""

AGGREGATORS: dict[str, Rule] = {
    "mean": lambda x, cfg, prev: mean(x),
    "median": lambda x, cfg, prev: coordinate_median(x),
    "trimmed-mean": lambda x, cfg, prev: trimmed_mean(x, cfg.f),
    "meamed": lambda x, cfg, prev: meamed(x, cfg.f),
    "krum": lambda x, cfg, prev: krum(x, cfg.f),
    "multi-krum": lambda x, cfg, prev: multi_krum(x, cfg.f, cfg.m or x.shape[0] - cfg.f),
    "bulyan": lambda x, cfg, prev: bulyan(x, cfg.f),
    "geomed": lambda x, cfg, prev: geometric_median(x, iters=cfg.max_iters, tol=cfg.tol),
    "centered-clipping": lambda x, cfg, prev: centered_clipping(
        x, cfg.f, cfg.cc_tau, cfg.cc_iters, center=prev),
    "flag": lambda x, cfg, prev: flag_aggregate(
        x, cfg.subspace or default_subspace(x.shape[0], cfg.f), iters=cfg.max_iters,
        tol=cfg.tol, lam=cfg.flag_lambda),
}
"""Name -> rule applied to an (n, d) stack under a RobustConfig."""

PreAggregator = Callable[[Tensor, RobustConfig, torch.Generator], Tensor]
"""(stack, config, the step's generator) -> stack."""

PRE_AGGREGATORS: dict[str, PreAggregator] = {
    "nnm": lambda x, cfg, gen: nnm(x, cfg.f),
    "bucketing": lambda x, cfg, gen: bucketing(x, cfg.bucket_size, gen),
    "clip": lambda x, cfg, gen: clip(x, cfg.clip_norm),
}
"""Name -> pre-aggregator applied to an (n, d) stack under a RobustConfig."""

_MAJORITY = ("median", "geomed", "flag")
"""Rules whose only requirement is an honest majority, n >= 2f + 1 (checked by aggregate)."""


def aggregate(x: Tensor, cfg: RobustConfig, *, step: int = 0,
              previous: Tensor | None = None) -> Tensor:
    """Combine an (n, d) stack of worker gradients into one (d,) gradient: cfg's pre-aggregators
    in order, then its rule. `step` seeds bucketing's permutation (with cfg.seed); `previous`
    is the last aggregate (centered clipping's center; None: zero).

    Raises ValueError (naming the rule, n and f) when the rule cannot tolerate f of the rows it
    receives (after bucketing: ceil(n / s) rows).
    """
    n = check_stack(x)
    gen = torch.Generator().manual_seed((cfg.seed << 32) + step)
    for name in cfg.pre_aggregate:
        x = PRE_AGGREGATORS[name](x, cfg, gen)
    try:
        if cfg.aggregator in _MAJORITY:
            require(cfg.aggregator, x.shape[0], cfg.f, x.shape[0] >= 2 * cfg.f + 1,
                    "n >= 2f + 1")
        return AGGREGATORS[cfg.aggregator](x, cfg, previous)
    except ValueError as e:
        if x.shape[0] == n:
            raise
        raise ValueError(f"{e} (the rows left by pre-aggregation {', '.join(cfg.pre_aggregate)} "
                         f"of n={n} workers)") from e


class Aggregator:
    """aggregate() across training steps: counts the steps (bucketing's permutations) and keeps
    the last finite aggregate (the `previous` of the next step: centered clipping's center).
    Every rank holds one and calls it on the same stacks, so all stay identical; a checkpoint
    carries its state_dict, so a resumed run goes on with the same step and center."""

    def __init__(self, cfg: RobustConfig) -> None:
        self.cfg = cfg
        self.step = 0
        self.previous: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        previous = None if self.previous is None else self.previous.to(x)
        out = aggregate(x, self.cfg, step=self.step, previous=previous)
        self.step += 1
        if bool(torch.isfinite(out).all()):
            self.previous = out
        return out

    def state_dict(self) -> dict:
        """The step count and the last finite aggregate (an empty tensor before one)."""
        return {"step": self.step,
                "previous": torch.empty(0) if self.previous is None else self.previous.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Go on from ``state`` (of :meth:`state_dict`); the center moves to the device of the
        next stack."""
        self.step = int(state["step"])
        self.previous = state["previous"] if state["previous"].numel() else None
