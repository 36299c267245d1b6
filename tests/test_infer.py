"""Layer-wise inference (disktrain.infer): equal to a full-graph forward and to PyG, the same
rows (to rounding) however the nodes are cut into ranges and after a kill, the same bytes for
the same cut, formats, subsets, refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from helpers import assert_same_rows
from tinygraphs import make_dataset, make_typed_dataset

from disktrain.cli import main
from disktrain.errors import CheckpointError, DataError, DiskSpaceError
from disktrain.infer import InferConfig, evaluate_exact, infer, store
from disktrain.loader.block import Block
from disktrain.models.gnn import ModelConfig, build_model
from disktrain.storage.chunkfile import check_chunk
from disktrain.storage.dataset import Dataset
from disktrain.train.checkpoint import CheckpointWriter, ModelRecord, checkpoint_state

SMALL = {"chunk_rows": 40, "memory_budget": 100_000, "progress": False}
"""Many chunks and ranges on the tiny graphs."""


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("infer") / "ds", num_nodes=400, num_edges=2400)


def save(model_name: str, dataset: Path, where: Path, layers: int = 2, seed: int = 0,
         **changes) -> Path:
    """A model with random weights saved through the trainer's checkpoint writer."""
    torch.manual_seed(seed)
    ds = Dataset(dataset)
    cfg = ModelConfig(model=model_name, hidden=8, heads=2, **changes).sized(
        in_dim=ds.meta.feature_dim, num_classes=ds.meta.num_classes, num_layers=layers)
    parts = {"model": build_model(cfg), "model_record": ModelRecord.of(cfg, ds)}
    return CheckpointWriter(where, 1).save(checkpoint_state(parts, 1, 0))


def full_forward(checkpoint: Path, dataset: Path) -> np.ndarray:
    """The checkpoint's model on one block holding the whole graph (every node dst and src)."""
    from disktrain.infer.model import load_trained

    ds = Dataset(dataset)
    trained = load_trained(checkpoint, ds)
    n = ds.num_nodes
    indptr, indices = np.asarray(ds.indptr), np.asarray(ds.indices)
    block = Block.from_numpy(indices, np.repeat(np.arange(n), np.diff(indptr)), n, n,
                             ds.in_degrees(np.arange(n)))
    with torch.no_grad():
        x = torch.from_numpy(ds.feature_rows(0, n))
        return trained.model(x, [block] * trained.config.num_layers).numpy()


def read(out: Path, fmt: str = "zarr") -> dict[str, np.ndarray]:
    """Every column of an output, as arrays."""
    if fmt == "zarr":
        group = zarr.open_group(out, mode="r")
        return {k: group[k][:] for k in group.array_keys()}
    if fmt == "npy":
        return {p.stem: np.load(p, allow_pickle=False) for p in out.glob("*.npy")}
    table = pq.read_table(out)
    names = {"node": "nodes", "embedding": "embeddings"}
    return {names.get(k, k): np.array(table[k].to_pylist()) for k in table.column_names}


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("model", ["sage", "gcn", "gat", "mlp"])
def test_equals_a_full_graph_forward(graph, tmp_path, model, layers):
    ckpt = save(model, graph, tmp_path / "ck", layers)
    out = read(infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "out", **SMALL))
    assert np.array_equal(out["nodes"], np.arange(400))
    assert np.abs(out["embeddings"] - full_forward(ckpt, graph)).max() <= 1e-5


@pytest.mark.parametrize("model", ["sage", "gcn", "gat"])
def test_equals_pyg_with_the_same_weights(graph, tmp_path, model):
    nn = pytest.importorskip("torch_geometric.nn", reason="torch_geometric not installed")
    ckpt = save(model, graph, tmp_path / "ck", 2)
    from disktrain.infer.model import load_trained

    ds = Dataset(graph)
    ours = load_trained(ckpt, ds).model
    indptr = np.asarray(ds.indptr)
    edge_index = torch.from_numpy(np.stack([np.asarray(ds.indices, np.int64),
                                            np.repeat(np.arange(400), np.diff(indptr))]))
    h = torch.from_numpy(ds.feature_rows(0, 400))
    with torch.no_grad():
        for i, conv in enumerate(ours.convs):
            h = _pyg_conv(nn, model, conv)(h, edge_index)
            h = h.relu() if i == 0 else h
    out = read(infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "out", **SMALL))
    assert np.abs(out["embeddings"] - h.numpy()).max() <= 1e-5


