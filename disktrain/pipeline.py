"""The staged loader: read packed ranges -> assemble features and blocks -> copy -> compute.

Stages run in their own threads, joined by bounded queues (depth ``prefetch``), so an epoch
costs about the slowest stage rather than the sum. Reads release the GIL (``os.preadv``),
assembly runs Numba kernels without it. An exception in any stage is re-raised by the
consumer; closing the iterator (``with contextlib.closing(loader(ids)) as batches``, so that
Ctrl-C in the consumer closes it too) stops every thread.

The loader is public: any model that takes ``(x, blocks)`` can train on it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from disktrain.dataset import Dataset
from disktrain.kernels.gather import gather_rows
from disktrain.models.block import Block
from disktrain.pack.store import PackedStore
from disktrain.sample.store import SampleStore


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """The training-time read path."""

    prefetch: int = 2
    """Batches in flight between consecutive stages."""
    read_threads: int = 2
    """Threads reading packed ranges."""
    device: str = "cpu"
    """Where batches end up ("cpu", "cuda", "cuda:1", ...)."""
    degrees: bool = False
    """Attach whole-graph in-degrees to every block (GCN normalizes with them)."""

    def __post_init__(self):
        for name in ("prefetch", "read_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class MiniBatch:
    """One batch ready for compute: features, blocks and seed labels on the device."""

    index: int
    x: torch.Tensor
    blocks: list[Block]
    labels: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    """Time this batch spent in each stage (read, assemble, copy)."""


class _Stop(Exception):
    """Raised inside stage threads when the consumer has gone away."""


@dataclass
class _Failure:
    error: BaseException


class FeatureCaches:
    """The GPU tier (on the device; a CPU tensor without a GPU) and the CPU tier."""

    def __init__(self, packed: PackedStore, device: torch.device):
        rows = np.asarray(packed.cache_rows())
        self.gpu = torch.from_numpy(np.array(rows[:packed.n_gpu])).to(device)
        self.cpu = np.array(rows[packed.n_gpu:])
        if device.type == "cuda":
            self.cpu = torch.from_numpy(self.cpu).pin_memory().numpy()


class PackedLoader:
    """Iterate pre-sampled batches of a prepared dataset through the staged pipeline."""

    def __init__(self, dataset_path: str | Path, cfg: LoaderConfig = LoaderConfig()):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dataset = Dataset(dataset_path)
        self.samples = SampleStore(dataset_path)
        self.packed = PackedStore(dataset_path)
        self.caches = FeatureCaches(self.packed, self.device)
        self.labels = torch.from_numpy(np.asarray(self.dataset.labels, np.int64))
        self._pin = self.device.type == "cuda"

    @property
    def num_batches(self) -> int:
        return self.samples.num_batches

    def __call__(self, batch_ids: Sequence[int]) -> Iterator[MiniBatch]:
        """Yield the batches ``batch_ids`` in order, each fully on the device."""
        return _Run(self, list(batch_ids)).iterate()

    def read(self, b: int, buf: np.ndarray) -> np.ndarray:
        """Stage 1: batch ``b``'s packed rows (crc-checked) into ``buf``."""
        return self.packed.read_packed(b, buf)

    def assemble(self, b: int, packed_rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray,
                                                                list, torch.Tensor]:
        """Stage 2: host feature matrix (CPU-tier and packed rows), slots, blocks, labels."""
        sampled = self.samples.batch(b)
        slots = self.packed.slots(b)
        x = torch.empty((len(slots), self.packed.feature_dim),
                        dtype=_torch_dtype(self.packed.dtype), pin_memory=self._pin)
        gather_rows(x.numpy(), self.caches.cpu, packed_rows, np.ascontiguousarray(slots))
        degree = self.dataset.in_degrees(sampled.input_nodes) if self.cfg.degrees else None
        blocks = [Block.from_numpy(s, d, ns, nd, degree) for s, d, ns, nd in sampled.blocks]
        labels = self.labels[torch.from_numpy(sampled.seeds.astype(np.int64))]
        return x, slots, blocks, labels

    def to_device(self, x: torch.Tensor, slots: np.ndarray, blocks: list[Block],
                  labels: torch.Tensor) -> tuple[torch.Tensor, list[Block], torch.Tensor]:
        """Stage 3: copy to the device, then fill the rows the GPU cache serves there."""
        nb = self._pin
        x = x.to(self.device, non_blocking=nb)
        blocks = [blk.to(self.device, non_blocking=nb) for blk in blocks]
        labels = labels.to(self.device, non_blocking=nb)
        gpu_pos = np.flatnonzero(slots < 0)
        if len(gpu_pos):
            pos = torch.from_numpy(gpu_pos).to(self.device, non_blocking=nb)
            slot = torch.from_numpy(-1 - slots[gpu_pos]).to(self.device, non_blocking=nb)
            x[pos] = self.caches.gpu[slot]
        return x, blocks, labels


