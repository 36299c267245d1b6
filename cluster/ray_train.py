"""Data-parallel training on Ray Train: the same :func:`disktrain.train.train` on N workers.

Ray Train (its V2 API, the default in Ray 2.60) starts one actor per worker, sets RANK /
LOCAL_RANK / WORLD_SIZE and MASTER_ADDR / MASTER_PORT and initializes the torch process
group (gloo on CPU, nccl with GPUs) before the per-worker loop runs; ``train`` then finds the
group initialized and trains on its rank's share of every epoch's batches, all-reducing the
gradients. Each worker keeps its own caches. A dataset on object storage (``s3://...``) goes
to the workers as its URL: each stages it on its own node (``train`` does,
:mod:`disktrain.storage.remote`), so the nodes share no filesystem; a local path must name the
same dataset on every node.

Fault tolerance is Ray Train's: after each epoch every worker calls ``ray.train.report``
and rank 0 attaches its checkpoint directory, which Ray copies to ``storage_path`` (a
directory every node sees, or an object-store URL, through pyarrow's filesystem: the default
for a dataset URL is ``URL/ray_results``). When a worker dies, Ray restarts the whole group
(up to ``max_failures`` times) and every new worker resumes from the last reported checkpoint
(``ray.train.get_checkpoint()``; Ray registers a report when it next polls the workers, every
RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s: a worker lost sooner resumes from the one before).
Each worker checkpoints into a directory of its own in its node's temporary directory; when
the run ends, the driver copies the last reported checkpoint to ``checkpoint_dir`` (default
RUN_DIR/checkpoints; for a dataset URL without a run directory, the driver node's staged
copy), and with ``resume`` hands the newest checkpoint there to the workers, so ``--resume``
continues a Ray run as it continues a local one. Rank 0 appends to ``metrics`` on whatever
node it runs (give an object URL where nodes share no directory). Credentials for object
storage come from each node's environment or AWS files, never from the configuration.

    from disktrain.cluster.ray_train import RayTrainConfig, fit_on_ray
    fit_on_ray(TrainConfig(dataset="s3://bucket/papers"), RayTrainConfig(workers=4, address="auto"))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from disktrain.errors import check_min
from disktrain.storage.atomic import start_tag
from disktrain.storage.objstore import Remote, is_url
from disktrain.train.checkpoint import CheckpointWriter, checkpoint_files, read_newest
from disktrain.train.config import TrainConfig

from .head import init_ray


@dataclass(frozen=True, kw_only=True)
class RayTrainConfig:
    """How a training run is spread over a Ray cluster."""

    workers: int = 1
    """Training workers (processes), each taking a disjoint share of every epoch (the
    command line trains in its own process, without Ray, when this is 1 and no address is
    given)."""
    gpus_per_worker: float = 0
    """GPUs per worker (0: CPU training with gloo; > 0: nccl, device cuda)."""
    cpus_per_worker: float = 1
    """Logical CPUs reserved per worker."""
    address: str | None = None
    """Ray cluster to use: "auto", a GCS address, or None (RAY_ADDRESS if set, else a
    local Ray started for this run, bound to 127.0.0.1, and stopped after it)."""
    max_failures: int = 3
    """Restarts of the worker group after a worker failure (-1: unlimited)."""
    storage_path: str | None = None
    """Where Ray keeps reported checkpoints and results: a directory every node sees or an
    object-store URL (``s3://bucket/prefix``; default: for a dataset URL ``URL/ray_results``,
    else RUN_DIR/ray_results, the dataset's without a run directory)."""

    def __post_init__(self):
        check_min(self, 1, "workers")
        check_min(self, 0, "gpus_per_worker", "cpus_per_worker")
        check_min(self, -1, "max_failures")


def fit_on_ray(train_cfg: TrainConfig, ray_cfg: RayTrainConfig,
               grad_sync: Callable[[int], Callable | None] | None = None) -> dict:
    """Train ``train_cfg`` with ``ray_cfg.workers`` Ray Train workers; return the summary.

    The summary is rank 0's (as :func:`disktrain.train.train` returns it) plus
    ``replica_sha256`` (every rank's final parameter digest), ``replicas_identical``,
    ``checkpoint`` (where the final checkpoint was copied: ``train_cfg.checkpoint.dir``,
    default RUN_DIR/checkpoints) and ``ray_result_path``. ``grad_sync``: called in each
    worker (every attempt) with its rank, returns the gradient sync that rank trains with
    (``train``'s ``grad_sync``; None: the configured one); Ray pickles it to the workers.
    """
    train_cfg.check_writable(fresh_epochs=False)  # the driver writes the final checkpoint
    started = init_ray(ray_cfg.address,
                       num_cpus=max(os.cpu_count() or 1,
                                    int(ray_cfg.workers * ray_cfg.cpus_per_worker) + 1))
    try:
        return _fit(train_cfg, ray_cfg, grad_sync)
    finally:
        if started:
            import ray

            ray.shutdown()


def _fit(train_cfg: TrainConfig, ray_cfg: RayTrainConfig, grad_sync) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    if not is_url(train_cfg.dataset):  # a URL goes as it is: each worker stages it
        train_cfg = replace(train_cfg, dataset=str(Path(train_cfg.dataset).resolve()))
    if train_cfg.run_dir is not None:
        train_cfg = replace(train_cfg, run_dir=str(Path(train_cfg.run_dir).resolve()))
    resources = {"CPU": ray_cfg.cpus_per_worker}
    if ray_cfg.gpus_per_worker:
        resources["GPU"] = ray_cfg.gpus_per_worker
    storage = _storage(train_cfg, ray_cfg)
    remote = Remote.of(storage) if is_url(storage) else None  # credentials: each node's own
    name = f"disktrain-{train_cfg.model.model}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    own = train_cfg.checkpoint.directory(train_cfg.writes_to)
    found = read_newest(own) if train_cfg.checkpoint.resume else None
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "train_cfg": train_cfg,
            "use_gpu": ray_cfg.gpus_per_worker > 0,
            "run": name,
            "initial": None if found is None else (found[0].name, found[1]),
            "grad_sync": grad_sync,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=ray_cfg.workers,
                                               use_gpu=ray_cfg.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=remote.base if remote else storage,
            storage_filesystem=remote.fs if remote else None,
            failure_config=ray.train.FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    summary = dict(result.return_value or {})
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            summary["checkpoint"] = str(_copy_checkpoint(Path(d), own,
                                                         train_cfg.checkpoint.keep))
    summary["ray_result_path"] = f"{remote.url}/{name}" if remote else result.path
    return summary


def _storage(train_cfg: TrainConfig, ray_cfg: RayTrainConfig) -> str:
    """Where Ray keeps the run: ``ray_cfg.storage_path``, by default ``URL/ray_results`` for a
    dataset URL (the nodes share no filesystem), else RUN_DIR/ray_results (the dataset's
    without a run directory); a local path absolute."""
    path = ray_cfg.storage_path
    if path is None and is_url(train_cfg.dataset):
        path = f"{train_cfg.dataset.rstrip('/')}/ray_results"
    if path is not None and is_url(path):
        return path
    return str(Path(path or train_cfg.writes_to / "ray_results").resolve())


def _copy_checkpoint(source: Path, target: Path, keep: int) -> Path:
    """Copy the newest ``keep`` checkpoint files of ``source`` (rank 0's, as Ray reported
    them) into ``target`` as training writes them (atomically; other checkpoint files there
    go); return the newest one's path."""
    files = checkpoint_files(source)[:keep]
    if not files:
        raise FileNotFoundError(f"{source}: Ray's last reported checkpoint has no checkpoint "
                                "file")
    writer = CheckpointWriter(target, keep)
    for path in reversed(files):  # oldest first
        writer.add(path.name, path.read_bytes())
    return target / files[0].name


def _worker_loop(config: dict) -> dict | None:
    """One Ray Train worker: restore, train its share, report each epoch."""
    import ray.train
    import torch.distributed as dist

    from disktrain.train import train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # Ray Train's torch backend sets these; set them if a Ray version does not
    for key, value in (("RANK", rank), ("LOCAL_RANK", ctx.get_local_rank()),
                       ("WORLD_SIZE", ctx.get_world_size())):
        os.environ.setdefault(key, str(value))
    cfg: TrainConfig = config["train_cfg"]
    workdir = _scratch(config["run"], rank)
    try:
        resume = _restore(config["initial"], workdir) or cfg.checkpoint.resume
        loader = cfg.loader
        if config["use_gpu"]:
            import ray.train.torch

            loader = replace(loader, device=str(ray.train.torch.get_device()))
        run_cfg = replace(cfg, loader=loader, progress=cfg.progress and rank == 0,
                          checkpoint=replace(cfg.checkpoint, dir=str(workdir), resume=resume))

        def on_epoch(record: dict, ckpt_dir: Path) -> None:
            checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir) if rank == 0 else None
            ray.train.report(record, checkpoint=checkpoint,
                             delete_local_checkpoint_after_upload=False)

        sync = config["grad_sync"](rank) if config["grad_sync"] is not None else None
        summary = train(run_cfg, grad_sync=sync, on_epoch=on_epoch)
        digests = [summary["params_sha256"]]
        if dist.is_initialized() and dist.get_world_size() > 1:
            digests = [None] * dist.get_world_size()
            dist.all_gather_object(digests, summary["params_sha256"])
        summary.update(replica_sha256=digests, replicas_identical=len(set(digests)) == 1)
        return summary if rank == 0 else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last of the run's workers on this node
            workdir.parent.rmdir()


def _scratch(run: str, rank: int) -> Path:
    """A new checkpoint directory for this worker of ``run``, on its own node (the temporary
    directory, never one the nodes share); those a killed worker of the run left there go."""
    root = Path(tempfile.gettempdir()) / run
    root.mkdir(parents=True, exist_ok=True)
    for left in root.glob("rank*-pid*"):
        if start_tag(int(left.name.rpartition("pid")[2])) is None:  # its worker is gone
            shutil.rmtree(left, ignore_errors=True)
    (path := root / f"rank{rank}-pid{os.getpid()}").mkdir()
    return path


def _restore(initial: tuple[str, bytes] | None, workdir: Path) -> bool:
    """Put the checkpoint to resume from in ``workdir``; return whether it is Ray's.

    Ray's last reported checkpoint wins (a restart after a failure); else ``initial``, the
    newest one in the run's own checkpoint directory as the driver read it with
    ``cfg.checkpoint.resume`` (a new run continuing an old one).
    """
    import ray.train

    found = None
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            found = read_newest(d)
    if (chosen := found or initial) is not None:
        (workdir / Path(chosen[0]).name).write_bytes(chosen[1])
    return found is not None
