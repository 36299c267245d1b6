"""The staged loader: order, errors from any stage, and clean shutdown."""

import threading
from contextlib import closing

import numpy as np
import pytest

from disktrain.loader.config import LoaderConfig
from disktrain.loader.pipeline import PackedLoader, copy_out
from disktrain.pack import PackConfig, pack_dataset
from disktrain.sample import SampleConfig, sample_dataset


@pytest.fixture
def loader(tiny_dataset):
    sample_dataset(tiny_dataset, SampleConfig(fanouts=(3, 2), batch_size=8, seed=0),
                   progress=False)
    pack_dataset(tiny_dataset, PackConfig(chunk_bytes=256), progress=False)
    return PackedLoader(tiny_dataset, LoaderConfig(prefetch=1, read_threads=2))


def _pipeline_threads():
    return [t for t in threading.enumerate() if t.name.startswith("disktrain-")]


def test_batches_come_in_the_requested_order(loader):
    order = list(reversed(range(loader.num_batches)))
    got = [mb.index for mb in loader(order)]
    assert got == order
    assert not _pipeline_threads()


@pytest.mark.parametrize("stage", ["read", "assemble", "copy"])
def test_an_exception_in_any_stage_reaches_the_consumer(loader, monkeypatch, stage):
    from disktrain.loader import pipeline

    real = pipeline.CopyStage.__call__ if stage == "copy" else getattr(loader, stage)

    def failing(*args):
        batch = args[-1]
        if batch.index == 5:
            raise RuntimeError(f"boom in {stage}")
        return real(*args)

    if stage == "copy":  # made per pass over the batches: replaced in its class
        monkeypatch.setattr(pipeline.CopyStage, "__call__", failing)
    else:
        monkeypatch.setattr(loader, stage, failing)
    seen = []
    with pytest.raises(RuntimeError, match=f"boom in {stage}"):
        for mb in loader(range(loader.num_batches)):
            seen.append(mb.index)
    assert seen == list(range(5))
    assert not _pipeline_threads()


def test_each_stage_fills_its_fields_of_the_one_batch(loader):
    import numpy as np
    import torch

    from disktrain.loader.batch import MiniBatch
    from disktrain.loader.pipeline import CopyStage

    b = 3
    buf = torch.zeros((loader.buffer_rows(b), loader.packed.feature_dim),
                      dtype=torch.float32)
    batch = MiniBatch(b, buffer=buf)
    assert loader.read(batch) is batch and set(batch.seconds) == {"read"}
    assert batch.x is None and batch.layout is None
    assert loader.assemble(batch) is batch
    n = len(loader.samples.input_nodes(b))
    assert batch.x.shape[0] == n and batch.x.data_ptr() == buf.data_ptr()  # no copy
    assert np.array_equal(batch.input_nodes, batch.layout.input_nodes)
    assert len(batch.blocks) == 2 and batch.labels.shape == (loader.samples.batch(b).num_seeds,)
    host_x = batch.x
    assert CopyStage(loader.caches.gpu, loader.device)(batch) is batch
    assert set(batch.seconds) == {"read", "assemble", "copy"} and batch.copied is None
    raw = loader.dataset.feature_rows(0, loader.dataset.num_nodes)
    assert torch.equal(batch.x, torch.from_numpy(raw[batch.input_nodes]))
    assert batch.x.data_ptr() == host_x.data_ptr()  # on a CPU the matrix is the buffer


@pytest.mark.parametrize("error", [None, KeyboardInterrupt])
def test_stopping_early_shuts_every_thread_down(loader, error):
    if error is None:
        it = loader(range(loader.num_batches))
        next(it)
        it.close()
    else:
        with pytest.raises(KeyboardInterrupt), closing(loader(range(loader.num_batches))) as it:
            for _ in it:
                raise KeyboardInterrupt
    assert not _pipeline_threads()


def test_reordered_last_hop_keeps_every_edge_and_the_model_output(loader):
    import numpy as np
    import torch

    from disktrain.loader.block import Block
    from disktrain.models.gnn import GNNConfig, build_model

    raw = loader.dataset.feature_rows(0, loader.dataset.num_nodes)
    torch.manual_seed(0)
    model = build_model(GNNConfig(model="sage", in_dim=raw.shape[1], hidden=8,
                                  num_classes=4, num_layers=2)).eval()
    for mb in loader(range(loader.num_batches)):
        stored = loader.samples.batch(mb.index)
        for got, (src, dst, num_src, num_dst) in zip(mb.blocks, stored.blocks):
            assert (got.num_src, got.num_dst) == (num_src, num_dst)
            pairs = set(zip(mb.input_nodes[got.src.numpy()], mb.input_nodes[got.dst.numpy()]))
            assert pairs == set(zip(stored.input_nodes[src], stored.input_nodes[dst]))
        ref_blocks = [Block.from_numpy(*blk) for blk in stored.blocks]
        with torch.no_grad():
            ref = model(torch.from_numpy(raw[stored.input_nodes]), ref_blocks)
            assert torch.allclose(model(mb.x, mb.blocks), ref, atol=1e-6)
        assert np.array_equal(mb.input_nodes[:stored.num_seeds], stored.seeds)


def test_assembly_threads_are_capped_in_the_assembler_only(loader, monkeypatch):
    import numba
    import numpy as np

    calls = []
    real = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads",
                        lambda n: (calls.append((n, threading.current_thread().name)), real(n)))
    capped = PackedLoader(loader.dataset.path, LoaderConfig(prefetch=1, assemble_threads=1))
    ids = range(loader.num_batches)
    expected = [mb.x.clone() for mb in loader(ids)]
    got = [mb.x.clone() for mb in capped(ids)]
    assert calls == [(1, "disktrain-assemble")]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(got, expected))
    with pytest.raises(ValueError, match="assemble_threads"):
        LoaderConfig(assemble_threads=-1)


