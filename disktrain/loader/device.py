"""The device stages: batch assembly against the GPU feature cache, and neighbor sampling on the
GPU for online evaluation.

The host stage assembles every row of a batch it can (CPU cache, packed reads) into a pinned
buffer and leaves the rows the GPU cache serves unfilled. :class:`DeviceAssembler` copies that
buffer to the device (non-blocking, on the caller's stream: the pipeline's copy stream) and
fills the cached rows there with the Numba CUDA kernel of
:mod:`disktrain.kernels.cuda_gather`, launched on torch's current stream, zero-copy through
``__cuda_array_interface__`` and with 16-byte loads per lane where rows allow. On a CPU device
the same calls run the kernel's CPU twin, so the pipeline has one code path.

The GPU cache is filled once, when the assembler is made: the hottest rows chosen when the
dataset was prepared (``disktrain prepare --gpu-cache-bytes``), copied in slices of
``chunk_bytes`` so that start-up never holds a second copy of the tier on the host.

:func:`sample_on_device` samples one batch's hops with the kernels of
:mod:`disktrain.kernels.cuda_sampling` (the CPU kernel's counter-based draws, so the very same
neighbors) and relabels them on the device with torch, in the CPU kernel's order: the result
equals :func:`disktrain.kernels.sampling.sample_batches`'s for that batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from disktrain.errors import ConfigError

CHUNK_BYTES = 64 << 20
"""Bytes of cache rows staged on the host at a time while the cache is filled."""


class DeviceAssembler:
    """The GPU cache of one device and the assembly of batches against it.

    ``rows``: the GPU tier's feature rows (n_gpu, F), e.g. a memory map of the packed store's
    ``cache_rows()[:n_gpu]``. ``budget_bytes``: the most bytes the cache
    may take on the device (None: no limit but the device's free memory).
    """

    def __init__(self, rows: np.ndarray, device: torch.device | str, *,
                 budget_bytes: int | None = None, chunk_bytes: int = CHUNK_BYTES):
        self.device = torch.device(device)
        if rows.ndim != 2:
            raise ValueError(f"rows must be a 2-D (rows, features) array, got shape {rows.shape}")
        row_bytes = rows.shape[1] * rows.dtype.itemsize
        nbytes = rows.shape[0] * row_bytes
        if budget_bytes is not None and nbytes > budget_bytes:
            raise ConfigError(
                f"the GPU cache holds {rows.shape[0]} rows of {row_bytes} B = {nbytes} B, over "
                f"the budget of {budget_bytes} B (prepare again with a smaller "
                "--gpu-cache-bytes)")
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if nbytes > free:
                raise ConfigError(
                    f"the GPU cache needs {nbytes} B but {self.device} has {free} B free "
                    "(prepare again with a smaller --gpu-cache-bytes)")
        self.cache = copy_to_device(rows, self.device, chunk_bytes)
        """The GPU tier on the device: row ``s`` serves every input row with slot ``-1-s``."""

    def assemble(self, host_x: torch.Tensor, gpu_pos: np.ndarray,
                 gpu_slot: np.ndarray) -> torch.Tensor:
        """The batch's feature matrix on the device: ``host_x``, the whole matrix as the host
        left it, copied (non-blocking when pinned), its rows ``gpu_pos`` filled from cache
        rows ``gpu_slot``. On a CPU device the matrix may be ``host_x`` itself."""
        x = host_x.to(self.device, non_blocking=host_x.is_pinned())
        self.fill(x, gpu_pos, gpu_slot)
        return x

    def fill(self, x: torch.Tensor, gpu_pos: np.ndarray, gpu_slot: np.ndarray) -> None:
        """``x[gpu_pos[k]] = cache[gpu_slot[k]]`` for ``x`` on this device; on a GPU,
        asynchronous on the current stream.

        Positions must be distinct and in range; on a CPU they are checked (``ValueError``),
        on a GPU they are not (that would wait for the device).
        """
        gpu_pos, gpu_slot = (np.ascontiguousarray(a, np.int64) for a in (gpu_pos, gpu_slot))
        if len(gpu_pos) == 0:
            return
        # imported here: the kernels' module imports numba.cuda (a quarter of a second), which
        # a CPU run without a GPU tier never needs
        from disktrain.kernels import cuda_gather

        if self.device.type != "cuda":
            cuda_gather.scatter_gather_host(x.numpy(), self.cache.numpy(), gpu_pos, gpu_slot)
            return
        pos, slot = (torch.from_numpy(a).to(self.device, non_blocking=True)
                     for a in (gpu_pos, gpu_slot))
        with cuda_gather.device_context(_gpu_index(self.device)):
            stream = torch.cuda.current_stream(self.device).cuda_stream
            cuda_gather.scatter_gather_device(x, self.cache, pos, slot, stream=stream)


@dataclass(frozen=True)
class DeviceSample:
    """One sampled batch on the device, laid out as
    :class:`disktrain.kernels.sampling.SampledBatch` (int64 tensors)."""

    nodes: torch.Tensor
    """Global ids: seeds, then the nodes first reached at hop 1, hop 2, ..."""
    hop_counts: list[int]
    """Nodes known after each hop (L+1 counts)."""
    edge_src: torch.Tensor
    """Local src ids of every hop's edges, hop after hop."""
    edge_dst: torch.Tensor
    """Local dst ids, aligned with ``edge_src``."""
    edge_offsets: list[int]
    """Hop ``l``'s edges are ``[edge_offsets[l-1], edge_offsets[l])``."""


def sample_on_device(indptr: torch.Tensor, indices: torch.Tensor, seeds: torch.Tensor,
                     fanouts, key: int, *, frontier_only: bool = False) -> DeviceSample:
    """Sample ``len(fanouts)`` hops for one batch of ``seeds`` where the tensors are (CUDA, or
    the kernels' CPU twin on a CPU), as ``sample_batches(..., key, frontier_only=...)`` does.

    ``indptr`` int64 (N+1,) and ``indices`` (int32 or int64) are the in-neighbor CSR, on the
    device; ``seeds`` int64, distinct. One host synchronization per hop (the hop's size).
    """
    from disktrain.kernels.cuda_sampling import hop_key  # numba.cuda: see fill

    device = seeds.device
    nodes = seeds.to(torch.int64)
    if len(torch.unique(nodes)) != len(nodes):
        raise ValueError(f"seeds must be distinct, got {len(nodes)} seeds of which "
                         f"{len(torch.unique(nodes))} distinct")
    hop_counts, offsets, srcs, dsts = [len(nodes)], [0], [], []
    for hop, fanout in enumerate(fanouts, start=1):
        lo = hop_counts[-2] if frontier_only and hop > 1 else 0
        counts, ids = _sample_hop(indptr, indices, nodes[lo:], int(fanout), hop_key(key, hop))
        n = len(nodes)
        # Relabel by first appearance: known nodes keep their ids, new ones follow in order.
        uniq, inverse = torch.unique(torch.cat([nodes, ids]), return_inverse=True)
        first = torch.full((len(uniq),), len(inverse), dtype=torch.int64, device=device)
        first.scatter_reduce_(0, inverse, torch.arange(len(inverse), device=device), "amin")
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=device)
        nodes = uniq[order]
        srcs.append(rank[inverse[n:]])
        dsts.append(lo + torch.repeat_interleave(torch.arange(len(counts), device=device),
                                                 counts))
        hop_counts.append(len(nodes))
        offsets.append(offsets[-1] + len(ids))
    return DeviceSample(nodes, hop_counts, torch.cat(srcs), torch.cat(dsts), offsets)


