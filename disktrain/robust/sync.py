"""Robust gradient synchronization: all-gather every worker's gradient, aggregate it everywhere."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist

from disktrain.robust.attacks import ATTACKS, craft
from disktrain.robust.attacks import attack_params as known_params
from disktrain.robust.config import Aggregator, RobustConfig, aggregate
from disktrain.robust.grads import flat_grads, set_flat_grads


class RobustAggregate:
    """Grad-sync step (like AllReduceMean): every rank gathers the (n, d) stack of flat
    gradients, applies the same deterministic pre-aggregators and rule (an Aggregator: the
    step count and the previous aggregate carry over) and writes the result into each p.grad.

    `byzantine` and `attack` exist only for simulation (disktrain.robust.worker runs real
    attacking workers): after the gather, the rows of the byzantine ranks are replaced by
    `attack` computed from the honest rows (with `attack_params`; the gaussian attack draws
    from a generator seeded by `seed` and the step count; opt-ipm and opt-alie search against
    this step's rule), so every rank sees the same attacked stack.
    """

    def __init__(self, cfg: RobustConfig, *, byzantine: Iterable[int] = (),
                 attack: str | None = None, attack_params: Mapping[str, float] | None = None,
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.byzantine = frozenset(byzantine)
        if self.byzantine and attack is None:
            raise ValueError("byzantine ranks need an attack")
        if attack is not None and attack not in ATTACKS:
            raise ValueError(f"attack {attack!r} is unknown; choose one of {', '.join(ATTACKS)}")
        if any(r < 0 for r in self.byzantine):
            raise ValueError(f"byzantine ranks must be >= 0, got {sorted(self.byzantine)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.attack = attack
        self.attack_params = dict(attack_params or {})
        if attack is not None and (unknown := set(self.attack_params) - known_params(attack)):
            raise ValueError(f"attack {attack!r} takes no parameter {', '.join(sorted(unknown))}")
        self.seed = seed
        self.aggregator = Aggregator(cfg)

    @property
    def steps(self) -> int:
        """Aggregation steps taken."""
        return self.aggregator.step

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        stack = self.attacked(gather(flat_grads(params)))
        set_flat_grads(params, self.aggregator(stack))

    def state_dict(self) -> dict:
        """The aggregator's state (step count and center), alike on every rank."""
        return self.aggregator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Go on from :meth:`state_dict`."""
        self.aggregator.load_state_dict(state)

    def attacked(self, stack: torch.Tensor) -> torch.Tensor:
        """The gathered stack with the byzantine rows replaced (unchanged without attackers)."""
        if not self.byzantine:
            return stack
        n = stack.shape[0]
        if max(self.byzantine) >= n:
            raise ValueError(f"byzantine ranks {sorted(self.byzantine)} exceed world size {n}")
        honest = [r for r in range(n) if r not in self.byzantine]
        if not honest:
            raise ValueError("every rank is byzantine: no honest gradient to attack from")
        step = self.steps
        generator = torch.Generator().manual_seed((self.seed << 32) + step)
        bad = craft(self.attack, stack[honest], n_total=n, f=len(self.byzantine),
                    generator=generator,
                    aggregate=lambda x: aggregate(x, self.cfg, step=step),
                    **self.attack_params)
        stack = stack.clone()
        stack[sorted(self.byzantine)] = bad
        return stack


def gather(flat: torch.Tensor) -> torch.Tensor:
    """(world_size, d) stack of every rank's flat tensor, in rank order."""
    out = flat.new_empty(dist.get_world_size() * flat.numel())
    # gloo accepts the concatenated (1-D) output form of all_gather_single, not the stacked one
    dist.all_gather_single(out, flat)
    return out.view(dist.get_world_size(), -1)
