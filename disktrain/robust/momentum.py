"""Worker momentum: each worker sends the running average of its gradients, not the gradient.

    m_t = beta * m_{t-1} + (1 - beta) * g_t        (m_0 = 0)

Karimireddy, He and Jaggi ("Learning from History for Byzantine Robust Optimization", ICML
2021) show that a robust rule over these momentums tolerates attacks that a rule over
single-step gradients cannot: averaging over about 1 / (1 - beta) steps shrinks the honest
workers' spread, which is the room that time-coupled attacks such as ALIE hide in. ByzFL's
benchmark trains this way (honest clients, beta 0.9; the server's SGD then has no momentum of
its own). Under the plain mean it takes the same steps as the server's SGD with momentum beta
and the learning rate scaled by 1 - beta (the mean of averages is the average of means: lr 1.0
with beta 0.9 here is torch's SGD with momentum 0.9 and lr 0.1); under a robust rule it is not.

A non-finite gradient (a worker whose loss overflowed) is sent as is, for the rule to drop,
and leaves the worker's average unchanged, so one bad step does not poison every later one.
"""

from __future__ import annotations

import torch

from disktrain.robust.grads import flat_grads, set_flat_grads


class WorkerMomentum:
    """One worker's running average of its flat gradients; call it between backward and the
    attack or grad-sync step: it replaces the parameters' gradients by the average."""

    def __init__(self, beta: float) -> None:
        if not 0 < beta < 1:
            raise ValueError(f"worker momentum beta must be in (0, 1), got {beta}")
        self.beta = beta
        self.buffer: torch.Tensor | None = None

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        g = flat_grads(params)
        if not bool(torch.isfinite(g).all()):
            return
        if self.buffer is None:
            self.buffer = torch.zeros_like(g)
        self.buffer.mul_(self.beta).add_(g, alpha=1 - self.beta)
        set_flat_grads(params, self.buffer)

    def state(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """The average to checkpoint (zeros the size of ``params`` before the first step)."""
        if self.buffer is not None:
            return self.buffer
        return params[0].new_zeros(sum(p.numel() for p in params))

    def load(self, buffer: torch.Tensor) -> None:
        """Resume from a checkpointed average."""
        self.buffer = buffer.clone()
