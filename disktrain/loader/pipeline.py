"""The staged loader: read packed ranges -> assemble features and blocks -> copy -> compute.

The stages are small objects (:class:`ReadStage`, :class:`AssembleStage`,
:class:`CopyStage`), each a call taking and returning one
:class:`~disktrain.loader.batch.MiniBatch` whose fields it fills. They run in their own threads,
joined by bounded queues (depth ``prefetch``), so an epoch costs about the slowest stage
rather than the sum. Reads release the GIL (``os.preadv``),
assembly runs Numba kernels without it. An exception in any stage is re-raised by the
consumer; closing the iterator (``with contextlib.closing(loader(ids)) as batches``, so that
Ctrl-C in the consumer closes it too) stops every thread.

The public face of this pipeline is :class:`disktrain.loader.loader.Loader` (``disktrain.Loader``),
which ``disktrain train`` uses too.
"""

from __future__ import annotations

import mmap
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numba
import numpy as np
import torch

from disktrain.errors import DataError
from disktrain.kernels.typed_sampling import TypedSampledBatch
from disktrain.loader.batch import CopyEvent, MiniBatch
from disktrain.loader.block import Block, HeteroBlock
from disktrain.loader.config import LoaderConfig
from disktrain.loader.device import DeviceAssembler
from disktrain.pack.slots import RowLayout
from disktrain.pack.store import PackedSource, PackedStore
from disktrain.sample.memory import typed_input_nodes
from disktrain.sample.store import SampleSource, SampleStore
from disktrain.storage.dataset import Dataset, TypedDataset
from disktrain.storage.io import BLOCK
from disktrain.storage.lock import DatasetLock, read_lock


class _Stop(Exception):
    """Raised inside stage threads when the consumer has gone away."""


@dataclass
class _Failure:
    error: BaseException


class FeatureCaches:
    """The GPU tier (on the device; a CPU tensor without a GPU) and the CPU tier."""

    def __init__(self, packed: PackedSource, device: torch.device):
        self.tiers_id = packed.tiers_id
        """Packed stores with this ``tiers_id`` are served by these caches."""
        rows = packed.cache_rows()
        self.gpu = DeviceAssembler(np.asarray(rows)[:packed.n_gpu], device)
        self.cpu = copy_out(rows, packed.n_gpu, len(rows))
        if device.type == "cuda":
            self.cpu = torch.from_numpy(self.cpu).pin_memory().numpy()


class ReadStage:
    """Stage 1: read a batch's packed rows into its feature buffer.

    The packed range is read (crc-checked) straight into the buffer at the batch's first
    last-hop-only row: those rows (most of a batch) are then in place, no copy needed (see
    :mod:`disktrain.pack.slots`). A buffer from the pool is first slid so that this row starts
    on a 4 KiB boundary: the range then comes from the disk past the page cache
    (``O_DIRECT``).
    """

    def __init__(self, samples: SampleSource, packed: PackedSource):
        self.samples, self.packed = samples, packed

    def __call__(self, batch: MiniBatch) -> MiniBatch:
        t = time.perf_counter()
        b, buf = batch.index, batch.buffer
        inner = self.samples.inner_count(b)
        _BufferPool.align(buf, inner)  # a pool's buffer: the packed rows start page-aligned
        self.packed.read_packed(b, buf.numpy()[inner:inner + _padded_rows(self.packed, b)])
        batch.seconds["read"] = time.perf_counter() - t
        return batch


