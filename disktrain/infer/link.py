"""Link prediction evaluated on exact embeddings: each val/test edge's score against those of
its fixed negatives (``ingest --edge-split``), from the node embeddings layer-wise inference
computes (:func:`disktrain.infer.run.evaluate_exact`)."""

from __future__ import annotations

import numpy as np
import torch

from disktrain.infer.layers import LayerInput
from disktrain.storage.dataset import Dataset
from disktrain.train.linkmetrics import link_metrics

BLOCK_BYTES = 64 << 20
"""Embedding rows read at once while scoring, in order."""


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
    ``decoder`` over the embeddings ``rows``.

    The sources' rows are gathered once (one ascending pass); every other row is read once,
    in order, block by block, and scored against the sources of the pairs whose destination
    it is: gathering each edge's destinations on its own would read most of a large store
    again for every few hundred edges (1,000 negatives an edge touch nearly every node)."""
    out = {}
    for split, (edges, negatives) in splits.items():
        if not len(edges):
            continue
        edges, negatives = np.asarray(edges), np.asarray(negatives)
        k = negatives.shape[1] + 1  # the positive destination, then the negatives
        dst = np.concatenate((edges[:, 1:2], negatives), axis=1).reshape(-1)
        scores = _by_destination(rows, decoder, rows.gather(edges[:, 0]), dst, k)
        scores = scores.view(len(edges), k)
        metrics = link_metrics(scores[:, 0], scores[:, 1:])
        out.update({f"{split}_{name}": value for name, value in metrics.items()})
        out[f"{split}_edges"] = len(edges)
    return out


def _by_destination(rows: LayerInput, decoder: torch.nn.Module, src: torch.Tensor,
                    dst: np.ndarray, per_source: int) -> torch.Tensor:
    """The decoder's score of each pair ``(src[i // per_source], dst[i])``, the destination
    rows streamed once, in order."""
    pos = rows.position(dst)
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    scores = torch.empty(len(dst), dtype=torch.float32)
    for start, block in rows.blocks(BLOCK_BYTES):
        i, j = np.searchsorted(pos, [start, start + len(block)])
        if i < j:
            pairs = torch.from_numpy(order[i:j])
            scores[pairs] = decoder(src[pairs // per_source],
                                    torch.from_numpy(block)[torch.from_numpy(pos[i:j] - start)])
    return scores
