"""One rank's training run as named stateful parts (model, optimizer, loader, counters, RNG
states and the gradient path's: each with ``state_dict`` / ``load_state_dict``; a checkpoint
is the dict of their states), and its loop: epochs of steps, evaluation, checkpoints."""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from disktrain.errors import DataError, NonFiniteError
from disktrain.loader.dist import DistEnv
from disktrain.loader.loader import Loader
from disktrain.models.gnn import MODELS, TYPED_MODELS, GNNConfig, ModelConfig, build_model
from disktrain.models.hetero import HeteroGNN, HeteroGNNConfig
from disktrain.models.link import LinkModel, build_decoder
from disktrain.robust import check_replicas
from disktrain.storage.dataset import TypedDataset
from disktrain.storage.objstore import append_line, is_url
from disktrain.train.checkpoint import CheckpointWriter, ModelRecord, checkpoint_state, resume
from disktrain.train.config import TrainConfig
from disktrain.train.evaluate import Evaluator
from disktrain.train.gradsync import GradientPath
from disktrain.train.health import nonfinite_step_error, nonfinite_tensors, step_is_finite
from disktrain.train.parts import PerRank, Progress, RngState

STAGES = ("read", "assemble", "copy")


class Trainer:
    """Trains ``cfg.model`` on this rank's share of ``loader`` (disktrain.train.loop.train):
    builds the parts, resumes them (``cfg.checkpoint.resume``), starts from rank 0's weights."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, device: torch.device, loader: Loader,
                 grad_sync=None) -> None:
        meta = _trainable(cfg, loader)
        _check_first_hop(cfg.model, [loader])
        self.cfg, self.env, self.device, self.loader = cfg, env, device, loader
        self.link = cfg.task == "link"
        sized = _model_config(cfg.model, loader, meta, self.link)
        model = build_model(sized) if isinstance(sized, GNNConfig) else HeteroGNN(sized)
        if self.link:  # the encoder's embeddings scored in pairs by the decoder
            model = LinkModel(model, build_decoder(sized.decoder, sized.num_classes,
                                                   sized.dropout))
        self.model = model.to(device)
        self.opt = cfg.optimizer.build(self.model.parameters())
        self.grads = GradientPath(cfg, env, 2 if self.link else meta.num_classes, grad_sync,
                                  [p for p in self.model.parameters() if p.requires_grad])
        self.ckpt_dir = cfg.checkpoint.directory(cfg.writes_to)
        self.writer = CheckpointWriter(self.ckpt_dir, cfg.checkpoint.keep)
        self.progress = Progress()
        self.parts = {"model": self.model,
                      "model_record": ModelRecord.of(sized, loader.dataset, cfg.task),
                      "optimizer": self.opt, "loader": loader,
                      "trainer": self.progress, "rng": PerRank(RngState(device), env, device),
                      **self.grads.parts(env, device)}
        if env.world_size > 1:
            torch.manual_seed(cfg.seed + env.rank)  # same init (broadcast), own dropout masks
        self.resumed_at = resume(self.parts, self.ckpt_dir, self.writer, env, device) \
            if cfg.checkpoint.resume else None
        if dist.is_initialized() and dist.get_world_size() > 1:
            for t in self.model.state_dict().values():
                dist.broadcast(t, src=0)
        self.forward = self.grads.wrap(self.model, device)

    def fit(self, on_epoch=None) -> list[dict]:
        """Train the epochs left, calling ``on_epoch(record, checkpoint_dir)`` after each;
        return every epoch's record."""
        cfg, loader = self.cfg, self.loader
        _warn_reuse(cfg, loader.sampled_epochs, self.env)
        # link prediction is evaluated after training, on exact embeddings (disktrain.infer)
        evaluator = None if self.link else Evaluator(cfg.evaluation, loader, cfg.seed)
        if evaluator is not None:
            _check_first_hop(cfg.model, evaluator.packed.values())
        for epoch in range(loader.epoch, cfg.epochs):
            loader.set_epoch(epoch)
            record = self._epoch(epoch)
            if evaluator is not None and cfg.evaluation.due(epoch, cfg.epochs):
                record.update(_evaluation(evaluator, self.model))
            self.progress.history.append(record)
            loader.set_epoch(epoch + 1)
            self.checkpoint(epoch + 1, 0)
            if self.env.is_main and cfg.metrics:
                if is_url(cfg.metrics):  # on object storage, beside Ray Train's checkpoints
                    append_line(cfg.metrics, json.dumps(record) + "\n")
                else:
                    with open(cfg.metrics, "a") as f:
                        f.write(json.dumps(record) + "\n")
            if on_epoch is not None:
                on_epoch(record, self.ckpt_dir)
        return self.progress.history

    def _epoch(self, epoch: int) -> dict:
        """Train this rank's batches of ``epoch`` left (all, unless resumed inside it)."""
        loader, cursor = self.loader, self.loader.state_dict()["cursor"]
        num_batches = len(loader)
        meter = EpochMeter(self.device)
        self.model.train()
        bar = tqdm(total=num_batches, initial=cursor, desc=f"epoch {epoch}", unit="batch",
                   disable=not (self.cfg.progress and self.env.is_main), leave=False)
        with closing(iter(loader)) as batches:  # Ctrl-C or an error stops its threads
            for step, mb in enumerate(batches, start=cursor):
                meter.begin()
                self._step(mb, epoch, step, meter)
                meter.end(mb)
                bar.update()
                if self.cfg.checkpoint.every and (step + 1) % self.cfg.checkpoint.every == 0:
                    self.checkpoint(epoch, step + 1)
        bar.close()
        check_replicas(self.model.state_dict().values(), f"epoch {epoch}")  # every rank joins
        record = {"epoch": epoch, "loss": meter.loss(), "batches": num_batches,
                  "skipped_steps": self.progress.skipped, **meter.times(loader.prepare_wait_s),
                  "fresh_samples": self.cfg.plan_reuse == "fresh"
                  and epoch >= loader.sampled_epochs, "packed_bytes": loader.packed_bytes}
        self.progress.skipped = 0
        return record

    def _step(self, mb, epoch: int, step: int, meter: EpochMeter) -> None:
        """One optimizer step on batch ``mb`` (number ``step`` of ``epoch``), unless its loss
        or synchronized gradient is not finite: then skipped or stopped, as configured."""
        self.opt.zero_grad(set_to_none=True)
        if self.link:
            loss = F.binary_cross_entropy_with_logits(
                self.forward(*mb.inputs, mb.edge_label_index),
                self.grads.labels(mb.edge_label.long()).to(mb.edge_label.dtype))
        else:
            loss = F.cross_entropy(self.forward(*mb.inputs), self.grads.labels(mb.seed_labels))
        self.grads.backward(loss)
        # several ranks decide on the synced gradients alone, alike: a rank's own non-finite
        # loss is in them already (poisoned row), which a robust rule may drop; an attacking
        # rank's loss does not count at all
        if step_is_finite(loss if self.env.world_size == 1 else None, self.grads.params):
            self.opt.step()
            self.progress.steps += 1
            meter.add_loss(loss.detach())
        elif self.cfg.on_nonfinite == "skip":
            self.progress.skipped += 1
        else:
            raise nonfinite_step_error(loss, epoch, step, mb.index, self.ckpt_dir)

    def checkpoint(self, epoch: int, at: int) -> None:
        """Checkpoint every part at batch ``at`` of ``epoch`` (every rank takes part; rank 0
        writes). Raises NonFiniteError, writing nothing, when a parameter is not finite."""
        # every rank checks its replica (all equal) before the collectives, so all stop alike
        if bad := nonfinite_tensors(self.model.state_dict()):
            raise NonFiniteError(f"epoch {epoch}, batch {at}: parameters {', '.join(bad)} are "
                                 f"not finite; no checkpoint written, {self.ckpt_dir} keeps "
                                 "the last good one")
        state = checkpoint_state(self.parts, epoch, at)
        if self.env.is_main:
            self.writer.save(state)