class AssembleStage:
    """Stage 2: complete the feature matrix from the CPU cache and the inner packed rows, and
    build blocks and labels, as the batch's :class:`~disktrain.pack.slots.RowLayout` says.

    ``labels``: every node's label (None: none); ``degrees``: the dataset whose in-degrees
    every block carries (None: no degrees).
    """

    def __init__(self, samples: SampleSource, packed: PackedSource, cpu_cache: np.ndarray,
                 labels: torch.Tensor | None, degrees: Dataset | None,
                 typed: TypedDataset | None = None):
        self.samples, self.packed, self.cpu_cache = samples, packed, cpu_cache
        self.labels, self.degrees, self.typed = labels, degrees, typed

    def __call__(self, batch: MiniBatch) -> MiniBatch:
        t = time.perf_counter()
        b = batch.index
        if self.typed is not None:
            self._typed(batch, self.samples.batch(b))
            batch.seconds["assemble"] = time.perf_counter() - t
            return batch
        sampled, inner = self.samples.batch(b), self.samples.inner_count(b)
        # with the first hop aggregated at pack time (x_agg), the batch reads the rows of the
        # first layer's targets only and its model runs the blocks above that layer
        aggregated = self.packed.aggregate is not None
        nodes = sampled.input_nodes[:inner] if aggregated else sampled.input_nodes
        blocks = sampled.blocks[aggregated:]
        layout = RowLayout.of(nodes, inner, np.asarray(self.packed.slots(b)), self.packed.n_cpu)
        layout.gather(batch.buffer.numpy(), self.cpu_cache)
        degree = (None if self.degrees is None
                  else layout.place(self.degrees.in_degrees(nodes)))
        batch.blocks = [Block.from_numpy(layout.relabel(src) if layer == 0 and not aggregated
                                         else src, dst, num_src, num_dst, degree)
                        for layer, (src, dst, num_src, num_dst) in enumerate(blocks)]
        if aggregated:  # the targets' aggregates follow their own packed rows
            start = inner + layout.num_packed
            batch.x_agg = batch.buffer[start:start + inner]
        batch.labels = (None if self.labels is None
                        else self.labels[torch.from_numpy(sampled.seeds.astype(np.int64))])
        if (links := self.samples.link_labels(b)) is not None:
            batch.edge_label_index = torch.from_numpy(
                np.stack((links.label_src, links.label_dst)).astype(np.int64))
            batch.edge_label = torch.from_numpy(links.edge_label)
        batch.x, batch.input_nodes = batch.buffer[:layout.num_rows], layout.input_nodes
        batch.layout = layout
        batch.seconds["assemble"] = time.perf_counter() - t
        return batch

    def _typed(self, batch: MiniBatch, sampled: TypedSampledBatch) -> None:
        """A typed batch: its featured types' rows, type after type, in ``x`` (every row
        gathered: ``inner`` is all of them); a :class:`HeteroBlock` per layer; each type's
        nodes as ids local to the type; the labels of the target type's seeds."""
        ds = self.typed
        featured = [i for i, t in enumerate(ds.types) if t.feature_dim]
        nodes = typed_input_nodes(sampled, featured)
        layout = RowLayout.of(nodes, len(nodes), np.asarray(self.packed.slots(batch.index)),
                              self.packed.n_cpu)
        layout.gather(batch.buffer.numpy(), self.cpu_cache)
        counts, starts = sampled.type_counts[:, -1], np.cumsum(
            [0, *(sampled.type_counts[i, -1] for i in featured)])
        batch.type_rows = {ds.types[i].name: (int(starts[k]), int(starts[k + 1]),
                                              ds.types[i].feature_dim)
                           for k, i in enumerate(featured)}
        batch.n_id_dict = {t.name: torch.from_numpy(sampled.type_nodes(i) - ds.type_offsets[i])
                           for i, t in enumerate(ds.types) if counts[i]}
        names = ds.type_names
        batch.blocks = [HeteroBlock.from_numpy(
            {rel: (src.astype(np.int64), dst.astype(np.int64))
             for rel, (src, dst) in zip(ds.relations, edges, strict=True) if len(src)},
            {n: int(c) for n, c in zip(names, num_src, strict=True) if c},
            {n: int(c) for n, c in zip(names, num_dst, strict=True) if c})
            for edges, num_src, num_dst in sampled.layers()]
        seeds = sampled.type_nodes(0)[:sampled.type_counts[0, 0]]  # the target type's
        batch.labels = None if self.labels is None else self.labels[torch.from_numpy(seeds)]
        batch.x, batch.input_nodes = batch.buffer[:layout.num_rows], layout.input_nodes
        batch.layout = layout


