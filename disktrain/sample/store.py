"""The sample store: every pre-sampled batch's blocks, seeds and input node ids, on disk.

Layout (a Zarr v3 group at ``DATASET/samples``)::

    zarr.json                attrs: the SampleConfig, counts, complete, store_id, dataset_id
    access_counts            int32 (N,): how many batches read each node's feature row
    groups/g000000/          one group of batches (the unit of work), arrays of one chunk:
        nodes                int64  concatenated per-batch node lists (seeds first)
        node_offsets         int64  (B+1,)
        hop_counts           int64  (B, L+1) cumulative unique nodes per hop
        edge_src, edge_dst   int32  local ids, batch-major, hop-minor
        edge_offsets         int64  (B*L+1,)

The store is written under ``samples.partial`` and renamed when every group is done; a
group appears there only once fully written, so an interrupted run resumes from the last
finished group. Every chunk carries a crc32c: a group's arrays are checked when the group is
read into memory, ``access_counts`` when a :class:`SampleStore` first opens it. The store
records its ``store_id`` and the ``dataset_id`` it sampled; opening it against another
dataset is an error.
"""

from __future__ import annotations

import math
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import zarr
from tqdm.auto import tqdm

from disktrain.errors import DataError
from disktrain.kernels.sampling import SampledBatch, SampledBatches, count_rows, load_kernels
from disktrain.kernels.typed_sampling import TypedSampledBatch, TypedSampledBatches
from disktrain.sample.link import LinkBatches, LinkLabels
from disktrain.sample.memory import (
    featured_types,
    link_labels,
    sample_plan_batches,
    typed_input_nodes,
)
from disktrain.sample.plan import SampleConfig, SamplePlan
from disktrain.storage.atomic import atomic_dir, replace_dir
from disktrain.storage.chunkfile import StoreRef
from disktrain.storage.dataset import (
    Dataset,
    TypedDataset,
    create_flat_array,
    finish_flat_array,
    index_dtype,
    new_id,
    open_flat_array,
    read_small_array,
    write_small_array,
)
from disktrain.storage.diskspace import array_bytes, require_free
from disktrain.storage.io import BLOCK, disk_full_errors
from disktrain.storage.lock import replacing
from disktrain.storage.remote import fetch_missing, prefetch
from disktrain.storage.schema import ArraySpec, StoreSchema, group_attrs

STORE = "samples"
"""The store's directory name inside its root (see :mod:`disktrain.storage.roots`)."""
SAMPLES = StoreSchema(
    (ArraySpec("access_counts", ("num_nodes",), "int32", mapped=True),),
    groups=(*(ArraySpec(name, shape, dtype, batches="group") for name, shape, dtype in (
        ("nodes", ("nodes",), "int64"), ("node_offsets", ("batches+1",), "int64"),
        ("hop_counts", ("batches", "num_layers+1"), "int64"), ("edge_src", ("edges",), "int32"),
        ("edge_dst", ("edges",), "int32"), ("edge_offsets", ("blocks+1",), "int64"))),
        ArraySpec("type_counts", ("batches", "num_types", "num_layers+1"), "int64",
                  batches="group", present="num_types"),
        *(ArraySpec(name, shape, dtype, batches="group", present="link_labels")
          for name, shape, dtype in (
              ("label_src", ("pairs",), "int32"), ("label_dst", ("pairs",), "int32"),
              ("label_offsets", ("batches+1",), "int64"), ("label_pos", ("batches",), "int64")))))
