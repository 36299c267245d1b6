"""The process's place in a job, read from the environment torchrun and Ray Train set."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from disktrain.errors import ConfigError


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
        """The device of this worker: "cuda" means this process's local GPU.

        Raises ConfigError when the GPU asked for is not there.
        """
        device = torch.device(requested)
        if device.type != "cuda":
            return device
        if requested == "cuda":
            device = torch.device("cuda", self.local_rank)
        if not torch.cuda.is_available():
            build = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
            raise ConfigError(f"device {requested!r}: no CUDA GPU is available to this process "
                              f"(torch {torch.__version__}, built {build}); use --device cpu")
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {requested!r} is {device}, but this machine has "
                              f"{torch.cuda.device_count()} visible GPU(s)")
        return device


def broadcast_bytes(data: bytes | None, device: torch.device, src: int = 0) -> bytes | None:
    """Rank ``src``'s ``data`` (bytes or None) on every rank: its length, then its bytes as a
    uint8 tensor on ``device`` (NCCL moves CUDA tensors only). Alone: ``data`` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return data
    mine = dist.get_rank() == src
    size = torch.tensor([-1 if data is None or not mine else len(data)], dtype=torch.int64,
                        device=device)
    dist.broadcast(size, src)
    n = int(size.item())
    if n <= 0:
        return None if n < 0 else b""
    if mine:
        buf = torch.from_numpy(np.frombuffer(data, np.uint8).copy()).to(device)
    else:
        buf = torch.empty(n, dtype=torch.uint8, device=device)
    dist.broadcast(buf, src)
    return buf.cpu().numpy().tobytes()
