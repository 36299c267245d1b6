"""Layer-wise inference end to end: which nodes, every layer's store, the output; and exact
evaluation on the val and test nodes."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from disktrain.errors import DataError
from disktrain.infer.config import InferConfig
from disktrain.infer.export import columns, widths, writer
from disktrain.infer.layers import Graph, LayerInput, run_layer
from disktrain.infer.link import link_nodes, link_splits, score_links
from disktrain.infer.model import Trained, load_trained
from disktrain.infer.store import LayerWriter, layer_dir, open_layer
from disktrain.infer.typed import compute_typed
from disktrain.models.gnn import MLP
from disktrain.storage.atomic import temporary_name
from disktrain.storage.chunkfile import crc32c
from disktrain.storage.dataset import FEATURE_CHUNK_BYTES, SPLITS, Dataset, TypedDataset
from disktrain.storage.lock import read_lock


class AllNodes:
    """The ids ``0 .. n - 1`` as slices are taken of an id array, without storing them."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> np.ndarray:
        return np.arange(*s.indices(self.n), dtype=np.int64)


def select_nodes(dataset: Dataset, spec: str) -> np.ndarray | None:
    """The ascending ids ``spec`` names (``all``: None, a split, or a ``.npy`` file of ids,
    checked: integers in ``[0, num_nodes)``)."""
    if spec == "all":
        return None
    if spec in SPLITS:
        return np.unique(dataset.split(spec))
    try:
        ids = np.load(spec, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"--nodes {spec}: cannot read the node ids ({e})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or not len(ids):
        raise DataError(f"--nodes {spec}: expected a non-empty 1-D integer array of node ids, "
                        f"got {ids.dtype} of shape {ids.shape}")
    bad = np.flatnonzero((ids < 0) | (ids >= dataset.num_nodes))
    if len(bad):
        raise DataError(f"--nodes {spec}: row {bad[0]} holds node id {ids[bad[0]]}, out of "
                        f"range [0, {dataset.num_nodes}) of {dataset.path}")
    return np.unique(ids).astype(np.int64)


RunChunks = Callable[[InferConfig, int, list[int], "np.ndarray | None", list[dict]], None]
"""Computes pending chunks of a layer elsewhere (Ray tasks, :mod:`disktrain.cluster.ray_infer`):
called with the run's config (its checkpoint the file the layers are made with), the layer,
its pending chunks, its nodes (None: all) and every layer's identity; each share of the
chunks goes through :func:`run_chunks`."""


def compute_layers(dataset: Dataset, trained: Trained, nodes: np.ndarray | None, work: Path,
                   cfg: InferConfig, chunks_on: RunChunks | None = None
                   ) -> tuple[LayerInput, int]:
    """Every layer of ``trained`` for ``nodes`` (None: all) under ``work``, resuming what a
    run killed before left there (from its highest complete layer, and that layer's chunks
    written); the last layer's rows and their number. ``chunks_on``: where each layer's
    pending chunks are computed (default: here). A typed graph: every node of the types each
    layer needs (:mod:`disktrain.infer.typed`), here."""
    if isinstance(dataset, TypedDataset):
        if chunks_on is not None or cfg.fanout_cap:
            raise ValueError(f"{dataset.path} is a typed graph: its inference runs in one "
                             "process (no --ray-address) over full neighbourhoods (no "
                             "--fanout-cap) for now")
        return compute_typed(dataset, trained, work, cfg)
    graph = Graph(dataset, cfg.fanout_cap, cfg.seed)
    num_layers, n = trained.config.num_layers, dataset.num_nodes
    if nodes is None or isinstance(trained.model, MLP):
        sets = [nodes] * num_layers
    else:
        sets = [None if len(s) == n else s for s in graph.needed(nodes, num_layers - 1)]
    ids = [_identity(dataset, trained, cfg, layer, s) for layer, s in enumerate(sets)]
    budget = cfg.budget()
    source, start = LayerInput(dataset, None), 0
    for layer in reversed(range(num_layers)):
        with contextlib.suppress(KeyError):
            source, start = LayerInput(*open_layer(work, layer, ids[layer])), layer + 1
            break
    for layer in range(start, num_layers):
        out, rows = LayerWriter(work, layer, ids[layer], sets[layer]), ids[layer]["num_rows"]
        try:
            if chunks_on is not None:
                chunks_on(replace(cfg, checkpoint=trained.path), layer, out.pending,
                          sets[layer], ids)
            else:
                run_layer(trained, layer, graph, source, AllNodes(n) if sets[layer] is None
                          else sets[layer], _spans(out.pending, out.rows, rows), out, budget,
                          cfg.progress)
        except BaseException:
            out.abort()
            raise
        out.finish()
        source = LayerInput(*open_layer(work, layer, ids[layer]))
        if layer and not cfg.keep_layers:
            shutil.rmtree(layer_dir(work, layer - 1), ignore_errors=True)
    return source, ids[-1]["num_rows"]


def run_chunks(cfg: InferConfig, layer: int, chunks: list[int], nodes: np.ndarray | None,
               ids: list[dict]) -> int:
    """Compute ``chunks`` of layer ``layer`` (nodes ``nodes``, None: all; ``ids`` every
    layer's identity) into the partial layer store another process made, as a share of its
    pending chunks; return the rows computed. The rows computed there, up to rounding: a
    node's row depends on its neighbourhood only (see :mod:`disktrain.infer.layers`)."""
    with read_lock(cfg.dataset, "infer"):
        dataset = Dataset(cfg.dataset, csr="map")
        trained = load_trained(cfg.checkpoint, dataset)
        if trained.fingerprint != ids[layer]["checkpoint"]:
            raise DataError(f"infer: {cfg.checkpoint} is not the checkpoint layer {layer} is "
                            f"computed with ({ids[layer]['checkpoint']})")
        source = LayerInput(dataset, None) if layer == 0 else LayerInput(
            *open_layer(cfg.work, layer - 1, ids[layer - 1]))
        out = LayerWriter(cfg.work, layer, ids[layer], nodes, attach=True)
        spans = _spans(chunks, out.rows, out.num_rows)
        try:
            run_layer(trained, layer, Graph(dataset, cfg.fanout_cap, cfg.seed), source,
                      AllNodes(dataset.num_nodes) if nodes is None else nodes, spans, out,
                      cfg.budget(), False)
        except BaseException:
            out.abort()
            raise
        out.finish(rename=False)
    return sum(b - a for a, b in spans)


def _identity(dataset: Dataset, trained: Trained, cfg: InferConfig, layer: int,
              nodes: np.ndarray | None) -> dict:
    """What layer ``layer``'s store holds (a store of another identity is not resumed from):
    its inputs, its nodes, its shape and chunking."""
    width, rows = trained.config.dims[layer + 1], dataset.num_nodes if nodes is None else len(nodes)
    return {"dataset_id": dataset.dataset_id, "checkpoint": trained.fingerprint,
            "layer": layer, "fanout_cap": cfg.fanout_cap, "seed": cfg.seed,
            "nodes": "all" if nodes is None else f"{crc32c(nodes):08x}-{len(nodes)}",
            "subset": nodes is not None, "num_rows": rows, "width": width,
            "chunk_rows": max(1, min(rows, cfg.chunk_rows or FEATURE_CHUNK_BYTES // (4 * width)))}


def _spans(chunks: list[int], chunk_rows: int, num_rows: int) -> list[tuple[int, int]]:
    """The row spans of runs of consecutive ``chunks``."""
    spans: list[list[int]] = []
    for c in chunks:
        if spans and spans[-1][1] == c * chunk_rows:
            spans[-1][1] = min(num_rows, (c + 1) * chunk_rows)
        else:
            spans.append([c * chunk_rows, min(num_rows, (c + 1) * chunk_rows)])
    return [(a, b) for a, b in spans]


def infer(cfg: InferConfig | None = None, *, chunks_on: RunChunks | None = None,
          **kwargs) -> Path:
    """Run ``cfg`` (or ``InferConfig(**kwargs)``): the trained model's final layer for the
    nodes asked, written to ``cfg.out`` in ``cfg.format``; return ``cfg.out``.
    ``chunks_on``: where the layers' chunks are computed (default: in this process)."""
    cfg = cfg or InferConfig(**kwargs)
    if cfg.out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out} already exists (pass --overwrite to replace it)")
    with read_lock(cfg.dataset, "infer"):
        dataset = Dataset(cfg.dataset, csr="map")
        trained = load_trained(cfg.checkpoint, dataset)
        nodes = select_nodes(dataset, cfg.nodes)
        source, num_rows = compute_layers(dataset, trained, nodes, cfg.work, cfg, chunks_on)
    step = source.rows.chunk_rows
    rows = source.rows.feature_rows
    if nodes is not None and source.nodes is None:  # every node computed (a typed graph)
        source, num_rows = LayerInput(source.rows, nodes), len(nodes)
        rows = lambda a, b: source.rows.gather_sorted(nodes[a:b])
    attrs = {"dataset_id": dataset.dataset_id, "dataset": str(dataset.path),
             "checkpoint": str(trained.path), "model": trained.config.model,
             "nodes": cfg.nodes, "fanout_cap": cfg.fanout_cap}
    shapes = widths(trained.config.num_classes, trained.config.num_classes, cfg.predictions)
    with writer(cfg.format, cfg.out, num_rows, shapes, step, attrs, cfg.overwrite) as put:
        ids = AllNodes(num_rows) if source.nodes is None else source.nodes
        for a in range(0, num_rows, step):
            b = min(num_rows, a + step)
            put(a, columns(ids[a:b], rows(a, b), cfg.predictions))
    if not cfg.keep_layers:
        shutil.rmtree(cfg.work, ignore_errors=True)
    return cfg.out


def evaluate_exact(dataset_dir: str | Path, checkpoint: str | Path, *, fanout_cap: int = 0,
                   seed: int = 0, memory_budget: int = 0, progress: bool = False,
                   work_dir: str | Path | None = None) -> dict:
    """Val and test accuracy of ``checkpoint``'s model on ``dataset_dir`` (a link prediction
    model's MRR, Hits@K and AUC over the val and test edges: :mod:`disktrain.infer.link`)
    from layer-wise full-neighbourhood inference over the nodes those splits need (no sampling; at most
    ``fanout_cap`` neighbours, keyed by ``seed``, where given), and their node counts. The
    layers are computed under ``work_dir`` (default: the dataset's directory) and removed."""
    with read_lock(dataset_dir, "evaluate"):
        return _evaluate(Dataset(dataset_dir, csr="map"), checkpoint, fanout_cap, seed,
                         memory_budget, progress, Path(work_dir or dataset_dir))


def _evaluate(dataset: Dataset, checkpoint: str | Path, fanout_cap: int, seed: int,
              memory_budget: int, progress: bool, work_dir: Path) -> dict:
    trained = load_trained(checkpoint, dataset)
    if trained.decoder is not None:  # link prediction: val/test edges against negatives
        splits = link_splits(dataset)
        if not splits:
            raise DataError(f"{dataset.path}: no val/test edges to evaluate link prediction "
                            "on (ingest with --edge-split)")
        nodes = link_nodes(splits)
    else:
        splits = {s: dataset.split(s) for s in ("val", "test") if dataset.has(s)}
        if not splits or not dataset.has("labels"):
            raise DataError(f"{dataset.path}: no labels or no val/test split to evaluate on")
        nodes = np.unique(np.concatenate(list(splits.values())))
    work = temporary_name(work_dir / "evaluate")
    cfg = InferConfig(dataset=dataset.path, checkpoint=trained.path, out=work,
                      fanout_cap=fanout_cap, seed=seed, memory_budget=memory_budget,
                      progress=progress)
    out = {"checkpoint": str(trained.path), "model": trained.config.model}
    try:
        source, num_rows = compute_layers(dataset, trained, nodes, work, cfg)
        if trained.decoder is not None:
            return {**out, "task": "link", **score_links(source, trained.decoder, splits)}
        pred = np.concatenate([source.rows.feature_rows(a, min(num_rows, a + 65536)).argmax(1)
                               for a in range(0, num_rows, 65536)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ids = source.nodes if source.nodes is not None else np.arange(num_rows)
    for s, members in splits.items():
        hit = pred[np.searchsorted(ids, members)] == dataset.labels[members]
        out[f"{s}_acc"] = float(hit.mean()) if len(members) else None
        out[f"{s}_nodes"] = len(members)
    return out