"""The store's arrays; a group's (``groups/gNNNNNN/``, :func:`group_name`) are sized by its
``batches``, their ``nodes`` and ``edges``, ``num_layers`` and ``blocks`` (batches * layers,
times the relations of a typed graph). A typed graph's batches
(:class:`~disktrain.kernels.typed_sampling.TypedSampledBatch`) also hold ``type_counts`` (their
``hop_counts`` summed over the types); its store records ``num_types`` and the
``featured_types`` whose rows the batches read. Edge batches (link prediction) also hold
their supervision ``pairs`` (:class:`~disktrain.sample.link.LinkBatches`: ``label_src``,
``label_dst`` as positions among the batch's seeds, positives first); their store records
``link_labels``."""
GROUP_ARRAYS = tuple(a.name for a in SAMPLES.groups if a.present is True)
LABEL_ARRAYS = tuple(a.name for a in SAMPLES.groups if a.present == "link_labels")
NODE_ARRAYS = ("nodes", "node_offsets", "hop_counts")
"""What :meth:`SampleStore.input_nodes` and :meth:`SampleStore.inner_count` read."""
SAMPLE_ATTRS = ("complete", "config", "store_id", "dataset_id", "num_batches",
                "batches_per_epoch", "num_groups")
"""The attributes the readers of a complete store rely on."""


def group_name(group: int) -> str:
    return f"g{group:06d}"


def samples_ref(path: str | Path) -> StoreRef:
    """The sample store at ``path``, for error messages."""
    return StoreRef("sample store", Path(path),
                    f"remove {path} and rerun disktrain prepare")


def sample_group(dataset: Dataset, plan: SamplePlan, group: int, groups_dir: Path) -> None:
    """Sample the batches of ``group`` and write them atomically under ``groups_dir``.

    A pure function of (dataset, group, config): any process may run it.
    """
    merged = sample_plan_batches(dataset, plan, plan.group_batches(group))
    arrays = {name: getattr(merged, name) for name in GROUP_ARRAYS if name != "hop_counts"}
    if isinstance(merged, TypedSampledBatches):
        arrays["type_counts"] = merged.type_counts
        arrays["hop_counts"] = merged.type_counts.sum(axis=1)
    else:
        arrays["hop_counts"] = merged.hop_counts
    if (links := link_labels(plan, plan.group_batches(group))) is not None:
        arrays.update(links.arrays())
    with atomic_dir(groups_dir / group_name(group), overwrite=True) as tmp:
        g = zarr.open_group(tmp, mode="w")
        for name, values in arrays.items():
            write_small_array(g, name, values)


def sample_dataset(dataset_path: str | Path, cfg: SampleConfig, progress: bool = True,
                   run_groups=None, root: str | Path | None = None) -> SampleStore:
    """Pre-sample every batch of ``cfg.epochs`` epochs into ``ROOT/samples``.

    ``root``: the directory of the prepared stores (default: the dataset's; see
    :mod:`disktrain.storage.roots`). Resumes a previous interrupted run with the same config.
    ``run_groups(dataset_path, cfg, groups, groups_dir)`` may replace the local loop (e.g.
    with Ray tasks).
    """
    dataset = Dataset(dataset_path)
    root = Path(root) if root is not None else dataset.path
    final = root / STORE
    if not _made_from(final, cfg, dataset.dataset_id, complete=True):
        with replacing(dataset.path, [final], "prepare: sampling"):
            _sample(dataset, cfg, root, progress, run_groups)
    return SampleStore(dataset.path, root=root)