def _pyg_conv(nn, model: str, conv):
    """PyG's convolution holding ``conv``'s weights."""
    if model == "sage":
        pyg = nn.SAGEConv(conv.lin_self.in_features, conv.lin_self.out_features)
        pyg.lin_l.weight.copy_(conv.lin_neigh.weight)
        pyg.lin_l.bias.copy_(conv.lin_self.bias)
        pyg.lin_r.weight.copy_(conv.lin_self.weight)
    elif model == "gcn":
        pyg = nn.GCNConv(conv.lin.in_features, conv.lin.out_features)
        pyg.lin.weight.copy_(conv.lin.weight)
        pyg.bias.copy_(conv.bias)
    else:
        pyg = nn.GATConv(conv.lin.in_features, conv.out_dim, heads=conv.heads,
                         concat=conv.concat)
        pyg.lin.weight.copy_(conv.lin.weight)
        pyg.att_src.copy_(conv.att_src[None])
        pyg.att_dst.copy_(conv.att_dst[None])
        pyg.bias.copy_(conv.bias)
    return pyg.eval()


@pytest.mark.parametrize("model", ["sage", "gat"])
def test_ranges_give_the_same_rows_as_one_range(graph, tmp_path, model, monkeypatch):
    from disktrain.infer import layers

    ckpt = save(model, graph, tmp_path / "ck", 3)
    rows = lambda out: np.load(out / "embeddings.npy")
    one = infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "one", format="npy",
                memory_budget=1 << 30, progress=False)
    spills, spill = [], layers.ProjectedInput.spill
    monkeypatch.setattr(layers.ProjectedInput, "spill",
                        lambda self, work: spills.append(work) or spill(self, work))
    small = {"format": "npy", "chunk_rows": 7, "memory_budget": 1,  # ranges of MIN_RANGE
             "progress": False}
    many = infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "many", **small)
    assert_same_rows(rows(many), rows(one))
    # sage's narrowing layers (16 -> 8 wide, 8 -> the classes) project their input once
    # each, into a store they remove; gat's do not project
    assert sorted(w.name.split(".")[0] for w in spills) == (
        ["projected-0", "projected-2"] if model == "sage" else [])
    assert not any(w.exists() for w in spills)
    again = infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "again", **small)
    assert (again / "embeddings.npy").read_bytes() == (many / "embeddings.npy").read_bytes()
    # a linear layer's weighted edges made a few at a time, its outputs in small runs
    monkeypatch.setattr(layers, "SUB_EDGES", 50)
    monkeypatch.setattr(layers, "OUT_ROWS", 70)
    cut = infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "cut", format="npy",
                memory_budget=1 << 30, progress=False)
    assert_same_rows(rows(cut), rows(one))


