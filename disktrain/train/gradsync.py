"""Gradient synchronization: one replaceable step between backward and the optimizer step."""

from __future__ import annotations

import torch
import torch.distributed as dist

from disktrain.robust.grads import flat_grads, set_flat_grads


class AllReduceMean:
    """Average every gradient over the workers (one flat all-reduce per step)."""

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        flat = flat_grads(params)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        set_flat_grads(params, flat)