def _sample(dataset: Dataset, cfg: SampleConfig, root: Path, progress: bool,
            run_groups) -> None:
    """Sample ``cfg`` under ``ROOT/samples.partial`` (resuming it), then rename it into
    place."""
    if not isinstance(dataset, TypedDataset):  # the kernels load while the CSR is read
        threading.Thread(target=load_kernels, args=(index_dtype(dataset.num_nodes),),
                         name="disktrain-load-kernels", daemon=True).start()
    plan = SamplePlan.of(dataset, cfg)
    if plan.num_batches == 0:
        raise DataError(f"{dataset.path}: the {cfg.split} split is empty; nothing to sample")
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f"{STORE}.partial"
    if partial.exists() and not _made_from(partial, cfg, dataset.dataset_id):
        shutil.rmtree(partial)
    groups_dir = partial / "groups"
    pending = [g for g in range(plan.num_groups)
               if not (groups_dir / group_name(g) / "zarr.json").exists()]
    require_free(root, sample_store_bytes(dataset, plan, num_groups=len(pending)),
                 "prepare: sampling")
    if not partial.exists():
        with disk_full_errors(partial):
            group = zarr.open_group(partial, mode="w")
            group.attrs.update({"config": cfg.to_attrs(), "complete": False,
                                "store_id": new_id(), "dataset_id": dataset.dataset_id})
            group.create_group("groups")
    if run_groups is not None:
        run_groups(dataset.path, cfg, pending, groups_dir)
    else:
        for g in tqdm(pending, desc="sample", unit="group", disable=not progress):
            sample_group(dataset, plan, g, groups_dir)
    group = zarr.open_group(partial, mode="r+")
    with disk_full_errors(partial):
        counts = create_flat_array(group, "access_counts", (dataset.num_nodes,), np.int32,
                                   overwrite=True)
    typed = typed_attrs(dataset)
    reader = _GroupReader(partial, cfg.group_size, plan.num_batches,  # nor labels needed
                          featured=typed.get("featured_types"), nodes_only=True)
    for b in range(plan.num_batches):
        count_rows(counts, reader.input_nodes(b))
    num_input_nodes = int(counts.sum(dtype=np.int64))
    finish_flat_array(counts)
    del counts
    group.attrs.update({
        "complete": True,
        "num_batches": plan.num_batches,
        "batches_per_epoch": plan.batches_per_epoch,
        "num_groups": plan.num_groups,
        "num_nodes": dataset.num_nodes,
        "num_input_nodes": num_input_nodes,
        **typed,
        **({"link_labels": True} if cfg.task == "link" else {}),
    })
    replace_dir(partial, root / STORE)


def typed_attrs(dataset: Dataset) -> dict:
    """A typed dataset's store attributes: ``num_types``, ``num_relations`` and the
    ``featured_types`` (indices) whose rows its batches read; none for one type."""
    if not isinstance(dataset, TypedDataset):
        return {}
    return {"num_types": len(dataset.types), "num_relations": len(dataset.relations),
            "featured_types": featured_types(dataset)}


def _made_from(path: Path, cfg: SampleConfig, dataset_id: str, complete: bool = False) -> bool:
    """Whether the (possibly partial) store at ``path`` samples ``cfg`` from dataset
    ``dataset_id`` (and, with ``complete``, is complete)."""
    attrs = _read_attrs(path)
    return (attrs is not None and _read_config(attrs) == cfg
            and attrs.get("dataset_id") == dataset_id
            and (not complete or attrs.get("complete") is True))


def _read_attrs(path: Path) -> dict | None:
    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except (FileNotFoundError, ValueError, zarr.errors.BaseZarrError):
        return None


def _read_config(attrs: dict) -> SampleConfig | None:
    try:
        return SampleConfig(**attrs["config"])
    except (KeyError, TypeError, ValueError):
        return None


class _Loading:
    """A group being read by one thread while others wait for it."""

    def __init__(self):
        self.done = threading.Event()
        self.arrays: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.nbytes = 0