class EpochMeter:
    """One epoch's seconds (waiting for batches, computing, the loader's stages) and this
    rank's finite losses, summed on the device."""

    def __init__(self, device: torch.device) -> None:
        self.seconds = dict.fromkeys((*STAGES, "compute", "wait"), 0.0)
        self.loss_sum, self.losses = (torch.zeros((), device=device) for _ in range(2))
        self.start = self._mark = time.perf_counter()

    def begin(self) -> None:
        """A batch arrived: the time since the last one was waiting."""
        now = time.perf_counter()
        self.seconds["wait"] += now - self._mark
        self._mark = now

    def end(self, mb) -> None:
        """The step on batch ``mb`` is done."""
        for k in STAGES:
            self.seconds[k] += mb.seconds[k]
        now = time.perf_counter()
        self.seconds["compute"] += now - self._mark
        self._mark = now

    def add_loss(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss)  # not where this rank's was not
        self.loss_sum += torch.where(finite, loss, 0.0)
        self.losses += finite

    def loss(self) -> float:
        """The mean finite loss (NaN without one)."""
        return float(self.loss_sum / self.losses) if float(self.losses) else float("nan")

    def times(self, prepare_wait: float) -> dict:
        """The seconds; ``prepare_wait`` (for fresh samples, before the first batch) apart."""
        self.seconds["wait"] = max(0.0, self.seconds["wait"] - prepare_wait)
        return {"epoch_time_s": time.perf_counter() - self.start - prepare_wait,
                **{f"{k}_s": v for k, v in self.seconds.items()}, "prepare_wait_s": prepare_wait}