def test_a_killed_run_resumes_to_the_same_rows(graph, tmp_path, monkeypatch):
    ckpt = save("sage", graph, tmp_path / "ck", 3)
    whole = infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "whole", format="npy", **SMALL)
    out, put, calls, done = tmp_path / "out", store.LayerWriter.put, [], []

    def counted(self, pos, rows):
        calls.append(self.final.name)
        done.append(len(rows))
        if calls.count("layer-2") == 3 and kill:
            # killed mid-layer, once the chunks the first two puts filled (0-2 of 40 rows)
            # are written: the background writer's timing must not decide what resumes
            written = [self._place(c)[0] for c in range(3)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(
                    check_chunk(w, self.chunk_bytes)[0] for w in written):
                time.sleep(0.01)
            raise KeyboardInterrupt
        put(self, pos, rows)

    monkeypatch.setattr(store.LayerWriter, "put", counted)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        infer(dataset=graph, checkpoint=ckpt, out=out, format="npy", **SMALL)
    assert not out.exists()
    left = sorted(p.name for p in out.with_name("out.layers").iterdir())
    assert left == ["layer-1", "layer-2.partial"]  # layer 0 went once layer 1 was complete
    torn = out.with_name("out.layers") / "layer-2.partial" / "features" / "c" / "0" / "0"
    torn.write_bytes(torn.read_bytes()[:100])  # as a kill in the middle of writing it leaves
    first, kill = len(calls), False
    infer(dataset=graph, checkpoint=ckpt, out=out, format="npy", **SMALL)
    assert_same_rows(np.load(out / "embeddings.npy"), np.load(whole / "embeddings.npy"))
    assert set(calls[first:]) == {"layer-2"}  # resumed from the highest complete layer
    assert sum(done[first:]) < 400  # and from the chunks written (400 nodes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "out", "whole"]


def test_keep_layers_keeps_every_layer_store(graph, tmp_path):
    ckpt = save("gcn", graph, tmp_path / "ck", 3)
    infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "out", keep_layers=True, **SMALL)
    layers = tmp_path / "out.layers"
    assert sorted(p.name for p in layers.iterdir()) == ["layer-0", "layer-1", "layer-2"]
    rows = zarr.open_group(layers / "layer-2", mode="r")["features"][:]
    assert np.array_equal(rows, read(tmp_path / "out")["embeddings"])


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_formats_hold_the_same_numbers(graph, tmp_path, fmt):
    ckpt = save("sage", graph, tmp_path / "ck")
    ref = read(infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "z", predictions=True,
                     **SMALL))
    got = read(infer(dataset=graph, checkpoint=ckpt, out=tmp_path / f"o.{fmt}", format=fmt,
                     predictions=True, **SMALL), fmt)
    assert sorted(got) == sorted(ref) == ["embeddings", "nodes", "prediction", "probabilities"]
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
    assert np.array_equal(ref["prediction"], ref["embeddings"].argmax(1))
    assert np.allclose(ref["probabilities"].sum(1), 1, atol=1e-6)


def test_a_split_computes_only_the_nodes_it_needs(tmp_path):
    ds = make_dataset(tmp_path / "ds", num_nodes=600, num_edges=300)  # sparse: small hops
    ckpt = save("sage", ds, tmp_path / "ck", 2)
    full = read(infer(dataset=ds, checkpoint=ckpt, out=tmp_path / "all", **SMALL))
    got = read(infer(dataset=ds, checkpoint=ckpt, out=tmp_path / "val", nodes="val",
                     keep_layers=True, **SMALL))
    val = np.sort(Dataset(ds).split("val"))
    assert np.array_equal(got["nodes"], val)
    assert np.abs(got["embeddings"] - full["embeddings"][val]).max() <= 1e-6
    first = zarr.open_group(tmp_path / "val.layers" / "layer-0", mode="r")
    assert len(val) < first.attrs["num_rows"] < 600


def test_exact_accuracy_equals_a_full_graph_forward(graph, tmp_path):
    ckpt = save("gcn", graph, tmp_path / "ck")
    ds = Dataset(graph)
    pred = full_forward(ckpt, graph).argmax(1)
    got = evaluate_exact(graph, tmp_path / "ck", memory_budget=50_000)
    for split in ("val", "test"):
        ids = ds.split(split)
        assert got[f"{split}_acc"] == float((pred[ids] == ds.labels[ids]).mean())
        assert got[f"{split}_nodes"] == len(ids)
    assert not [p for p in graph.iterdir() if "evaluate" in p.name]


def test_fanout_cap_is_deterministic_and_caps(graph, tmp_path):
    ckpt = save("sage", graph, tmp_path / "ck")
    capped = [read(infer(dataset=graph, checkpoint=ckpt, out=tmp_path / f"c{i}", fanout_cap=2,
                         format="npy", chunk_rows=30 * (i + 1), memory_budget=budget,
                         progress=False), "npy")["embeddings"]
              for i, budget in enumerate((1, 1 << 30))]
    assert_same_rows(*capped)
    assert np.abs(capped[0] - full_forward(ckpt, graph)).max() > 1e-3


