"""The loader's CPU per batch (page cache vs O_DIRECT reads), and compute on every core.

Usage: python scripts/bench_compute.py --dataset DIR [--batches 48] [--rounds 3]
                                       [--quiet-rounds 0] [--max-rounds 12]
                                       [--compute-batches 6] [--out FILE]
       python scripts/bench_compute.py [--nodes 2000000] [--dim 256] [--batches 48] ...
         (builds a synthetic dataset in a temporary directory, deleted at the end)

On the same training batches (their fanouts and batch size as prepared), in rounds that
measure everything below one after the other:
  loader alone  the staged loader iterated with nothing consuming, the packed files evicted
                first (``sync``, ``posix_fadvise(DONTNEED)``), reading through the page cache
                (``buffered``), with O_DIRECT (``direct``), and with O_DIRECT and no crc
                checks (``direct_nocrc``, to show what the checks cost): wall, CPU seconds of
                the whole process per batch (every loader thread, Numba's included), CPU
                seconds of the read stage alone (``time.thread_time`` around each read), and
                the page cache the pass left behind (resident bytes of the packed files read,
                by ``mincore``; and the change of ``Cached`` in /proc/meminfo, machine-wide);
  compute       forward, backward and Adam step of the 2-layer mean GraphSAGE (hidden 128) on
                batches assembled beforehand, per batch, against a floor: the batch's FLOPs,
                counted from its blocks, over the GFLOP/s ``torch.mm`` reaches on the first
                layer's shape with the same threads. FLOPs are counted for the order the model
                computes in (it projects before aggregating when out_dim < in_dim) and for the
                cheaper order (the floor);
  epoch         the pipelined epoch (loader + training step, packed files evicted) with
                torch on 1 thread (a core left to the loader) and on every core, reading with
                O_DIRECT, and on every core reading through the page cache.
Each round records the share of the machine's CPU other processes took meanwhile: on a
shared machine a core busy elsewhere stalls torch's threads. A round is quiet when that share
stays under 5%; medians are reported over all rounds and over the quiet ones. With
``--quiet-rounds K`` rounds go on until K are quiet (at most ``--max-rounds``).
Writes one JSON file (default /work/notes/out/bench_compute.json) and prints it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import MiniBatch, PackedLoader
from disktrain.models.gnn import GNNConfig, build_model
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.train.threads import available_cores, loader_threads, torch_threads

QUIET = 0.05
"""A round is quiet when other processes took less than this share of the CPU."""
READ_MODES = {"buffered": (False, True), "direct": (True, True), "direct_nocrc": (True, False)}
"""Loader-alone modes: (O_DIRECT, crc checks)."""


# -- page cache ------------------------------------------------------------------------------

def chunk_files(loader: PackedLoader, batches) -> list[Path]:
    """The shard files holding the packed rows of ``batches``."""
    p = loader.packed
    return sorted({p.layout.place(c)[0] for b in batches
                   for c in range(int(p.batch_rows[b]) // p.chunk_rows,
                                  int(p.batch_rows[b + 1]) // p.chunk_rows)})


def evict(files: list[Path]) -> None:
    os.sync()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_bytes(files: list[Path]) -> int:
    """Bytes of ``files`` in the page cache (``mincore`` over a shared mapping of each)."""
    pages = 0
    for f in files:
        size = f.stat().st_size
        fd = os.open(f, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {f}")
            vec = (ctypes.c_ubyte * (-(-size // mmap.PAGESIZE)))()
            try:
                if _libc.mincore(addr, size, vec):
                    raise OSError(ctypes.get_errno(), f"mincore {f}")
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
        pages += sum(v & 1 for v in bytes(vec))
    return pages * mmap.PAGESIZE


def meminfo_cached() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Cached: line in /proc/meminfo")


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- FLOPs -----------------------------------------------------------------------------------

def _linear(m: int, k: int, n: int, grad_in: bool) -> int:
    """Forward, weight gradient and (when the input needs it) input gradient of x(m,k)W(k,n)."""
    return 2 * m * k * n * (3 if grad_in else 2)


def _mean(edges: int, width: int, grad_in: bool) -> int:
    """Adds of the mean aggregation, forward and (when its input needs it) backward."""
    return edges * width * (2 if grad_in else 1)


def sage_flops(blocks, dims: list[int], first: int = 0) -> dict[str, int]:
    """FLOPs of one training step of mean GraphSAGE (lin_self on the dst rows, lin_neigh, the
    mean over edges) over ``blocks``, the model's layers ``first`` on: in the order the model
    computes (projecting the src rows first when a layer narrows) and in the cheaper order of
    the two (the floor)."""
    model = floor = 0
    for layer, blk in enumerate(blocks, start=first):
        i, o, grad_in = dims[layer], dims[layer + 1], layer > 0
        s, d, e = blk.num_src, blk.num_dst, blk.num_edges
        project_first = _linear(s, i, o, grad_in) + _mean(e, o, True)
        aggregate_first = _mean(e, i, grad_in) + _linear(d, i, o, grad_in)
        own = _linear(d, i, o, grad_in)
        model += own + (project_first if o < i else aggregate_first)
        floor += own + min(project_first, aggregate_first)
    return {"model_order": model, "cheaper_order": floor}


def matmul_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of ``torch.mm`` (m,k)x(k,n) on the current thread setting."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


# -- passes ----------------------------------------------------------------------------------

def step(model, opt, mb) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(mb.x, mb.blocks), mb.labels).backward()
    opt.step()


def loader_alone(loader: PackedLoader, batches, files: list[Path], mode: str) -> dict:
    """One pass of the loader with nothing consuming, the packed files evicted first."""
    loader.packed.direct, loader.packed.verify = READ_MODES[mode]
    read_cpu: list[float] = []
    real_read = loader.read

    def timed_read(batch):
        t = time.thread_time()
        out = real_read(batch)
        read_cpu.append(time.thread_time() - t)
        return out

    loader.read = timed_read
    evict(files)
    cached, cpu, t = meminfo_cached(), process_cpu(), time.perf_counter()
    try:
        for _ in loader(batches):
            pass
    finally:
        loader.read = real_read
    wall, cpu = time.perf_counter() - t, process_cpu() - cpu
    n = len(batches)
    still_direct = loader.packed.direct
    loader.packed.direct, loader.packed.verify = True, True
    return {"wall_s": wall, "cpu_s_per_batch": cpu / n, "read_cpu_s_per_batch": sum(read_cpu) / n,
            "packed_resident_bytes": resident_bytes(files),
            "meminfo_cached_growth_bytes": meminfo_cached() - cached,
            "direct_in_effect": still_direct and READ_MODES[mode][0]}


def compute_alone(model, opt, ready: list[MiniBatch], dims: list[int], rate: float) -> dict:
    times, flops = [], []
    for mb in ready:
        t = time.perf_counter()
        step(model, opt, mb)
        times.append(time.perf_counter() - t)
        flops.append(sage_flops(mb.blocks, dims))
    model_flops = sum(f["model_order"] for f in flops)
    floor_flops = sum(f["cheaper_order"] for f in flops)
    return {"s_per_batch": sum(times) / len(times),
            "gflop_per_batch_model_order": model_flops / len(ready) / 1e9,
            "gflop_per_batch_cheaper_order": floor_flops / len(ready) / 1e9,
            "floor_s_per_batch_model_order": model_flops / len(ready) / (rate * 1e9),
            "floor_s_per_batch": floor_flops / len(ready) / (rate * 1e9),
            "over_model_order_floor": sum(times) / (model_flops / (rate * 1e9)),
            "over_floor": sum(times) / (floor_flops / (rate * 1e9))}


def machine_busy_cpu() -> float:
    """CPU seconds the machine's processes used, plus those the hypervisor took (steal),
    from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def epoch(loader: PackedLoader, model, opt, batches, files: list[Path], direct: bool) -> dict:
    """A pipelined epoch, packed files evicted first; with the CPU other processes took
    meanwhile (the machine is shared: a second core is only worth what others leave)."""
    loader.packed.direct = direct
    evict(files)
    busy, cpu, t = machine_busy_cpu(), process_cpu(), time.perf_counter()
    for mb in loader(batches):
        step(model, opt, mb)
    wall = time.perf_counter() - t
    others = machine_busy_cpu() - busy - (process_cpu() - cpu)
    loader.packed.direct = True
    return {"s": wall, "others_cpu_share": max(0.0, others) / wall / available_cores()}