def _trainable(cfg: TrainConfig, loader: Loader):
    """The dataset's metadata; DataError when it has no features or labels to train on, or
    its batches are not of the run's task."""
    meta = loader.dataset.meta
    if meta.feature_dim < 1:
        raise DataError(f"{cfg.dataset}: the dataset has no node features (feature_dim 0); "
                        "ingest it with --features")
    prepared = loader.task
    if prepared != cfg.task:
        raise DataError(f"{cfg.dataset}: prepared for task {prepared!r} (its batches are "
                        f"{'edges' if prepared == 'link' else 'nodes'}), but the run's task is "
                        f"{cfg.task!r}: train with --task {prepared}, or `disktrain prepare "
                        f"--task {cfg.task}` first")
    if not loader.dataset.has("labels") and cfg.task == "node":
        raise DataError(f"{cfg.dataset}: the dataset has no labels to train on; ingest it "
                        "with --labels (or train your own model with disktrain.Loader)")
    return meta


def _model_config(cfg: ModelConfig, loader: Loader, meta,
                  link: bool = False) -> GNNConfig | HeteroGNNConfig:
    """``cfg``'s model sized for the dataset: a relational one (R-SAGE, R-GAT) on a typed
    graph; for link prediction an encoder of ``hidden``-wide embeddings."""
    ds, layers = loader.dataset, len(loader.fanouts)
    if not isinstance(ds, TypedDataset):
        if cfg.model not in MODELS[:4]:
            raise ValueError(f"model {cfg.model!r} is for typed graphs; {ds.path} has one node "
                             f"type (models: {', '.join(MODELS[:4])})")
        return cfg.sized(in_dim=meta.feature_dim, num_layers=layers,
                         num_classes=cfg.hidden if link else meta.num_classes)
    if cfg.model not in TYPED_MODELS:
        raise ValueError(f"model {cfg.model!r} does not take a typed graph ({ds.path}: "
                         f"{len(ds.types)} node types); use rsage or rgat")
    return HeteroGNNConfig(
        model=TYPED_MODELS[cfg.model], feature_dims={t.name: t.feature_dim for t in ds.types},
        num_nodes={t.name: t.num_nodes for t in ds.types}, relations=ds.relations,
        target_type=ds.meta.target_type, num_classes=meta.num_classes, num_layers=layers,
        hidden=cfg.hidden, heads=cfg.heads, dropout=cfg.dropout)


def _check_first_hop(model: ModelConfig, loaders) -> None:
    """ValueError unless ``model`` takes the first layer of every loader's packed batches
    as they were packed (pre-aggregated or not)."""
    for loader in loaders:
        model.check_first_hop(loader.aggregate, f"{loader.dataset_dir}'s {loader.split} batches")


def _warn_reuse(cfg: TrainConfig, sampled_epochs: int, env: DistEnv) -> None:
    if cfg.epochs > sampled_epochs and cfg.plan_reuse != "fresh" and env.is_main:
        print(f"disktrain: warning: {cfg.dataset} holds {sampled_epochs} pre-sampled "
              f"epoch(s) for {cfg.epochs} training epochs: batches are reused "
              f"(--plan-reuse {cfg.plan_reuse}); `--plan-reuse fresh` or "
              f"`disktrain prepare --epochs {cfg.epochs}` samples every epoch afresh",
              file=sys.stderr)


def _evaluation(evaluator: Evaluator, model: torch.nn.Module) -> dict:
    """Val and test accuracy of ``model``, how they were evaluated, and the time taken."""
    t0 = time.perf_counter()
    out = evaluator(model)
    out["eval_time_s"] = time.perf_counter() - t0
    out["eval"] = {s: evaluator.mode(s) for s in ("val", "test")}
    out["eval_packed_bytes"] = evaluator.packed_bytes()
    return out
