"""The loader's settings: one config for the read -> assemble -> copy pipeline under
:class:`~disktrain.loader.loader.Loader` and :class:`~disktrain.loader.pipeline.PackedLoader`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from disktrain.errors import check_min

DEVICE_TYPES = ("cpu", "cuda")
"""Device types batches can go to."""


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """The training-time read path."""

    prefetch: int = 2
    """Batches in flight between consecutive stages."""
    buffer_bytes: int = 2 << 30
    """Most bytes of host feature buffers the pipeline holds at once (batches being read,
    assembled, waiting and consumed): fewer than ``prefetch`` batches are in flight where they
    are large (typed 3-hop batches run to hundreds of MB each). One batch is always in flight,
    whatever its size."""
    read_threads: int = 2
    """Threads reading packed ranges."""
    remote_window: int = 16
    """Batches read at once, ahead of the one consumed, from a packed store on object
    storage (its rows fetched by ranged GETs): the read threads and queue depth there, so
    that the requests' latency overlaps. ``buffer_bytes`` bounds their buffers; each
    response is also held (the SDK's copy and ours) until copied into one, so the window
    costs up to twice ``remote_window`` batches besides (16 batches of 2.3 MB: 90 MB)."""
    device: str = "cpu"
    """Where batches end up: "cpu", "cuda" or "cuda:N" (in training, "cuda" is the GPU of
    the worker's LOCAL_RANK)."""
    degrees: bool = False
    """Attach whole-graph in-degrees to every block (training sets it when the model's
    layers declare ``needs_degrees``, as GCN's do)."""
    assemble_threads: int = 0
    """Numba threads of the assembly kernels (0: Numba's default, one per core; training
    gives them the cores compute leaves free)."""
    verify: bool = True
    """Check the crc32c of every packed chunk and sample group read (off only to measure what
    the checks cost: ``scripts/bench_integrity.py``)."""

    def __post_init__(self):
        check_min(self, 1, "prefetch", "read_threads", "buffer_bytes", "remote_window")
        check_min(self, 0, "assemble_threads")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in DEVICE_TYPES or (device.type == "cpu"
                                                                 and device.index is not None):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