def test_bad_node_ids_are_named(graph, tmp_path):
    ckpt = save("sage", graph, tmp_path / "ck")
    np.save(tmp_path / "ids.npy", np.array([3, 400, 5]))
    np.save(tmp_path / "f.npy", np.array([0.5]))
    with pytest.raises(DataError, match=r"ids.npy: row 1 holds node id 400, out of range"):
        infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "o", nodes=str(tmp_path / "ids.npy"))
    with pytest.raises(DataError, match="f.npy: expected .* integer .* got float64"):
        infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "o", nodes=str(tmp_path / "f.npy"))
    with pytest.raises(ValueError, match="InferConfig.nodes"):
        InferConfig(dataset=graph, checkpoint=ckpt, out=tmp_path / "o", nodes="everything")


def test_a_checkpoint_of_another_dataset_is_refused_naming_both(graph, tmp_path):
    other = make_dataset(tmp_path / "other", num_nodes=50, num_edges=100)
    ckpt = save("sage", other, tmp_path / "ck")
    with pytest.raises(CheckpointError, match=rf"trained on dataset '{other}' with dataset_id "
                       rf"'\w+', but {graph} has dataset_id '\w+'"):
        infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "o")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.layers").exists()


def test_checkpoints_without_a_record_or_weights_that_do_not_fit_are_refused(graph, tmp_path):
    ds = Dataset(graph)
    cfg = ModelConfig(hidden=8).sized(in_dim=16, num_classes=4, num_layers=2)
    model = build_model(cfg)
    old = CheckpointWriter(tmp_path / "old", 1).save(checkpoint_state({"model": model}, 1, 0))
    with pytest.raises(CheckpointError, match="does not say which model it holds .* retrain"):
        infer(dataset=graph, checkpoint=old, out=tmp_path / "o")
    wider = ModelRecord.of(ModelConfig(hidden=32).sized(in_dim=16, num_classes=4,
                                                        num_layers=2), ds)
    bad = CheckpointWriter(tmp_path / "bad", 1).save(
        checkpoint_state({"model": model, "model_record": wider}, 1, 0))
    with pytest.raises(CheckpointError, match="(?s)'hidden': 32.*size mismatch"):
        infer(dataset=graph, checkpoint=bad, out=tmp_path / "o")


def save_typed(model_name: str, dataset: Path, where: Path, layers: int = 2) -> Path:
    """A relational model with random weights saved through the trainer's checkpoint writer."""
    from disktrain.models.hetero import HeteroGNN, HeteroGNNConfig

    torch.manual_seed(0)
    ds = Dataset(dataset)
    cfg = HeteroGNNConfig(model=model_name, feature_dims={t.name: t.feature_dim for t in ds.types},
                          num_nodes={t.name: t.num_nodes for t in ds.types},
                          relations=ds.relations, target_type=ds.meta.target_type,
                          num_classes=ds.meta.num_classes, num_layers=layers, hidden=8, heads=2,
                          embedding_dim=5)
    parts = {"model": HeteroGNN(cfg), "model_record": ModelRecord.of(cfg, ds)}
    return CheckpointWriter(where, 1).save(checkpoint_state(parts, 1, 0))


def typed_full_forward(checkpoint: Path, dataset: Path) -> np.ndarray:
    """The relational model on one block per layer holding the whole graph."""
    from disktrain.infer.model import load_trained
    from disktrain.loader.block import HeteroBlock

    ds = Dataset(dataset)
    trained = load_trained(checkpoint, ds)
    counts = {t.name: t.num_nodes for t in ds.types}
    edges = {}
    for rel in ds.relations:
        indptr, indices = (np.asarray(a) for a in ds.relation_csr(rel))
        edges[rel] = (indices, np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)))
    block = HeteroBlock.from_numpy(edges, counts, counts)
    x = {t.name: torch.from_numpy(ds.type_dataset(t.name).feature_rows(0, t.num_nodes)).float()
         for t in ds.types if t.feature_dim}
    ids = {t: torch.arange(n) for t, n in counts.items()}
    with torch.no_grad():
        return trained.model(x, [block] * trained.config.num_layers, ids).numpy()


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("model", ["rsage", "rgat"])
def test_typed_graphs_equal_a_full_graph_forward(tmp_path, model, layers):
    typed = make_typed_dataset(tmp_path / "typed")
    ckpt = save_typed(model, typed, tmp_path / "ck", layers)
    expected = typed_full_forward(ckpt, typed)
    for name, rows in (("one", 0), ("many", 16)):  # a range per layer and type, or chunks
        got = read(infer(dataset=typed, checkpoint=ckpt, out=tmp_path / name,
                         memory_budget=2_000 if rows else 0, chunk_rows=rows, progress=False))
        assert np.array_equal(got["nodes"], np.arange(60))
        np.testing.assert_allclose(got["embeddings"], expected, atol=1e-5)
    # equal up to rounding only: a relation's few source rows (5 subjects) go through BLAS
    # in products of another shape from one cut to another
    np.testing.assert_allclose(read(tmp_path / "one")["embeddings"],
                               read(tmp_path / "many")["embeddings"], rtol=0, atol=1e-6)
    val = Dataset(typed).split("val")
    sub = read(infer(dataset=typed, checkpoint=ckpt, out=tmp_path / "val", nodes="val",
                     progress=False))
    assert np.array_equal(sub["nodes"], np.sort(val))
    np.testing.assert_allclose(sub["embeddings"], expected[np.sort(val)], atol=1e-5)
    exact = evaluate_exact(typed, ckpt)
    labels = Dataset(typed).labels
    test = Dataset(typed).split("test")
    assert exact["test_acc"] == pytest.approx(float((expected[test].argmax(1) ==
                                                     labels[test]).mean()))


