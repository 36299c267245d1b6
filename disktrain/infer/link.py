"""Link prediction evaluated on exact embeddings: each val/test edge's score against those of
its fixed negatives (``ingest --edge-split``), from the node embeddings layer-wise inference
computes (:func:`disktrain.infer.run.evaluate_exact`)."""

from __future__ import annotations

import numpy as np
import torch

from disktrain.infer.layers import LayerInput
from disktrain.storage.dataset import Dataset
from disktrain.train.linkmetrics import link_metrics

GATHER_BYTES = 128 << 20
"""Embedding rows gathered at once while scoring (the edges are taken in slices)."""


def link_splits(dataset: Dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per evaluation split the dataset holds, its edges (E, 2) and their negatives (E, K)."""
    return {s: (dataset.link_edges(s), dataset.link_negatives(s)) for s in ("val", "test")
            if dataset.has(f"link_{s}")}


def link_nodes(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The ascending ids of every node the splits' edges and negatives name."""
    return np.unique(np.concatenate([a.reshape(-1) for pair in splits.values() for a in pair]))


@torch.no_grad()
def score_links(rows: LayerInput, decoder: torch.nn.Module,
                splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """MRR, Hits@K and AUC per split (``{split}_mrr``, ...; and ``{split}_edges``) of
    ``decoder`` over the embeddings ``rows``."""
    out = {}
    for split, (edges, negatives) in splits.items():
        k = negatives.shape[1]
        step = max(1, GATHER_BYTES // ((k + 2) * max(1, rows.row_bytes)))
        pos, neg = [], []
        for a in range(0, len(edges), step):
            e, n = np.asarray(edges[a:a + step]), np.asarray(negatives[a:a + step])
            h = rows.gather(np.concatenate((e[:, 0], e[:, 1], n.reshape(-1))))
            src, dst, far = h[:len(e)], h[len(e):2 * len(e)], h[2 * len(e):]
            pos.append(decoder(src, dst))
            neg.append(decoder(src.repeat_interleave(k, dim=0), far).view(len(e), k))
        if not len(edges):
            continue
        metrics = link_metrics(torch.cat(pos), torch.cat(neg))
        out.update({f"{split}_{name}": value for name, value in metrics.items()})
        out[f"{split}_edges"] = len(edges)
    return out
