"""Row -> tier arithmetic: which feature rows the GPU cache, the CPU cache and packing serve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from disktrain.pack.slots import NOT_CACHED, gpu_code


@dataclass(frozen=True)
class Tiers:
    """Static, frequency-ranked caches (as DiskGNN): node ids in cache-slot order."""

    gpu_nodes: np.ndarray
    """Hottest rows, ascending ids; row i of the GPU cache is node gpu_nodes[i]."""
    cpu_nodes: np.ndarray
    """Next hottest rows, ascending ids."""

    def codes(self, num_nodes: int) -> np.ndarray:
        """Per node: its tier code (:mod:`disktrain.pack.slots`): the GPU cache row's code,
        the CPU cache row, else NOT_CACHED."""
        code = np.full(num_nodes, NOT_CACHED, np.int64)
        code[self.gpu_nodes] = gpu_code(np.arange(len(self.gpu_nodes)))
        code[self.cpu_nodes] = np.arange(len(self.cpu_nodes))
        return code


def rows_for_bytes(num_bytes: int, row_bytes: int) -> int:
    return int(num_bytes) // max(1, int(row_bytes))


def assign_tiers(counts: np.ndarray, row_bytes: int, gpu_cache_bytes: int,
                 cpu_cache_bytes: int) -> Tiers:
    """Rank rows by access count (ties: lower id first); fill the GPU, then the CPU cache.

    Rows never accessed are never cached.
    """
    if not rows_for_bytes(gpu_cache_bytes, row_bytes) + rows_for_bytes(cpu_cache_bytes,
                                                                         row_bytes):
        empty = np.zeros(0, np.int64)  # no cache: no ranking (a sort of every count)
        return Tiers(empty, empty.copy())
    order = hot_order(counts)
    n_gpu = min(rows_for_bytes(gpu_cache_bytes, row_bytes), len(order))
    n_cpu = min(rows_for_bytes(cpu_cache_bytes, row_bytes), len(order) - n_gpu)
    return Tiers(np.sort(order[:n_gpu]), np.sort(order[n_gpu:n_gpu + n_cpu]))


def hot_order(counts: np.ndarray) -> np.ndarray:
    """Ids of accessed rows, most accessed first (stable: lower id first among ties)."""
    accessed = np.flatnonzero(counts > 0)
    return accessed[np.argsort(-counts[accessed], kind="stable")]


def cache_rows_to_fit(counts: np.ndarray, max_packed_rows: int) -> int:
    """Fewest hottest rows to cache so packing writes at most ``max_packed_rows``."""
    order = hot_order(counts)
    tail = np.cumsum(counts[order][::-1], dtype=np.int64)[::-1]  # rows packed if i cached
    fits = np.flatnonzero(tail <= max_packed_rows)
    return int(fits[0]) if len(fits) else len(order)
