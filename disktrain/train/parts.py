"""A training run's stateful parts beside its model, optimizer and loader (its counters, the
random generators) and the checkpoint of a part whose state differs by rank."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from disktrain.loader.dist import DistEnv
from disktrain.robust.sync import gather


@dataclass
class Progress:
    """The run's counters: optimizer steps taken, steps skipped in the current epoch (non-finite,
    ``on_nonfinite="skip"``) and the records of the epochs done."""

    steps: int = 0
    skipped: int = 0
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "skipped": self.skipped,
                "history": json.dumps(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.skipped = int(state["steps"]), int(state["skipped"])
        self.history = json.loads(state["history"])


class RngState:
    """This process's random generators: torch's CPU one and, on a GPU, ``device``'s (a part
    that differs by rank: checkpointed through :class:`PerRank`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def state_dict(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


class PerRank:
    """``part``, whose state differs by rank, checkpointed for every rank: its state_dict holds
    each tensor of every rank's state stacked in rank order (a collective, gathered on
    ``device``: NCCL moves CUDA tensors only); loading gives each rank its own row."""

    def __init__(self, part, env: DistEnv, device: torch.device) -> None:
        self.part, self.env, self.device = part, env, device

    def state_dict(self) -> dict:
        several = self.env.world_size > 1
        return {k: (gather(v.to(self.device)) if several else v[None]).cpu()
                for k, v in self.part.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        for key, stack in state.items():
            if stack.shape[0] != self.env.world_size:
                raise ValueError(f"{key} holds {stack.shape[0]} rank(s), this run has "
                                 f"{self.env.world_size}")
        # a row of the stack has a storage offset, which set_rng_state misreads: clone it
        self.part.load_state_dict({k: v[self.env.rank].clone() for k, v in state.items()})
