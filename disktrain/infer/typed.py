"""Layer-wise inference on typed graphs (R-SAGE, R-GAT): each layer computed per destination
node type, for ranges of its nodes in order, from every relation into it.

For a range of a type's nodes and each relation into that type, the relation's CSR by
destination (memory-mapped, read by range) gives the in-edges; the source type's input rows
(its features, its learnt embeddings, or the layer below's store of that type) are read in
one ascending pass; the relation's trained convolution runs on them and the outputs are
summed (or averaged) over the relations as ``HeteroGNN`` does. A store per layer and type
(``layer-<l>-<type>``), resumable per chunk; the last layer computes the target type only.
Full neighbourhoods (``--fanout-cap`` is not taken), every node of each type a layer needs,
in one process (no Ray tasks yet). Outputs equal a whole-graph forward up to rounding; as
with the homogeneous layers, cuts into other ranges (a resumed run's) round differently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from disktrain.infer.layers import MIN_RANGE, LayerInput
from disktrain.infer.model import Trained
from disktrain.infer.store import LayerWriter, layer_dir, open_layer
from disktrain.storage.dataset import FEATURE_CHUNK_BYTES, TypedDataset, relation_name


class _Embeddings:
    """A featureless type's input rows: its learnt embedding table (in memory)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach()

    def gather(self, ids: np.ndarray) -> torch.Tensor:
        return self.weight[torch.from_numpy(np.asarray(ids, np.int64))].float()


def compute_typed(dataset: TypedDataset, trained: Trained, work: Path, cfg
                  ) -> tuple[LayerInput, int]:
    """Every layer of ``trained`` (a ``HeteroGNN``) over every node of the types each layer
    needs, under ``work``; the last layer's rows (the target type's, by id) and their
    number."""
    model, hcfg = trained.model, trained.config
    layers, budget = hcfg.layer_relations(), cfg.budget()
    inputs = {t: (LayerInput(dataset.type_dataset(t), None) if t not in model.embeddings
                  else _Embeddings(model.embeddings[t].weight)) for t in model.input_types}
    stores = [{t: _identity(dataset, trained, cfg, i, t, hcfg.num_classes if i == len(layers)
                            - 1 else hcfg.hidden) for t in _dst_types(dataset, rels)}
              for i, rels in enumerate(layers)]
    start = 0
    for i in reversed(range(len(layers))):  # resume from the highest complete layer
        try:
            inputs = {t: LayerInput(*open_layer(work, _key(i, t), ident))
                      for t, ident in stores[i].items()}
            start = i + 1
            break
        except KeyError:
            continue
    for i in range(start, len(layers)):
        outputs = {}
        for t, identity in stores[i].items():
            out = LayerWriter(work, _key(i, t), identity, None)
            try:
                _run(model, i, t, [r for r in layers[i] if r[2] == t], dataset, inputs, out,
                     identity, budget, i == len(layers) - 1, cfg.progress)
            except BaseException:
                out.abort()
                raise
            out.finish()
            outputs[t] = LayerInput(*open_layer(work, _key(i, t), identity))
        if i and not cfg.keep_layers:
            for t in stores[i - 1]:
                shutil.rmtree(layer_dir(work, _key(i - 1, t)), ignore_errors=True)
        inputs = outputs
    target = hcfg.target_type
    return inputs[target], stores[-1][target]["num_rows"]


def _dst_types(dataset: TypedDataset, rels: list) -> list[str]:
    """The types a layer of relations ``rels`` outputs, in the dataset's type order."""
    return [n for n in dataset.type_names if any(r[2] == n for r in rels)]


def _key(layer: int, node_type: str) -> str:
    return f"{layer}-{node_type}"


def _identity(dataset: TypedDataset, trained: Trained, cfg, layer: int, node_type: str,
              width: int) -> dict:
    rows = dataset.types[dataset.type_index(node_type)].num_nodes
    return {"dataset_id": dataset.dataset_id, "checkpoint": trained.fingerprint,
            "layer": layer, "type": node_type, "fanout_cap": 0, "seed": 0, "nodes": "all",
            "subset": False, "num_rows": rows, "width": width,
            "chunk_rows": max(1, min(rows, cfg.chunk_rows or FEATURE_CHUNK_BYTES // (4 * width)))}


def _run(model, layer: int, node_type: str, rels: list, dataset: TypedDataset, inputs: dict,
         out: LayerWriter, identity: dict, budget: int, last: bool, progress: bool) -> None:
    """Layer ``layer``'s rows of ``node_type`` for the writer's pending chunks."""
    convs = model.layers[layer]
    csrs = [dataset.relation_csr(r) for r in rels]
    num_rows, step = identity["num_rows"], identity["chunk_rows"]
    with tqdm(total=num_rows, desc=f"infer: layer {layer} {node_type}", unit="node",
              unit_scale=True, disable=not progress) as bar:
        for c in out.pending:
            start, stop = c * step, min(num_rows, (c + 1) * step)
            for a, b in _ranges(csrs, start, stop, identity["width"], budget):
                h = _forward(convs, rels, csrs, inputs, node_type, a, b, model.aggr)
                out.put(a, (h if last else F.relu(h)).numpy())
                bar.update(b - a)


def _ranges(csrs: list, start: int, stop: int, width: int, budget: int):
    """``[start, stop)`` cut into ranges whose rows (a gathered source row and a message per
    in-edge, over every relation; outputs per node) fit ``budget``, each at least
    :data:`MIN_RANGE` nodes (the last may hold fewer)."""
    edges = sum(np.diff(np.asarray(indptr[start:stop + 1], np.int64)) for indptr, _ in csrs)
    cost = np.concatenate([[0], np.cumsum(edges * (16 * width + 64) + 12 * width + 64)])
    a = start
    while a < stop:
        fits = int(np.searchsorted(cost, cost[a - start] + budget, side="right")) - 1
        b = min(stop, max(a + MIN_RANGE, start + fits))
        b = stop if stop - b < MIN_RANGE else b
        yield a, b
        a = b


@torch.no_grad()
def _forward(convs, rels: list, csrs: list, inputs: dict, node_type: str, a: int, b: int,
             aggr: str) -> torch.Tensor:
    """The type's outputs for its nodes ``[a, b)``: each relation's convolution, combined."""
    x_dst = inputs[node_type].gather(np.arange(a, b, dtype=np.int64))
    outs = []
    for rel, (indptr, indices) in zip(rels, csrs, strict=True):
        ptr = np.asarray(indptr[a:b + 1], np.int64)
        src = np.asarray(indices[ptr[0]:ptr[-1]], np.int64)
        dst = np.repeat(np.arange(b - a, dtype=np.int64), np.diff(ptr))
        uniq, local = np.unique(src, return_inverse=True)
        x_src = inputs[rel[0]].gather(uniq)
        outs.append(convs[relation_name(rel)](x_src, x_dst, torch.from_numpy(local.ravel()),
                                              torch.from_numpy(dst)))
    stacked = torch.stack(outs)
    return stacked.sum(0) if aggr == "sum" else stacked.mean(0)
