"""disktrain: out-of-core, distributed GNN training.

Data path: ``dataset`` (Zarr CSR + features) -> ``sample`` (offline plan) -> ``pack``
(tiers and packed per-batch features) -> ``pipeline`` (read, assemble, copy) -> ``train``.
"""

from disktrain.errors import DataError

__all__ = ["DataError"]
__version__ = "0.1.0"