def build(work: Path, args) -> Path:
    path = work / "ds"
    train = args.batches * 1024 / args.nodes
    synthesize(SynthConfig(out=path, num_nodes=args.nodes, feature_dim=args.dim,
                           num_classes=16, seed=0, train_fraction=train, val_fraction=0.001,
                           test_fraction=0.001, progress=False))
    sample_dataset(path, SampleConfig(fanouts=(10, 10), batch_size=1024), progress=False)
    pack_dataset(path, PackConfig(), progress=False)
    return path


def measure_round(loader, loaders, model, opt, batches, files, ready, dims, shape,
                  epoch_kinds) -> dict:
    """Everything once, with the share of the CPU other processes took meanwhile."""
    busy, cpu, t = machine_busy_cpu(), process_cpu(), time.perf_counter()
    out = {"loader_alone": {m: loader_alone(loader, batches, files, m) for m in READ_MODES},
           "compute": {}, "epoch": {}}
    for n in sorted({n for n, _ in epoch_kinds.values()}):
        with torch_threads(n):
            rate = matmul_gflops(*shape)
            out["compute"][f"threads_{n}"] = {"mm_gflops": rate,
                                              **compute_alone(model, opt, ready, dims, rate)}
    for name, (n, direct) in epoch_kinds.items():
        with torch_threads(n):
            out["epoch"][name] = epoch(loaders[n], model, opt, batches, files, direct)
    wall = time.perf_counter() - t
    others = machine_busy_cpu() - busy - (process_cpu() - cpu)
    out["others_cpu_share"] = max(0.0, others) / wall / available_cores()
    return out


