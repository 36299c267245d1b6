"""The composed training config: each component's config defined and validated once, models
declaring what they need from the loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from disktrain.loader.config import LoaderConfig
from disktrain.models import MODELS, GATConv, GCNConv, GNNConfig, ModelConfig, SAGEConv
from disktrain.pack import PackConfig, pack_dataset
from disktrain.pack.prepare import prepare_eval
from disktrain.robust import RobustConfig
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.train import EvalConfig, OptimizerConfig, TrainConfig, train
from disktrain.train.checkpoint import CheckpointConfig
from disktrain.train.loop import loader_config


def test_the_sized_model_config_keeps_the_architecture_and_its_defaults():
    arch = ModelConfig(model="gat", hidden=8, heads=2, dropout=0.1)
    sized = arch.sized(in_dim=5, num_classes=3, num_layers=4)
    assert isinstance(sized, GNNConfig) and isinstance(sized, ModelConfig)
    assert (sized.model, sized.hidden, sized.heads, sized.dropout) == ("gat", 8, 2, 0.1)
    assert (sized.in_dim, sized.num_classes, sized.num_layers) == (5, 3, 4)
    # one default per setting: the sized config's are the architecture's
    assert GNNConfig(in_dim=5, num_classes=3).hidden == ModelConfig().hidden
    assert TrainConfig(dataset="x").model == ModelConfig()


@pytest.mark.parametrize(("kw", "says"), [
    ({"model": "gin"}, "ModelConfig.model must be one of"),
    ({"hidden": 0}, "ModelConfig.hidden must be an int >= 1, got 0"),
    ({"dropout": 1.0}, r"ModelConfig.dropout must be in \[0, 1\), got 1.0"),
    ({"model": "gat", "hidden": 130},
     "hidden must be divisible by heads for model 'gat', got hidden=130, heads=4"),
])
def test_model_config_checks_its_fields_at_construction(kw, says):
    with pytest.raises(ValueError, match=says):
        ModelConfig(**kw)


def test_models_declare_whether_they_need_whole_graph_degrees():
    assert (GCNConv.needs_degrees, SAGEConv.needs_degrees, GATConv.needs_degrees) == \
        (True, False, False)
    assert {m: ModelConfig(model=m).needs_degrees for m in MODELS} == \
        {"sage": False, "gcn": True, "gat": False, "mlp": False, "rsage": False,
         "rgat": False}


@pytest.mark.parametrize(("model", "degrees"), [("gcn", True), ("sage", False)])
def test_the_run_asks_the_loader_for_what_the_model_needs(model, degrees):
    cfg = TrainConfig(dataset="x", model=ModelConfig(model=model))
    got = loader_config(cfg, torch.device("cpu"), 3)
    assert (got.degrees, got.assemble_threads, got.device) == (degrees, 3, "cpu")
    own = dataclasses.replace(cfg, loader=LoaderConfig(assemble_threads=1, degrees=True))
    assert (loader_config(own, torch.device("cpu"), 3).assemble_threads,
            loader_config(own, torch.device("cpu"), 3).degrees) == (1, True)


def test_gcn_blocks_carry_degrees_in_training(tiny_dataset, tmp_path, monkeypatch):
    sample_dataset(tiny_dataset, SampleConfig(fanouts=(3, 2), batch_size=64), progress=False)
    pack_dataset(tiny_dataset, PackConfig(), progress=False)
    prepare_eval(tiny_dataset, progress=False)
    seen = []
    forward = GCNConv.forward

    def spy(self, x, block):
        seen.append(block.src_degree is not None)
        return forward(self, x, block)

    monkeypatch.setattr(GCNConv, "forward", spy)
    train(TrainConfig(dataset=str(tiny_dataset), model=ModelConfig(model="gcn", hidden=8),
                      epochs=1, max_batches=2, evaluation=EvalConfig(mode="packed"), progress=False,
                      checkpoint=CheckpointConfig(dir=str(tmp_path / "ck"))))
    assert seen and all(seen)  # training and the packed evaluation batches


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("model", "gat", "ModelConfig"), ("loader", {"prefetch": 1}, "LoaderConfig"),
    ("robust", "krum", "RobustConfig"), ("checkpoint", "ck", "CheckpointConfig"),
    ("optimizer", "sgd", "OptimizerConfig"), ("evaluation", "online", "EvalConfig"),
])
def test_train_config_names_a_component_given_as_something_else(field, value, kind):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be a {kind}, got"):
        TrainConfig(dataset="x", **{field: value})


def test_checkpoint_config():
    assert CheckpointConfig().directory("data") == Path("data/checkpoints")
    assert CheckpointConfig(dir="elsewhere").directory("data") == Path("elsewhere")
    with pytest.raises(ValueError, match="CheckpointConfig.every must be >= 0, got -1"):
        CheckpointConfig(every=-1)


def test_robust_cross_checks_name_the_setting():
    TrainConfig(dataset="x", robust=RobustConfig(aggregator="flag", f=1, subspace=2))
    with pytest.raises(ValueError, match="f=2 .* needs a robust aggregator"):
        TrainConfig(dataset="x", robust=RobustConfig(f=2))
    with pytest.raises(ValueError, match="subspace=2 applies to aggregator 'flag' only, got "
                                         "aggregator 'krum'"):
        TrainConfig(dataset="x", robust=RobustConfig(aggregator="krum", subspace=2))


def test_the_optimizer_is_the_configs():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = TrainConfig(dataset="x", optimizer=OptimizerConfig(lr=0.1)).optimizer.build(params)
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 0.1
    sgd = OptimizerConfig(optimizer="sgd", momentum=0.9, weight_decay=0.0, lr=0.5).build(params)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.5, 0.9)
    with pytest.raises(ValueError, match="momentum=0.9 applies to optimizer 'sgd' only"):
        OptimizerConfig(momentum=0.9)
    with pytest.raises(ValueError, match="momentum must be in"):
        OptimizerConfig(optimizer="sgd", momentum=1.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        OptimizerConfig(optimizer="lbfgs")
