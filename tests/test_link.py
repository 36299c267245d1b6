"""Link prediction: edge batches and their negatives, the loader's link layout, training with
a decoder, and MRR / Hits@K / AUC on exact embeddings."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import PACK, disk_use, prepare
from tinygraphs import make_dataset, make_link_dataset, make_typed_dataset

from disktrain.errors import DataError
from disktrain.infer import evaluate_exact
from disktrain.infer.model import load_trained
from disktrain.loader.loader import Loader
from disktrain.models.gnn import ModelConfig
from disktrain.sample import SampleConfig, SamplePlan, SampleStore, sample_dataset
from disktrain.sample.memory import MemorySamples
from disktrain.sample.store import sample_store_bytes
from disktrain.storage.dataset import Dataset
from disktrain.train import train
from disktrain.train.config import TrainConfig
from disktrain.train.linkmetrics import link_metrics

LINK = SampleConfig(fanouts=(4, 3), batch_size=64, epochs=2, task="link", num_negatives=2)


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """A tiny graph split for link prediction, prepared for link batches."""
    path = make_link_dataset(tmp_path_factory.mktemp("link") / "ds")
    prepare(path, LINK, PACK)
    return path


def _positives(store, b: int) -> np.ndarray:
    links, seeds = store.link_labels(b), store.batch(b).seeds
    return np.stack((seeds[links.label_src[:links.num_pos]],
                     seeds[links.label_dst[:links.num_pos]]), 1)


def _rows(pairs: np.ndarray) -> set:
    return set(map(tuple, np.asarray(pairs, np.int64).tolist()))


def test_every_training_edge_once_per_epoch_in_a_new_order(linked):
    store, train_edges = SampleStore(linked), Dataset(linked).link_edges("train")
    per = store.batches_per_epoch
    epochs = [np.concatenate([_positives(store, b) for b in range(e * per, (e + 1) * per)])
              for e in range(2)]
    for got in epochs:
        assert len(got) == len(train_edges) and _rows(got) == _rows(train_edges)
    assert not np.array_equal(epochs[0], epochs[1])


def test_store_and_memory_twin_hold_the_same_batches(linked):
    store, mem = SampleStore(linked), MemorySamples.sample(Dataset(linked), LINK)
    for b in range(store.num_batches):
        a, m = store.link_labels(b), mem.link_labels(b)
        assert np.array_equal(a.label_src, m.label_src) and np.array_equal(a.label_dst,
                                                                           m.label_dst)
        assert np.array_equal(store.batch(b).nodes, mem.batch(b).nodes)


def test_negatives_per_edge_keep_the_source(linked):
    store = SampleStore(linked)
    links = store.link_labels(0)
    p, k = links.num_pos, LINK.num_negatives
    assert len(links.label_src) == p * (1 + k)
    assert np.array_equal(links.label_src[p:], np.repeat(links.label_src[:p], k))
    assert links.edge_label.sum() == p
    seeds = store.batch(0).seeds
    assert np.array_equal(seeds, np.unique(seeds))  # the pairs' endpoints, each once
    assert set(np.unique(np.concatenate((links.label_src, links.label_dst)))) == \
        set(range(len(seeds)))


def test_shared_and_degree_negatives(linked):
    ds = Dataset(linked)
    plan = SamplePlan.of(ds, replace(LINK, negative_mode="shared", num_negatives=5,
                                     negative_sampling="degree"))
    seeds, links = plan.batch(0)
    p = links.num_pos
    negs = seeds[links.label_dst[p:]]
    assert len(np.unique(negs)) <= 5 and len(links.label_src) == p * 6
    degree = np.diff(ds.indptr)
    many = plan.negatives(0, 5000)[0]
    assert (degree[many] > 0).all()  # drawn by in-degree ** 0.75: never a node without
    top = np.argsort(degree)[-20:]
    assert np.isin(many, top).mean() > 20 / ds.num_nodes  # high degree drawn more


def test_pairs_negatives_draw_both_endpoints(linked):
    plan = SamplePlan.of(Dataset(linked), replace(LINK, negative_mode="pairs", num_negatives=3))
    seeds, links = plan.batch(0)
    p = links.num_pos
    assert len(links.label_src) == 4 * p
    negative = np.stack((seeds[links.label_src[p:]], seeds[links.label_dst[p:]]), 1)
    sources = plan.positives(0)[:, 0]
    assert not np.isin(negative[:, 0], sources).all()  # sources drawn, not the positives'
    assert plan.max_seeds >= len(seeds)


def test_bad_link_configs(tmp_path):
    with pytest.raises(ValueError, match="num_negatives"):
        SampleConfig(task="link", num_negatives=0)
    with pytest.raises(ValueError, match="negative_sampling"):
        SampleConfig(task="link", negative_sampling="popular")
    with pytest.raises(ValueError, match="task"):
        SampleConfig(task="graph")
    with pytest.raises(ValueError, match="negative_mode"):
        SampleConfig(task="link", negative_mode="triplet")
    plain = make_dataset(tmp_path / "plain")
    with pytest.raises(DataError, match="edge-split"):
        sample_dataset(plain, LINK, progress=False)
    assert not (plain / "samples.partial").exists()
    typed = make_typed_dataset(tmp_path / "typed")
    with pytest.raises(DataError, match="typed"):
        sample_dataset(typed, LINK, progress=False)


def test_loader_batches_in_link_neighbor_loader_layout(linked):
    with Loader(linked, plan_reuse="cycle") as loader:
        batch = next(iter(loader))
    pairs, labels = batch.edge_label_index, batch.edge_label
    assert pairs.dtype == torch.int64 and pairs.shape == (2, labels.shape[0])
    assert int(pairs.max()) < batch.batch_size  # endpoints are the seeds, rows of x
    links = SampleStore(linked).link_labels(batch.index)
    assert labels.sum() == links.num_pos
    pyg = pytest.importorskip("torch_geometric")
    assert pyg is not None
    data = batch.to_pyg()
    assert torch.equal(data.edge_label_index, pairs) and torch.equal(data.edge_label, labels)


def test_task_mismatch_is_refused(linked, tmp_path):
    with pytest.raises(DataError, match="--task link"):
        train(TrainConfig(dataset=str(linked), epochs=1, progress=False, plan_reuse="cycle"))
    plain = make_dataset(tmp_path / "plain")
    prepare(plain)
    with pytest.raises(DataError, match="--task node"):
        train(TrainConfig(dataset=str(plain), task="link", epochs=1, progress=False))


@pytest.mark.parametrize("model,decoder", [("sage", "dot"), ("sage", "mlp"), ("gat", "dot")])
def test_link_training_learns_and_evaluates_exactly(linked, tmp_path, model, decoder):
    run = tmp_path / "run"
    out = train(TrainConfig(dataset=str(linked), task="link", epochs=4, progress=False,
                            run_dir=str(run), plan_reuse="cycle",
                            model=ModelConfig(model=model, hidden=32, decoder=decoder)))
    assert out["steps"] == 4 * SampleStore(linked).batches_per_epoch
    ckpt = run / "checkpoints"
    trained = load_trained(ckpt, Dataset(linked))
    assert trained.decoder is not None and trained.config.decoder == decoder
    got = evaluate_exact(linked, ckpt, work_dir=tmp_path)
    assert got["task"] == "link" and got["val_edges"] == len(Dataset(linked).link_edges("val"))
    for split in ("val", "test"):
        assert 0 < got[f"{split}_mrr"] <= 1 and 0 <= got[f"{split}_hits@10"] <= 1
        assert got[f"{split}_auc"] > 0.65  # planted groups: far above chance (0.5)
    assert not list(tmp_path.glob("evaluate*"))  # its layers removed


def test_link_metrics_match_ogb_formula():
    # OGB (ogbl-citation2): rank = (#neg > pos + #neg >= pos) / 2 + 1, mrr = mean(1 / rank)
    pos = torch.tensor([3.0, 1.0])
    neg = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 0.0]])
    got = link_metrics(pos, neg, hits_at=(1, 2, 3))
    assert got["mrr"] == pytest.approx((1 / 1.5 + 1 / 3) / 2)
    assert (got["hits@1"], got["hits@2"], got["hits@3"]) == (0.0, 0.5, 1.0)
    assert got["auc"] == pytest.approx(7 / 12)  # pairs won 5.5 + 1.5 of 12
    with pytest.raises(ValueError, match="neg"):
        link_metrics(pos, neg[:1])


def test_cli_prepare_and_train_link(tmp_path, capsys):
    from disktrain.cli import main

    path = make_link_dataset(tmp_path / "ds", num_nodes=120, num_edges=800)
    assert main(["prepare", str(path), "--task", "link", "--fanouts", "3,3", "--batch-size",
                 "32", "--num-negatives", "3", "--no-progress"]) in (0, None)
    capsys.readouterr()
    assert main(["train", str(path), "--task", "link", "--epochs", "2", "--hidden", "16",
                 "--no-progress"]) in (0, None)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["link"]) == {"val", "test"}
    assert {"mrr", "hits@10", "hits@50", "hits@100", "auc"} <= set(result["link"]["test"])


def test_link_sample_store_estimate_bounds_what_it_writes(linked):
    dataset = Dataset(linked)
    estimate = sample_store_bytes(dataset, SamplePlan.of(dataset, LINK))
    written = disk_use(SampleStore(linked).path)
    assert written <= estimate <= 1.5 * written


def test_link_training_on_first_hop_aggregated_batches(tmp_path):
    path = make_link_dataset(tmp_path / "agg", num_nodes=120, num_edges=800)
    prepare(path, replace(LINK, epochs=1), replace(PACK, aggregate_first_hop="mean"))
    out = train(TrainConfig(dataset=str(path), task="link", epochs=1, progress=False,
                            plan_reuse="cycle", model=ModelConfig(hidden=16)))
    assert out["steps"] == SampleStore(path).batches_per_epoch and np.isfinite(out["loss"])


def test_edges_per_epoch_takes_another_subset_every_epoch(linked):
    ds = Dataset(linked)
    plan = SamplePlan.of(ds, replace(LINK, edges_per_epoch=100, batch_size=30, epochs=3))
    assert plan.batches_per_epoch == 4
    epochs = [np.concatenate([plan.positives(b) for b in range(e * 4, (e + 1) * 4)])
              for e in range(3)]
    train_edges = _rows(ds.link_edges("train"))
    for got in epochs:
        assert len(got) == 100 and len(_rows(got)) == 100 and _rows(got) <= train_edges
    assert _rows(epochs[0]) != _rows(epochs[1])


def test_scoring_streamed_by_destination_equals_gathered_scores(linked, tmp_path):
    from disktrain.infer import link as ilink
    from disktrain.infer.layers import LayerInput
    from disktrain.models.link import MLPDecoder

    ds = Dataset(linked)
    rows = LayerInput(ds, None)  # the features as "embeddings"
    decoder = MLPDecoder(ds.meta.feature_dim)
    splits = ilink.link_splits(ds)
    got = ilink.score_links(rows, decoder, splits)
    edges, negatives = splits["test"]
    x = torch.from_numpy(ds.feature_rows(0, ds.num_nodes))
    with torch.no_grad():
        pos = decoder(x[edges[:, 0]], x[edges[:, 1]])
        neg = decoder(x[edges[:, 0]].repeat_interleave(negatives.shape[1], 0),
                      x[negatives.reshape(-1)]).view(len(edges), -1)
    want = link_metrics(pos, neg)
    assert got["test_mrr"] == pytest.approx(want["mrr"], rel=1e-5)
    assert got["test_auc"] == pytest.approx(want["auc"], rel=1e-5)
    assert got["test_edges"] == len(edges)
