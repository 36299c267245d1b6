"""The training function: prepared dataset in, trained model and accuracies out.

Launch it directly (`disktrain train`), under torchrun (`torchrun --nproc_per_node=N -m
disktrain.train ...`) or inside a Ray Train worker: it reads RANK / LOCAL_RANK / WORLD_SIZE
when they are set; rank 0 alone logs, writes metrics and checkpoints. On resume rank 0
picks the checkpoint and broadcasts its bytes, so every rank resumes from the same one even
when only rank 0's (node-local) checkpoint directory has it.

Every step is checked before the optimizer step (``disktrain.train.health``): a non-finite
loss or synchronized gradient stops the run with NonFiniteError naming the epoch and batch,
or, with ``on_nonfinite="skip"``, drops the step and counts it. After each epoch's batches,
every rank compares a digest of its parameters with the others'
(disktrain.robust.check_replicas) and stops with ReplicaDivergenceError when they differ.
The run itself: :class:`~disktrain.train.trainer.Trainer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from disktrain.errors import ConfigError
from disktrain.loader.config import LoaderConfig
from disktrain.loader.dist import DistEnv
from disktrain.loader.loader import Loader
from disktrain.storage.lock import write_lock
from disktrain.train.config import TrainConfig
from disktrain.train.threads import compute_threads, loader_threads, torch_threads
from disktrain.train.trainer import STAGES, Trainer


def params_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and bytes, in order (replicas must agree)."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _prepares_fresh_epochs(cfg: TrainConfig) -> bool:
    """Whether training will prepare fresh epochs in the background."""
    if cfg.plan_reuse != "fresh":
        return False
    try:  # a missing or incomplete store is reported by the loader
        attrs = json.loads((Path(cfg.dataset) / "samples" / "zarr.json").read_text())
        return cfg.epochs * attrs["attributes"]["batches_per_epoch"] > \
            attrs["attributes"]["num_batches"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def loader_config(cfg: TrainConfig, device: torch.device, assemble_threads: int) -> LoaderConfig:
    """The read pipeline of the run ``cfg``: ``cfg.loader`` on this worker's ``device``, with
    whole-graph degrees when the model's layers need them, and ``assemble_threads`` unless
    ``cfg.loader`` names its own."""
    return replace(cfg.loader, device=str(device),
                   degrees=cfg.loader.degrees or cfg.model.needs_degrees,
                   assemble_threads=cfg.loader.assemble_threads or assemble_threads)


def train(cfg: TrainConfig, grad_sync=None, on_epoch=None) -> dict:
    """Train ``cfg.model`` on the prepared dataset ``cfg.dataset``; return the summary.

    ``grad_sync(params)``, called after backward, replaces the gradient synchronization
    (default: see :class:`~disktrain.train.gradsync.GradientPath`; give it on every rank or on
    none); ``on_epoch(record, checkpoint_dir)`` is called on every rank after each epoch (Ray
    Train reports through it). A dataset on object storage (``s3://...``) is staged on this
    node first (:mod:`disktrain.storage.remote`). On a CPU device compute takes every core,
    but one while fresh epochs are prepared in the background, unless
    ``cfg.compute_threads`` says otherwise (``disktrain.train.threads``).
    """
    env = DistEnv.from_env()
    cfg.check_world_size(env.world_size)
    url, cfg = cfg.dataset, cfg.staged()
    fresh = _prepares_fresh_epochs(cfg)
    if fresh and env.world_size > 1 and url != cfg.dataset:
        raise ConfigError(
            f"{url}: {cfg.epochs} epochs are more than `disktrain prepare` sampled, and rank "
            "0's fresh epochs would stay on its node (a dataset on object storage has no "
            "shared directory); prepare them all (disktrain prepare URL --epochs N) or pass "
            "--plan-reuse cycle")
    if env.is_main:  # rank 0 writes
        cfg.check_writable(fresh)
    device = env.device(cfg.loader.device)
    threads = compute_threads(cfg.compute_threads, device,
                              reserved=1 if fresh else 0)
    with torch_threads(threads):
        return _train(cfg, env, device, loader_threads(threads), grad_sync, on_epoch)


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device, assemble_threads: int,
           grad_sync, on_epoch) -> dict:
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed)
    loader = Loader(cfg.dataset, "train", seed=cfg.seed, rank=env.rank,
                    world_size=env.world_size, plan_reuse=cfg.plan_reuse, epochs=cfg.epochs,
                    prepare_ahead=cfg.prepare_ahead, max_batches=cfg.max_batches,
                    reuse_buffers=True, config=loader_config(cfg, device, assemble_threads),
                    aggregated=True,  # the trainer checks its model takes x_agg
                    run_dir=cfg.writes_to)
    try:
        with _checkpoints_held(cfg.checkpoint.directory(cfg.writes_to), env):
            trainer = Trainer(cfg, env, device, loader, grad_sync)
            return summary(cfg, env, trainer, trainer.fit(on_epoch))
    finally:
        loader.close()  # stops the preparation of fresh epochs


def _checkpoints_held(directory: Path, env: DistEnv) -> contextlib.AbstractContextManager:
    """Rank 0 holds the checkpoint directory's lock alone for the run: another run writing
    there would prune this one's checkpoints, so it refuses, naming this one."""
    if not env.is_main:
        return contextlib.nullcontext()
    directory.mkdir(parents=True, exist_ok=True)
    return write_lock(directory, "train")


def summary(cfg: TrainConfig, env: DistEnv, trainer: Trainer, history: list[dict]) -> dict:
    """What :func:`train` returns: the last accuracies, the means over the epochs' records of
    ``history``, and the run's settings and counters."""
    evaluated = [r for r in history if "val_acc" in r]
    last = evaluated[-1] if evaluated else {}
    sampled_epochs = trainer.loader.sampled_epochs
    return {"epochs": cfg.epochs, "val_acc": last.get("val_acc"),
            "test_acc": last.get("test_acc"),
            "epoch_time_s": float(np.mean([r["epoch_time_s"] for r in history]))
            if history else None,
            "loss": history[-1]["loss"] if history else None,
            "model": cfg.model.model, "world_size": env.world_size,
            "steps": trainer.progress.steps,
            "robust": dataclasses.asdict(cfg.robust),
            "attack": None if cfg.attack is None else dataclasses.asdict(cfg.attack),
            "worker_momentum": cfg.worker_momentum,
            "skipped_steps": sum(r["skipped_steps"] for r in history),
            "resumed_at": trainer.resumed_at,
            "compute_threads": torch.get_num_threads(),
            "params_sha256": params_digest(trainer.model.state_dict()),
            "sampled_epochs": sampled_epochs,
            "reused_sampled_epochs": cfg.epochs > sampled_epochs and cfg.plan_reuse != "fresh",
            "fresh_epochs": sum(bool(r["fresh_samples"]) for r in history),
            "eval_time_s": float(np.mean([r["eval_time_s"] for r in history
                                          if "eval_time_s" in r]))
            if any("eval_time_s" in r for r in history) else None,
            # per epoch: seconds summed over batches; read/assemble/copy run on loader
            # threads under compute, so only compute + wait (the main thread) add up to wall
            "stage_s": {k: float(np.mean([r[f"{k}_s"] for r in history]))
                        for k in (*STAGES, "compute", "wait")} if history else {},
            "wall_share": {k: float(np.mean([r[f"{k}_s"] / r["epoch_time_s"]
                                             for r in history]))
                           for k in ("compute", "wait")} if history else {}}