def summarize(rounds: list[dict]) -> dict:
    """Medians over ``rounds`` of every figure (bools: all true)."""
    def med(values):
        if isinstance(values[0], dict):
            return {k: med([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], bool):
            return all(values)
        if isinstance(values[0], int):
            return int(np.median(values))
        return round(float(np.median(values)), 4)
    return med(rounds) if rounds else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="a prepared dataset to reuse")
    ap.add_argument("--nodes", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batches", type=int, default=48, help="training batches measured")
    ap.add_argument("--compute-batches", type=int, default=6,
                    help="batches assembled in memory for the compute-alone timing")
    ap.add_argument("--rounds", type=int, default=3, help="rounds at least")
    ap.add_argument("--quiet-rounds", type=int, default=0,
                    help="go on until this many rounds were quiet")
    ap.add_argument("--max-rounds", type=int, default=12)
    ap.add_argument("--read-threads", type=int, default=2)
    ap.add_argument("--out", default="/work/notes/out/bench_compute.json")
    args = ap.parse_args()
    cores = available_cores()
    # pipelined epochs: name -> (torch threads, O_DIRECT reads)
    epoch_kinds = {"threads_1": (1, True), f"threads_{cores}": (cores, True),
                   f"threads_{cores}_buffered": (cores, False)}
    work = None if args.dataset else Path(tempfile.mkdtemp(prefix="bench-compute-"))
    try:
        path = Path(args.dataset) if args.dataset else build(work, args)
        loaders = {n: PackedLoader(path, LoaderConfig(read_threads=args.read_threads,
                                                      assemble_threads=loader_threads(n)))
                   for n, _ in epoch_kinds.values()}
        loader = loaders[1]
        meta = loader.dataset.meta
        batches = list(range(min(args.batches, loader.num_batches)))
        files = chunk_files(loader, batches)
        torch.manual_seed(0)
        dims = [meta.feature_dim, 128, meta.num_classes]
        model = build_model(GNNConfig(model="sage", in_dim=meta.feature_dim, hidden=128,
                                      num_classes=meta.num_classes, num_layers=2))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        ready = [MiniBatch(mb.index, mb.x.clone(), mb.blocks, mb.labels, mb.input_nodes)
                 for mb in loader(batches[:args.compute_batches])]
        shape = (int(np.median([mb.blocks[0].num_src for mb in ready])), dims[0], dims[1])
        for n in loaders:  # warm up kernels and the allocator
            with torch_threads(n):
                for mb in ready[:2]:
                    step(model, opt, mb)

        rounds: list[dict] = []
        while len(rounds) < args.max_rounds and (
                len(rounds) < args.rounds
                or sum(r["others_cpu_share"] < QUIET for r in rounds) < args.quiet_rounds):
            rounds.append(measure_round(loader, loaders, model, opt, batches, files, ready,
                                        dims, shape, epoch_kinds))
            print(f"round {len(rounds)}: others took {rounds[-1]['others_cpu_share']:.0%} "
                  f"of the CPU", file=sys.stderr)
        quiet = [r for r in rounds if r["others_cpu_share"] < QUIET]
        result = {
            "dataset": str(path) if args.dataset else "synthetic (deleted)",
            "nodes": meta.num_nodes, "edges": meta.num_edges, "dim": meta.feature_dim,
            "batches": len(batches),
            "packed_bytes_read_per_pass": sum(f.stat().st_size for f in files),
            "chunk_bytes": (loader.packed.chunk_rows * loader.packed.feature_dim
                            * loader.packed.dtype.itemsize),
            "fanouts": list(loader.samples.config.fanouts), "mm_shape": list(shape),
            "cores": cores, "torch": torch.__version__, "kernel": platform.release(),
            "read_threads": args.read_threads,
            "epoch_kinds": {k: {"torch_threads": n, "assemble_threads": loader_threads(n),
                                "direct": d} for k, (n, d) in epoch_kinds.items()},
            "rounds": len(rounds), "quiet_rounds": len(quiet),
            "others_cpu_share_per_round": [round(r["others_cpu_share"], 3) for r in rounds],
            "all_rounds": summarize(rounds), "quiet": summarize(quiet),
            "per_round": rounds,
        }
        for name, view in (("all_rounds", result["all_rounds"]), ("quiet", result["quiet"])):
            if view and cores > 1:
                e = view["epoch"]
                view["every_core_speedup"] = round(
                    e["threads_1"]["s"] / e[f"threads_{cores}"]["s"], 3)
                view["direct_over_buffered_every_core"] = round(
                    e[f"threads_{cores}"]["s"] / e[f"threads_{cores}_buffered"]["s"], 3)
            result[name] = view
        text = json.dumps(result, indent=1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
        print(json.dumps({k: v for k, v in result.items() if k != "per_round"}, indent=1))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
