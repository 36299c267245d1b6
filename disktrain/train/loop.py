"""The training function: prepared dataset in, trained model and accuracies out.

Launch it directly (`disktrain train`), under torchrun (`torchrun --nproc_per_node=N -m
disktrain.train ...`) or inside a Ray Train worker: it reads RANK / LOCAL_RANK / WORLD_SIZE
when they are set; rank 0 alone logs, writes metrics and checkpoints. On resume rank 0
picks the checkpoint and broadcasts its bytes, so every rank resumes from the same one even
when only rank 0's (node-local) checkpoint directory has it.

Every step is checked before the optimizer step (``disktrain.train.health``): a non-finite
loss or synchronized gradient stops the run with NonFiniteError naming the epoch and batch,
or, with ``on_nonfinite="skip"``, drops the step and counts it.

With ``cfg.attack``, every rank runs a ByzantineWorker (disktrain.robust.worker): the attacking
ranks train on flipped labels or replace their gradient before the grad-sync step; with
``cfg.worker_momentum``, every rank first replaces its gradient by the running average of its
gradients (disktrain.robust.momentum). After each epoch's batches, every rank compares a
digest of its parameters with the others' (disktrain.robust.check_replicas) and stops with
ReplicaDivergenceError, naming the ranks, when they differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from disktrain.errors import CheckpointError, DataError, NonFiniteError
from disktrain.loader.dist import DistEnv, broadcast_bytes
from disktrain.loader.loader import Loader
from disktrain.loader.pipeline import LoaderConfig
from disktrain.models.gnn import build_model
from disktrain.robust import (
    LABEL_FLIP,
    ByzantineWorker,
    RobustAggregate,
    WorkerMomentum,
    check_replicas,
)
from disktrain.robust.sync import gather
from disktrain.train.checkpoint import CheckpointWriter, checkpoint_name, load_bytes, read_newest
from disktrain.train.config import TrainConfig
from disktrain.train.evaluate import Evaluator
from disktrain.train.gradsync import AllReduceMean
from disktrain.train.health import (
    nonfinite_step_error,
    nonfinite_tensors,
    poison_gradients,
    poisoned_loss,
    step_is_finite,
)
from disktrain.train.threads import compute_threads, loader_threads, torch_threads

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


def _stacked(mine: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Every rank's ``mine`` stacked in rank order, on the CPU (a collective when distributed)."""
    return (gather(mine) if env.world_size > 1 else mine[None]).cpu()


def _resume_momentum(momentum: WorkerMomentum, state: dict, env: DistEnv,
                     device: torch.device) -> None:
    """Give this rank its checkpointed worker-momentum average; a checkpoint of a run without
    worker momentum starts every average at zero (said on stderr)."""
    if "worker_momentum" in state:
        momentum.load(state["worker_momentum"][env.rank].to(device))
    elif env.is_main:
        print("disktrain: warning: the checkpoint holds no worker-momentum averages (written "
              "by a run without --worker-momentum); they start at zero", file=sys.stderr)


