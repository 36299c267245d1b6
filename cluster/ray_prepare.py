"""Preprocessing on Ray: sampling and packing groups as Ray tasks across a cluster.

The single-process code stays in charge (the plan, the stores' layout, resuming, the final
rename); Ray only replaces its loop over pending groups, through the ``run_groups`` hooks
of :func:`disktrain.sample.sample_dataset` and :func:`disktrain.pack.pack_dataset`. Each
task runs :func:`disktrain.sample.store.sample_group` or a
:class:`disktrain.pack.packer.GroupPacker` on a contiguous run of groups: pure functions of
the dataset, the config and the group, so the result is identical to a single-process run
with the same seed, wherever the tasks land. Every node must see the dataset directory at
the same path (a shared NFS/EFS mount).

    from disktrain.cluster.ray_prepare import prepare_on_ray
    prepare_on_ray("/data/papers", SampleConfig(fanouts=(15, 10)), PackConfig(), "auto")
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from disktrain.pack import PackConfig, PackedStore, pack_dataset
from disktrain.pack.prepare import prepare_eval
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.storage.lock import write_lock

from .head import init_ray

TASKS_PER_CPU = 2
"""Tasks per logical CPU of the cluster: enough to balance, few enough to amortize each
task's opening of the dataset."""


def prepare_on_ray(dataset_path: str | Path, sample_cfg: SampleConfig,
                   pack_cfg: PackConfig | None = None, address: str | None = None, *,
                   progress: bool = True, evaluation: bool = True,
                   eval_batch_size: int | None = None
                   ) -> tuple[PackedStore, dict[str, PackedStore]]:
    """Sample then pack the dataset at ``dataset_path`` with Ray tasks, and (``evaluation``)
    its val and test batches; return the training store and the evaluation stores.

    ``address``: "auto", a GCS address, or None (RAY_ADDRESS if set, else a local Ray
    bound to 127.0.0.1 for this call). ``pack_cfg`` defaults to ``PackConfig()``. Resumes
    like the single-process commands.
    """
    with write_lock(dataset_path, "prepare"):  # as prepare_dataset, before Ray starts
        started = init_ray(address)
        run_sample = partial(_run, _sample_groups, "sample", progress)
        run_pack = partial(_run, _pack_groups, "pack", progress)
        try:
            sample_dataset(dataset_path, sample_cfg, progress, run_groups=run_sample)
            packed = pack_dataset(dataset_path, pack_cfg or PackConfig(), progress,
                                  run_groups=run_pack)
            stores = (prepare_eval(dataset_path, eval_batch_size, progress, run_sample, run_pack)
                      if evaluation and sample_cfg.task == "node" else {})
            return packed, stores
        finally:
            if started:
                import ray

                ray.shutdown()


def split_runs(groups: list[int], num_tasks: int) -> list[list[int]]:
    """``groups`` in at most ``num_tasks`` contiguous runs whose sizes differ by at most 1."""
    runs = np.array_split(np.asarray(groups, np.int64), max(1, min(num_tasks, len(groups))))
    return [run.tolist() for run in runs if len(run)]


def _run(task_fn, what: str, progress: bool, dataset_path: Path, cfg, groups: list[int],
         out_dir: Path) -> None:
    """The ``run_groups`` hook: ``task_fn`` on runs of ``groups`` as Ray tasks."""
    import ray

    if not groups:
        return
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1, max_retries=3)(task_fn)
    pending = [task.remote(str(dataset_path), cfg, run, str(out_dir))
               for run in split_runs(groups, TASKS_PER_CPU * cpus)]
    with tqdm(total=len(groups), desc=f"{what} (ray)", unit="group",
              disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(ray.get(done[0]))


def _sample_groups(dataset_path: str, cfg: SampleConfig, groups: list[int],
                   groups_dir: str) -> int:
    """Ray task: sample ``groups`` into the partial sample store's ``groups_dir``."""
    from disktrain.sample import SamplePlan
    from disktrain.sample.store import sample_group
    from disktrain.storage.dataset import Dataset

    # mapped, never copied: the tasks of a node share the page cache, not one copy each
    dataset = Dataset(dataset_path, csr="map")
    plan = SamplePlan.of(dataset, cfg)
    for g in groups:
        sample_group(dataset, plan, g, Path(groups_dir))
    return len(groups)


def _pack_groups(dataset_path: str, cfg: PackConfig, groups: list[int],
                 partial_dir: str) -> int:
    """Ray task: pack ``groups`` into the partial packed store ``partial_dir``."""
    from disktrain.pack.packer import GroupPacker

    pack = GroupPacker(dataset_path, cfg, partial_dir)
    for g in groups:
        pack(g)
    return len(groups)
