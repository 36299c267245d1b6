"""Preprocessing on Ray: sampling and packing groups as Ray tasks across a cluster.

The single-process code stays in charge (the plan, the stores' layout, resuming, the final
rename); Ray only replaces its loop over pending groups, through the ``run_groups`` hooks
of :func:`disktrain.sample.sample_dataset` and :func:`disktrain.pack.pack_dataset`. Each
task runs :func:`disktrain.sample.store.sample_group` or a
:class:`disktrain.pack.packer.GroupPacker` on a contiguous run of groups: pure functions of
the dataset, the config and the group, so the result is identical to a single-process run
with the same seed, wherever the tasks land. Every node must see the dataset directory at
the same path (a shared NFS/EFS mount), or the dataset is published on object storage
(``s3://bucket/prefix``, :mod:`disktrain.storage.remote`) and nothing is shared: the driver
and every task stage it on their own node, and each task writes what it makes straight to
the prefix (:class:`ToObjectStore`).

    from disktrain.cluster.ray_prepare import prepare_on_ray
    prepare_on_ray("/data/papers", SampleConfig(fanouts=(15, 10)), PackConfig(), "auto")
    prepare_on_ray("s3://bucket/papers", SampleConfig(fanouts=(15, 10)), PackConfig(), "auto")
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from disktrain.errors import DataError
from disktrain.pack import PackConfig, PackedStore, pack_dataset
from disktrain.pack.prepare import prepare_eval
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.sample.store import group_name
from disktrain.storage.atomic import atomic_dir, atomic_write_bytes
from disktrain.storage.dataset import chunk_file
from disktrain.storage.lock import write_lock
from disktrain.storage.objstore import Remote, is_url
from disktrain.storage.remote import publish, stage, stage_dir
from disktrain.storage.shards import ShardLayout

from .head import init_ray

ROWS_UPLOADED = "uploaded-shards.json"
"""In the ``rows/`` of a packed store made by :class:`ToObjectStore` (its shard files are on
the object store only): each shard file's relative path, size and crc32c."""
TASKS_PER_CPU = 2
"""Tasks per logical CPU of the cluster: enough to balance, few enough to amortize each
task's opening of the dataset."""


def prepare_on_ray(dataset: str | Path, sample_cfg: SampleConfig,
                   pack_cfg: PackConfig | None = None, address: str | None = None, *,
                   progress: bool = True, evaluation: bool = True,
                   eval_batch_size: int | None = None
                   ) -> tuple[PackedStore, dict[str, PackedStore]]:
    """Sample then pack ``dataset`` (a directory every node sees, or the URL of a published
    dataset) with Ray tasks, and (``evaluation``) its val and test batches; return the
    training store and the evaluation stores (of the driver's staged copy for a URL, the
    stores published to it).

    ``address``: "auto", a GCS address, or None (RAY_ADDRESS if set, else a local Ray
    bound to 127.0.0.1 for this call). ``pack_cfg`` defaults to ``PackConfig()``. Resumes
    like the single-process commands (a URL's packed stores: whole stores).
    """
    url = str(dataset) if is_url(str(dataset)) else None
    local = stage(url) if url else Path(dataset)
    with write_lock(local, "prepare"):  # as prepare_dataset, before Ray starts
        started = init_ray(address)
        if url:
            run_pack = ToObjectStore(url, local, progress)
            run_sample = run_pack.sample
        else:
            run_sample = partial(_run, _sample_groups, "sample", progress)
            run_pack = partial(_run, _pack_groups, "pack", progress)
        try:
            sample_dataset(local, sample_cfg, progress, run_groups=run_sample)
            packed = pack_dataset(local, pack_cfg or PackConfig(), progress,
                                  run_groups=run_pack)
            stores = (prepare_eval(local, eval_batch_size, progress, run_sample, run_pack)
                      if evaluation and sample_cfg.task == "node" else {})
            if url:
                publish(local, url, progress=progress, uploaded=run_pack.files())
            return packed, stores
        finally:
            if started:
                import ray

                ray.shutdown()


def split_runs(groups: list[int], num_tasks: int) -> list[list[int]]:
    """``groups`` in at most ``num_tasks`` contiguous runs whose sizes differ by at most 1."""
    runs = np.array_split(np.asarray(groups, np.int64), max(1, min(num_tasks, len(groups))))
    return [run.tolist() for run in runs if len(run)]


