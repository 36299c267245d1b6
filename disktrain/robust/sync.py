"""Robust gradient synchronization: all-gather every worker's gradient, aggregate it everywhere."""

from __future__ import annotations

import torch
import torch.distributed as dist

from disktrain.robust.config import Aggregator, RobustConfig
from disktrain.robust.grads import flat_grads, set_flat_grads


class RobustAggregate:
    """Grad-sync step (like AllReduceMean): every rank gathers the (n, d) stack of flat
    gradients, applies the same deterministic pre-aggregators and rule (an Aggregator: the
    step count and the previous aggregate carry over) and writes the result into each p.grad.
    Attacking ranks (disktrain.robust.worker) replace what they send before it."""

    def __init__(self, cfg: RobustConfig) -> None:
        self.cfg = cfg
        self.aggregator = Aggregator(cfg)

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        set_flat_grads(params, self.aggregator(gather(flat_grads(params))))

    def state_dict(self) -> dict:
        """The aggregator's state (step count and center), alike on every rank."""
        return self.aggregator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Go on from :meth:`state_dict`."""
        self.aggregator.load_state_dict(state)


def gather(flat: torch.Tensor) -> torch.Tensor:
    """(world_size, d) stack of every rank's flat tensor, in rank order."""
    out = flat.new_empty(dist.get_world_size() * flat.numel())
    # gloo accepts the concatenated (1-D) output form of all_gather_single, not the stacked one
    dist.all_gather_single(out, flat)
    return out.view(dist.get_world_size(), -1)
