"""How many cores compute gets, and how many are left to the loader's stages.

On a CPU device the loader (reads, crc checks, the Numba gather) and torch's intra-op pool
share the cores. Giving torch every core makes the two contend: the loader's work is then
added to the epoch instead of hidden under compute. So, unless told otherwise, training on
a CPU leaves one core to the loader, and the loader's Numba assembly runs on the cores
compute leaves. On a GPU compute runs on the device and torch's default stands; so does a
launcher's ``OMP_NUM_THREADS`` (torchrun, Ray).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

LOADER_CORES = 1
"""Cores left to the loader's stages when training on a CPU."""


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def compute_threads(requested: int, device: torch.device) -> int | None:
    """Torch intra-op threads for compute: ``requested`` when > 0; 0 means automatic, which
    is every available core but ``LOADER_CORES`` on a CPU device (at least one), and None
    (torch's own choice) on a GPU or where ``OMP_NUM_THREADS`` is set."""
    if requested < 0:
        raise ValueError(f"compute_threads must be >= 0, got {requested}")
    if requested:
        return requested
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, available_cores() - LOADER_CORES)


def loader_threads(compute: int | None) -> int:
    """Numba threads for the loader's assembly when compute runs on ``compute`` threads:
    the cores compute leaves free (at least one); 0 (Numba's default) when ``compute`` is
    None."""
    if compute is None:
        return 0
    return max(1, available_cores() - compute)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with torch's intra-op pool at ``n`` threads (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