def _consume_on_current_stream(batch: MiniBatch, event: torch.cuda.Event) -> None:
    """Order the compute stream after the copy stream, and tell the caching allocator the
    batch's tensors (made on the copy stream) are used on the compute stream."""
    stream = torch.cuda.current_stream()
    stream.wait_event(event)
    blocks = (u for b in batch.blocks for u in (b.src, b.dst, b.src_degree) if u is not None)
    for t in (batch.x, batch.labels, *blocks):
        t.record_stream(stream)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype


class _Run:
    """One pass over a list of batches: the threads and queues of the pipeline."""

    def __init__(self, loader: PackedLoader, batch_ids: list[int]):
        self.loader = loader
        self.batch_ids = batch_ids
        depth = loader.cfg.prefetch
        self.stop = threading.Event()
        self.read_q: queue.Queue = queue.Queue(depth)
        self.ready_q: queue.Queue = queue.Queue(depth)
        n_bufs = depth + loader.cfg.read_threads + 2
        rows = max(1, loader.packed.max_padded_rows)
        self.free_bufs: queue.Queue = queue.Queue()
        for _ in range(n_bufs):
            self.free_bufs.put(np.empty((rows, loader.packed.feature_dim), loader.packed.dtype))
        self.stream = (torch.cuda.Stream(loader.device) if loader.device.type == "cuda"
                       else None)

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

    def _timed_read(self, b: int, buf: np.ndarray):
        t = time.perf_counter()
        rows = self.loader.read(b, buf)
        return rows, time.perf_counter() - t

    def _reader(self) -> None:
        """Submit reads in order to the pool; hand futures on in order."""
        with ThreadPoolExecutor(self.loader.cfg.read_threads,
                                thread_name_prefix="disktrain-read") as pool:
            try:
                for b in self.batch_ids:
                    buf = self._get(self.free_bufs)
                    self._put(self.read_q, (b, buf, pool.submit(self._timed_read, b, buf)))
                self._put(self.read_q, None)
            except _Stop:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                self._fail(self.read_q, e)

    def _assembler(self) -> None:
        """Assemble and copy each batch, in order."""
        try:
            while (item := self._get(self.read_q)) is not None:
                if isinstance(item, _Failure):
                    self._put(self.ready_q, item)
                    return
                b, buf, future = item
                rows, t_read = future.result()
                t0 = time.perf_counter()
                x, slots, blocks, labels = self.loader.assemble(b, rows)
                self.free_bufs.put(buf)
                t1 = time.perf_counter()
                if self.stream is not None:
                    with torch.cuda.stream(self.stream):
                        x, blocks, labels = self.loader.to_device(x, slots, blocks, labels)
                    event = torch.cuda.Event()
                    event.record(self.stream)
                else:
                    x, blocks, labels = self.loader.to_device(x, slots, blocks, labels)
                    event = None
                t2 = time.perf_counter()
                batch = MiniBatch(b, x, blocks, labels,
                                  {"read": t_read, "assemble": t1 - t0, "copy": t2 - t1})
                self._put(self.ready_q, (batch, event))
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
            while (item := self._get(self.ready_q)) is not None:
                if isinstance(item, _Failure):
                    raise item.error
                batch, event = item
                if event is not None:
                    _consume_on_current_stream(batch, event)
                yield batch
        finally:
            self.stop.set()
            for t in threads:
                t.join()
