"""Gradient synchronization: one replaceable step between backward and the optimizer step, and
the path a step's gradients take around it on this rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from disktrain.loader.dist import DistEnv
from disktrain.robust import LABEL_FLIP, ByzantineWorker, RobustAggregate, WorkerMomentum
from disktrain.robust.grads import flat_grads, set_flat_grads
from disktrain.train.config import TrainConfig
from disktrain.train.health import poison_gradients, poisoned_loss
from disktrain.train.parts import PerRank


class AllReduceMean:
    """Average every gradient over the workers (one flat all-reduce per step)."""

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        flat = flat_grads(params)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        set_flat_grads(params, flat)


class GradientPath:
    """This rank's path from a batch's labels to the gradient the optimizer steps on: the
    attacker's labels (disktrain.robust.worker), backward, the worker momentum
    (disktrain.robust.momentum), the attacker's gradient, the sync.

    The mean under several workers: DistributedDataParallel (bucketed all-reduces overlapping
    backward); a robust rule or a given ``grad_sync(params)``: after backward. An attack on the
    gradient, worker momentum or a pre-aggregator acts between backward and the sync, which
    DistributedDataParallel leaves no room for: RobustAggregate then runs even the mean."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, num_classes: int, grad_sync,
                 params: list[torch.nn.Parameter]) -> None:
        self.params, self.distributed = params, env.world_size > 1
        self.worker = None if cfg.attack is None else ByzantineWorker(
            cfg.attack, cfg.robust, rank=env.rank, world_size=env.world_size,
            num_classes=num_classes)
        self.momentum = WorkerMomentum(cfg.worker_momentum, params) \
            if cfg.worker_momentum else None
        after_backward = bool(cfg.robust.pre_aggregate) or self.momentum is not None or \
            (cfg.attack is not None and cfg.attack.attack != LABEL_FLIP)
        plain_mean = cfg.robust.aggregator == "mean" and not after_backward
        self.use_ddp = grad_sync is None and plain_mean and self.distributed
        self.sync = grad_sync or (AllReduceMean() if plain_mean else RobustAggregate(cfg.robust))

    def parts(self, env: DistEnv, device: torch.device) -> dict:
        """The stateful parts among these steps, by name (the momentum differs by rank)."""
        parts = {"worker_momentum": None if self.momentum is None else
                 PerRank(self.momentum, env, device), "attack": self.worker,
                 "grad_sync": self.sync if hasattr(self.sync, "state_dict") else None}
        return {name: part for name, part in parts.items() if part is not None}

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` as the forward pass runs it (under DistributedDataParallel or not)."""
        if not self.use_ddp:
            return model
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                       else None, broadcast_buffers=False)

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels this rank trains on (flipped by a label-flipping attacker)."""
        return labels if self.worker is None else self.worker.labels(labels)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``; leave the synchronized gradient in the parameters."""
        if self.use_ddp:  # (of the attacks, label flipping alone: its worker sends nothing)
            poisoned_loss(loss).backward()  # gradients averaged during backward
            return
        loss.backward()
        if self.distributed:
            poison_gradients(loss, self.params)
        if self.momentum is not None:
            self.momentum(self.params)
        if self.worker is not None:
            self.worker(self.params)  # every rank: omniscient attacks gather the gradients
        self.sync(self.params)
