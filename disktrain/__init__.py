"""disktrain: out-of-core, distributed GNN training.

Data path: ``dataset`` (Zarr CSR + features) -> ``sample`` (offline plan) -> ``pack``
(tiers and packed per-batch features) -> ``pipeline`` (read, assemble, copy) -> ``train``.
"""

from disktrain.errors import DataError

__all__ = ["Batch", "DataError", "Loader", "from_pyg"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``disktrain.Loader`` and ``disktrain.Batch``, imported on first use (they import
    torch; the command line's --help stays fast)."""
    if name == "Loader":
        from disktrain.loader.loader import Loader

        return Loader
    if name == "Batch":
        from disktrain.loader.batch import Batch

        return Batch
    if name == "from_pyg":
        from disktrain.ingest.importers import from_pyg

        return from_pyg
    raise AttributeError(f"module 'disktrain' has no attribute {name!r}")
