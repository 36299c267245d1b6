"""Batched packing: read raw feature rows once, in order, and lay them out per batch.

A group of batches is packed in one ascending pass over the raw features. Each batch packs
its uncached rows as two runs, each in ascending node id (the last-hop-only rows, then the
rest), so every raw range read extends each run that needs rows from it, and a batch's
chunks are finished as they fill: rows are gathered straight into page-aligned chunk
buffers, which a :class:`~disktrain.storage.chunkfile.ChunkWriter` thread checksums and
writes in the store's shard files (past the page cache where it can) while the next raw range
is read. Memory per batch: its packed ids and at most two chunk buffers, plus the writer's
bounded queue.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr
from tqdm.auto import tqdm

from disktrain.errors import DataError
from disktrain.kernels.aggregate import AGGREGATIONS, first_hop_edges, scatter_add_rows
from disktrain.kernels.sampling import SampledBatch
from disktrain.pack.slots import NOT_CACHED, pack_slots
from disktrain.pack.store import (
    FORMAT_VERSION,
    PACKED,
    STORE,
    PackedStore,
    packed_ref,
    packed_store_bytes,
)
from disktrain.pack.tiers import Tiers, assign_tiers, cache_rows_to_fit, rows_for_bytes
from disktrain.sample.store import SampleStore, group_name
from disktrain.storage.atomic import replace_dir
from disktrain.storage.chunkfile import ChunkWriter
from disktrain.storage.dataset import (
    Dataset,
    TypedDataset,
    chunk_file,
    create_flat_array,
    finish_flat_array,
    link_array,
    new_id,
    open_flat_array,
    read_small_array,
    seal_flat_array,
    write_small_array,
)
from disktrain.storage.diskspace import require_free
from disktrain.storage.io import disk_full_errors, pwrite_all
from disktrain.storage.lock import replacing
from disktrain.storage.schema import group_attrs
from disktrain.storage.shards import ShardLayout, create_sharded


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    """Tiering and packing of feature rows."""

    gpu_cache_bytes: int = 0
    """Bytes of the hottest rows kept in a GPU cache (a CPU tensor without a GPU)."""
    cpu_cache_bytes: int = 0
    """Bytes of the next hottest rows kept in a CPU (pinned) cache."""
    max_packed_bytes: int | None = None
    """Refuse to write more packed bytes than this; the error says what cache would fit."""
    chunk_bytes: int = 256 << 10
    """Target bytes per packed chunk (checksummed, read whole); batches pad to whole chunks."""
    shard_bytes: int = 1 << 30
    """Target bytes per shard file of packed chunks (many chunks per file, so the number of
    files does not grow with the number of batches)."""
    aggregate_first_hop: str = "off"
    """Aggregate each batch's first layer while packing (``mean``: GraphSAGE's, ``gcn``:
    GCN's; :mod:`disktrain.kernels.aggregate`): a batch then packs its first-layer targets'
    own rows and their aggregates, not its sampled neighbours' rows ("off": raw rows)."""
    group_bytes: int = 1 << 30
    """Memory of one packing group (per batch: its packed ids and one chunk buffer); a
    group's batches share one ascending pass over the raw features, so each group more is one
    more read of (most of) the raw feature file (at 256 MiB, packing 23 GB of rows of a
    billion-edge graph with 8.6 GB of features read 56 GB). The pass reads the raw rows in
    spans of a quarter of it (64-256 MiB; two held: at most half of it more)."""

    @property
    def span_bytes(self) -> int:
        """Raw feature bytes a pass reads at a time (``FeatureRows.iter_sorted``): fewer, larger
        spans cost less Python per batch and span (256 MiB packed in 0.9x the time of 64)."""
        return min(max(self.group_bytes // 4, 64 << 20), 256 << 20)

    def __post_init__(self):
        for name in ("gpu_cache_bytes", "cpu_cache_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("chunk_bytes", "shard_bytes", "group_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_packed_bytes is not None and self.max_packed_bytes < 0:
            raise ValueError(f"max_packed_bytes must be >= 0, got {self.max_packed_bytes}")
        if self.aggregate_first_hop not in ("off", *AGGREGATIONS):
            raise ValueError(f"aggregate_first_hop must be one of {('off', *AGGREGATIONS)}, "
                             f"got {self.aggregate_first_hop!r}")

    @property
    def aggregate(self) -> str | None:
        """The first-hop aggregation packed (None: off)."""
        return None if self.aggregate_first_hop == "off" else self.aggregate_first_hop


def _sorted_unique(runs: list[np.ndarray], num_nodes: int,
                   map_=map) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct ids of ascending ``runs`` (node ids < ``num_nodes``), ascending, and each
    run's ids as positions in them (``map_``: the ``map`` each run's positions are found
    with, e.g. a thread pool's: NumPy's fancy indexing releases the GIL).

    Where a bitmap of the nodes and its running count (5 bytes a node) take no more memory
    than the ids (8 bytes each), by those (O(nodes + ids)); else by a sort (faster than
    ``np.unique``'s hash table on millions of ids) and binary searches.
    """
    total = sum(len(r) for r in runs)
    if 5 * num_nodes <= 8 * total:
        seen = np.zeros(num_nodes, bool)
        for r in runs:
            seen[r] = True
        rank = np.cumsum(seen, dtype=np.int32 if num_nodes < 2**31 else np.int64)
        rank -= 1
        return np.flatnonzero(seen), list(map_(rank.__getitem__, runs))
    ids = np.sort(np.concatenate(runs)) if runs else np.zeros(0, np.int64)
    ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids
    return ids, list(map_(lambda r: np.searchsorted(ids, r), runs))


def _groups(batch_packed: np.ndarray, chunk_bytes: int, group_bytes: int,
            sums: np.ndarray) -> list[range]:
    """Consecutive batches whose packing state (per batch: its packed ids, one chunk buffer
    and its ``sums`` bytes of aggregate accumulators) fits ``group_bytes``."""
    out, start, acc = [], 0, 0
    for b, rows in enumerate(batch_packed):
        size = int(rows) * 8 + chunk_bytes + int(sums[b])
        if b > start and acc + size > group_bytes:
            out.append(range(start, b))
            start, acc = b, 0
        acc += size
    if start < len(batch_packed):
        out.append(range(start, len(batch_packed)))
    return out


class _BatchWriter:
    """Gathers one batch's packed rows, arriving as runs at any offsets, into chunk buffers.

    A chunk is handed to the :class:`ChunkWriter` once all its real rows have arrived (its
    padding rows are zeroed then).
    """

    def __init__(self, chunks: ChunkWriter, first_chunk: int, num_rows: int, chunk_rows: int,
                 dim: int, dtype):
        self.chunks, self.first, self.num_rows = chunks, first_chunk, num_rows
        self.chunk_rows, self.shape, self.dtype = chunk_rows, (chunk_rows, dim), dtype
        self.pending: dict[int, list] = {}  # chunk -> [buffer, rows view, rows filled]

    def write(self, at: int, source: np.ndarray, take: np.ndarray) -> None:
        """Rows ``source[take]`` are packed rows ``at`` onwards."""
        while len(take):
            k, r0 = divmod(at, self.chunk_rows)
            n = min(len(take), self.chunk_rows - r0)
            entry = self.pending.get(k)
            if entry is None:
                buf = self.chunks.buffer()
                rows = buf[:self.chunks.chunk_bytes].view(self.dtype).reshape(self.shape)
                entry = self.pending[k] = [buf, rows, 0]
            np.take(source, take[:n], axis=0, out=entry[1][r0:r0 + n], mode="clip")
            entry[2] += n
            real = min(self.chunk_rows, self.num_rows - k * self.chunk_rows)
            if entry[2] == real:
                entry[1][real:] = 0
                self.chunks.submit(self.first + k, entry[0])
                del self.pending[k]
            take, at = take[n:], at + n


def _sum_bytes(cfg: PackConfig, targets: np.ndarray, dim: int) -> np.ndarray:
    """Bytes of each batch's float32 aggregate accumulators (one row per first-layer target
    when aggregating: ``targets``, its slots)."""
    return targets * (4 * dim) if cfg.aggregate is not None else np.zeros_like(targets)


class _Aggregate:
    """One batch's first-layer aggregates, summed from the raw rows as they pass: the
    weighted edges of its first block (:func:`~disktrain.kernels.aggregate.first_hop_edges`)
    by ascending source, written after the batch's own rows once the pass is over."""

    def __init__(self, writer: _BatchWriter, first: int, src: np.ndarray, dst: np.ndarray,
                 weight: np.ndarray, num_dst: int, dim: int):
        self.writer, self.first, self.dst, self.weight = writer, first, dst, weight
        self.src = src
        """Ascending global source ids; :func:`pack_pass` makes them positions in its pass."""
        self.sums = np.zeros((num_dst, dim), np.float32)
        self.done = 0

    @classmethod
    def of(cls, kind: str, batch: SampledBatch, dataset: Dataset, writer: _BatchWriter,
           first: int, dim: int) -> _Aggregate:
        src, dst, num_src, num_dst = batch.blocks[0]
        nodes = batch.input_nodes[:num_src]
        degree = dataset.in_degrees(nodes) if kind == "gcn" else None
        src, dst, weight = first_hop_edges(kind, src, dst, num_dst, degree)
        ids = nodes[src]
        order = np.argsort(ids, kind="stable")
        return cls(writer, first, ids[order], dst[order],
                   weight[order].astype(np.float32), num_dst, dim)

    def add(self, i: int, j: int, rows: np.ndarray) -> None:
        """Sum in ``rows``, the raw rows of pass positions ``[i, j)``."""
        end = int(np.searchsorted(self.src, j))
        if end > self.done:
            s = slice(self.done, end)
            scatter_add_rows(self.sums, rows, self.src[s] - i, self.dst[s], self.weight[s])
            self.done = end

    def finish(self) -> None:
        """Write the aggregates (every source summed) as the batch's last packed rows."""
        sums = self.sums.astype(self.writer.dtype, copy=False)
        self.writer.write(self.first, sums, np.arange(len(sums)))


class GroupPacker:
    """Packs groups of batches into a partial packed store laid out by :func:`pack_dataset`.

    Everything it needs is read back from the dataset, the sample store and the partial
    store, so any process that sees the same files (a Ray task on another node) can pack any
    group; groups write disjoint chunks of the laid-out shard files and disjoint byte ranges
    of ``slots``.
    """

    def __init__(self, dataset_path: str | Path, cfg: PackConfig, partial: str | Path,
                 samples_root: str | Path | None = None, samples: SampleStore | None = None):
        """``samples_root``: the root of the sample store (default: the partial store's);
        ``samples``: that store opened already (its groups read by the plan are not read
        again)."""
        self.dataset = Dataset(dataset_path)
        self.partial = Path(partial)
        self.samples = samples or SampleStore(self.dataset.path,
                                              root=samples_root or self.partial.parent)
        root = zarr.open_group(self.partial, mode="r")
        rows = root["rows"]
        self.chunk_rows, self.dim, self.dtype = int(rows.chunks[0]), int(rows.shape[1]), rows.dtype
        ref = packed_ref(self.partial)
        small = {name: read_small_array(self.partial, name, ref)
                 for name in PACKED.read_whole}
        self.slot_offsets, self.batch_rows = small["slot_offsets"], small["batch_rows"]
        self.n_cpu = len(small["cpu_nodes"])
        self.codes = Tiers(small["gpu_nodes"], small["cpu_nodes"]).codes(self.dataset.num_nodes)
        self.batch_packed = small["batch_packed"]
        self.chunk_bytes = self.chunk_rows * self.dim * np.dtype(self.dtype).itemsize
        self.layout = ShardLayout.of(rows, self.partial / "rows")
        self.aggregate, self.span_bytes = cfg.aggregate, cfg.span_bytes
        self.groups = _groups(self.batch_packed, self.chunk_bytes, cfg.group_bytes,
                              _sum_bytes(cfg, np.diff(self.slot_offsets), self.dim))
        open_flat_array(self.partial, "slots", ref=ref)  # validates its size
        self._slots_file = chunk_file(self.partial / "slots", 0)

    def __call__(self, group: int) -> None:
        """Write group ``group``'s chunks and slots, then its ``done`` marker."""
        pack_pass(self.dataset, [(self, group)])

    def open(self, group: int, chunks: ChunkWriter) -> tuple[list, list, np.ndarray]:
        """Group ``group``'s runs ``(writer, first row, ascending node ids)`` (the rows each
        batch packs, to be written through ``chunks``), its aggregates (:class:`_Aggregate`)
        and its slots."""
        def slots_of(b: int):
            return pack_slots(self.codes, self.samples.input_nodes(b),
                              self.samples.inner_count(b), self.n_cpu,
                              last_hop=self.aggregate is None)

        slots, runs, aggs = [], [], []
        with ThreadPoolExecutor(2) as pool:  # NumPy sorts without the GIL
            made = list(pool.map(slots_of, self.groups[group]))
        for b, (s, (outer, inner)) in zip(self.groups[group], made):
            slots.append(s)
            writer = _BatchWriter(chunks, int(self.batch_rows[b]) // self.chunk_rows,
                                  int(self.batch_packed[b]), self.chunk_rows, self.dim,
                                  self.dtype)
            runs += [(writer, 0, outer), (writer, len(outer), inner)]
            if self.aggregate is not None:
                aggs.append(_Aggregate.of(self.aggregate, self.samples.batch(b), self.dataset,
                                          writer, len(outer) + len(inner), self.dim))
        return runs, aggs, np.concatenate(slots)

    def write_slots(self, group: int, slots: np.ndarray) -> None:
        """Write group ``group``'s ``slots`` (from :meth:`open`)."""
        raw = slots.astype("<i8", copy=False)
        if raw.size:
            fd = os.open(self._slots_file, os.O_WRONLY)
            try:
                pwrite_all(fd, [raw], int(self.slot_offsets[self.groups[group][0]]) * 8)
            finally:
                os.close(fd)

    def close(self, group: int) -> None:
        """Mark group ``group`` packed (its chunks and slots are written)."""
        (self.partial / "done" / group_name(group)).touch()


def pack_pass(dataset: Dataset, work: list[tuple[GroupPacker, int]]) -> None:
    """Pack each ``(packer, group)`` of ``work`` (groups of any stores of ``dataset``) in one
    ascending pass over the raw feature rows any of them needs."""
    finished = []
    with ExitStack() as stack:
        runs, aggs = [], []  # runs: (writer, first row, ascending ids -> positions in `needed`)
        slots_writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="pack-slots"))
        pool = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="pack-gather"))
        for packer, group in work:
            chunks = stack.enter_context(ChunkWriter(packer.chunk_bytes, packer.layout.place))
            group_runs, group_aggs, slots = packer.open(group, chunks)
            runs += group_runs
            aggs += group_aggs
            # the slots are written while the pass runs
            finished.append((packer, group, slots_writer.submit(packer.write_slots, group,
                                                                slots)))
        needed, positions = _sorted_unique([ids for _, _, ids in runs] +
                                           [a.src for a in aggs], dataset.num_nodes, pool.map)
        runs = [(writer, first, pos) for (writer, first, _), pos in zip(runs, positions)]
        for a, pos in zip(aggs, positions[len(runs):]):
            a.src = pos
        done = np.zeros(len(runs), np.int64)  # rows of each run written so far

        def scatter(part: range, i: int, j: int, rows: np.ndarray, wide: np.ndarray) -> None:
            for k in part:
                writer, first, pos = runs[k]
                end = int(np.searchsorted(pos, j))
                if end > done[k]:
                    writer.write(first + int(done[k]), rows,  # as intp: np.take casts no copy
                                 np.subtract(pos[done[k]:end], i, dtype=np.intp))
                    done[k] = end
            for a in aggs[part.start // 2:part.stop // 2]:
                a.add(i, j, wide)

        # two threads gather (NumPy and the kernel release the GIL), each for the runs (and
        # aggregates) of half the batches: a batch's two runs share chunk buffers
        half = len(runs) // 4 * 2
        parts = (range(half), range(half, len(runs)))
        for i, j, rows in dataset.iter_sorted(needed, min(p.span_bytes for p, _ in work)):
            # the kernel sums float32 or float64 rows: float16 (no Numba type) widened once
            wide = rows.astype(np.float32) if aggs and rows.dtype == np.float16 else rows
            for f in [pool.submit(scatter, part, i, j, rows, wide) for part in parts]:
                f.result()
        for a in aggs:
            a.finish()
        for _, _, written in finished:
            written.result()
    for packer, group, _ in finished:
        packer.close(group)


def _lay_out(partial: Path, attrs: dict, dataset: Dataset, tiers, rows_shape: tuple[int, int],
             chunk_rows: int, shard_bytes: int, batch_rows: np.ndarray, n_packed: np.ndarray,
             slot_offsets: np.ndarray, tiers_from: TierSource | None,
             rows_elsewhere: bool) -> None:
    """Create the partial packed store: every array, the packed rows' shards (unless
    ``rows_elsewhere``) and the slots laid out (written by the groups), the cache rows filled
    (linked from ``tiers_from`` when its tiers are used); ``done/`` last, once all is in
    place."""
    n_gpu, n_cpu, dim = len(tiers.gpu_nodes), len(tiers.cpu_nodes), rows_shape[1]
    feat_dtype = np.dtype(dataset.features.dtype)
    root = zarr.open_group(partial, mode="w")
    root.attrs.update(attrs)
    create_sharded(root, "rows", rows_shape, feat_dtype, chunk_rows, shard_bytes,
                   lay_out=not rows_elsewhere)
    write_small_array(root, "batch_rows", batch_rows)
    write_small_array(root, "batch_packed", n_packed)
    write_small_array(root, "slot_offsets", slot_offsets)
    write_small_array(root, "gpu_nodes", tiers.gpu_nodes)
    write_small_array(root, "cpu_nodes", tiers.cpu_nodes)
    # slots: written by the groups (pwrite, any process), sealed once all are done
    create_flat_array(root, "slots", (int(slot_offsets[-1]),), np.int64)
    if tiers_from is not None:
        link_array(tiers_from.path, partial, "cache_rows")
        (partial / "done").mkdir()
        return
    cache = create_flat_array(root, "cache_rows", (n_gpu + n_cpu, dim), feat_dtype)
    if n_gpu:
        cache[:n_gpu] = dataset.gather_sorted(tiers.gpu_nodes)
    if n_cpu:
        cache[n_gpu:] = dataset.gather_sorted(tiers.cpu_nodes)
    finish_flat_array(cache)
    del cache
    (partial / "done").mkdir()


class TierSource(NamedTuple):
    """Where a store being packed takes its tiers from: a packed store (complete, or laid
    out by this same call) whose ``cache_rows`` it links."""

    path: Path
    gpu_nodes: np.ndarray
    cpu_nodes: np.ndarray
    tiers_id: str

    @classmethod
    def of(cls, store: PackedStore) -> TierSource:
        return cls(store.path, store.gpu_nodes, store.cpu_nodes, store.tiers_id)


@dataclass
class _Packing:
    """One store being packed: its partial store laid out, the groups still to pack."""

    root: Path
    partial: Path
    attrs: dict
    groups: list[range]
    pending: list[int]
    n_packed: np.ndarray
    total_padded: int
    num_slots: int
    distinct: int
    row_bytes: int
    chunk_rows: int
    tiers: TierSource
    samples: SampleStore


def pack_dataset(dataset_path: str | Path, cfg: PackConfig = PackConfig(),
                 progress: bool = True, run_groups=None, root: str | Path | None = None,
                 tiers_from: PackedStore | None = None) -> PackedStore:
    """Assign tiers from the sample store's access counts and write ``ROOT/packed``.

    ``root``: the directory of the sample store and the packed store (default: the
    dataset's; see :mod:`disktrain.storage.roots`). ``tiers_from``: use that packed store's caches
    (same rows; its cache files are linked, not rewritten) instead of assigning tiers, so a
    loader keeps the caches it holds (``cfg``'s cache sizes are then ignored).
    Resumes an interrupted run with the same configuration (finished groups are kept).
    ``run_groups(dataset_path, cfg, groups, partial_dir)`` may replace the local loop over
    the pending packing groups (e.g. with Ray tasks running a :class:`GroupPacker`); one
    whose ``rows_elsewhere`` attribute is true writes the packed rows' shard files elsewhere
    (object storage), so they are not laid out here.
    """
    dataset = Dataset(dataset_path)
    root = Path(root) if root is not None else dataset.path
    tiers = TierSource.of(tiers_from) if tiers_from is not None else None
    job = _plan(dataset, cfg, root, tiers, getattr(run_groups, "rows_elsewhere", False))
    if isinstance(job, _Packing):
        with replacing(dataset.path, [root / STORE], "prepare: packing"):
            if run_groups is not None:
                run_groups(dataset.path, cfg, job.pending, job.partial)
            else:
                packer = GroupPacker(dataset.path, cfg, job.partial, samples=job.samples)
                for g in tqdm(job.pending, desc="pack", unit="group", disable=not progress):
                    packer(g)
            _finish(job)
    return PackedStore(dataset.path, root=root)


def pack_roots(dataset_path: str | Path, roots: list[str | Path], cfg: PackConfig = PackConfig(),
               progress: bool = True, tiers_from: PackedStore | None = None) -> list[PackedStore]:
    """:func:`pack_dataset` for the sample stores under several ``roots`` at once, in shared
    passes over the raw features (pass k packs group k of every store): preparing training
    and evaluation batches reads the raw feature file once, not once per store.

    ``roots[0]`` takes its tiers from ``tiers_from`` or assigns them from its access counts;
    every later root uses the same tiers (its cache rows linked to ``roots[0]``'s).
    """
    dataset = Dataset(dataset_path)
    if cfg.aggregate is not None and isinstance(dataset, TypedDataset):
        raise DataError(f"{dataset.path}: --aggregate-first-hop {cfg.aggregate} is for one "
                        "node type; a typed graph's relational models take raw rows "
                        "(prepare with --aggregate-first-hop off)")
    tiers = TierSource.of(tiers_from) if tiers_from is not None else None
    jobs = []
    for r in roots:
        job = _plan(dataset, cfg, Path(r), tiers)
        if tiers is None:
            tiers = (job.tiers if isinstance(job, _Packing)
                     else TierSource.of(PackedStore(dataset.path, root=r)))
        jobs.append(job)
    jobs = [j for j in jobs if isinstance(j, _Packing)]
    with replacing(dataset.path, [j.root / STORE for j in jobs], "prepare: packing"):
        packers = [GroupPacker(dataset.path, cfg, j.partial, samples=j.samples) for j in jobs]
        passes = [[(p, j.pending[k]) for p, j in zip(packers, jobs) if k < len(j.pending)]
                  for k in range(max((len(j.pending) for j in jobs), default=0))]
        for work in tqdm(passes, desc="pack", unit="pass", disable=not progress):
            pack_pass(dataset, work)
        for job in jobs:
            _finish(job)
    return [PackedStore(dataset.path, root=r) for r in roots]


def _plan(dataset: Dataset, cfg: PackConfig, root: Path, tiers_from: TierSource | None,
          rows_elsewhere: bool = False) -> _Packing | None:
    """Lay out ``root``'s partial packed store (or find it laid out by an interrupted run with
    the same configuration), its rows' shard files too unless ``rows_elsewhere``; None when
    ``root``'s packed store is complete already."""
    samples = SampleStore(dataset.path, root=root, nodes_only=cfg.aggregate is None)
    feat_dtype = np.dtype(dataset.features.dtype)
    dim = dataset.meta.feature_dim
    row_bytes = dim * feat_dtype.itemsize
    counts = np.asarray(samples.access_counts)
    if tiers_from is None:
        tiers = assign_tiers(counts, row_bytes, cfg.gpu_cache_bytes, cfg.cpu_cache_bytes)
    else:
        tiers = Tiers(tiers_from.gpu_nodes, tiers_from.cpu_nodes)
    n_gpu, n_cpu = len(tiers.gpu_nodes), len(tiers.cpu_nodes)
    codes = tiers.codes(dataset.num_nodes) if n_gpu + n_cpu else None  # None: nothing cached
    chunk_rows = max(1, rows_for_bytes(cfg.chunk_bytes, row_bytes))

    attrs = {
        "format_version": FORMAT_VERSION,
        "pack_config": asdict(cfg),
        "sample_config": samples.config.to_attrs(),
        "n_gpu": n_gpu, "n_cpu": n_cpu,
        "samples_id": samples.store_id, "dataset_id": dataset.dataset_id,
        "tiers_from": None if tiers_from is None else tiers_from.tiers_id,
    }
    old = _attrs(root / STORE)
    if old.get("complete") and all(old.get(k) == v for k, v in attrs.items()):
        return None
    n_slots = np.zeros(samples.num_batches, np.int64)  # the rows a batch reads
    n_packed = np.zeros(samples.num_batches, np.int64)
    for b in range(samples.num_batches):
        nodes = samples.input_nodes(b)
        if cfg.aggregate is not None:  # its targets' own rows, packed with their aggregates
            nodes = nodes[:samples.inner_count(b)]
        n_slots[b] = len(nodes)
        n_packed[b] = len(nodes) if codes is None else np.count_nonzero(codes[nodes] == NOT_CACHED)
    if cfg.aggregate is not None:
        n_packed += n_slots
    distinct = int(np.count_nonzero(counts) if codes is None else
                   np.count_nonzero(codes[counts > 0] == NOT_CACHED))
    padded = -(-n_packed // chunk_rows) * chunk_rows
    total_padded = int(padded.sum())
    if cfg.max_packed_bytes is not None and total_padded * row_bytes > cfg.max_packed_bytes:
        need = cache_rows_to_fit(counts, cfg.max_packed_bytes // max(1, row_bytes))
        raise DataError(
            f"--max-packed-bytes {cfg.max_packed_bytes}: packing would write "
            f"{total_padded * row_bytes} bytes ({int(n_packed.sum())} rows, duplication "
            f"{n_packed.sum() / max(1, distinct):.2f}x)"
            f"; caching the {need} hottest rows ({need * row_bytes} bytes of "
            "--gpu-cache-bytes plus --cpu-cache-bytes) would fit, before chunk padding")

    partial = root / f"{STORE}.partial"
    # done/ is made last: without it the partial store was cut off while being laid out
    if partial.exists() and (not (partial / "done").exists() or not all(
            _attrs(partial).get(k) == v for k, v in attrs.items())):
        shutil.rmtree(partial)
    slot_offsets = np.zeros(samples.num_batches + 1, np.int64)
    np.cumsum(n_slots, out=slot_offsets[1:])
    batch_rows = np.zeros(samples.num_batches + 1, np.int64)
    np.cumsum(padded, out=batch_rows[1:])
    groups = _groups(n_packed, chunk_rows * row_bytes, cfg.group_bytes,
                     _sum_bytes(cfg, n_slots, dim))
    pending = [g for g in range(len(groups)) if not (partial / "done" / group_name(g)).exists()]
    if not partial.exists():  # (a resumed run's files are laid out, their blocks reserved)
        need = packed_store_bytes(padded_rows=0 if rows_elsewhere else total_padded,
                                  row_bytes=row_bytes,
                                  chunk_rows=chunk_rows, shard_bytes=cfg.shard_bytes,
                                  num_slots=int(slot_offsets[-1]), num_cache_rows=n_gpu + n_cpu,
                                  num_batches=samples.num_batches)
        require_free(root, need, "prepare: packing")
        with disk_full_errors(partial):
            _lay_out(partial, {**attrs, "complete": False, "store_id": new_id()}, dataset,
                     tiers, (total_padded, dim), chunk_rows, cfg.shard_bytes, batch_rows,
                     n_packed, slot_offsets, tiers_from, rows_elsewhere)
    store_id = str(zarr.open_group(partial, mode="r").attrs["store_id"])
    return _Packing(root=root, partial=partial, attrs=attrs, groups=groups, pending=pending,
                    n_packed=n_packed, total_padded=total_padded,
                    num_slots=int(slot_offsets[-1]), distinct=distinct,
                    row_bytes=row_bytes, chunk_rows=chunk_rows, samples=samples,
                    tiers=tiers_from or TierSource(partial, tiers.gpu_nodes, tiers.cpu_nodes,
                                                   store_id))


def _attrs(path: Path) -> dict:
    """The attributes of the (possibly partial) packed store at ``path``; none when it is
    missing or its metadata is damaged (it is packed anew)."""
    try:
        return group_attrs(path, packed_ref(path))
    except DataError:
        return {}


def _finish(job: _Packing) -> None:
    """Seal ``job``'s partial store once every group is packed and rename it into place."""
    partial, groups = job.partial, job.groups
    missing = [g for g in range(len(groups)) if not (partial / "done" / group_name(g)).exists()]
    if missing:
        raise DataError(f"{partial}: packing groups {missing[:10]} were not written "
                        f"({len(missing)} of {len(groups)} missing)")
    seal_flat_array(partial, "slots")
    group = zarr.open_group(partial, mode="r+")
    group.attrs.update({
        "complete": True,
        "packed_rows": int(job.n_packed.sum()),
        "padded_rows": job.total_padded,
        "num_slots": job.num_slots,
        "distinct_packed_rows": job.distinct,
        "duplication_factor": float(job.n_packed.sum() / max(1, job.distinct)),
        "packed_bytes": job.total_padded * job.row_bytes,
        "chunk_rows": job.chunk_rows,
    })
    final = job.root / STORE
    replace_dir(partial, final)
    shutil.rmtree(final / "done")