class _GroupReader:
    """The groups of a (possibly partial) store, read into memory and crc-checked.

    Groups are read whole (no file stays open) and the least recently used are dropped once
    they hold more than ``cache_bytes`` (the newest is always kept). Thread-safe: a group
    wanted by several threads at once is read once, by the first.
    """

    def __init__(self, root: Path, group_size: int, num_batches: int,
                 cache_bytes: int = 256 << 20, verify: bool = True,
                 featured: list[int] | None = None, links: bool = False,
                 nodes_only: bool = False):
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.root = Path(root)
        self.group_size = group_size
        self.num_batches = num_batches
        self.cache_bytes = cache_bytes
        self.verify = verify
        self.featured = featured
        """A typed graph's featured types (None: one type)."""
        self.names = GROUP_ARRAYS + (() if featured is None else ("type_counts",)) + \
            (LABEL_ARRAYS if links else ())
        if nodes_only and featured is None:  # (a typed batch's input nodes need its blocks)
            self.names = NODE_ARRAYS
        self.ref = samples_ref(self.root)
        self._groups: OrderedDict[int, _Loading] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _group(self, g: int) -> dict[str, np.ndarray]:
        """The arrays of group ``g``, from the cache or read (and checked) now."""
        with self._lock:
            entry = self._groups.get(g)
            mine = entry is None
            if mine:
                entry = self._groups[g] = _Loading()
            else:
                self._groups.move_to_end(g)
        if not mine:
            entry.done.wait()
            if entry.error is not None:
                raise entry.error
            return entry.arrays
        try:
            arrays = self._read(g)
        except BaseException as e:  # handed on to the threads waiting for this group
            with self._lock:
                del self._groups[g]
                entry.error = e
                entry.done.set()
            raise
        with self._lock:
            entry.arrays = arrays
            entry.nbytes = sum(a.nbytes for a in arrays.values())
            self._bytes += entry.nbytes
            entry.done.set()
            self._evict(keep=g)
        return arrays

    def _evict(self, keep: int) -> None:
        """Drop least recently used read groups while they hold more than ``cache_bytes``."""
        for g in list(self._groups):
            if self._bytes <= self.cache_bytes:
                break
            entry = self._groups[g]
            if g != keep and entry.done.is_set():
                del self._groups[g]
                self._bytes -= entry.nbytes

    def _read(self, g: int) -> dict[str, np.ndarray]:
        group = f"groups/{group_name(g)}"
        batches = range(g * self.group_size, min((g + 1) * self.group_size, self.num_batches))
        meta = self.root / group / "zarr.json"
        if not meta.exists() and not fetch_missing(meta):  # a staged store's: fetched now
            raise DataError(f"{self.root}: sample group {group} (batches {batches.start}.."
                            f"{batches.stop - 1}) is missing; {self.ref.rerun}")
        if batches.stop < self.num_batches:  # a staged store's next group: fetched meanwhile
            prefetch(self.root / "groups" / group_name(g + 1) / "zarr.json")
        return {name: read_small_array(self.root, f"{group}/{name}", self.ref, batches,
                                       self.verify)
                for name in self.names}

    def input_nodes(self, b: int) -> np.ndarray:
        if self.featured is not None:
            return typed_input_nodes(self.batch(b), self.featured)
        g, i = divmod(b, self.group_size)
        a = self._group(g)
        return a["nodes"][a["node_offsets"][i]:a["node_offsets"][i + 1]]

    def batch(self, b: int) -> SampledBatch | TypedSampledBatch:
        if self.names == NODE_ARRAYS:
            raise TypeError("a sample store opened with nodes_only reads no blocks")
        g, i = divmod(b, self.group_size)
        arrays = self._group(g)
        if self.featured is None:
            return SampledBatches(**{k: arrays[k] for k in GROUP_ARRAYS}).batch(i, index=b)
        return TypedSampledBatches(**{k: v for k, v in arrays.items() if k != "hop_counts"}
                                   ).batch(i, index=b)

    def link_labels(self, b: int) -> LinkLabels:
        g, i = divmod(b, self.group_size)
        arrays = self._group(g)
        return LinkBatches(**{k: arrays[k] for k in LABEL_ARRAYS}).batch(i)

    def inner_count(self, b: int) -> int:
        """Input nodes that are also dst nodes of the first block (the rest: last hop only;
        a typed batch's rows count as inner: they are gathered, not read in place)."""
        if self.featured is not None:
            return len(self.input_nodes(b))
        g, i = divmod(b, self.group_size)
        hops = self._group(g)["hop_counts"][i]
        return int(hops[len(hops) - 2])


