"""Byzantine attacks for tests and benchmarks: the gradient the attackers send, from the honest ones.

Each attack takes the (h, d) stack of honest gradients and returns one (d,) vector, which every
Byzantine worker sends (as commonly simulated, e.g. in ByzFL).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor


def sign_flip(honest: Tensor) -> Tensor:
    """The negated honest mean."""
    return -honest.mean(dim=0)


def ipm(honest: Tensor, eps: float = 0.1) -> Tensor:
    """Inner-product manipulation: -eps times the honest mean."""
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


def alie(honest: Tensor, n_total: int, f: int) -> Tensor:
    """A little is enough: honest mean + z * honest std per coordinate (population std)."""
    return honest.mean(dim=0) + alie_z(n_total, f) * honest.std(dim=0, correction=0)


ATTACKS: dict[str, Callable[..., Tensor]] = {
    "sign-flip": sign_flip,
    "ipm": ipm,
    "gaussian": gaussian,
    "alie": alie,
}
"""Name -> attack; `craft` supplies each one's context arguments."""


def craft(name: str, honest: Tensor, *, n_total: int, f: int,
          generator: torch.Generator | None = None, **params: float) -> Tensor:
    """The vector every Byzantine worker sends under attack `name`, with its extra `params`."""
    if name not in ATTACKS:
        raise ValueError(f"attack {name!r} is unknown; choose one of {', '.join(ATTACKS)}")
    context = {"alie": {"n_total": n_total, "f": f},
               "gaussian": {"generator": generator}}.get(name, {})
    return ATTACKS[name](honest, **context, **params)
