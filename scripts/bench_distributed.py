"""Throughput of data-parallel training with 1 and 2 workers, and what Ray adds at start-up.

    python scripts/bench_distributed.py [--nodes 100000] [--epochs 2] [--workers 1 2]

Generates a synthetic graph (``disktrain.ingest.synth``), samples and packs it, then trains the
same configuration (a) in this process with :func:`disktrain.train.train` and (b) on a
local Ray (started here, bound to 127.0.0.1) with :func:`fit_on_ray` for each worker count.
Prints one JSON line:

- ``seeds_per_s``: training seeds per second of epoch time, over all workers (epoch time
  excludes evaluation, which every worker repeats);
- ``wall_s``: wall time of each run (the same work: startup, epochs, evaluation);
- ``ray_init_s``: ``ray.init`` of a local instance; ``ray_trainer_overhead_s``: Ray
  1-worker wall minus plain wall (controller, worker actors, process group, reporting);
  ``ray_startup_s``: their sum, what Ray adds before the same training gets done.

Everything it writes (dataset, checkpoints, Ray's session files) goes to a temporary
directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100_000, help="synthetic graph nodes")
    p.add_argument("--avg-degree", type=float, default=10.0)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--fanouts", type=int, nargs="+", default=[10, 5])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workdir", default=None, help="parent of the temporary directory")
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="dtbench", dir=args.workdir))
    # Ray's session files go under root too (and its instance binds 127.0.0.1)
    os.environ["RAY_TMPDIR"] = str(root)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # a token of its own, not a new ~/.ray/auth_token (what ray.init would write)
    if not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
    try:
        print(json.dumps(run(args, root)), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, root: Path) -> dict:
    from disktrain.ingest.synth import SynthConfig, synthesize
    from disktrain.models import ModelConfig
    from disktrain.pack import PackConfig, pack_dataset
    from disktrain.sample import SampleConfig, sample_dataset
    from disktrain.train import EvalConfig, TrainConfig, train
    from disktrain.train.checkpoint import CheckpointConfig

    t = time.perf_counter()
    path = synthesize(SynthConfig(out=root / "synth", num_nodes=args.nodes,
                                  avg_degree=args.avg_degree, feature_dim=args.feature_dim,
                                  num_classes=10, seed=0, val_fraction=0.05,
                                  test_fraction=0.05, progress=False))
    samples = sample_dataset(path, SampleConfig(fanouts=tuple(args.fanouts),
                                                batch_size=args.batch_size, epochs=1, seed=0),
                             progress=False)
    pack_dataset(path, PackConfig(), progress=False)
    prepare_s = time.perf_counter() - t
    cfg = TrainConfig(dataset=str(path), model=ModelConfig(model="sage", hidden=args.hidden),
                      epochs=args.epochs, evaluation=EvalConfig(every=args.epochs), progress=False,
                      checkpoint=CheckpointConfig(dir=str(root / "ck-plain")))
    # warm up: JIT caches, page cache
    train(replace(cfg, epochs=1, max_batches=2,
                  checkpoint=CheckpointConfig(dir=str(root / "ck-warm"))))

    def seeds_per_s(summary: dict) -> float:
        per_worker = samples.batches_per_epoch // summary["world_size"]
        return per_worker * summary["world_size"] * args.batch_size / summary["epoch_time_s"]

    t = time.perf_counter()
    plain = train(cfg)
    plain_wall = time.perf_counter() - t
    out = {"bench": "distributed", "nodes": args.nodes, "batch_size": args.batch_size,
           "fanouts": args.fanouts, "batches_per_epoch": samples.batches_per_epoch,
           "epochs": args.epochs, "cpus": os.cpu_count(), "prepare_s": round(prepare_s, 2),
           "plain": {"seeds_per_s": round(seeds_per_s(plain), 1),
                     "wall_s": round(plain_wall, 2)}}

    import ray

    from disktrain.cluster.head import init_ray
    from disktrain.cluster.ray_train import RayTrainConfig, fit_on_ray

    t = time.perf_counter()
    init_ray(num_cpus=max(os.cpu_count() or 1, max(args.workers) + 1))  # as fit_on_ray would
    out["ray_init_s"] = round(time.perf_counter() - t, 2)
    try:
        for n in args.workers:
            t = time.perf_counter()
            s = fit_on_ray(replace(cfg, checkpoint=CheckpointConfig(dir=str(root / f"ck-ray{n}"))),
                           RayTrainConfig(workers=n, storage_path=str(root / "ray_results")))
            out[f"ray_{n}"] = {"seeds_per_s": round(seeds_per_s(s), 1),
                               "wall_s": round(time.perf_counter() - t, 2),
                               "steps": s["steps"], "replicas_identical": s["replicas_identical"]}
    finally:
        ray.shutdown()
    if "ray_1" in out:
        out["ray_trainer_overhead_s"] = round(out["ray_1"]["wall_s"] - plain_wall, 2)
        out["ray_startup_s"] = round(out["ray_init_s"] + out["ray_trainer_overhead_s"], 2)
    if "ray_1" in out and "ray_2" in out:
        out["speedup_2_over_1"] = round(out["ray_2"]["seeds_per_s"]
                                        / out["ray_1"]["seeds_per_s"], 2)
    return out


if __name__ == "__main__":
    sys.exit(main())