def store_attrs(dataset_path: str | Path, root: str | Path | None = None) -> tuple[Path, dict]:
    """The path and attributes of the complete sample store under ``root`` (default: the
    dataset's), made from the dataset at ``dataset_path`` (else :class:`DataError`)."""
    path = Path(root if root is not None else dataset_path) / STORE
    if not (path / "zarr.json").exists():
        raise DataError(f"{path}: no sample store (run `disktrain prepare` first)")
    attrs = group_attrs(path, samples_ref(path), SAMPLE_ATTRS)
    if not attrs["complete"]:
        raise DataError(f"{path}: sample store is incomplete")
    dataset_id = Dataset(dataset_path).dataset_id
    if attrs.get("dataset_id") != dataset_id:
        raise DataError(f"sample store {path} was made from dataset {attrs.get('dataset_id')!r}, "
                        f"but dataset {Path(dataset_path)} is {dataset_id!r}; "
                        f"{samples_ref(path).rerun}")
    return path, attrs


@runtime_checkable
class SampleSource(Protocol):
    """What the loader reads of a sample store: :class:`SampleStore` on disk,
    :class:`~disktrain.sample.memory.MemorySamples` in memory."""

    config: SampleConfig
    store_id: str
    num_batches: int
    batches_per_epoch: int

    def batch(self, b: int) -> SampledBatch: ...
    def input_nodes(self, b: int) -> np.ndarray: ...
    def link_labels(self, b: int) -> LinkLabels | None: ...
    def inner_count(self, b: int) -> int: ...


class SampleStore:
    """A complete sample store, read-only, checked against the dataset it was made from."""

    def __init__(self, dataset_path: str | Path, cache_bytes: int = 256 << 20,
                 verify: bool = True, root: str | Path | None = None,
                 nodes_only: bool = False):
        """``root``: the directory holding the store (default: the dataset's);
        ``cache_bytes``: memory of the groups kept read (the last one read is always kept);
        ``verify=False`` skips the groups' crc32c checks (to measure their cost);
        ``nodes_only``: read only what :meth:`input_nodes` and :meth:`inner_count` need (no
        blocks: :meth:`batch` refused) where that is less (a homogeneous graph's batches)."""
        self.path, self.attrs = store_attrs(dataset_path, root)
        self.ref = samples_ref(self.path)
        self.store_id = str(self.attrs["store_id"])
        self.dataset_id = str(self.attrs["dataset_id"])
        self.config = SampleConfig(**self.attrs["config"])
        self.num_batches = int(self.attrs["num_batches"])
        self.batches_per_epoch = int(self.attrs["batches_per_epoch"])
        self.featured_types = self.attrs.get("featured_types")
        """A typed graph's node types (indices) whose rows the batches read; None: one type."""
        self.links = bool(self.attrs.get("link_labels"))
        """Edge batches (link prediction): :meth:`link_labels` gives their pairs."""
        self._reader = _GroupReader(self.path, self.config.group_size, self.num_batches,
                                    cache_bytes, verify, self.featured_types, self.links,
                                    nodes_only)
        self._access_counts: np.ndarray | None = None

    @property
    def access_counts(self) -> np.ndarray:
        """Per node, the batches that read its row (memory-mapped; crc-checked on first use)."""
        if self._access_counts is None:
            self._access_counts = open_flat_array(self.path, "access_counts", verify=True,
                                                  ref=self.ref)
        return self._access_counts

    def batch(self, b: int) -> SampledBatch:
        """Batch ``b`` (global index: epoch * batches_per_epoch + i)."""
        if not 0 <= b < self.num_batches:
            raise IndexError(f"batch {b} out of range [0, {self.num_batches})")
        return self._reader.batch(b)

    def input_nodes(self, b: int) -> np.ndarray:
        return self._reader.input_nodes(b)

    def link_labels(self, b: int) -> LinkLabels | None:
        """Edge batch ``b``'s supervision pairs (None: node batches)."""
        return self._reader.link_labels(b) if self.links else None

    def inner_count(self, b: int) -> int:
        """Input nodes of batch ``b`` that later layers also read (the last hop's come after)."""
        return self._reader.inner_count(b)

    def info(self) -> dict:
        return {k: self.attrs[k] for k in ("config", "num_batches", "batches_per_epoch",
                                             "num_groups", "store_id", "dataset_id")}