def _tasks(task_fn, what: str, progress: bool, head, cfg, groups: list[int], *rest) -> list:
    """``task_fn(head, cfg, run, *rest)`` as Ray tasks on runs of ``groups``: their results,
    in the runs' order."""
    import ray

    if not groups:
        return []
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1, max_retries=3)(task_fn)
    sizes = {task.remote(head, cfg, run, *rest): len(run)
             for run in split_runs(groups, TASKS_PER_CPU * cpus)}
    results, pending = {}, list(sizes)
    with tqdm(total=len(groups), desc=f"{what} (ray)", unit="group",
              disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[done[0]] = ray.get(done[0])
            bar.update(sizes[done[0]])
    return [results[ref] for ref in sizes]


def _run(task_fn, what: str, progress: bool, dataset_path: Path, cfg, groups: list[int],
         out_dir: Path) -> None:
    """The ``run_groups`` hook on shared storage: ``task_fn`` on runs of ``groups``."""
    _tasks(task_fn, what, progress, str(dataset_path), cfg, groups, str(out_dir))


def _sample_groups(dataset_path: str, cfg: SampleConfig, groups: list[int],
                   groups_dir: str) -> None:
    """Ray task: sample ``groups`` into the partial sample store's ``groups_dir``."""
    from disktrain.sample import SamplePlan
    from disktrain.sample.store import sample_group
    from disktrain.storage.dataset import Dataset

    # mapped, never copied: the tasks of a node share the page cache, not one copy each
    dataset = Dataset(dataset_path, csr="map")
    plan = SamplePlan.of(dataset, cfg)
    for g in groups:
        sample_group(dataset, plan, g, Path(groups_dir))


def _pack_groups(dataset_path: str, cfg: PackConfig, groups: list[int],
                 partial_dir: str) -> None:
    """Ray task: pack ``groups`` into the partial packed store ``partial_dir``."""
    from disktrain.pack.packer import GroupPacker

    pack = GroupPacker(dataset_path, cfg, partial_dir)
    for g in groups:
        pack(g)


class ToObjectStore:
    """The ``run_groups`` hooks of a dataset published at ``url`` (the driver's staged copy:
    ``local``): each task stages ``url`` on its own node, works in a scratch directory there
    and uploads what it makes to the final objects.

    - Sampling (:meth:`sample`): a task uploads its groups' files; the driver downloads them
      (it counts accesses and plans the packing from them).
    - Packing (this object, called): the stores made so far are published first, so the
      tasks stage the sample stores. A task packs its groups into the shard files they
      touch; a shard only its groups fill is uploaded whole, the part of a shard it shares
      with another task as a piece (``STORE.pieces/``), composed into the shard by a task
      once all are packed (one per shard two tasks share, at most one per task and store).
      The slots come back to the driver, which finishes the store; its shard files stay on
      the object store (``rows_elsewhere``: not laid out on the driver).

    ``uploaded`` names the files the tasks wrote; a packed store's own are also kept in its
    ``rows/`` (:data:`ROWS_UPLOADED`), so a rerun after an interruption still names them;
    :meth:`files` is what a publish names of them. A store's groups are marked done once
    all of them are written: an interrupted packing is packed again whole.
    """

    rows_elsewhere = True

    def __init__(self, url: str, local: Path, progress: bool):
        self.url, self.local, self.progress = url, Path(local), progress
        self.remote = Remote.of(url)
        self.uploaded: dict[str, tuple[int, int]] = {}
        for done in self.local.rglob(f"rows/{ROWS_UPLOADED}"):  # an earlier run's stores
            self.uploaded.update({r: tuple(d) for r, d in json.loads(done.read_text()).items()})

    def files(self) -> dict[str, tuple[int, int]]:
        """What a publish names besides the dataset directory's files: the uploads it holds
        (sent again otherwise) and the shard files of its complete packed stores; not those
        of stores since made anew (another configuration), deleted by that publish."""
        files = {r: d for r, d in self.uploaded.items() if (self.local / r).is_file()}
        for done in self.local.rglob(f"rows/{ROWS_UPLOADED}"):
            if not any(p.endswith(".partial") for p in done.relative_to(self.local).parts):
                files.update({r: tuple(d) for r, d in json.loads(done.read_text()).items()})
        return files

    def _final(self, path: Path) -> str:
        """``path`` (under ``local``) relative to the dataset, its ``X.partial`` as ``X``."""
        parts = Path(path).relative_to(self.local).parts
        return "/".join(p.removesuffix(".partial") for p in parts)

    def sample(self, dataset_path, cfg: SampleConfig, groups: list[int],
               groups_dir: Path) -> None:
        rel = self._final(groups_dir)
        made = _tasks(_sample_to, "sample", self.progress, self.url, cfg, groups, rel)
        files = {r: tuple(d) for m in made for r, d in m.items()}
        self.uploaded.update(files)
        by_group = defaultdict(list)
        for r in files:
            by_group[r[len(rel) + 1:].split("/", 1)[0]].append(r)

        def fetch(group: str) -> None:
            with atomic_dir(Path(groups_dir) / group, overwrite=True) as tmp:
                for r in by_group[group]:
                    self.remote.download(r, tmp / r[len(rel) + len(group) + 2:], files[r])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fetch, sorted(by_group)))

    def __call__(self, dataset_path, cfg: PackConfig, groups: list[int],
                 partial_dir: Path) -> None:
        import ray

        partial_dir = Path(partial_dir)
        store = self._final(partial_dir)
        self.remote.delete_tree(f"{store}.pieces")  # an interrupted run's
        publish(self.local, self.url, uploaded=self.files())
        slots = chunk_file(partial_dir / "slots", 0)
        meta = {str(p.relative_to(partial_dir)): p.read_bytes()
                for p in partial_dir.rglob("*") if p.is_file() and p != slots
                and p.relative_to(partial_dir).parts[0] not in ("cache_rows", "done")}
        made = _tasks(_pack_to, "pack", self.progress, self.url, cfg, groups, store,
                      ray.put(meta), slots.stat().st_size)
        layout = ShardLayout.of(zarr.open_group(partial_dir, mode="r")["rows"],
                                partial_dir / "rows")
        pieces = defaultdict(list)
        for _, parts, _ in made:
            for shard, at0, at1 in parts:
                pieces[shard].append((at0, at1))
        composed = ray.get([ray.remote(max_retries=3)(_compose).remote(
            self.url, store, layout.path(s).name, layout.file_bytes(s), layout.index(s),
            layout.stride, _cover(sorted(p), layout.chunks_in(s), layout.path(s)))
            for s, p in sorted(pieces.items())])
        rows = {r: d for m in made for r, d in m[0].items()} | dict(composed)
        self.uploaded.update({r: tuple(d) for r, d in rows.items()})
        atomic_write_bytes(partial_dir / "rows" / ROWS_UPLOADED, json.dumps(rows).encode())
        fd = os.open(slots, os.O_WRONLY)
        try:
            for _, _, group_slots in made:
                for offset, raw in group_slots:
                    os.pwrite(fd, raw, offset)
        finally:
            os.close(fd)
        for g in groups:
            (partial_dir / "done" / group_name(g)).touch()


