"""How many cores compute gets, and how many threads the loader's stages use.

On a CPU device the loader (reads, crc checks, the Numba gather) and torch's intra-op pool
share the cores. Packed rows are read past the page cache (``O_DIRECT``), so the loader costs
little CPU, and compute gets every core unless told otherwise; the loader's Numba assembly
runs on one thread. Measured with ``scripts/bench_compute.py`` on 2 otherwise idle cores
(2M-node synth graph, 256-d float32 features, fanouts 10,10, batch 1024, SAGE hidden 128,
48 batches, 3 quiet rounds): the loader took 17 ms of CPU per batch (24 ms reading through
the page cache) against 69 ms of compute on both cores (103 ms on one), and the epoch took
4.1 s instead of 5.2 s with a core left to the loader (1.29x; 1.40x over 88 batches).

The catch: torch's threads wait for each other, so one core busy with another process stalls
all of them. On the same machine while other jobs kept about half of it busy, every core was
2x slower than one thread (13.9 s vs 6.8 s); there, ``--compute-threads`` sets the number. On
a GPU compute runs on the device and torch's default stands; so does a launcher's
``OMP_NUM_THREADS`` (torchrun, Ray).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def compute_threads(requested: int, device: torch.device, reserved: int = 0) -> int | None:
    """Torch intra-op threads for compute: ``requested`` when > 0; 0 means automatic, which
    is every available core on a CPU device but ``reserved`` (at least one), and None (torch's
    own choice) on a GPU or where ``OMP_NUM_THREADS`` is set. Training reserves a core for
    the background process that prepares fresh epochs: torch's threads wait for each other,
    so a core that process takes would stall all of them."""
    if requested < 0:
        raise ValueError(f"compute_threads must be >= 0, got {requested}")
    if requested:
        return requested
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, available_cores() - reserved)


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