# Disk-space estimate: an upper bound of what sample_dataset writes.

_MARGIN = 1.1
"""Headroom on sizes measured from a sample of the work (the probe batches)."""


def batch_bound(num_seeds: int, fanouts: Sequence[int], num_nodes: int,
                num_edges: int) -> tuple[int, int]:
    """The most input nodes and edges a batch of ``num_seeds`` seeds can have.

    Every node known at a hop samples up to ``fanout`` of its in-neighbors (all with -1);
    the nodes of a batch are distinct, so their rows hold at most ``num_edges`` edges.
    """
    nodes, edges = num_seeds, 0
    for fanout in fanouts:
        hop = num_edges if fanout == -1 else min(nodes * fanout, num_edges)
        edges += hop
        nodes = min(num_nodes, nodes + hop)
    return nodes, edges


def _batch_bytes(nodes: int, edges: int, num_layers: int) -> int:
    """Sample-store bytes of one batch: its group arrays, as if it were alone in its group."""
    dims = {"nodes": nodes, "edges": edges, "batches": 1, "num_layers": num_layers,
            "blocks": num_layers}
    return sum(math.prod(a.shape_in(dims)) * np.dtype(a.dtype).itemsize for a in SAMPLES.groups
               if a.present is True)


def sample_store_bytes(dataset, plan, num_groups: int | None = None, probes: int = 8) -> int:
    """What ``sample_dataset`` writes at most for ``plan`` (a ``SamplePlan``) over
    ``dataset`` (a ``Dataset``): ``num_groups`` groups of batches (default: all of them) and
    the access counts.

    A batch's size is measured on ``probes`` batches of the first epoch, sampled, plus 10%,
    and capped by what the fanouts allow (:func:`batch_bound`).
    """
    cfg, num_layers = plan.config, len(plan.config.fanouts)
    num_edges = int(dataset.meta.num_edges)
    picks = np.unique(np.linspace(0, plan.batches_per_epoch - 1, probes).round().astype(int))
    got = sample_plan_batches(dataset, plan, picks.tolist())
    hops = got.type_counts.sum(1) if hasattr(got, "type_counts") else got.hop_counts
    scale = plan.max_seeds / hops[:, 0] * _MARGIN  # measured sizes, per full batch
    blocks = (len(got.edge_offsets) - 1) // len(hops)
    measured = (math.ceil((np.diff(got.node_offsets) * scale).max()),
                math.ceil((np.diff(got.edge_offsets[::blocks]) * scale).max()))

    pairs = (cfg.num_negatives + 1) * 8 + 16 if cfg.task == "link" else 0  # per positive

    def batch(num_items: int) -> int:
        seeds = round(num_items * plan.max_seeds / cfg.batch_size)
        most = batch_bound(seeds, cfg.fanouts, dataset.num_nodes, num_edges)
        return _batch_bytes(min(most[0], measured[0]), min(most[1], measured[1]),
                            num_layers) + 8 * hops.shape[1] * blocks + pairs * num_items
        # + a typed batch's type_counts and its relations' edge offsets; an edge batch's pairs

    full, last = batch(cfg.batch_size), plan.num_items % cfg.batch_size
    if num_groups is None or num_groups >= plan.num_groups:
        num_groups = plan.num_groups  # every epoch's last batch may be smaller
        data = plan.num_batches * full - (cfg.epochs * (full - batch(last)) if last else 0)
    else:
        data = min(plan.num_batches, num_groups * cfg.group_size) * full
    # Per group: its arrays (block rounding, metadata), the row directory of the 2-D
    # hop_counts, the group's metadata and directory.
    arrays = len(GROUP_ARRAYS) + hasattr(got, "type_counts") + \
        (len(LABEL_ARRAYS) if cfg.task == "link" else 0)
    per_group = arrays * array_bytes(0) + 3 * BLOCK
    return (data + num_groups * per_group + SAMPLES.disk_bytes({"num_nodes": dataset.num_nodes})
            + BLOCK)  # the groups/ directory
