"""The sample store: every pre-sampled batch's blocks, seeds and input node ids, on disk.

Layout (a Zarr v3 group at ``DATASET/samples``)::

    zarr.json                attrs: the SampleConfig, counts, complete
    access_counts            int32 (N,): how many batches read each node's feature row
    groups/g000000/          one group of batches (the unit of work), arrays of one chunk:
        nodes                int64  concatenated per-batch node lists (seeds first)
        node_offsets         int64  (B+1,)
        hop_counts           int64  (B, L+1) cumulative unique nodes per hop
        edge_src, edge_dst   int32  local ids, batch-major, hop-minor
        edge_offsets         int64  (B*L+1,)

The store is written under ``samples.partial`` and renamed when every group is done; a
group appears there only once fully written, so an interrupted run resumes from the last
finished group.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from disktrain.atomic import atomic_dir, replace_dir
from disktrain.dataset import Dataset, create_flat_array, open_flat_array, write_small_array
from disktrain.errors import DataError
from disktrain.kernels.sampling import sample_batches
from disktrain.sample.plan import SampleConfig, SamplePlan, sampling_key

STORE = "samples"
_ARRAYS = ("nodes", "node_offsets", "hop_counts", "edge_src", "edge_dst", "edge_offsets")


def group_name(group: int) -> str:
    return f"g{group:06d}"


def sample_group(dataset: Dataset, plan: SamplePlan, group: int, groups_dir: Path) -> None:
    """Sample the batches of ``group`` and write them atomically under ``groups_dir``.

    A pure function of (dataset, group, config): any process may run it.
    """
    batches = plan.group_batches(group)
    parts = []
    for epoch in sorted({plan.batch_epoch(b) for b in batches}):
        order = plan.epoch_order(epoch)
        seeds = [plan.batch_seeds(b, order) for b in batches if plan.batch_epoch(b) == epoch]
        offsets = np.zeros(len(seeds) + 1, np.int64)
        np.cumsum([len(s) for s in seeds], out=offsets[1:])
        parts.append(sample_batches(dataset.indptr, dataset.indices,
                                    np.concatenate(seeds).astype(np.int64), offsets,
                                    np.asarray(plan.config.fanouts, np.int64),
                                    sampling_key(plan.config.seed, epoch)))
    merged = _concat(parts)
    with atomic_dir(groups_dir / group_name(group), overwrite=True) as tmp:
        g = zarr.open_group(tmp, mode="w")
        for name in _ARRAYS:
            write_small_array(g, name, merged[name])


def _concat(parts) -> dict[str, np.ndarray]:
    """Join the per-epoch kernel outputs of one group into one set of ragged arrays."""
    if len(parts) == 1:
        p = parts[0]
        return {name: getattr(p, name) for name in _ARRAYS}
    out = {}
    for name in ("nodes", "edge_src", "edge_dst"):
        out[name] = np.concatenate([getattr(p, name) for p in parts])
    out["hop_counts"] = np.concatenate([p.hop_counts for p in parts])
    for name, values in (("node_offsets", "nodes"), ("edge_offsets", "edge_src")):
        sizes = np.concatenate([np.diff(getattr(p, name)) for p in parts])
        offs = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=offs[1:])
        out[name] = offs
    return out


def sample_dataset(dataset_path: str | Path, cfg: SampleConfig, progress: bool = True,
                   run_groups=None) -> SampleStore:
    """Pre-sample every batch of ``cfg.epochs`` epochs into ``DATASET/samples``.

    Resumes a previous interrupted run with the same config. ``run_groups(dataset_path,
    cfg, groups, groups_dir)`` may replace the local loop (e.g. with Ray tasks).
    """
    dataset = Dataset(dataset_path)
    final = dataset.path / STORE
    if (final / "zarr.json").exists():
        store = SampleStore(dataset.path)
        if store.config == cfg:
            return store
    plan = SamplePlan(cfg, dataset.split("train"))
    if plan.num_batches == 0:
        raise DataError(f"{dataset.path}: the train split is empty; nothing to sample")
    partial = dataset.path / f"{STORE}.partial"
    if partial.exists() and _read_config(partial) != cfg:
        shutil.rmtree(partial)
    if not partial.exists():
        root = zarr.open_group(partial, mode="w")
        root.attrs.update({"config": cfg.to_attrs(), "complete": False})
        root.create_group("groups")
    groups_dir = partial / "groups"
    pending = [g for g in range(plan.num_groups)
               if not (groups_dir / group_name(g) / "zarr.json").exists()]
    if run_groups is not None:
        run_groups(dataset.path, cfg, pending, groups_dir)
    else:
        for g in tqdm(pending, desc="sample", unit="group", disable=not progress):
            sample_group(dataset, plan, g, groups_dir)
    root = zarr.open_group(partial, mode="r+")
    counts = create_flat_array(root, "access_counts", (dataset.num_nodes,), np.int32,
                               overwrite=True)
    reader = _GroupReader(partial, cfg.group_size)
    for b in range(plan.num_batches):
        counts[reader.input_nodes(b)] += 1
    counts.flush()
    del counts
    root.attrs.update({
        "complete": True,
        "num_batches": plan.num_batches,
        "batches_per_epoch": plan.batches_per_epoch,
        "num_groups": plan.num_groups,
        "num_nodes": dataset.num_nodes,
    })
    replace_dir(partial, final)
    return SampleStore(dataset.path)


def _read_config(path: Path) -> SampleConfig | None:
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
        return SampleConfig(**attrs["config"])
    except (FileNotFoundError, KeyError, TypeError, ValueError, zarr.errors.BaseZarrError):
        return None


@dataclass(frozen=True)
class SampledBatch:
    """One pre-sampled batch in local ids; blocks in model order (input layer first)."""

    index: int
    input_nodes: np.ndarray
    """Global ids of the feature rows the batch reads; seeds first."""
    num_seeds: int
    blocks: list[tuple[np.ndarray, np.ndarray, int, int]]
    """Per layer (edge_src, edge_dst, num_src, num_dst), farthest hop first."""

    @property
    def seeds(self) -> np.ndarray:
        return self.input_nodes[:self.num_seeds]


class _GroupReader:
    """Memory-mapped access to the groups of a (possibly partial) store."""

    MAX_OPEN = 1024

    def __init__(self, root: Path, group_size: int):
        self.root = Path(root)
        self.group_size = group_size
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def _group(self, g: int) -> dict[str, np.ndarray]:
        """The memory-mapped arrays of group ``g`` (least recently used groups closed)."""
        if g in self._open:
            self._open.move_to_end(g)
        else:
            if len(self._open) >= self.MAX_OPEN:
                self._open.popitem(last=False)
            path = self.root / "groups" / group_name(g)
            self._open[g] = {name: open_flat_array(path, name) for name in _ARRAYS}
        return self._open[g]

    def input_nodes(self, b: int) -> np.ndarray:
        g, i = divmod(b, self.group_size)
        a = self._group(g)
        return a["nodes"][a["node_offsets"][i]:a["node_offsets"][i + 1]]

    def batch(self, b: int) -> SampledBatch:
        g, i = divmod(b, self.group_size)
        return unpack_batch(self._group(g), i, b)

    def inner_count(self, b: int) -> int:
        """Input nodes that are also dst nodes of the first block (the rest: last hop only)."""
        g, i = divmod(b, self.group_size)
        hops = self._group(g)["hop_counts"][i]
        return int(hops[len(hops) - 2])


def unpack_batch(arrays, i: int, index: int) -> SampledBatch:
    """Batch ``i`` of a set of ragged sampler arrays (a group, or a kernel's output)."""
    hops = arrays["hop_counts"][i]
    num_layers = len(hops) - 1
    nodes = arrays["nodes"][arrays["node_offsets"][i]:arrays["node_offsets"][i + 1]]
    offsets = arrays["edge_offsets"]
    blocks = []
    for layer in reversed(range(num_layers)):
        e0, e1 = offsets[i * num_layers + layer], offsets[i * num_layers + layer + 1]
        blocks.append((arrays["edge_src"][e0:e1], arrays["edge_dst"][e0:e1],
                       int(hops[layer + 1]), int(hops[layer])))
    return SampledBatch(index, nodes, int(hops[0]), blocks)


class SampleStore:
    """A complete sample store, read-only."""

    def __init__(self, dataset_path: str | Path):
        self.path = Path(dataset_path) / STORE
        if not (self.path / "zarr.json").exists():
            raise DataError(f"{self.path}: no sample store (run `disktrain prepare` first)")
        self.attrs = dict(zarr.open_group(self.path, mode="r").attrs)
        if not self.attrs.get("complete"):
            raise DataError(f"{self.path}: sample store is incomplete")
        self.config = SampleConfig(**self.attrs["config"])
        self.num_batches = int(self.attrs["num_batches"])
        self.batches_per_epoch = int(self.attrs["batches_per_epoch"])
        self._reader = _GroupReader(self.path, self.config.group_size)

    @property
    def access_counts(self) -> np.ndarray:
        return open_flat_array(self.path, "access_counts")

    def batch(self, b: int) -> SampledBatch:
        """Batch ``b`` (global index: epoch * batches_per_epoch + i)."""
        if not 0 <= b < self.num_batches:
            raise IndexError(f"batch {b} out of range [0, {self.num_batches})")
        return self._reader.batch(b)

    def input_nodes(self, b: int) -> np.ndarray:
        return self._reader.input_nodes(b)

    def inner_count(self, b: int) -> int:
        """Input nodes of batch ``b`` that later layers also read (the last hop's come after)."""
        return self._reader.inner_count(b)

    def info(self) -> dict:
        return {k: self.attrs[k] for k in ("config", "num_batches", "batches_per_epoch",
                                             "num_groups")}
