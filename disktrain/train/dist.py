"""The process's place in a job, read from the environment torchrun and Ray Train set."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    """RANK / LOCAL_RANK / WORLD_SIZE, or a single process when they are absent."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> DistEnv:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("WORLD_SIZE", "1")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device of this worker: "cuda" means this process's local GPU."""
        if requested == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)