def _resume_state(ckpt_dir: Path, writer: CheckpointWriter, env: DistEnv,
                  device: torch.device) -> dict | None:
    """The checkpoint every rank resumes from: rank 0 reads the newest one that loads from
    its ``ckpt_dir`` and broadcasts its bytes. Raises CheckpointError on every rank when it
    was written by another number of workers."""
    found = read_newest(ckpt_dir) if env.is_main else None
    if found is not None:
        writer.adopt(found[0])
    elif env.is_main:
        print(f"disktrain: no checkpoint in {ckpt_dir}; starting from the beginning",
              file=sys.stderr)
    data = broadcast_bytes(None if found is None else found[1], device)
    if data is None:
        return None
    state = load_bytes(data, found[0] if found else "rank 0's checkpoint")
    where = found[0] if found else \
        f"rank 0's {ckpt_dir / checkpoint_name(int(state['epoch']), int(state['cursor']))}"
    written_by = state["rng"].shape[0]
    if written_by != env.world_size:
        raise CheckpointError(f"{where}: checkpoint written by {written_by} "
                              f"worker(s); resuming with {env.world_size} would change the run "
                              f"(resume with {written_by}, or start a new run without resume)")
    return state


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
    (default: DistributedDataParallel's mean when distributed, or RobustAggregate with
    ``cfg.robust`` for a robust rule, a pre-aggregator or a gradient attack; give it on every
    rank or on none); ``on_epoch(record, checkpoint_dir)`` is called on every rank after each
    epoch (Ray Train reports through it). On a CPU device compute takes every core, but one while fresh epochs are prepared
    in the background, unless ``cfg.compute_threads`` says otherwise (``disktrain.train.threads``).
    """
    env = DistEnv.from_env()
    cfg.check_world_size(env.world_size)
    device = env.device(cfg.loader.device)
    threads = compute_threads(cfg.compute_threads, device,
                              reserved=1 if _prepares_fresh_epochs(cfg) else 0)
    with torch_threads(threads):
        return _train(cfg, env, device, loader_threads(threads), grad_sync, on_epoch)


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device, assemble_threads: int,
           grad_sync, on_epoch) -> dict:
    _init_distributed(env, device)
    torch.manual_seed(cfg.seed)
    loader = Loader(cfg.dataset, "train", seed=cfg.seed, rank=env.rank,
                    world_size=env.world_size, plan_reuse=cfg.plan_reuse, epochs=cfg.epochs,
                    prepare_ahead=cfg.prepare_ahead, max_batches=cfg.max_batches,
                    reuse_buffers=True, config=loader_config(cfg, device, assemble_threads))
    try:
        return _fit(cfg, env, device, loader, grad_sync, on_epoch)
    finally:
        loader.close()  # stops the preparation of fresh epochs


def _fit(cfg: TrainConfig, env: DistEnv, device: torch.device, loader: Loader, grad_sync,
         on_epoch) -> dict:
    meta = loader.dataset.meta
    if meta.feature_dim < 1:
        raise DataError(f"{cfg.dataset}: the dataset has no node features (feature_dim 0); "
                        "ingest it with --features")
    if "labels" not in loader.dataset.group:
        raise DataError(f"{cfg.dataset}: the dataset has no labels to train on; ingest it "
                        "with --labels (or train your own model with disktrain.Loader)")
    fanouts = loader.fanouts
    model = build_model(cfg.model.sized(in_dim=meta.feature_dim, num_classes=meta.num_classes,
                                        num_layers=len(fanouts))).to(device)
    opt = cfg.make_optimizer(model.parameters())
    # the mean under several workers: DistributedDataParallel (bucketed all-reduces that
    # overlap backward); a robust rule or a given grad_sync: after backward, on every gradient.
    # A gradient attack or a pre-aggregator must act between backward and the sync, which
    # DistributedDataParallel's averaging during backward leaves no room for: RobustAggregate
    # then runs even the mean
    worker = None if cfg.attack is None else ByzantineWorker(
        cfg.attack, cfg.robust, rank=env.rank, world_size=env.world_size,
        num_classes=meta.num_classes)
    momentum = WorkerMomentum(cfg.worker_momentum) if cfg.worker_momentum else None
    after_backward = bool(cfg.robust.pre_aggregate) or momentum is not None or \
        (cfg.attack is not None and cfg.attack.attack != LABEL_FLIP)
    plain_mean = cfg.robust.aggregator == "mean" and not after_backward
    use_ddp = grad_sync is None and plain_mean and env.world_size > 1
    sync = grad_sync or (AllReduceMean() if plain_mean else RobustAggregate(cfg.robust))
    params = [p for p in model.parameters() if p.requires_grad]
    ckpt_dir = cfg.checkpoint.directory(cfg.dataset)
    writer = CheckpointWriter(ckpt_dir, cfg.checkpoint.keep)

    if env.world_size > 1:
        torch.manual_seed(cfg.seed + env.rank)  # same init (broadcast), own dropout masks
    start_epoch, cursor, steps, skipped, history, resumed_at = 0, 0, 0, 0, [], None
    state = _resume_state(ckpt_dir, writer, env, device) if cfg.checkpoint.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        # a row of the stack has a storage offset, which set_rng_state misreads: clone it
        torch.set_rng_state(state["rng"][env.rank].clone())
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"][env.rank].clone(), device)
        if momentum is not None:
            _resume_momentum(momentum, state, env, device)
        if isinstance(sync, RobustAggregate) and "aggregator" in state:
            sync.aggregator.load_state_dict(state["aggregator"], device)
        if worker is not None and "attack_steps" in state:
            worker.steps = int(state["attack_steps"])
        start_epoch, cursor = int(state["epoch"]), int(state["cursor"])
        steps, skipped = int(state["steps"]), int(state["skipped"])
        history = json.loads(state["history"])
        resumed_at = [start_epoch, cursor]
    _broadcast_state(model)
    forward = model
    if use_ddp:
        forward = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            broadcast_buffers=False)

    def checkpoint(epoch: int, at: int) -> None:
        weights = model.state_dict()
        # every rank checks its replica (all equal) before the collective, so all stop alike
        if bad := nonfinite_tensors(weights):
            raise NonFiniteError(f"epoch {epoch}, batch {at}: parameters {', '.join(bad)} are "
                                 f"not finite; no checkpoint written, {ckpt_dir} keeps the "
                                 "last good one")
        saved = _rng_states(env, device)  # every rank takes part (RNG states per rank)
        if momentum is not None:  # every rank's average, (world_size, d)
            saved["worker_momentum"] = _stacked(momentum.state(params), env)
        if isinstance(sync, RobustAggregate):  # step count and center, alike on every rank
            saved["aggregator"] = sync.aggregator.state_dict()
        if worker is not None:  # the attack's step count (seeds the gaussian attack)
            saved["attack_steps"] = worker.steps
        if env.is_main:
            writer.save({"model": weights, "optimizer": opt.state_dict(), **saved,
                         "epoch": epoch, "cursor": at, "steps": steps, "skipped": skipped,
                         "history": json.dumps(history)})

    sampled_epochs = loader.sampled_epochs
    reuses = cfg.epochs > sampled_epochs and cfg.plan_reuse != "fresh"
    if reuses and env.is_main:
        print(f"disktrain: warning: {cfg.dataset} holds {sampled_epochs} pre-sampled "
              f"epoch(s) for {cfg.epochs} training epochs: batches are reused "
              f"(--plan-reuse {cfg.plan_reuse}); `--plan-reuse fresh` or "
              f"`disktrain prepare --epochs {cfg.epochs}` samples every epoch afresh",
              file=sys.stderr)
    evaluator = Evaluator(cfg.evaluation, loader, cfg.eval_batch_size, cfg.seed)
    for epoch in range(start_epoch, cfg.epochs):
        loader.set_epoch(epoch)
        if cursor:  # resumed inside this epoch: skip the batches already trained
            loader.load_state_dict({**loader.state_dict(), "cursor": cursor})
        num_batches = len(loader)
        seconds = dict.fromkeys((*STAGES, "compute", "wait"), 0.0)
        loss_sum = torch.zeros((), device=device)  # this rank's finite losses, on the device
        losses = torch.zeros((), device=device)  # how many
        model.train()
        t_epoch = time.perf_counter()
        bar = tqdm(total=num_batches, initial=cursor, desc=f"epoch {epoch}", unit="batch",
                   disable=not (cfg.progress and env.is_main), leave=False)
        t_wait = time.perf_counter()
        with closing(iter(loader)) as batches:  # Ctrl-C or an error stops its threads
            for step, mb in enumerate(batches, start=cursor):
                t0 = time.perf_counter()
                seconds["wait"] += t0 - t_wait
                opt.zero_grad(set_to_none=True)
                labels = mb.seed_labels if worker is None else worker.labels(mb.seed_labels)
                loss = F.cross_entropy(forward(mb.x, mb.blocks), labels)
                if use_ddp:  # (of the attacks, label flipping alone: its worker sends nothing)
                    poisoned_loss(loss).backward()  # gradients averaged during backward
                else:
                    loss.backward()
                    if env.world_size > 1:
                        poison_gradients(loss, params)
                    if momentum is not None:
                        momentum(params)
                    if worker is not None:
                        worker(params)  # every rank: omniscient attacks gather the gradients
                    sync(params)
                # several ranks decide on the synced gradients alone, alike: a rank's own
                # non-finite loss is in them already (poisoned row), which a robust rule may
                # drop; an attacking rank's loss does not count at all
                if step_is_finite(loss if env.world_size == 1 else None, params):
                    opt.step()
                    steps += 1
                    finite = torch.isfinite(loss.detach())  # not where this rank's was not
                    loss_sum += torch.where(finite, loss.detach(), 0.0)
                    losses += finite
                elif cfg.on_nonfinite == "skip":
                    skipped += 1
                else:
                    raise nonfinite_step_error(loss, epoch, step, mb.index, ckpt_dir)
                for k in STAGES:
                    seconds[k] += mb.seconds[k]
                t_wait = time.perf_counter()
                seconds["compute"] += t_wait - t0
                bar.update()
                if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0:
                    checkpoint(epoch, step + 1)
        bar.close()
        check_replicas(model.state_dict().values(), f"epoch {epoch}")  # every rank joins
        cursor = 0
        prepare_wait = loader.prepare_wait_s  # inside the wait for the epoch's first batch
        seconds["wait"] = max(0.0, seconds["wait"] - prepare_wait)
        record = {"epoch": epoch,
                  "loss": float(loss_sum / losses) if float(losses) else float("nan"),
                  "batches": num_batches, "skipped_steps": skipped,
                  "epoch_time_s": time.perf_counter() - t_epoch - prepare_wait,
                  **{f"{k}_s": v for k, v in seconds.items()},
                  "prepare_wait_s": prepare_wait,
                  "fresh_samples": cfg.plan_reuse == "fresh" and epoch >= sampled_epochs,
                  "packed_bytes": loader.packed_bytes}
        skipped = 0
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            t_eval = time.perf_counter()
            record.update(evaluator(model))
            record["eval_time_s"] = time.perf_counter() - t_eval
            record["eval"] = {s: evaluator.mode(s) for s in ("val", "test")}
            record["eval_packed_bytes"] = evaluator.packed_bytes()
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
            "model": cfg.model.model, "world_size": env.world_size, "steps": steps,
            "robust": dataclasses.asdict(cfg.robust),
            "attack": None if cfg.attack is None else dataclasses.asdict(cfg.attack),
            "worker_momentum": cfg.worker_momentum,
            "skipped_steps": sum(r["skipped_steps"] for r in history),
            "resumed_at": resumed_at,
            "compute_threads": torch.get_num_threads(),
            "params_sha256": params_digest(model.state_dict()),
            "sampled_epochs": sampled_epochs, "reused_sampled_epochs": reuses,
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
