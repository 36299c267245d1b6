"""A model's gradients as one flat tensor, and back (what gradient exchange moves)."""

from __future__ import annotations

import torch


def flat_grads(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Every parameter's gradient (zeros where there is none), concatenated flat."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])


def set_flat_grads(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Give each parameter its slice of ``flat`` (the layout of ``flat_grads``) as gradient."""
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).clone()
        at += n
