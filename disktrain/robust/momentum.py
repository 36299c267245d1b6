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
    """One worker's running average of the flat gradients of ``params`` (zeros before its
    first step); call it between backward and the attack or grad-sync step: it replaces the
    parameters' gradients by the average."""

    def __init__(self, beta: float, params: list[torch.nn.Parameter]) -> None:
        if not 0 < beta < 1:
            raise ValueError(f"worker momentum beta must be in (0, 1), got {beta}")
        self.beta = beta
        self.buffer = params[0].new_zeros(sum(p.numel() for p in params))

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        g = flat_grads(params)
        if not bool(torch.isfinite(g).all()):
            return
        self.buffer.mul_(self.beta).add_(g, alpha=1 - self.beta)
        set_flat_grads(params, self.buffer)

    def state_dict(self) -> dict:
        """The average, to checkpoint."""
        return {"average": self.buffer}

    def load_state_dict(self, state: dict) -> None:
        """Go on from a checkpointed average (of :meth:`state_dict`)."""
        if state["average"].shape != self.buffer.shape:
            raise ValueError(f"worker momentum average has {state['average'].numel()} values, "
                             f"the parameters {self.buffer.numel()}")
        self.buffer.copy_(state["average"])
