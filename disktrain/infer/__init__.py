"""Layer-wise inference: a trained model's outputs for every node (or some), out of core.

``infer(InferConfig(...))`` (``disktrain infer``) computes each layer for ranges of nodes in
order over full neighbourhoods (:mod:`.layers`), every layer a checked, resumable store
(:mod:`.store`), and writes the last one as Zarr, ``.npy`` or Parquet (:mod:`.export`);
``evaluate_exact`` (``disktrain evaluate``) gives val and test accuracy that way. The model
comes from a checkpoint's record (:mod:`.model`).
"""

from disktrain.infer.config import InferConfig
from disktrain.infer.run import evaluate_exact, infer

__all__ = ["InferConfig", "evaluate_exact", "infer"]
