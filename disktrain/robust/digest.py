"""Replica consistency: a cheap exact digest of the parameters, compared across ranks.

Every rank applies the same aggregate to the same parameters, so replicas must stay
bit-identical; a rank whose parameters differ (a silent fault, a nondeterministic rule, a
mis-wired launcher) would otherwise train on unnoticed. The digest reads each tensor's bytes
as 16-bit integers v_i and keeps two integer sums, sum_i v_i and sum_i ((i mod 65521) + 1) v_i
(position-weighted, so swapped values show): integer addition is exact and associative, so the
digest is the same whatever the device, thread count or reduction order, and it runs on the
device without copying the parameters to the host. Both sums fit int64 for tensors below 2^32
values of 16 bits.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from disktrain.robust.sync import gather

_PRIME = 65521
"""Position weights cycle through 1 .. _PRIME."""
_CHUNK = 1 << 22
"""16-bit values digested at a time (bounds the temporary weights)."""


class ReplicaDivergenceError(RuntimeError):
    """The ranks' parameter replicas differ."""


def _words(t: Tensor) -> Tensor:
    """t's bytes as int16 values (a trailing odd byte zero-padded)."""
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
    if raw.numel() % 2:
        raw = torch.cat([raw, raw.new_zeros(1)])
    return raw.view(torch.int16)


def replica_digest(tensors: Iterable[Tensor]) -> Tensor:
    """(2 * len(tensors),) int64: the plain and the position-weighted sum of each tensor's bytes
    read as 16-bit integers (module docstring)."""
    out = []
    for t in tensors:
        words = _words(t)
        plain = torch.zeros((), dtype=torch.int64, device=words.device)
        weighted = torch.zeros((), dtype=torch.int64, device=words.device)
        for start in range(0, words.numel(), _CHUNK):
            w = words[start:start + _CHUNK].to(torch.int64)
            pos = torch.arange(start, start + w.numel(), device=w.device) % _PRIME + 1
            plain += w.sum()
            weighted += (w * pos).sum()
        out += [plain, weighted]
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.int64)


def divergent_ranks(digests: Tensor) -> tuple[list[int], list[int]]:
    """From a (world, k) stack of digests: (the ranks agreeing with the largest group, ties to
    the group of the lowest rank; the other ranks)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for rank, row in enumerate(digests.tolist()):
        groups.setdefault(tuple(row), []).append(rank)
    majority = max(groups.values(), key=lambda ranks: (len(ranks), -ranks[0]))
    return majority, [r for r in range(digests.shape[0]) if r not in majority]


def check_replicas(tensors: Iterable[Tensor], where: str = "") -> None:
    """Compare this rank's replica_digest with every rank's (one all-gather every rank joins);
    raise ReplicaDivergenceError naming the ranks that differ from the majority. A no-op
    without a process group or with one rank. `where` (e.g. "epoch 3") starts the message."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    digests = gather(replica_digest(tensors)).cpu()
    agree, differ = divergent_ranks(digests)
    if differ:
        prefix = f"{where}: " if where else ""
        raise ReplicaDivergenceError(
            f"{prefix}parameter replicas diverged: rank(s) {', '.join(map(str, differ))} "
            f"differ from rank(s) {', '.join(map(str, agree))}; the ranks no longer train the "
            "same model (check the launcher and the aggregation rule's determinism)")
