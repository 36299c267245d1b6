"""Fresh epochs prepared during training, and evaluation on the packed path."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import prepare
from tinygraphs import make_dataset

from disktrain.cli import main
from disktrain.errors import DataError
from disktrain.loader.block import Block
from disktrain.loader.loader import Loader, packed_bytes
from disktrain.loader.pipeline import PackedLoader
from disktrain.models import ModelConfig
from disktrain.models.gnn import GNNConfig, build_model
from disktrain.pack import PackConfig, PackedStore, pack_dataset
from disktrain.pack.prepare import prepare_epoch, prepare_eval, serve_epochs
from disktrain.sample import SampleConfig, SamplePlan, SampleStore
from disktrain.storage.dataset import Dataset
from disktrain.storage.roots import epoch_root, eval_root, is_prepared, new_run, runs_dir
from disktrain.train import EvalConfig, TrainConfig, train
from disktrain.train.checkpoint import CheckpointConfig
from disktrain.train.evaluate import Evaluator

SAMPLE = {"fanouts": (4, 3), "batch_size": 32, "seed": 0, "group_size": 2}
PACK = PackConfig(gpu_cache_bytes=16 * 64, cpu_cache_bytes=24 * 64, chunk_bytes=512)


def _prepare(path, epochs: int, evaluation: bool = True):
    prepare(path, SampleConfig(**SAMPLE, epochs=epochs), PACK, evaluation=evaluation)
    return path


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    return _prepare(make_dataset(tmp_path_factory.mktemp("fresh") / "g"), epochs=1)


def _run(path, tmp_path, resume=False, **kw):
    base = {"dataset": str(path), "epochs": 3, "seed": 1, "progress": False,
            "model": ModelConfig(hidden=16, dropout=0.0),
            "checkpoint": CheckpointConfig(dir=str(tmp_path / "ck"), resume=resume)}
    return train(TrainConfig(**{**base, **kw}))


def test_plan_epochs_and_splits():
    ids = np.arange(100)
    whole = SamplePlan(SampleConfig(**SAMPLE, epochs=3), ids)
    third = SamplePlan(SampleConfig(**SAMPLE, epochs=1, first_epoch=2), ids)
    assert third.batch_epoch(0) == 2 and whole.batch_epoch(2 * whole.batches_per_epoch) == 2
    for i in range(third.num_batches):
        assert np.array_equal(third.batch_seeds(i),
                              whole.batch_seeds(2 * whole.batches_per_epoch + i))
    for bad in ({"first_epoch": -1}, {"split": "unlabelled"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SampleConfig(**SAMPLE, **bad)


@pytest.mark.slow
def test_fresh_epochs_train_exactly_like_presampled_ones(one_epoch, tmp_path):
    """Epochs 1 and 2 prepared during training give the very batches a store sampled with
    three epochs holds, so training ends bit-identical; their roots are deleted."""
    fresh = _run(one_epoch, tmp_path / "a")
    assert (fresh["sampled_epochs"], fresh["fresh_epochs"]) == (1, 2)
    assert not fresh["reused_sampled_epochs"]
    assert not any(runs_dir(one_epoch).iterdir())  # the run's directory went with it
    three = _prepare(make_dataset(tmp_path / "g3"), epochs=3, evaluation=False)
    presampled = _run(three, tmp_path / "b", evaluation=EvalConfig(mode="online"))
    assert presampled["fresh_epochs"] == 0
    assert fresh["params_sha256"] == presampled["params_sha256"]


@pytest.mark.slow
def test_resume_into_a_fresh_epoch(one_epoch, tmp_path):
    _run(one_epoch, tmp_path, epochs=1)
    resumed = _run(one_epoch, tmp_path, epochs=2, resume=True)
    straight = _run(one_epoch, tmp_path / "straight", epochs=2)
    assert resumed["resumed_at"] == [1, 0] and resumed["fresh_epochs"] == 1
    assert resumed["params_sha256"] == straight["params_sha256"]


def test_fresh_epoch_store_shares_the_training_caches(one_epoch, tmp_path):
    root = prepare_epoch(one_epoch, run := new_run(one_epoch), 5)
    try:
        train_store, fresh = PackedStore(one_epoch), PackedStore(one_epoch, root=root)
        assert fresh.tiers_id == train_store.tiers_id and fresh.store_id != train_store.store_id
        assert np.array_equal(np.asarray(fresh.cache_rows()),
                              np.asarray(train_store.cache_rows()))
        assert SampleStore(one_epoch, root=root).config.first_epoch == 5
        loader = PackedLoader(one_epoch)
        assert loader.sibling(root).caches is loader.caches
        assert prepare_epoch(one_epoch, run, 5) == root  # done: returned as it is
        assert PackedStore(one_epoch, root=root).store_id == fresh.store_id
    finally:
        shutil.rmtree(run)


def test_serve_epochs_answers_each_line(one_epoch):
    out, run = io.StringIO(), new_run(one_epoch)
    try:
        serve_epochs(one_epoch, run, io.StringIO("7\n"), out)
        assert out.getvalue() == "7\t\n" and is_prepared(epoch_root(run, 7))
    finally:
        shutil.rmtree(run)


def test_serve_epochs_loads_the_csr_once_for_every_epoch(one_epoch, tmp_path, monkeypatch):
    from disktrain.storage import dataset as dataset_mod
    from disktrain.storage import residency

    path = shutil.copytree(one_epoch, tmp_path / "g")  # files this process never loaded
    monkeypatch.setattr(dataset_mod, "pmd_mapped_share", lambda array: 0.0)  # in memory
    copies, buffer = [], residency.aligned_buffer  # a buffer per CSR array read into memory
    monkeypatch.setattr(residency, "aligned_buffer",
                        lambda *a, **k: copies.append(a[0]) or buffer(*a, **k))
    out = io.StringIO()
    serve_epochs(path, new_run(path), io.StringIO("7\n8\n9\n"), out)
    assert out.getvalue() == "7\t\n8\t\n9\t\n"
    ds = Dataset(path, csr="map")
    assert sorted(copies) == sorted([ds.indptr.nbytes, ds.indices.nbytes])  # not per epoch


def test_a_failed_fresh_epoch_is_an_error_naming_it(tmp_path, monkeypatch):
    path = _prepare(make_dataset(tmp_path / "g"), epochs=1, evaluation=False)

    def blocked_run(base):  # epoch 1's root is a file: the preparer's mkdir fails
        run = new_run(base)
        epoch_root(run, 1).write_text("in the way")
        return run

    monkeypatch.setattr("disktrain.loader.fresh.new_run", blocked_run)
    with pytest.raises(DataError, match="preparing fresh epoch 1 failed: .*e000001"):
        _run(path, tmp_path, epochs=2)


def _raw_accuracy(model, path, split) -> float:
    """Accuracy over the eval store's batches, features read from the raw array."""
    dataset, samples = Dataset(path), SampleStore(path, root=eval_root(path, split))
    correct = 0
    for b in range(samples.num_batches):
        batch = samples.batch(b)
        x = torch.from_numpy(dataset.gather_sorted(np.sort(batch.input_nodes))[
            np.argsort(np.argsort(batch.input_nodes))])
        blocks = [Block.from_numpy(s, d, ns, nd) for s, d, ns, nd in batch.blocks]
        pred = model(x, blocks).argmax(1).numpy()
        correct += int((pred == dataset.labels[batch.seeds]).sum())
    return correct / len(dataset.split(split))


