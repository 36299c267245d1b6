"""The GPU figures of issue 12 in one run: the assembly kernel's gather bandwidth against torch,
and a one-GPU epoch on a synthetic graph of >= 100M edges, with PyG's NeighborLoader beside it.

Usage (on the GPU machine, from the repository root; every part writes under --out):
  python3 scripts/bench_gpu.py [--out DIR (default: $OUT)] [--parts gather,epoch,pyg]
      [--time-box gather=100,epoch=320,pyg=110] [--nodes 10000000] [--avg-degree 10]
      [--feature-dim 128] [--train-fraction 0.01] [--fanouts 10,10] [--batch-size 1024]
      [--gpu-cache-bytes 4G] [--cpu-cache-bytes 8G] [--epochs 2] [--pyg-max-batches 60]
      [--workdir DIR]
  python3 scripts/bench_gpu.py --dry-run [--out DIR]   # tiny, on the CPU: checks the plumbing

Parts (each a child process with its own time box, so that one that fails or hangs loses only
itself; ``bench_gpu.json`` under --out is rewritten after every part):
  gather  device-to-device copy bandwidth (``copy_``, bytes read + written), then, for rows of
          256 B to 4 KiB (float32), a gather of 1 GiB of rows out of a 2 GiB cache by random
          ids, five ways on the same tensors: the assembly kernel
          (``disktrain.kernels.cuda_gather.scatter_gather_device``, positions in order, and
          ``kernel_scatter``: to random distinct positions, as in a batch), ``index_select``,
          ``torch.gather`` (ids expanded over the columns) and the loader's former torch
          indexing (``out[pos] = cache[slot]``). GB/s (bytes read + written), share of the copy
          bandwidth, the issue's goal (>= torch and >= 70% of copy for rows >= 512 B), and the
          host cost of one kernel launch. Results are checked equal to ``index_select``'s.
  epoch   ``disktrain synth`` (R-MAT, --nodes x --avg-degree edges), ``prepare`` (one epoch
          pre-sampled and packed, GPU and CPU caches), ``train --device cuda --epochs E
          --plan-reuse cycle`` (2-layer SAGE, hidden 128); per epoch the stage split (read,
          assemble, copy, compute, wait) and overlap efficiency = epoch / max(read, compute)
          (stage seconds summed over batches; the last epoch is the warm one).
  pyg     torch_geometric's NeighborLoader on the same graph and GPU (same fanouts, batch
          size, 2-layer GraphSAGE hidden 128, features in host memory): seconds per batch over
          at most --pyg-max-batches batches and the epoch extrapolated from it. Needs
          torch_geometric and one of pyg-lib / torch-sparse, and the epoch part's graph;
          skipped (with the reason) without.

The dataset is built under --workdir (default: a temporary directory, deleted at the end).
The machine needs the project's dependencies: where zarr, numcodecs, google-crc32c, crc32c and
donfig are missing, carry them as wheels (python 3.12) and install them first, then the project
itself without its pins: ``python3 -m pip install -q --no-index --no-deps --no-build-isolation
-e .``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("gather", "epoch", "pyg")
ROW_BYTES = (256, 512, 1024, 2048, 4096)
STAGES = ("read", "assemble", "copy", "compute", "wait")


# Arithmetic of the results (pure; tested) ------------------------------------------------------

def gather_summary(copy_gbps: float, row_bytes: int, seconds: dict[str, float],
                   moved_bytes: int) -> dict:
    """Per method: GB/s (bytes read + written over seconds) and its share of the copy
    bandwidth; ``meets_goal``: the kernel at least as fast as every torch method and, for rows
    of 512 B and more, at >= 70% of the copy bandwidth."""
    rows = {m: {"ms": s * 1e3, "gbps": moved_bytes / s / 1e9,
                "of_copy": moved_bytes / s / 1e9 / copy_gbps} for m, s in seconds.items()}
    torch_best = min(s for m, s in seconds.items() if not m.startswith("kernel"))
    kernel = seconds["kernel"]
    goal = kernel <= torch_best and (row_bytes < 512 or rows["kernel"]["of_copy"] >= 0.7)
    return {"row_bytes": row_bytes, "methods": rows, "meets_goal": goal}


def epoch_summary(record: dict) -> dict:
    """The stage split and overlap efficiency of one ``--metrics`` record of ``train``."""
    epoch = record["epoch_time_s"]
    stages = {k: record.get(f"{k}_s", 0.0) for k in STAGES}
    bound = max(stages["read"], stages["compute"])
    return {"epoch": record["epoch"], "epoch_time_s": epoch, "batches": record["batches"],
            "stage_s": stages, "share_of_epoch": {k: v / epoch for k, v in stages.items()},
            "overlap_efficiency": epoch / bound if bound > 0 else None,
            "s_per_batch": epoch / max(1, record["batches"])}


def parse_time_box(text: str) -> dict[str, float]:
    boxes = {"gather": 100.0, "epoch": 320.0, "pyg": 110.0}
    for item in filter(None, text.split(",")):
        name, _, seconds = item.partition("=")
        if name not in PARTS or not seconds:
            raise argparse.ArgumentTypeError(f"--time-box: expected PART=SECONDS with PART in "
                                             f"{','.join(PARTS)}, got {item!r}")
        boxes[name] = float(seconds)
    return boxes


# Part: gather ---------------------------------------------------------------------------------

def time_calls(fn, device, warmup: int = 2, repeats: int = 10, wall: bool = False) -> float:
    """Median seconds of ``fn()``: CUDA events on a GPU, the wall clock on a CPU; with
    ``wall``, the mean wall-clock seconds per call of ``repeats`` calls in a row (the host's
    cost of asynchronous launches)."""
    import torch

    for _ in range(warmup):
        fn()
    if wall:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        seconds = (time.perf_counter() - t) / repeats
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seconds
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def part_gather(args) -> dict:
    import torch

    from disktrain.kernels.cuda_gather import scatter_gather_host

    device = torch.device("cpu" if args.dry_run else "cuda")
    cache_bytes, out_bytes = (4 << 20, 2 << 20) if args.dry_run else (2 << 30, 1 << 30)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    result["copy_gbps"] = copy_bandwidth(device, out_bytes)
    if device.type == "cuda":
        from disktrain.kernels.cuda_gather import scatter_gather_device

        def kernel(out, cache, pos, slot):
            stream = torch.cuda.current_stream().cuda_stream
            scatter_gather_device(out, cache, pos, slot, stream=stream)
    else:  # the dry run: the kernel's CPU twin stands in
        def kernel(out, cache, pos, slot):
            scatter_gather_host(out.numpy(), cache.numpy(), pos.numpy(), slot.numpy())

    gen = torch.Generator(device=device).manual_seed(0)
    result["rows"] = []
    for row_bytes in ROW_BYTES:
        summary = measure_gather(kernel, device, gen, row_bytes, cache_bytes, out_bytes,
                                 result["copy_gbps"])
        result["rows"].append(summary)
        print(json.dumps({"row_bytes": row_bytes,
                          **{m: round(v["gbps"], 1) for m, v in summary["methods"].items()}}),
              flush=True)
    # Host cost of one launch (argument wrapping and launch; the kernel itself is tiny).
    one = torch.zeros(1, 128, device=device)
    idx = torch.zeros(1, dtype=torch.int64, device=device)
    calls = 20 if args.dry_run else 500
    result["launch_host_us"] = time_calls(lambda: kernel(one, one, idx, idx), device,
                                          repeats=calls, wall=True) * 1e6
    big = [r for r in result["rows"] if r["row_bytes"] >= 512]
    result["meets_goal_rows_512_up"] = all(r["meets_goal"] for r in big)
    return result


def copy_bandwidth(device, nbytes: int) -> float:
    """GB/s of a device-to-device ``copy_`` of ``nbytes``, counting bytes read and written."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / time_calls(lambda: dst.copy_(src), device) / 1e9


