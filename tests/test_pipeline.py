"""The staged loader: order, errors from any stage, and clean shutdown."""

import threading
from contextlib import closing

import pytest

from disktrain.pack import PackConfig, pack_dataset
from disktrain.pipeline import LoaderConfig, PackedLoader
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


@pytest.mark.parametrize("stage", ["read", "assemble", "to_device"])
def test_an_exception_in_any_stage_reaches_the_consumer(loader, monkeypatch, stage):
    real = getattr(loader, stage)

    def failing(b, *args):
        if b == 5:
            raise RuntimeError(f"boom in {stage}")
        return real(b, *args)

    def failing_copy(x, slots, blocks, labels):
        if failing_copy.calls == 5:
            raise RuntimeError(f"boom in {stage}")
        failing_copy.calls += 1
        return real(x, slots, blocks, labels)

    failing_copy.calls = 0
    monkeypatch.setattr(loader, stage, failing_copy if stage == "to_device" else failing)
    seen = []
    with pytest.raises(RuntimeError, match=f"boom in {stage}"):
        for mb in loader(range(loader.num_batches)):
            seen.append(mb.index)
    assert seen == list(range(5))
    assert not _pipeline_threads()


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