def _sample_hop(indptr, indices, nodes, fanout: int, key) -> tuple[torch.Tensor, torch.Tensor]:
    """Per node of ``nodes``, its sample size and, concatenated, the sampled global ids."""
    from disktrain.kernels import cuda_gather, cuda_sampling  # numba.cuda: see fill

    if nodes.device.type != "cuda":
        eptr, ids = cuda_sampling.sample_neighbors_host(indptr.numpy(), indices.numpy(),
                                                        nodes.numpy(), fanout, key)
        return torch.from_numpy(np.diff(eptr)), torch.from_numpy(ids)
    counts = torch.empty(len(nodes), dtype=torch.int64, device=nodes.device)
    eptr = torch.zeros(len(nodes) + 1, dtype=torch.int64, device=nodes.device)
    with cuda_gather.device_context(_gpu_index(nodes.device)):
        stream = torch.cuda.current_stream(nodes.device).cuda_stream
        cuda_sampling.sampled_degrees_device(indptr, nodes, fanout, counts, stream=stream)
        torch.cumsum(counts, 0, out=eptr[1:])
        ids = torch.empty(int(eptr[-1]), dtype=torch.int64, device=nodes.device)
        cuda_sampling.sample_neighbors_device(indptr, indices, nodes, eptr, key, ids,
                                              stream=stream)
    return counts, ids


def _gpu_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def copy_to_device(array: np.ndarray, device: torch.device,
                   chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """``array`` (e.g. a memory map) as a tensor on ``device``, copied ``chunk_bytes`` at a
    time, so the host never holds a second copy of it."""
    out = torch.empty(array.shape, dtype=_torch_dtype(array.dtype), device=device)
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, array.shape[0], step):
        out[start:start + step].copy_(torch.from_numpy(np.array(array[start:start + step])))
    return out


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype
