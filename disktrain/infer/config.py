"""What a layer-wise inference run computes and where it writes: :class:`InferConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from disktrain.storage.dataset import SPLITS

FORMATS = ("zarr", "npy", "parquet")
NODE_SETS = ("all", *SPLITS)
DEFAULT_MEMORY_SHARE = 0.25
"""Default memory budget: this share of the memory available
(:func:`~disktrain.storage.residency.mem_available`)."""


@dataclass(frozen=True, kw_only=True)
class InferConfig:
    """One inference run: a trained model's outputs for every node (or some) of a dataset."""

    dataset: Path
    """The dataset directory the model runs on."""
    checkpoint: Path
    """A checkpoint file, or a checkpoint directory (its newest file that loads)."""
    out: Path
    """Where the final layer goes: a directory (zarr, npy) or a file (parquet). The layers
    are computed in ``OUT.layers/``, which a rerun resumes from."""
    format: str = "zarr"
    """One of :data:`FORMATS`."""
    predictions: bool = False
    """Also write each node's predicted class (argmax) and class probabilities (softmax)."""
    nodes: str = "all"
    """Whose outputs: ``all``, a split (``train``, ``val``, ``test``) or a ``.npy`` file of
    node ids."""
    fanout_cap: int = 0
    """Aggregate at most this many in-neighbours per node (0: all of them), the same ones at
    every layer: the neighbours training's sampler draws for the node at this fanout with
    key ``seed`` (deterministic)."""
    seed: int = 0
    """The key of the neighbours ``fanout_cap`` picks."""
    memory_budget: int = 0
    """Bytes a range of destination nodes may take (0: :data:`DEFAULT_MEMORY_SHARE` of the
    memory available); ranges are cut to it, whatever the graph's size."""
    chunk_rows: int = 0
    """Rows per chunk file of the layer stores (0: about 4 MiB chunks, as features)."""
    keep_layers: bool = False
    """Keep every layer's store in ``OUT.layers/`` (default: each is removed once the next
    is complete, and ``OUT.layers/`` once ``OUT`` is written)."""
    overwrite: bool = False
    """Replace ``OUT`` if it exists."""
    progress: bool = True
    """Show a progress bar per layer."""

    def __post_init__(self) -> None:
        for name in ("dataset", "checkpoint", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.format not in FORMATS:
            raise ValueError(f"InferConfig.format must be one of {FORMATS}, got {self.format!r}")
        if self.nodes not in NODE_SETS and not self.nodes.endswith(".npy"):
            raise ValueError(f"InferConfig.nodes must be one of {NODE_SETS} or a .npy file of "
                             f"node ids, got {self.nodes!r}")
        for name in ("fanout_cap", "memory_budget", "chunk_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"InferConfig.{name} must be >= 0, got {getattr(self, name)}")

    def budget(self) -> int:
        """The bytes a range may take: ``memory_budget``, else the default share of the
        memory available."""
        from disktrain.storage.residency import mem_available

        return self.memory_budget or int(DEFAULT_MEMORY_SHARE * mem_available()) or 1 << 30

    @property
    def work(self) -> Path:
        """The directory of the layer stores: ``OUT.layers``."""
        return self.out.with_name(self.out.name + ".layers")
