"""Gradient synchronization: one replaceable step between backward and the optimizer step."""

from __future__ import annotations

import torch
import torch.distributed as dist


class AllReduceMean:
    """Average every gradient over the workers (one flat all-reduce per step)."""

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        at = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[at:at + n].view_as(p).clone()
            at += n