def test_a_killed_typed_run_resumes_from_its_complete_layers(tmp_path, monkeypatch):
    typed = make_typed_dataset(tmp_path / "typed")
    ckpt = save_typed("rsage", typed, tmp_path / "ck", 3)
    opts = {"chunk_rows": 16, "progress": False}
    whole = read(infer(dataset=typed, checkpoint=ckpt, out=tmp_path / "whole", **opts))
    put, calls = store.LayerWriter.put, []

    def counted(self, pos, rows):
        calls.append(self.final.name)
        if calls.count("layer-2-paper") == 2 and kill:
            raise KeyboardInterrupt  # killed mid-layer
        put(self, pos, rows)

    monkeypatch.setattr(store.LayerWriter, "put", counted)
    kill, out = True, tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        infer(dataset=typed, checkpoint=ckpt, out=out, **opts)
    left = sorted(p.name for p in out.with_name("out.layers").iterdir())
    assert left == ["layer-1-author", "layer-1-paper", "layer-1-subject", "layer-2-paper.partial"]
    first, kill = len(calls), False
    got = read(infer(dataset=typed, checkpoint=ckpt, out=out, **opts))
    assert_same_rows(got["embeddings"], whole["embeddings"])
    assert set(calls[first:]) == {"layer-2-paper"}  # from the highest complete layer
    assert len(calls[first:]) < calls.count("layer-1-paper")  # and from the chunks written
    assert not out.with_name("out.layers").exists()


def test_typed_graphs_refuse_a_homogeneous_model_and_the_cap(tmp_path):
    typed = make_typed_dataset(tmp_path / "typed")
    ckpt = save("sage", make_dataset(tmp_path / "ds", num_nodes=50, num_edges=100),
                tmp_path / "ck")
    with pytest.raises(CheckpointError, match="does not run on"):
        infer(dataset=typed, checkpoint=ckpt, out=tmp_path / "o")
    with pytest.raises(ValueError, match="--fanout-cap"):
        infer(dataset=typed, checkpoint=save_typed("rsage", typed, tmp_path / "ck2"),
              out=tmp_path / "o", fanout_cap=3)


def test_a_full_disk_is_refused_before_the_layer_keeping_those_done(graph, tmp_path,
                                                                     monkeypatch):
    ckpt = save("sage", graph, tmp_path / "ck")
    free, layers = store.require_free, []

    def full(path, need, what):
        layers.append(what)
        if what == "infer: layer 1":
            raise DiskSpaceError(f"{what}: needs about {need} bytes under {path}")
        free(path, need, what)

    monkeypatch.setattr(store, "require_free", full)
    with pytest.raises(DiskSpaceError, match="infer: layer 1"):
        infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "o", **SMALL)
    assert sorted(p.name for p in (tmp_path / "o.layers").iterdir()) == ["layer-0"]
    monkeypatch.setattr(store, "require_free", free)
    infer(dataset=graph, checkpoint=ckpt, out=tmp_path / "o", **SMALL)
    assert not (tmp_path / "o.layers").exists()


