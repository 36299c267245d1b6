"""The training function: prepared dataset in, trained model and accuracies out.

Launch it directly (`disktrain train`), under torchrun (`torchrun --nproc_per_node=N -m
disktrain.train ...`) or inside a Ray Train worker: it reads RANK / LOCAL_RANK / WORLD_SIZE
when they are set; rank 0 alone logs, writes metrics and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from disktrain.errors import DataError
from disktrain.models.gnn import GNNConfig, build_model
from disktrain.pipeline import LoaderConfig, PackedLoader
from disktrain.robust import RobustAggregate
from disktrain.threads import compute_threads, loader_threads, torch_threads
from disktrain.train.checkpoint import load_checkpoint, save_checkpoint
from disktrain.train.config import TrainConfig
from disktrain.train.dist import DistEnv
from disktrain.train.evaluate import evaluate
from disktrain.train.gradsync import AllReduceMean
from disktrain.train.schedule import epoch_batches, worker_share

STAGES = ("read", "assemble", "copy")


def _init_distributed(env: DistEnv, device: torch.device) -> None:
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def _broadcast_state(model: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


def _rng_states(env: DistEnv, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's RNG states (CPU, and CUDA on a GPU), each stacked (world_size, n).

    A collective when distributed; gathered on ``device`` (NCCL moves CUDA tensors only).
    """
    states = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    if env.world_size == 1:
        return {k: v.unsqueeze(0) for k, v in states.items()}
    out = {}
    for key, mine in states.items():
        mine = mine.to(device)
        parts = [torch.empty_like(mine) for _ in range(env.world_size)]
        dist.all_gather(parts, mine)
        out[key] = torch.stack(parts).cpu()
    return out