def _cover(pieces: list[tuple[int, int]], chunks: int, path: Path) -> list[tuple[int, int]]:
    """``pieces`` (sorted chunk ranges of one shard), checked to cover its ``chunks``."""
    at = 0
    for at0, at1 in pieces:
        if at0 != at:
            break
        at = at1
    if at != chunks:
        raise DataError(f"{path}: the packing tasks wrote chunks {pieces} of its {chunks}")
    return pieces


@contextmanager
def _scratch(near: Path):
    """A temporary directory beside ``near`` (node-local: the stage directory), removed at
    the end."""
    near.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=near, prefix=".disktrain-task-") as tmp:
        yield Path(tmp)


def _upload_tree(remote: Remote, directory: Path, rel: str) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` uploaded as ``rel/...``; their (size, crc32c)."""
    done = {}
    for p in sorted(p for p in directory.rglob("*") if p.is_file()):
        r = f"{rel}/{p.relative_to(directory)}"
        done[r] = remote.upload(p, r)
    return done


def _sample_to(url: str, cfg: SampleConfig, groups: list[int],
               rel: str) -> dict[str, tuple[int, int]]:
    """Ray task: sample ``groups`` of the dataset at ``url`` (staged on this node) and upload
    their files under ``url/rel`` (a sample store's ``groups``); their (size, crc32c)."""
    from disktrain.sample import SamplePlan
    from disktrain.sample.store import sample_group
    from disktrain.storage.dataset import Dataset

    staged = stage(url)
    dataset = Dataset(staged, csr="map")
    plan = SamplePlan.of(dataset, cfg)
    with _scratch(stage_dir()) as tmp:
        for g in groups:
            sample_group(dataset, plan, g, tmp)
        return _upload_tree(Remote.of(url), tmp, rel)


def _pack_to(url: str, cfg: PackConfig, groups: list[int], store: str, meta: dict[str, bytes],
             slots_bytes: int) -> tuple[dict, list, list]:
    """Ray task: pack ``groups`` of the store ``url/store`` (its partial store's metadata:
    ``meta``) on this node. Returns the shard files uploaded whole (relative path: size,
    crc32c), the pieces uploaded ``(shard, first chunk, end chunk)`` and the groups' slots
    ``(byte offset, bytes)``."""
    from disktrain.pack.packer import GroupPacker

    staged, remote = stage(url), Remote.of(url)
    with _scratch(stage_dir()) as tmp:
        partial = tmp / "packed.partial"
        for name, data in meta.items():
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            (partial / name).write_bytes(data)
        (partial / "done").mkdir()
        slots = chunk_file(partial / "slots", 0)
        slots.parent.mkdir(parents=True, exist_ok=True)
        with open(slots, "wb") as f:  # sparse: only this task's slots are written
            f.truncate(slots_bytes)
        packer = GroupPacker(staged, cfg, partial, samples_root=staged / Path(store).parent)
        layout, per = packer.layout, packer.layout.per_shard
        spans: list[list[int]] = []  # the chunks of the groups, adjacent ones merged
        for g in groups:
            c0, c1 = (int(packer.batch_rows[b]) // packer.chunk_rows
                      for b in (packer.groups[g].start, packer.groups[g].stop))
            if spans and spans[-1][1] == c0:
                spans[-1][1] = c1
            elif c1 > c0:
                spans.append([c0, c1])
        parts = defaultdict(list)  # shard -> its chunk ranges [at0, at1) written here
        for c0, c1 in spans:
            for s in range(c0 // per, (c1 - 1) // per + 1):
                parts[s].append((max(c0, s * per) - s * per, min(c1, (s + 1) * per) - s * per))
        layout.lay_out(sorted(parts))
        for g in groups:
            packer(g)
        whole, pieces = {}, []
        for s, ranges in sorted(parts.items()):
            path = layout.path(s)
            if ranges == [(0, layout.chunks_in(s))]:
                rel = f"{store}/rows/{path.name}"
                whole[rel] = remote.upload(path, rel)
            else:
                for at0, at1 in ranges:
                    remote.upload(path, f"{store}.pieces/{path.name}.{at0}",
                                  at0 * layout.stride, (at1 - at0) * layout.stride)
                    pieces.append((s, at0, at1))
            path.unlink()
        with open(slots, "rb") as f:
            group_slots = []
            for g in groups:
                lo, hi = (int(packer.slot_offsets[b]) * 8 for b in (
                    packer.groups[g].start, packer.groups[g].stop))
                f.seek(lo)
                group_slots.append((lo, f.read(hi - lo)))
        return whole, pieces, group_slots


def _compose(url: str, store: str, name: str, size: int, index: bytes, stride: int,
             pieces: list[tuple[int, int]]) -> tuple[str, tuple[int, int]]:
    """Ray task: shard file ``store/rows/name`` of ``url`` (``size`` bytes, ending with
    ``index``) streamed from its pieces ``(first chunk, end chunk)``, in order; the pieces
    deleted. Returns its relative path, size and crc32c."""
    remote, rel = Remote.of(url), f"{store}/rows/{name}"
    keys = [f"{store}.pieces/{name}.{at0}" for at0, _ in pieces]
    with remote.writing(rel) as dst:
        for key, (at0, at1) in zip(keys, pieces):
            if (got := remote.read_into(key, dst)) != (at1 - at0) * stride:
                raise DataError(f"{remote.where(key)}: {got} bytes, expected "
                                f"{(at1 - at0) * stride} (chunks {at0} to {at1})")
        if dst.size != size - len(index):
            raise DataError(f"{remote.where(rel)}: its pieces hold {dst.size} bytes, expected "
                            f"{size - len(index)}")
        dst.write(index)
    remote.delete(keys)
    return rel, (dst.size, dst.crc)