class CopyStage:
    """Stage 3: copy a batch to the device (non-blocking from pinned memory, on ``stream``
    when given), fill the rows the GPU cache serves there, and record a ``new_event()``
    after the copy (none without ``new_event``)."""

    def __init__(self, gpu: DeviceAssembler, device: torch.device,
                 stream: torch.cuda.Stream | None = None,
                 new_event: Callable[[], CopyEvent] | None = None):
        self.gpu, self.device, self.stream, self.new_event = gpu, device, stream, new_event
        self.non_blocking = device.type == "cuda"

    def __call__(self, batch: MiniBatch) -> MiniBatch:
        t = time.perf_counter()
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            nb = self.non_blocking
            batch.x = self.gpu.assemble(batch.x, batch.layout.gpu_pos, batch.layout.gpu_slot)
            batch.blocks = [blk.to(self.device, non_blocking=nb) for blk in batch.blocks]
            if batch.n_id_dict is not None:
                batch.n_id_dict = {t: ids.to(self.device, non_blocking=nb)
                                   for t, ids in batch.n_id_dict.items()}
            if batch.x_agg is not None:
                batch.x_agg = batch.x_agg.to(self.device, non_blocking=nb)
            for name in ("labels", "edge_label_index", "edge_label"):
                if (value := getattr(batch, name)) is not None:
                    setattr(batch, name, value.to(self.device, non_blocking=nb))
        if self.new_event is not None:
            batch.copied = self.new_event()
            batch.copied.record(self.stream)  # after the copy of the buffer, on that stream
        batch.seconds["copy"] = time.perf_counter() - t
        return batch


