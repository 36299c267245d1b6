"""Training health: non-finite losses, gradients and parameters, decided alike on every rank.

A step is healthy when its loss and its synchronized gradient are finite. The gradient sync
leaves every rank with the same gradient (the mean, or a deterministic robust rule applied to
the same stack), so a decision taken on it is the same everywhere and needs no collective of
its own; a rank whose own loss is not finite first turns its gradient into NaN (before the
robust rule's all-gather, or through the loss it backpropagates under
DistributedDataParallel), so the decision covers every rank's loss too (a robust rule may
leave that gradient out, as it leaves out any faulty worker's). Checking costs one device-to-host transfer per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from disktrain.errors import NonFiniteError


def poison_gradients(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> None:
    """Multiply every gradient by NaN when ``loss`` is not finite, else by 1 (on the device,
    without waiting for it)."""
    scale = torch.where(torch.isfinite(loss), 1.0, math.nan)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)


def poisoned_loss(loss: torch.Tensor) -> torch.Tensor:
    """``loss``, or ``loss * NaN`` when it is not finite: backpropagated under
    DistributedDataParallel, a rank's non-finite loss makes the averaged gradient NaN on
    every rank (its own gradient may be finite, e.g. ``loss + nan``), so all decide alike."""
    return loss * torch.where(torch.isfinite(loss.detach()), 1.0, math.nan)


def step_is_finite(loss: torch.Tensor | None, params: list[torch.nn.Parameter]) -> bool:
    """Whether ``loss`` (unless None) and every gradient of ``params`` are finite.

    Checks the loss and each gradient's minimum and maximum (NaN propagates through them),
    a few values instead of an elementwise test of every gradient.
    """
    values = [*([] if loss is None else [loss.detach().reshape(1)]),
              *(torch.stack(p.grad.aminmax()) for p in params
                if p.grad is not None and p.grad.numel())]
    return not values or bool(torch.cat(values).isfinite().all())


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a NaN or an infinity."""
    return [name for name, t in tensors.items()
            if t.is_floating_point() and not bool(t.isfinite().all())]


def nonfinite_step_error(loss: torch.Tensor, epoch: int, batch: int, batch_id: int,
                         checkpoint_dir: Path) -> NonFiniteError:
    """The error that stops a run at a non-finite step: batch ``batch`` of ``epoch`` (this
    rank's order), pre-sampled batch ``batch_id``."""
    what = (f"loss ({loss.item()})" if not bool(torch.isfinite(loss))
            else "gradient (after the gradient sync)")
    return NonFiniteError(
        f"epoch {epoch}, batch {batch} (pre-sampled batch {batch_id}): non-finite {what}; "
        f"stopped before the optimizer step, and the checkpoints in {checkpoint_dir} are from "
        "before this batch. Lower the learning rate, check the features for NaN/inf, or skip "
        "such steps with --on-nonfinite skip")