def params_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and bytes, in order (replicas must agree)."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(cfg: TrainConfig, grad_sync=None, on_epoch=None) -> dict:
    """Train ``cfg.model`` on the prepared dataset ``cfg.dataset``; return the summary.

    ``grad_sync(params)`` replaces the gradient step (default: the all-reduce mean, or the
    robust rule ``cfg.aggregator``); ``on_epoch(record, checkpoint_dir)`` is called on every
    rank after each epoch (Ray Train reports through it). On a CPU device compute leaves a
    core to the loader unless ``cfg.compute_threads`` says otherwise (``disktrain.threads``).
    """
    env = DistEnv.from_env()
    device = env.device(cfg.device)
    threads = compute_threads(cfg.compute_threads, device)
    with torch_threads(threads):
        return _train(cfg, env, device, loader_threads(threads), grad_sync, on_epoch)


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device, assemble_threads: int,
           grad_sync, on_epoch) -> dict:
    _init_distributed(env, device)
    torch.manual_seed(cfg.seed)
    loader = PackedLoader(cfg.dataset, LoaderConfig(prefetch=cfg.prefetch,
                                                    read_threads=cfg.read_threads,
                                                    device=str(device),
                                                    degrees=cfg.model == "gcn",
                                                    assemble_threads=assemble_threads))
    meta = loader.dataset.meta
    if meta.feature_dim < 1:
        raise DataError(f"{cfg.dataset}: the dataset has no node features (feature_dim 0); "
                        "ingest it with --features")
    fanouts = loader.samples.config.fanouts
    model = build_model(GNNConfig(model=cfg.model, in_dim=meta.feature_dim, hidden=cfg.hidden,
                                  num_classes=meta.num_classes, num_layers=len(fanouts),
                                  dropout=cfg.dropout, input_dropout=cfg.input_dropout,
                                  heads=cfg.heads)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sync = grad_sync or (AllReduceMean() if cfg.aggregator == "mean"
                         else RobustAggregate(cfg.robust()))
    params = [p for p in model.parameters() if p.requires_grad]
    ckpt_dir = Path(cfg.checkpoint_dir or Path(cfg.dataset) / "checkpoints")

    if env.world_size > 1:
        torch.manual_seed(cfg.seed + env.rank)  # same init (broadcast), own dropout masks
    start_epoch, cursor, steps, history = 0, 0, 0, []
    if cfg.resume and (state := load_checkpoint(ckpt_dir)) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng = state["rng"]
        if rng.shape[0] != env.world_size:
            raise ValueError(f"{ckpt_dir}: checkpoint written by {rng.shape[0]} worker(s); "
                             f"resuming with {env.world_size} would change the run")
        torch.set_rng_state(rng[env.rank])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"][env.rank], device)
        start_epoch, cursor = int(state["epoch"]), int(state["cursor"])
        steps = int(state.get("steps", 0))
        history = json.loads(state["history"])
    _broadcast_state(model)

    def checkpoint(epoch: int, at: int) -> None:
        rng = _rng_states(env, device)  # every rank takes part
        if env.is_main:
            save_checkpoint(ckpt_dir, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                       **rng, "epoch": epoch,
                                       "cursor": at, "steps": steps,
                                       "history": json.dumps(history)})

    samples = loader.samples
    sampled_epochs = samples.num_batches // samples.batches_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        ids = epoch_batches(epoch, cfg.seed, sampled_epochs, samples.batches_per_epoch,
                            cfg.plan_reuse)
        ids = worker_share(ids, env.rank, env.world_size)[:cfg.max_batches]
        seconds = dict.fromkeys((*STAGES, "compute", "wait"), 0.0)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        model.train()
        t_epoch = time.perf_counter()
        bar = tqdm(total=len(ids), initial=cursor, desc=f"epoch {epoch}", unit="batch",
                   disable=not (cfg.progress and env.is_main), leave=False)
        batches = closing(loader(ids[cursor:]))  # Ctrl-C or an error stops its threads
        t_wait = time.perf_counter()
        with batches as it:
            for step, mb in enumerate(it, start=cursor):
                t0 = time.perf_counter()
                seconds["wait"] += t0 - t_wait
                opt.zero_grad(set_to_none=True)
                # float16 features (stored and moved at half the bytes) compute in float32
                loss = F.cross_entropy(model(mb.x.float(), mb.blocks), mb.labels)
                loss.backward()
                sync(params)
                opt.step()
                steps += 1
                loss_sum += loss.detach()
                for k in STAGES:
                    seconds[k] += mb.seconds[k]
                t_wait = time.perf_counter()
                seconds["compute"] += t_wait - t0
                bar.update()
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                    checkpoint(epoch, step + 1)
        bar.close()
        done, cursor = len(ids) - cursor, 0
        record = {"epoch": epoch, "loss": float(loss_sum) / done if done else float("nan"),
                  "batches": len(ids), "epoch_time_s": time.perf_counter() - t_epoch,
                  **{f"{k}_s": v for k, v in seconds.items()}}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            for split in ("val", "test"):
                record[f"{split}_acc"] = evaluate(model, loader.dataset, split, fanouts,
                                                  cfg.eval_batch_size, cfg.seed, device,
                                                  env.rank, env.world_size)
        history.append(record)
        checkpoint(epoch + 1, 0)
        if env.is_main and cfg.metrics:
            with open(cfg.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        if on_epoch is not None:
            on_epoch(record, ckpt_dir)

    evaluated = [r for r in history if "val_acc" in r]
    last = evaluated[-1] if evaluated else {}
    return {"epochs": cfg.epochs, "val_acc": last.get("val_acc"),
            "test_acc": last.get("test_acc"),
            "epoch_time_s": float(np.mean([r["epoch_time_s"] for r in history]))
            if history else None,
            "loss": history[-1]["loss"] if history else None,
            "model": cfg.model, "world_size": env.world_size, "steps": steps,
            "compute_threads": torch.get_num_threads(),
            "params_sha256": params_digest(model.state_dict()),
            "stage_s": {k: float(np.mean([r[f"{k}_s"] for r in history]))
                        for k in (*STAGES, "compute", "wait")} if history else {}}