class FakeEvent:
    """A CUDA event stand-in: its copy completes when the test says so, or on synchronize."""

    def __init__(self, done: bool = False):
        self.done, self.recorded, self.waits = done, False, 0

    def record(self, stream=None) -> None:
        self.recorded = True

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waits += 1
        self.done = True


def test_buffer_pool_hands_out_only_buffers_whose_copy_completed():
    import numpy as np

    from disktrain.loader.pipeline import _BufferPool

    pool = _BufferPool(4, np.dtype(np.float32), pin=False)
    a, b = pool.take(10), pool.take(10)
    in_flight, copied = FakeEvent(), FakeEvent(done=True)
    pool.give(a, in_flight)
    pool.give(b, copied)
    assert pool.take(10) is b  # a's copy is still running: passed over
    assert in_flight.waits == 0
    in_flight.done = True
    assert pool.take(10) is a and in_flight.waits == 0  # completed: reused as is
    pool.give(a, in_flight := FakeEvent())
    assert pool.take(10) is a and in_flight.waits == 1  # the only fit: after its copy
    assert pool.take(10) is not a  # nothing free: a new buffer
    pool.give(a)  # no event (a CPU): free at once
    assert pool.take(10) is a


def test_buffer_pool_does_not_grow_with_ever_larger_batches():
    import numpy as np

    from disktrain.loader.pipeline import _BufferPool

    pool = _BufferPool(4, np.dtype(np.float32), pin=False)
    for rows in (10, 20, 40, 80, 160):  # each too large for the buffer freed before it
        pool.give(pool.take(rows))
    assert len(pool.free) == 1 and pool.free[0][0].shape[0] >= 160
    busy = FakeEvent()
    pool.give(pool.take(10), busy)  # a free buffer still being copied is kept
    assert len(pool.free) == 1
    pool.give(pool.take(400))
    assert len(pool.free) == 2


def test_buffer_pool_waits_for_a_buffer_back_beyond_its_byte_budget():
    from disktrain.loader.pipeline import _BufferPool, _Stop

    stop = threading.Event()
    pool = _BufferPool(4, np.dtype(np.float32), pin=False, budget=1000, stop=stop)
    a = pool.take(40)  # 50 rows of 16 bytes: 800 of the 1000 bytes
    got = []
    taker = threading.Thread(target=lambda: got.append(pool.take(60)))
    taker.start()
    taker.join(0.3)
    assert taker.is_alive() and not got  # a second buffer would pass the budget: it waits
    pool.give(a)
    taker.join(5)
    assert got and got[0].shape[0] >= 60 and got[0] is not a  # a, too small, was dropped
    assert pool.free == [] and pool.held == got[0].shape[0] * 16
    pool.give(got[0])
    big = pool.take(200)  # alone, a buffer may pass the budget
    assert big.shape[0] >= 200 and pool.free == []
    stopped = []

    def take_until_stopped():
        with pytest.raises(_Stop):
            pool.take(10)  # big is out and fills the budget: waits until stopped
        stopped.append(True)

    waiting = threading.Thread(target=take_until_stopped)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()
    stop.set()
    waiting.join(5)
    assert stopped == [True]


def test_a_loader_under_a_tiny_buffer_budget_yields_the_same_batches(prepared):
    import torch

    import disktrain

    runs = [[(b.x.clone(), b.n_id.clone()) for b in disktrain.Loader(prepared, "train", config=cfg)]
            for cfg in (LoaderConfig(), LoaderConfig(buffer_bytes=1))]
    assert len(runs[0]) > 2
    for (x1, n1), (x2, n2) in zip(*runs, strict=True):
        assert torch.equal(x1, x2) and torch.equal(n1, n2)


def test_each_buffer_returns_with_the_event_recorded_after_its_copy(loader):
    from disktrain.loader.pipeline import _Run

    events = []

    def new_event():
        events.append(FakeEvent())
        return events[-1]

    run = _Run(loader, list(range(loader.num_batches)), new_event=new_event)
    last_event, handed_out = {}, []
    take, give = run.buffers.take, run.buffers.give

    def checked_take(rows):
        buf = take(rows)
        event = last_event.get(id(buf))
        handed_out.append(event is None or event.done)
        return buf

    def recording_give(buf, event=None):
        last_event[id(buf)] = event
        give(buf, event)

    run.buffers.take, run.buffers.give = checked_take, recording_give
    assert [mb.index for mb in run.iterate()] == list(range(loader.num_batches))
    assert len(events) == loader.num_batches and all(e.recorded for e in events)
    assert len(handed_out) == loader.num_batches and all(handed_out)
    assert any(e.waits for e in events)  # buffers were reused, each after its copy


def test_copy_out_copies_memory_mapped_rows_exactly(tmp_path):
    path = tmp_path / "rows.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(1000, 7))
    rows[:] = np.arange(7000, dtype=np.float16).reshape(1000, 7)
    rows.flush()
    del rows
    mapped = np.load(path, mmap_mode="r")  # the data starts past the .npy header
    for start, stop, step in ((0, 1000, 1 << 20), (3, 1000, 100), (17, 401, 7 * 2 * 3), (5, 5, 64)):
        out = copy_out(mapped, start, stop, step_bytes=step)
        assert out.flags.writeable and np.array_equal(out, mapped[start:stop])
    plain = np.arange(12, dtype=np.float32).reshape(4, 3)  # not a memory map: a plain copy
    assert np.array_equal(copy_out(plain, 1, 4), plain[1:])
