"""Layer-wise inference on Ray: each layer's pending chunks as Ray tasks across a cluster.

The single-process run stays in charge (which nodes, the layer stores, resuming, the final
renames and the output); Ray only replaces its loop over a layer's chunks, through the
``chunks_on`` hook of :func:`disktrain.infer.infer`. Each task computes a contiguous run of
chunks with :func:`disktrain.infer.run.run_chunks` into the layer's partial store; the layer
is complete when every task is, and the next one starts from it. A node's output row depends
on its own neighbourhood only, so the output is the single process's up to float32 rounding
(its chunks are cut into other ranges, which BLAS rounds differently). Every
node must see the dataset, the checkpoint and the output's directory at the same paths (a
shared NFS/EFS mount); ``--memory-budget`` bounds each task.

    from disktrain.cluster.ray_infer import infer_on_ray
    infer_on_ray(InferConfig(dataset="/data/papers", checkpoint="/runs/ck", out="/out/emb"))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from disktrain.infer import InferConfig, infer
from disktrain.infer.run import run_chunks

from .head import init_ray
from .ray_prepare import TASKS_PER_CPU, split_runs


def infer_on_ray(cfg: InferConfig, address: str | None = None, *,
                 num_cpus: int | None = None) -> Path:
    """:func:`disktrain.infer.infer` with every layer's chunks computed by Ray tasks.

    ``address``: "auto", a GCS address, or None (RAY_ADDRESS if set, else a local Ray bound
    to 127.0.0.1 for this call, with ``num_cpus`` CPUs)."""
    started = init_ray(address, num_cpus=num_cpus)
    try:
        return infer(cfg, chunks_on=lambda *a: _layer_on_ray(*a, progress=cfg.progress))
    finally:
        if started:
            import ray

            ray.shutdown()


def _layer_on_ray(cfg: InferConfig, layer: int, chunks: list[int], nodes: np.ndarray | None,
                  ids: list[dict], *, progress: bool) -> None:
    import ray

    if not chunks:
        return
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1, max_retries=3)(run_chunks)
    shared = ray.put(nodes)
    pending = [task.remote(cfg, layer, run, shared, ids)
               for run in split_runs(chunks, TASKS_PER_CPU * cpus)]
    total = ids[layer]["num_rows"]
    with tqdm(total=total, desc=f"infer: layer {layer} (ray)", unit="node", unit_scale=True,
              disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(ray.get(done[0]))