def measure_gather(kernel, device, gen, row_bytes: int, cache_bytes: int, out_bytes: int,
                   copy_gbps: float) -> dict:
    """Every method's gather of ``out_bytes`` of float32 rows of ``row_bytes`` from a cache of
    ``cache_bytes`` by the same random ids; each result checked against ``index_select``'s."""
    import torch

    from disktrain.kernels.cuda_gather import as_device_array, lane_bytes

    width = row_bytes // 4
    cache = torch.randn(cache_bytes // row_bytes, width, device=device, generator=gen)
    n = out_bytes // row_bytes
    slot = torch.randint(0, cache.shape[0], (n,), device=device, generator=gen)
    pos = torch.arange(n, device=device)
    scattered = torch.randperm(n, device=device, generator=gen)
    expanded = slot.view(-1, 1).expand(-1, width)
    out = torch.empty(n, width, device=device)
    want = torch.index_select(cache, 0, slot)

    def indexing():
        out[pos] = cache[slot]

    methods = {
        "kernel": lambda: kernel(out, cache, pos, slot),
        "kernel_scatter": lambda: kernel(out, cache, scattered, slot),
        "index_select": lambda: torch.index_select(cache, 0, slot, out=out),
        "gather": lambda: torch.gather(cache, 0, expanded, out=out),
        "indexing": indexing,
    }
    seconds, checked = {}, {}
    for name, fn in methods.items():
        out.zero_()
        seconds[name] = time_calls(fn, device)
        got = out[scattered] if name == "kernel_scatter" else out
        checked[name] = bool(torch.equal(got, want))
    summary = gather_summary(copy_gbps, row_bytes, seconds, 2 * n * row_bytes)
    summary["equal_to_index_select"] = checked
    view = as_device_array if device.type == "cuda" else torch.Tensor.numpy
    summary["lane_bytes"] = lane_bytes(view(out), view(cache))
    return summary


# Part: epoch ----------------------------------------------------------------------------------

def cli(args, *argv, timeout: float) -> tuple[float, str]:
    """Run ``python -m disktrain ARGV``; returns (seconds, its last line of stdout)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "disktrain", *map(str, argv)], check=False,
                          capture_output=True, text=True, timeout=max(1.0, timeout))
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"disktrain {argv[0]} exited {done.returncode}: "
                           f"{done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    return seconds, lines[-1] if lines else ""


def dataset_dir(args) -> Path:
    return Path(args.workdir) / "graph"


def part_epoch(args) -> dict:
    deadline = time.monotonic() + args.box

    def left() -> float:
        return deadline - time.monotonic()

    data = dataset_dir(args)
    result: dict = {"settings": {k: getattr(args, k) for k in (
        "nodes", "avg_degree", "feature_dim", "train_fraction", "fanouts", "batch_size",
        "gpu_cache_bytes", "cpu_cache_bytes", "epochs")}}
    if not (data / "zarr.json").exists():
        result["synth_s"], _ = cli(
            args, "synth", "--out", data, "--nodes", args.nodes, "--avg-degree",
            args.avg_degree, "--feature-dim", args.feature_dim, "--classes", 16, "--seed", 0,
            "--train-fraction", args.train_fraction, "--val-fraction", args.eval_fraction,
            "--test-fraction", args.eval_fraction, "--overwrite", "--no-progress",
            timeout=left())
    _, info = cli(args, "info", data, "--json", timeout=left())
    info = json.loads(info)
    result["num_nodes"], result["num_edges"] = info["num_nodes"], info["num_edges"]
    result["prepare_s"], _ = cli(
        args, "prepare", data, f"--fanouts={args.fanouts}", "--batch-size", args.batch_size,
        "--epochs", 1, "--seed", 0, "--gpu-cache-bytes", args.gpu_cache_bytes,
        "--cpu-cache-bytes", args.cpu_cache_bytes, "--no-progress", timeout=left())
    metrics = Path(args.workdir) / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    result["train_s"], last = cli(
        args, "train", data, "--model", "sage", "--epochs", args.epochs, "--seed", 0,
        "--hidden", 128, "--plan-reuse", "cycle", "--device", device, "--metrics", metrics,
        "--no-progress", timeout=left())
    result["train"] = json.loads(last)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    result["epochs"] = [epoch_summary(r) for r in records]
    result["warm_epoch"] = result["epochs"][-1]
    return result


# Part: pyg ------------------------------------------------------------------------------------

def part_pyg(args) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    try:
        from torch_geometric.data import Data
        from torch_geometric.loader import NeighborLoader
        from torch_geometric.nn import GraphSAGE
        from torch_geometric.typing import WITH_PYG_LIB, WITH_TORCH_SPARSE
    except ImportError as e:
        return {"skipped": f"torch_geometric is not importable: {e}"}
    if not (WITH_PYG_LIB or WITH_TORCH_SPARSE):
        return {"skipped": "NeighborLoader needs pyg-lib or torch-sparse; neither is importable"}
    from disktrain.storage.dataset import Dataset

    if not (dataset_dir(args) / "zarr.json").exists():
        return {"skipped": f"no graph at {dataset_dir(args)}: the epoch part builds it"}
    device = torch.device("cpu" if args.dry_run else "cuda")
    t = time.perf_counter()
    ds = Dataset(dataset_dir(args))
    indptr = torch.from_numpy(np.asarray(ds.indptr, np.int64))
    indices = torch.from_numpy(np.asarray(ds.indices, np.int64))
    x = torch.from_numpy(ds.feature_rows(0, ds.num_nodes)).float()
    y = torch.from_numpy(np.asarray(ds.labels, np.int64))
    train = torch.from_numpy(np.asarray(ds.split("train"), np.int64))
    try:
        from torch_sparse import SparseTensor

        graph = {"adj_t": SparseTensor(rowptr=indptr, col=indices, is_sorted=True,
                                       sparse_sizes=(ds.num_nodes, ds.num_nodes))}
        layout = "adj_t (torch_sparse)"
    except ImportError:
        dst = torch.repeat_interleave(torch.arange(ds.num_nodes), indptr.diff())
        graph = {"edge_index": torch.stack([indices, dst])}
        layout = "edge_index"
    data = Data(x=x, y=y, num_nodes=ds.num_nodes, **graph)
    fanouts = [int(f) for f in args.fanouts.split(",")]
    loader = NeighborLoader(data, num_neighbors=fanouts, batch_size=args.batch_size,
                            input_nodes=train, shuffle=True)
    load_s = time.perf_counter() - t
    model = GraphSAGE(x.shape[1], 128, num_layers=len(fanouts),
                      out_channels=int(y.max()) + 1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    deadline = time.monotonic() + args.box - load_s - 10
    times, t = [], time.perf_counter()
    for step, batch in enumerate(loader):
        batch = batch.to(device, non_blocking=True)
        edges = batch.adj_t if "adj_t" in graph else batch.edge_index
        out = model(batch.x, edges)[:batch.batch_size]
        loss = F.cross_entropy(out, batch.y[:batch.batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - t)
        t = now
        if step + 1 >= args.pyg_max_batches or time.monotonic() > deadline:
            break
    warm = times[1:] or times
    per_batch = statistics.median(warm)
    return {"layout": layout, "load_s": load_s, "batches_timed": len(times),
            "num_batches": len(loader), "s_per_batch": per_batch,
            "epoch_s_extrapolated": per_batch * len(loader), "first_batch_s": times[0]}


# Driver ---------------------------------------------------------------------------------------

RUNNERS = {"gather": part_gather, "epoch": part_epoch, "pyg": part_pyg}


def run_part(args, name: str, box: float) -> dict:
    """Run one part in a child process under its time box; its result, or why it failed."""
    result_file = Path(args.workdir) / f"{name}.json"
    result_file.unlink(missing_ok=True)
    argv = [sys.executable, __file__, "--part", name, "--box", str(box),
            "--part-result", str(result_file), *args.forward]
    t = time.perf_counter()
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True,
                              timeout=box + 15)
        failure = (None if done.returncode == 0
                   else f"exit {done.returncode}: {done.stderr[-3000:]}")
        log = done.stdout[-3000:]
    except subprocess.TimeoutExpired as e:
        failure = f"timed out after {box + 15:.0f} s"
        log = (e.stdout or b"")[-3000:].decode(errors="replace")
    out = {"seconds": time.perf_counter() - t}
    if result_file.exists():
        out.update(json.loads(result_file.read_text()))
    if failure:
        out["failed"] = failure
        out["log_tail"] = log
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT"),
                    help="where bench_gpu.json goes (default: $OUT)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--time-box", type=parse_time_box, default=parse_time_box(""),
                    help="seconds per part (default: gather=100,epoch=320,pyg=110)")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on the CPU (no GPU needed): checks the plumbing")
    ap.add_argument("--workdir", help="where the dataset is built (default: a temporary "
                    "directory, deleted at the end)")
    ap.add_argument("--nodes", type=int, default=10_000_000)
    ap.add_argument("--avg-degree", type=float, default=10.0)
    ap.add_argument("--feature-dim", type=int, default=128)
    ap.add_argument("--train-fraction", type=float, default=0.01)
    ap.add_argument("--eval-fraction", type=float, default=0.001,
                    help="share of the nodes in each of val and test")
    ap.add_argument("--fanouts", default="10,10")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--gpu-cache-bytes", default="4G")
    ap.add_argument("--cpu-cache-bytes", default="8G")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--pyg-max-batches", type=int, default=60)
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--box", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--part-result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if bad := [p for p in parts if p not in PARTS]:
        ap.error(f"--parts: unknown part(s) {bad}; choose from {','.join(PARTS)}")
    args.parts = parts
    if args.dry_run:
        args.nodes, args.feature_dim, args.train_fraction = 3000, 16, 0.2
        args.eval_fraction, args.batch_size, args.pyg_max_batches = 0.05, 128, 3
        args.gpu_cache_bytes, args.cpu_cache_bytes, args.epochs = "16K", "32K", 1
    if args.part is None and not args.out:
        ap.error("--out is required where $OUT is not set")
    return args


def forwarded(args) -> list[str]:
    """The options a part's child needs, as command-line arguments."""
    flags = ["--workdir", args.workdir, "--nodes", args.nodes, "--avg-degree", args.avg_degree,
             "--feature-dim", args.feature_dim, "--train-fraction", args.train_fraction,
             "--eval-fraction", args.eval_fraction, f"--fanouts={args.fanouts}",
             "--batch-size", args.batch_size, "--gpu-cache-bytes", args.gpu_cache_bytes,
             "--cpu-cache-bytes", args.cpu_cache_bytes, "--epochs", args.epochs,
             "--pyg-max-batches", args.pyg_max_batches]
    return [str(f) for f in flags] + (["--dry-run"] if args.dry_run else [])


def versions() -> dict:
    """Versions of what the figures depend on (the GPU machine's image has its own)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("torch", "numba", "numba-cuda", "torch-geometric", "pyg-lib", "torch-sparse"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part is not None:  # a child: one part, its result to --part-result
        result = RUNNERS[args.part](args)
        tmp = Path(args.part_result + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.rename(args.part_result)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    own_workdir = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_gpu-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    args.forward = forwarded(args)
    report = {"argv": sys.argv[1:], "dry_run": args.dry_run, "versions": versions(),
              "parts": {}}
    try:
        for name in args.parts:
            print(f"bench_gpu: {name} (time box {args.time_box[name]:.0f} s)", flush=True)
            report["parts"][name] = run_part(args, name, args.time_box[name])
            tmp = out / "bench_gpu.json.tmp"
            tmp.write_text(json.dumps(report, indent=1))
            tmp.rename(out / "bench_gpu.json")
            status = report["parts"][name].get("failed") or "ok"
            print(f"bench_gpu: {name}: {status[:500]}", flush=True)
    finally:
        if own_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps({n: "failed" if "failed" in p else "ok"
                      for n, p in report["parts"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
