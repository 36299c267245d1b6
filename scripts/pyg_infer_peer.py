"""The peer of scripts/bench_infer.py: PyTorch Geometric's layer-wise inference for every node
with a disktrain checkpoint's GraphSAGE weights.

Usage: python scripts/pyg_infer_peer.py DATASET --features F.npy --checkpoint CKPT
                                        [--batch-size 4096] [--max-s T] [--save OUT.npy]

What a PyG user would write (PyG's examples, ``BasicGNN.inference``):
  - graph and features as scripts/pyg_peer.py's ``build_data``: the stored CSR of in-neighbours
    as a ``torch_sparse.SparseTensor`` ``adj_t`` (int64), the features memory-mapped from the
    exported ``F.npy``;
  - model: ``torch_geometric.nn.GraphSAGE`` (mean ``SAGEConv``, ReLU between layers) holding
    the checkpoint's weights (:func:`pyg_sage`; disktrain's ``lin_self`` is PyG's ``lin_r``,
    its ``lin_neigh`` ``lin_l``, the bias on ``lin_l``), in eval mode;
  - ``NeighborLoader(data, input_nodes=None, num_neighbors=[-1], batch_size=B,
    shuffle=False)`` and the loop of ``BasicGNN.inference`` (:func:`layerwise`): for each layer,
    for each batch, ``inference_per_layer`` on ``x_all[batch.n_id]``, the batches' outputs
    concatenated in memory (N x width float32) as the next layer's ``x_all``. The one change:
    the float16 features are cast to float32 per batch (PyG's layers take the weights' type).
    The loop is PyG's own, run here to time each layer and batch; ``--check-api`` compares it
    with ``model.inference(loader)``.
``--max-s T`` caps the whole run at T seconds: the layer running then is extrapolated from its
per-batch rate, and the layers after it from the same rate (``extrapolated`` in the JSON).
Per layer: batches run and in all, seconds (measured and estimated), bytes read and written
(``/proc/self/io``) and the peak RSS so far. ``--save`` writes the last layer's outputs
(complete runs only). Prints one JSON object as the last line of standard output.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pyg_peer import build_data


def pyg_sage(checkpoint: Path):
    """``torch_geometric.nn.GraphSAGE`` holding the SAGE weights of disktrain checkpoint
    ``checkpoint`` (a file or a directory: its newest good file), in eval mode."""
    from torch_geometric.nn import GraphSAGE

    from disktrain.infer.model import checkpoint_bytes
    from disktrain.train.checkpoint import load_bytes  # torch.load(weights_only=True)

    path, data = checkpoint_bytes(checkpoint)
    state = load_bytes(data, path)
    fields = state["model_record"]["model"]
    if fields["model"] != "sage":
        raise ValueError(f"{path}: holds a {fields['model']!r} model; the peer runs sage")
    w = state["model"]
    dims = [w[f"convs.{i}.lin_self.weight"].shape for i in range(fields["num_layers"])]
    model = GraphSAGE(dims[0][1], dims[0][0], fields["num_layers"], dims[-1][0], aggr="mean")
    mapped = {}
    for i in range(fields["num_layers"]):
        mapped[f"convs.{i}.lin_l.weight"] = w[f"convs.{i}.lin_neigh.weight"]
        mapped[f"convs.{i}.lin_l.bias"] = w[f"convs.{i}.lin_self.bias"]
        mapped[f"convs.{i}.lin_r.weight"] = w[f"convs.{i}.lin_self.weight"]
    model.load_state_dict(mapped)
    return model.eval()


def io_bytes() -> tuple[int, int]:
    """This process's storage ``read_bytes`` and ``write_bytes`` (/proc/self/io)."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["read_bytes"]), int(io["write_bytes"])


@torch.no_grad()
def layerwise(model, loader, max_s: float = 0.0):
    """``BasicGNN.inference``'s loop over ``loader`` (float16 inputs cast per batch), each
    layer timed; stops once ``max_s`` seconds (0: no cap) have passed. The last layer's
    outputs (None when capped) and a record per layer run."""
    x_all, layers, t_start = loader.data.x, [], time.perf_counter()
    for i in range(model.num_layers):
        xs, t0, io0 = [], time.perf_counter(), io_bytes()
        for batch in loader:
            x = x_all[batch.n_id].to(torch.float32)
            xs.append(model.inference_per_layer(i, x, batch.adj_t, batch.batch_size))
            if max_s and time.perf_counter() - t_start >= max_s and len(xs) < len(loader):
                break
        io1 = io_bytes()
        layers.append({"layer": i, "batches": len(xs), "total_batches": len(loader),
                       "seconds": time.perf_counter() - t0,
                       "read_bytes": io1[0] - io0[0], "write_bytes": io1[1] - io0[1],
                       "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                       * 1024})
        if len(xs) < len(loader):
            return None, layers
        x_all = torch.cat(xs, dim=0)
    return x_all, layers


def estimate(layers: list[dict], num_layers: int) -> list[dict]:
    """Every layer's seconds: measured, or extrapolated from the capped layer's batch rate."""
    out = [dict(r, est_seconds=r["seconds"], extrapolated=False) for r in layers]
    last = layers[-1]
    rate = last["seconds"] / max(1, last["batches"])
    if last["batches"] < last["total_batches"]:
        out[-1].update(est_seconds=rate * last["total_batches"], extrapolated=True)
    for i in range(len(layers), num_layers):
        out.append({"layer": i, "batches": 0, "total_batches": last["total_batches"],
                    "est_seconds": rate * last["total_batches"], "extrapolated": True,
                    "extrapolated_from_layer": last["layer"]})
    return out


def loader_of(data, batch_size: int):
    from torch_geometric.loader import NeighborLoader

    return NeighborLoader(data, input_nodes=None, num_neighbors=[-1], batch_size=batch_size,
                          shuffle=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--features", type=Path, required=True, help="the exported .npy")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--max-s", type=float, default=0.0, help="cap, then extrapolate (0: none)")
    ap.add_argument("--save", type=Path, help="the last layer's outputs (.npy)")
    ap.add_argument("--check-api", action="store_true",
                    help="also run model.inference(loader) and compare")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    data, _, _ = build_data(args.dataset, args.features, "normal")
    model = pyg_sage(args.checkpoint)
    loader = loader_of(data, args.batch_size)
    setup_s = time.perf_counter() - t0
    out, layers = layerwise(model, loader, args.max_s)
    layers = estimate(layers, model.num_layers)
    result = {"setup_s": setup_s, "batch_size": args.batch_size, "layers": layers,
              "extrapolated": out is None,
              "est_seconds": setup_s + sum(r["est_seconds"] for r in layers),
              "run_seconds": time.perf_counter() - t0}
    if out is not None and args.check_api:
        data.x = data.x.to(torch.float32)  # the API takes no per-batch cast
        api = model.inference(loader_of(data, args.batch_size))
        result["api_max_abs_diff"] = float((api - out).abs().max())
    if out is not None and args.save:
        np.save(args.save, out.numpy())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
