"""The packed store's in-memory twin: a batch's rows laid out as the packer lays them out
(:func:`~disktrain.pack.slots.pack_slots`), from a features array, for the loader to read as
it reads the store."""

from __future__ import annotations

import numpy as np

from disktrain.pack.slots import pack_slots
from disktrain.pack.tiers import Tiers
from disktrain.sample.store import SampleSource
from disktrain.storage.dataset import new_id


class MemoryPacked:
    """A :class:`~disktrain.pack.store.PackedSource` of the batches of ``samples``: their rows
    of ``features`` (every node's row), cached as ``tiers`` says; chunks of one row (no
    padding), read by copying, no checksums."""

    chunk_rows = 1
    aggregate = None

    def __init__(self, samples: SampleSource, features: np.ndarray, tiers: Tiers):
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (nodes, feature_dim), got shape "
                             f"{features.shape}")
        self.feature_dim, self.dtype = features.shape[1], features.dtype
        self.chunk_stride = self.feature_dim * self.dtype.itemsize
        self.n_gpu, self.n_cpu = len(tiers.gpu_nodes), len(tiers.cpu_nodes)
        self.tiers_id = new_id()
        self._cache_rows = features[np.concatenate([tiers.gpu_nodes, tiers.cpu_nodes])]
        codes = tiers.codes(len(features))
        self._slots, packed = [], []
        for b in range(samples.num_batches):
            slots, runs = pack_slots(codes, samples.input_nodes(b), samples.inner_count(b),
                                     self.n_cpu)
            self._slots.append(slots)
            packed.append(np.concatenate(runs))
        self.batch_packed = np.array([len(p) for p in packed], np.int64)
        self.batch_rows = np.concatenate(([0], np.cumsum(self.batch_packed)))
        self.rows = features[np.concatenate(packed)]

    def cache_rows(self) -> np.ndarray:
        return self._cache_rows

    def slots(self, b: int) -> np.ndarray:
        return self._slots[b]

    def read_packed(self, b: int, out: np.ndarray) -> np.ndarray:
        """Copy batch ``b``'s packed rows into ``out``; they are returned (a view of ``out``)."""
        rows = self.rows[self.batch_rows[b]:self.batch_rows[b + 1]]
        out[:len(rows)] = rows
        return out[:len(rows)]
