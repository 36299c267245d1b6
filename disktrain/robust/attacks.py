"""Byzantine attacks: the gradient the attackers send, from the honest ones.

Each attack takes the (h, d) stack of honest gradients and returns one (d,) vector, which every
Byzantine worker sends (as in ByzFL), run by the attacking workers (disktrain.robust.worker).
Conventions that differ from ByzFL's are named in each docstring.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor


def sign_flip(honest: Tensor) -> Tensor:
    """The negated honest mean (ByzFL's SignFlipping)."""
    return -honest.mean(dim=0)


def ipm(honest: Tensor, eps: float = 0.1) -> Tensor:
    """Inner-product manipulation: -eps times the honest mean (ByzFL's
    InnerProductManipulation(tau) with tau = eps; its default tau is 2.0, this one Xie et al.'s
    0.1)."""
    return -eps * honest.mean(dim=0)


def gaussian(honest: Tensor, std: float = 1.0,
             generator: torch.Generator | None = None) -> Tensor:
    """Pure noise: every coordinate drawn from N(0, std^2) (pass a seeded generator)."""
    noise = torch.randn(honest.shape[1], generator=generator, dtype=honest.dtype)
    return (std * noise).to(honest.device)


def alie_z(n_total: int, f: int) -> float:
    """ALIE's z: Phi^-1((n - s) / n) with s = floor(n / 2 + 1) - f."""
    s = math.floor(n_total / 2 + 1) - f
    if f < 0 or not 1 <= s < n_total:
        raise ValueError(f"alie needs 0 <= f <= floor(n_total / 2) and n_total >= 2, "
                         f"got n_total={n_total}, f={f}")
    return NormalDist().inv_cdf((n_total - s) / n_total)


def alie(honest: Tensor, n_total: int, f: int, z: float | None = None) -> Tensor:
    """A little is enough: honest mean + z * honest std per coordinate, with the population
    std and z = alie_z(n_total, f) unless given. ByzFL's ALittleIsEnough(tau) uses the sample
    std (correction 1) and a fixed tau = 1.5."""
    z = alie_z(n_total, f) if z is None else z
    return honest.mean(dim=0) + z * honest.std(dim=0, correction=0)


def mimic(honest: Tensor, index: float = 0) -> Tensor:
    """A copy of honest worker `index`'s gradient (in the order of the honest rows; ByzFL's
    Mimic(epsilon))."""
    i = int(index)
    if i != index or not 0 <= i < honest.shape[0]:
        raise ValueError(f"mimic needs an integer index in [0, {honest.shape[0]}), got {index}")
    return honest[i].clone()


def nan(honest: Tensor) -> Tensor:
    """Every coordinate NaN."""
    return torch.full_like(honest[0], float("nan"))


def inf(honest: Tensor) -> Tensor:
    """Every coordinate +Inf (ByzFL's Inf)."""
    return torch.full_like(honest[0], float("inf"))


Aggregate = Callable[[Tensor], Tensor]
"""The defender's aggregation (pre-aggregators and rule) of an (n, d) stack."""


def line_search(damage: Callable[[float], float], evals: int = 20, start: float = 0.0,
                delta: float = 10.0, ratio: float = 0.8) -> float:
    """ByzFL's search for the attack factor that maximizes `damage`: an expansion phase (step
    up by delta, doubling it while the damage grows) then a contraction phase (steps of
    delta * ratio^k from the best point), `evals` evaluations in all."""
    if evals < 1 or not 0.5 < ratio < 1 or delta == 0:
        raise ValueError(f"line_search needs evals >= 1, 0.5 < ratio < 1 and delta != 0, got "
                         f"evals={evals}, ratio={ratio}, delta={delta}")
    best_x, best_y, expanding = start, damage(start), True
    for _ in range(evals - 1):
        x = best_x + delta
        y = damage(x)
        expanding = expanding and y > best_y  # until the first step that does not improve
        if y > best_y:
            best_x, best_y = x, y
        delta = delta * 2 if expanding else delta * ratio
    return best_x


def _optimized(base: Callable[[float], Tensor], honest: Tensor, f: int,
               aggregate: Aggregate, **search: float) -> Tensor:
    """base(tau) for the tau that moves aggregate(honest + f copies) farthest from the honest
    mean."""
    target = honest.mean(dim=0)

    def damage(tau: float) -> float:
        bad = base(tau).expand(f, -1)
        return float(torch.linalg.vector_norm(aggregate(torch.cat([honest, bad])) - target))

    return base(line_search(damage, **search))


def opt_ipm(honest: Tensor, f: int, aggregate: Aggregate, **search: float) -> Tensor:
    """IPM with the factor tau (-tau * honest mean) searched by line_search against the
    defender's `aggregate` (ByzFL's Optimal_InnerProductManipulation)."""
    mean = honest.mean(dim=0)
    return _optimized(lambda tau: -tau * mean, honest, f, aggregate, **search)


def opt_alie(honest: Tensor, f: int, aggregate: Aggregate, **search: float) -> Tensor:
    """ALIE with the factor tau (honest mean + tau * sample std) searched by line_search
    against the defender's `aggregate` (ByzFL's Optimal_ALittleIsEnough, its std convention)."""
    mean, std = honest.mean(dim=0), honest.std(dim=0, correction=1)
    return _optimized(lambda tau: mean + tau * std, honest, f, aggregate, **search)


ATTACKS: dict[str, Callable[..., Tensor]] = {
    "sign-flip": sign_flip,
    "ipm": ipm,
    "gaussian": gaussian,
    "alie": alie,
    "mimic": mimic,
    "nan": nan,
    "inf": inf,
    "opt-ipm": opt_ipm,
    "opt-alie": opt_alie,
}
"""Name -> attack on the honest stack; `craft` supplies each one's context arguments."""

OMNISCIENT = frozenset({"sign-flip", "ipm", "alie", "mimic", "opt-ipm", "opt-alie"})
"""Attacks that read the honest gradients (the others need only the gradient's size)."""


def craft(name: str, honest: Tensor, *, n_total: int, f: int,
          generator: torch.Generator | None = None, aggregate: Aggregate | None = None,
          **params: float) -> Tensor:
    """The vector every Byzantine worker sends under attack `name`, with its extra `params`
    (opt-ipm and opt-alie need the defender's `aggregate`)."""
    if name not in ATTACKS:
        raise ValueError(f"attack {name!r} is unknown; choose one of {', '.join(ATTACKS)}")
    if name.startswith("opt-") and aggregate is None:
        raise ValueError(f"attack {name!r} needs the defender's aggregate")
    context = {"alie": {"n_total": n_total, "f": f},
               "gaussian": {"generator": generator},
               "opt-ipm": {"f": f, "aggregate": aggregate},
               "opt-alie": {"f": f, "aggregate": aggregate}}.get(name, {})
    if unknown := set(params) - attack_params(name):
        raise ValueError(f"attack {name!r} takes no parameter {', '.join(sorted(unknown))}; "
                         f"its parameters: {', '.join(sorted(attack_params(name))) or 'none'}")
    return ATTACKS[name](honest, **context, **params)


def attack_params(name: str) -> set[str]:
    """The parameters a user may give attack `name` (those craft does not supply)."""
    sig = inspect.signature(ATTACKS[name]).parameters
    names = {p for p, v in sig.items() if v.kind is not v.VAR_KEYWORD}
    if any(v.kind is v.VAR_KEYWORD for v in sig.values()):
        names |= set(inspect.signature(line_search).parameters) - {"damage"}
    return names - {"honest", "n_total", "f", "generator", "aggregate"}