def test_cli_infer_and_evaluate(graph, tmp_path, capsys):
    save("gat", graph, tmp_path / "ck")
    assert main(["infer", str(graph), "--checkpoint", str(tmp_path / "ck"), "--out",
                 str(tmp_path / "o.parquet"), "--format", "parquet", "--predictions",
                 "--memory-budget", "64K", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(tmp_path / "o.parquet")}
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 400
    assert main(["evaluate", str(graph), "--checkpoint", str(tmp_path / "ck"),
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["val_acc"] <= 1 and report["test_nodes"] == 100
    with pytest.raises(SystemExit):
        main(["infer", str(graph), "--checkpoint", str(tmp_path / "ck"), "--out",
              str(tmp_path / "o.parquet"), "--format", "parquet"])
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["infer", str(graph), "--checkpoint", str(tmp_path / "ck"), "--out",
              str(tmp_path / "o2"), "--workers", "0"])
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_a_trained_checkpoint_records_its_model_and_dataset(prepared, tmp_path):
    from helpers import newest_checkpoint

    from disktrain.train import TrainConfig, train
    from disktrain.train.checkpoint import CheckpointConfig

    train(TrainConfig(dataset=str(prepared), epochs=1, progress=False,
                      model=ModelConfig(model="gcn", hidden=16),
                      checkpoint=CheckpointConfig(dir=str(tmp_path / "ck"))))
    record = newest_checkpoint(tmp_path / "ck")["model_record"]
    ds = Dataset(prepared)
    assert record["model"]["model"] == "gcn" and record["model"]["hidden"] == 16
    assert record["model"]["num_layers"] == 2 and record["model"]["in_dim"] == 16
    assert record["dataset"] == {"dataset_id": ds.dataset_id, "path": str(prepared),
                                 "num_nodes": 300, "feature_dim": 16, "num_classes": 4}
    got = evaluate_exact(prepared, tmp_path / "ck")
    assert 0 <= got["test_acc"] <= 1 and got["model"] == "gcn"


def test_train_eval_exact_reports_the_checkpoints_exact_accuracy(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(prepared), "--epochs", "1", "--eval", "exact", "--run-dir",
                 str(run), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    exact = evaluate_exact(prepared, run / "checkpoints")
    assert report["val_acc"] is not None  # the sampled accuracy, beside the exact one
    for key in ("val_acc", "test_acc", "val_nodes", "test_nodes"):
        assert report[f"exact_{key}"] == exact[key]
    assert not list(run.glob("evaluate*")) and not list(prepared.glob("evaluate*"))


def test_train_eval_exact_on_a_typed_graph(tmp_path, capsys):
    ds = make_typed_dataset(tmp_path / "typed")
    assert main(["prepare", str(ds), "--fanouts", "4,4", "--batch-size", "16",
                 "--no-progress"]) == 0
    assert main(["train", str(ds), "--model", "rsage", "--epochs", "1", "--eval", "exact",
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["exact_test_acc"] == evaluate_exact(ds, ds / "checkpoints")["test_acc"]
    assert report["exact_test_nodes"] == 15


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_same_rows(tmp_path):
    ds = make_dataset(tmp_path / "ds", num_nodes=6000, num_edges=60000)
    ckpt = save("sage", ds, tmp_path / "ck", 3)
    run = [sys.executable, "-m", "disktrain", "infer", str(ds), "--checkpoint", str(ckpt),
           "--format", "npy", "--chunk-rows", "200", "--memory-budget", "1", "--no-progress"]
    subprocess.run([*run, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    killed = subprocess.Popen([*run, "--out", str(tmp_path / "out")])
    chunks = tmp_path / "out.layers" / "layer-1.partial" / "features" / "c"
    while killed.poll() is None and len(list(chunks.glob("*"))) < 5:
        time.sleep(0.005)
    killed.kill()
    assert killed.wait() == -signal.SIGKILL and not (tmp_path / "out").exists()
    subprocess.run([*run, "--out", str(tmp_path / "out")], check=True, capture_output=True)
    assert_same_rows(np.load(tmp_path / "out" / "embeddings.npy"),
                     np.load(tmp_path / "whole" / "embeddings.npy"))
