"""Feature tiers and packing: hot rows in caches, every batch's other rows contiguous on disk."""

from disktrain.pack.packer import PackConfig, pack_dataset, pack_roots
from disktrain.pack.store import PackedStore
from disktrain.pack.tiers import Tiers, assign_tiers

__all__ = ["PackConfig", "PackedStore", "Tiers", "assign_tiers", "pack_dataset", "pack_roots"]