def copy_out(rows: np.ndarray, start: int, stop: int, step_bytes: int = 64 << 20) -> np.ndarray:
    """``rows[start:stop]`` copied out of the memory map ``rows`` (an ``np.memmap``) slice by
    slice, each slice's mapped pages dropped from this process once copied (the page cache
    keeps them): mapped pages count in the resident set, so a plain copy of a 2 GB cache tier
    would peak at twice that."""
    out = np.empty((stop - start, *rows.shape[1:]), rows.dtype)
    mm = getattr(rows, "_mmap", None)
    row_bytes = int(np.prod(rows.shape[1:], dtype=np.int64)) * rows.dtype.itemsize
    step = max(1, step_bytes // max(1, row_bytes))
    base = (rows.__array_interface__["data"][0]
            - np.frombuffer(mm, np.uint8).__array_interface__["data"][0]) if mm else 0
    for a in range(start, stop, step):
        b = min(a + step, stop)
        out[a - start:b - start] = rows[a:b]
        if mm is not None:
            lo = (base + a * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, lo, base + b * row_bytes - lo)
    return out


class PackedLoader:
    """Iterate pre-sampled batches of a prepared dataset through the staged pipeline.

    ``root``: the directory of the sample and packed stores read (default: the dataset's
    training batches; see :mod:`disktrain.storage.roots`); ``stores``: the sample and packed
    stores to read instead (e.g. :class:`~disktrain.sample.memory.MemorySamples` and
    :class:`~disktrain.pack.memory.MemoryPacked`), the dataset giving labels and degrees.
    Stores on disk are read under the dataset's lock, shared (:mod:`disktrain.storage.lock`),
    until :meth:`close`: a ``prepare`` meanwhile is refused, and one under way refuses this.
    """

    def __init__(self, dataset_path: str | Path, cfg: LoaderConfig | None = None,
                 root: str | Path | None = None, *,
                 stores: tuple[SampleSource, PackedSource] | None = None):
        self.cfg = cfg = cfg or LoaderConfig()
        self.device = torch.device(cfg.device)
        self.dataset = Dataset(dataset_path)
        self.labels = (torch.from_numpy(np.asarray(self.dataset.labels, np.int64))
                       if self.dataset.has("labels") else None)
        """Every node's label, on the host (None: the dataset has none)."""
        self.lock = DatasetLock() if stores else read_lock(self.dataset.path, "Loader")
        self._open(*(stores or self._disk_stores(root)), None)

    def _disk_stores(self, root: str | Path | None) -> tuple[SampleStore, PackedStore]:
        path, verify = self.dataset.path, self.cfg.verify
        return (SampleStore(path, verify=verify, root=root),
                PackedStore(path, verify=verify, root=root))

    def _open(self, samples: SampleSource, packed: PackedSource,
              caches: FeatureCaches | None) -> None:
        """Read ``samples`` and ``packed`` through the stages; reuse ``caches`` if they serve
        them."""
        rows = (packed.feature_dim, np.dtype(packed.dtype))
        dataset = (self.dataset.meta.feature_dim, np.dtype(self.dataset.features.dtype))
        if rows != dataset:
            raise DataError(f"packed store: rows of {rows[0]} {rows[1]} features, but dataset "
                            f"{self.dataset.path} has {dataset[0]} {dataset[1]} features")
        self.samples, self.packed = samples, packed
        self.caches = (caches if caches is not None and caches.tiers_id == self.packed.tiers_id
                       else FeatureCaches(self.packed, self.device))
        self.read = ReadStage(self.samples, self.packed)
        self.assemble = AssembleStage(
            self.samples, self.packed, self.caches.cpu, self.labels,
            self.dataset if self.cfg.degrees else None,
            self.dataset if isinstance(self.dataset, TypedDataset) else None)

    def sibling(self, root: str | Path) -> PackedLoader:
        """A loader of the stores at ``root`` (same dataset and config) sharing this one's
        dataset, labels and, when the stores have the same cache rows, its caches."""
        other = object.__new__(PackedLoader)
        other.cfg, other.device, other.dataset = self.cfg, self.device, self.dataset
        other.labels = self.labels
        other.lock = read_lock(self.dataset.path, "Loader")
        other._open(*other._disk_stores(root), self.caches)
        return other

    def close(self) -> None:
        """Release the dataset's lock (the loader must not be iterated after)."""
        self.lock.release()

    @property
    def num_batches(self) -> int:
        return self.samples.num_batches

    def __call__(self, batch_ids: Sequence[int]) -> Iterator[MiniBatch]:
        """Yield the batches ``batch_ids`` in order, each fully on the device.

        Host buffers are reused: a batch's tensors stay valid until the next batch is
        requested (on a CPU device ``x`` is that buffer); clone what must outlive it.
        """
        return _Run(self, list(batch_ids)).iterate()

    def buffer_rows(self, b: int) -> int:
        """Rows of the feature buffer batch ``b`` is read and assembled in."""
        inner = self.samples.inner_count(b)
        rows = inner if self.packed.aggregate is not None else len(self.samples.input_nodes(b))
        return RowLayout.buffer_rows(rows, inner, _padded_rows(self.packed, b))


def _padded_rows(packed: PackedSource, b: int) -> int:
    """Rows of batch ``b``'s packed range, chunk padding included."""
    return int(packed.batch_rows[b + 1] - packed.batch_rows[b])


def _consume_on_current_stream(batch: MiniBatch, event: torch.cuda.Event) -> None:
    """Order the compute stream after the copy stream, and tell the caching allocator the
    batch's tensors (made on the copy stream) are used on the compute stream."""
    stream = torch.cuda.current_stream()
    stream.wait_event(event)
    blocks = (u for b in batch.blocks for u in (
        (b.src, b.dst, b.src_degree) if isinstance(b, Block) else
        (t for edges in b.edges.values() for t in edges)) if u is not None)
    extra = [u for u in (batch.labels, batch.x_agg, batch.edge_label_index, batch.edge_label,
                         *(batch.n_id_dict or {}).values()) if u is not None]
    for t in (batch.x, *blocks, *extra):
        t.record_stream(stream)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype


class _BufferPool:
    """Reusable (pinned) feature buffers: fresh large allocations cost page faults.

    A buffer comes back with the event recorded after its non-blocking host-to-device copy
    (None on a CPU): it is handed out again only once that copy has completed, so a read
    never overwrites rows still being copied.

    Each buffer views an allocation :data:`BLOCK` bytes larger than itself, so
    :meth:`align` can slide it to put any row on a 4 KiB boundary: the packed rows of a batch
    then go from the disk straight into the buffer (``O_DIRECT``, see
    :meth:`PackedStore.read_packed`).
    """

    _slack: ClassVar[weakref.WeakValueDictionary] = weakref.WeakValueDictionary()
    """The buffers :meth:`align` may slide (every pool's), by id."""

    def __init__(self, dim: int, dtype: np.dtype, pin: bool,
                 budget: int = LoaderConfig.buffer_bytes, stop: threading.Event | None = None):
        self.dim, self.dtype, self.pin = dim, _torch_dtype(dtype), pin
        self.budget, self.stop = budget, stop or threading.Event()
        self.free: list[tuple[torch.Tensor, CopyEvent | None]] = []
        self.held = 0
        """Bytes of every buffer of the pool, free or handed out."""
        self.cond = threading.Condition()

    def take(self, rows: int) -> torch.Tensor:
        """A buffer of at least ``rows`` rows: a free one whose copy has completed, else the
        one given back first once its copy completes (no more buffers than before), else a
        new one (starting on a 4 KiB boundary) once the pool's buffers leave room for it
        under ``budget`` (free ones too small are dropped; one buffer is always allowed).
        :class:`_Stop` if ``stop`` is set while waiting."""
        new = self._bytes(rows + rows // 4)
        with self.cond:
            while True:
                fits = [i for i, (free, _) in enumerate(self.free) if free.shape[0] >= rows]
                done = [i for i in fits if self.free[i][1] is None or self.free[i][1].query()]
                if fits:
                    buf, event = self.free.pop((done or fits)[0])
                    break
                # a larger one replaces free ones too small: the pool does not grow with
                # every batch larger than those before (typed batches vary a lot)
                idle = [i for i, (_, e) in enumerate(self.free) if e is None or e.query()]
                for k, i in enumerate(reversed(idle)):
                    if k and self.held + new <= self.budget:
                        break
                    self.held -= self._bytes(self.free.pop(i)[0].shape[0])
                if self.held + new <= self.budget or self.held == 0:
                    self.held += new
                    return self._new(rows + rows // 4)
                if self.stop.is_set():
                    raise _Stop
                self.cond.wait(0.1)
        if not done:
            event.synchronize()
        return buf

    def _bytes(self, rows: int) -> int:
        return rows * self.dim * self.dtype.itemsize

    def _new(self, rows: int) -> torch.Tensor:
        raw = torch.empty(self._bytes(rows) + BLOCK, dtype=torch.uint8, pin_memory=self.pin)
        buf = torch.empty(0, dtype=self.dtype).set_(raw.untyped_storage(), 0,
                                                    (rows, self.dim), (self.dim, 1))
        self._slack[id(buf)] = buf
        self.align(buf, 0)
        return buf

    @classmethod
    def align(cls, buf: torch.Tensor, row: int) -> None:
        """Slide ``buf``, a pool's buffer, in place within its allocation so that its row
        ``row`` starts on a :data:`BLOCK` boundary; any other tensor is left as is.
        Only while no view of ``buf`` is in use: autograd sees the move as an in-place
        change."""
        if cls._slack.get(id(buf)) is not buf:
            return
        storage, item = buf.untyped_storage(), buf.element_size()
        skip = -(storage.data_ptr() + row * buf.stride(0) * item) % BLOCK
        if skip != buf.storage_offset() * item:
            buf.set_(storage, skip // item, buf.shape, buf.stride())

    def give(self, buf: torch.Tensor, event: CopyEvent | None = None) -> None:
        """Return ``buf``; ``event``: recorded after its last copy was enqueued."""
        with self.cond:
            self.free.append((buf, event))
            self.cond.notify()


class _Run:
    """One pass over a list of batches: the stages joined by threads and bounded queues.

    A reader thread takes a buffer per batch and hands the batch to ``read_threads`` reading
    threads (futures queued in order); an assembler thread assembles and copies each batch
    in order; the consumer gets them in order and gives their buffers back. ``new_event``
    makes the event recorded after each batch's copy (default: a CUDA event on a GPU, none
    on a CPU; tests pass fakes).
    """

    def __init__(self, loader: PackedLoader, batch_ids: list[int],
                 new_event: Callable[[], CopyEvent] | None = None):
        self.loader = loader
        self.batch_ids = batch_ids
        cfg, remote = loader.cfg, getattr(loader.packed, "remote_files", None) is not None
        depth = max(cfg.prefetch, cfg.remote_window) if remote else cfg.prefetch
        self.read_threads = max(cfg.read_threads, cfg.remote_window) if remote \
            else cfg.read_threads
        self.stop = threading.Event()
        self.read_q: queue.Queue = queue.Queue(depth)
        self.ready_q: queue.Queue = queue.Queue(depth)
        self.buffers = _BufferPool(loader.packed.feature_dim, loader.packed.dtype,
                                   loader.device.type == "cuda", loader.cfg.buffer_bytes,
                                   self.stop)
        self.stream = (torch.cuda.Stream(loader.device) if loader.device.type == "cuda"
                       else None)
        self.copy = CopyStage(loader.caches.gpu, loader.device, self.stream,
                              new_event or (torch.cuda.Event if self.stream is not None
                                            else None))

    def _put(self, q: queue.Queue, item) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def _get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        raise _Stop

    def _reader(self) -> None:
        """Submit reads in order to the pool; hand futures on in order."""
        with ThreadPoolExecutor(self.read_threads,
                                thread_name_prefix="disktrain-read") as pool:
            try:
                for b in self.batch_ids:
                    batch = MiniBatch(b, buffer=self.buffers.take(self.loader.buffer_rows(b)))
                    self._put(self.read_q, pool.submit(self.loader.read, batch))
                self._put(self.read_q, None)
            except _Stop:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                self._fail(self.read_q, e)

    def _assembler(self) -> None:
        """Assemble and copy each batch, in order."""
        if n := self.loader.cfg.assemble_threads:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # this thread only
        try:
            while (item := self._get(self.read_q)) is not None:
                if isinstance(item, _Failure):
                    self._put(self.ready_q, item)
                    return
                self._put(self.ready_q, self.copy(self.loader.assemble(item.result())))
            self._put(self.ready_q, None)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._fail(self.ready_q, e)

    def _fail(self, q: queue.Queue, error: BaseException) -> None:
        try:
            self._put(q, _Failure(error))
        except _Stop:
            pass

    def iterate(self) -> Iterator[MiniBatch]:
        threads = [threading.Thread(target=self._reader, name="disktrain-reader", daemon=True),
                   threading.Thread(target=self._assembler, name="disktrain-assemble",
                                    daemon=True)]
        for t in threads:
            t.start()
        try:
            while (batch := self._get(self.ready_q)) is not None:
                if isinstance(batch, _Failure):
                    raise batch.error
                if self.stream is not None:
                    _consume_on_current_stream(batch, batch.copied)
                batch.release = lambda b=batch: self._give(b)
                try:
                    yield batch
                finally:
                    self._give(batch)  # the consumer is done with it
        finally:
            self.stop.set()
            for t in threads:
                t.join()

    def _give(self, batch: MiniBatch) -> None:
        """Give ``batch``'s buffer back to the pool, once."""
        if batch.buffer is not None:
            self.buffers.give(batch.buffer, batch.copied)
        batch.buffer = batch.release = None  # no cycle keeps this run's pool alive