def test_packed_evaluation_reads_the_raw_rows_exactly(one_epoch):
    torch.manual_seed(0)
    model = build_model(GNNConfig(model="sage", in_dim=16, hidden=16, num_classes=4,
                                  num_layers=2)).eval()
    loader = Loader(one_epoch, plan_reuse="cycle")
    evaluator = Evaluator(EvalConfig(batch_size=64), loader, 0)
    assert evaluator.mode("val") == evaluator.mode("test") == "packed"
    got = evaluator(model)
    for split in ("val", "test"):
        assert got[f"{split}_acc"] == pytest.approx(_raw_accuracy(model, one_epoch, split))
        assert evaluator.packed[split].tiers_id == loader.tiers_id


def test_evaluation_modes(tmp_path, capsys):
    path = _prepare(make_dataset(tmp_path / "g"), epochs=1, evaluation=False)
    loader = Loader(path, plan_reuse="cycle")
    assert Evaluator(EvalConfig(batch_size=64), loader, 0).mode("val") == "online"
    assert capsys.readouterr().err == ""  # not prepared: online, quietly
    with pytest.raises(DataError, match="no packed evaluation batches .*eval/val"):
        Evaluator(EvalConfig(mode="packed", batch_size=64), loader, 0)
    loader.close()  # a live loader keeps a prepare out, one of its own process too
    prepare_eval(path, progress=False)
    pack_dataset(path, PackConfig(chunk_bytes=512), progress=False)  # another training store
    loader = Loader(path, plan_reuse="cycle")
    assert Evaluator(EvalConfig(batch_size=64), loader, 0).mode("test") == "online"
    assert "made with this training store" in capsys.readouterr().err
    result = _run(path, tmp_path, epochs=1, evaluation=EvalConfig(mode="online"))
    assert 0 <= result["test_acc"] <= 1 and result["eval_time_s"] > 0


def test_prepare_cli_makes_and_reports_the_evaluation_batches(tmp_path, capsys):
    ds = tmp_path / "g"
    assert main(["synth", "--out", str(ds), "--nodes", "400", "--feature-dim", "4",
                 "--val-fraction", "0.2", "--test-fraction", "0", "--train-fraction", "0.5",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["prepare", str(ds), "--fanouts", "3", "--batch-size", "32",
                 "--eval-batch-size", "50", "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert list(info["eval"]) == ["val"]  # the empty test split has nothing to pack
    assert info["eval"]["val"]["n_gpu"] == 0
    val = SampleStore(ds, root=eval_root(ds, "val"))
    assert (val.config.split, val.config.batch_size, val.num_batches) == ("val", 50, 2)
    assert main(["train", str(ds), "--epochs", "1", "--hidden", "8", "--eval", "packed",
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert 0 <= result["val_acc"] <= 1 and result["test_acc"] != result["test_acc"]  # NaN
    assert main(["prepare", str(ds), "--fanouts", "3", "--batch-size", "32", "--no-eval",
                 "--no-progress"]) == 0
    assert "eval" in json.loads(capsys.readouterr().out)


def test_packed_bytes_are_the_chunks_a_batch_reads(one_epoch):
    store = PackedStore(one_epoch)
    got = packed_bytes(store, [0, 2])
    assert got["needed"] == int(store.batch_packed[[0, 2]].sum()) * 16 * 4
    chunks = sum(int(store.batch_rows[b + 1] - store.batch_rows[b]) // store.chunk_rows
                 for b in (0, 2))
    assert store.layout.stride == -(-(store.chunk_rows * 16 * 4 + 4) // 4096) * 4096
    assert got["read"] == chunks * store.layout.stride > got["needed"]
