"""The command line: help texts, options mapped onto the configs (each option reaches its
field, the defaults and choices are the configs'), info, synth wiring."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from disktrain.cli import (
    _location,
    build_parser,
    configs,
    main,
    parse_bytes,
    parse_fanouts,
    parse_fractions,
    parse_names,
    parse_param,
    parse_ranks,
    parse_relation_fanouts,
)
from disktrain.cluster.ray_train import RayTrainConfig
from disktrain.demo import DemoConfig
from disktrain.ingest.inputs import IngestConfig
from disktrain.ingest.synth import SynthConfig
from disktrain.loader.loader import PLAN_REUSE
from disktrain.models import MODELS
from disktrain.pack import PackConfig
from disktrain.robust import AGGREGATORS, WORKER_ATTACKS
from disktrain.sample import SampleConfig
from disktrain.train import TrainConfig
from disktrain.train.config import ON_NONFINITE, OPTIMIZERS
from disktrain.train.evaluate import EVAL_MODES


@pytest.mark.parametrize("command", [[], ["ingest"], ["synth"], ["info"], ["verify"]])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: disktrain {' '.join(command)}".rstrip())


def _options(command: str) -> list[argparse.Action]:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]


BASE = {"train": ["train", "DS"], "prepare": ["prepare", "DS"], "demo": ["demo"],
        "synth": ["synth", "--out", "o", "--nodes", "100"],
        "ingest": ["ingest", "--edges", "e.npy", "--out", "o"]}
"""Each command's smallest valid command line."""
CONTEXT = {"--byzantine-f": ["--aggregator", "krum"], "--flag-subspace": ["--aggregator", "flag"],
           "--flag-lambda": ["--aggregator", "flag"], "--attack": ["--byzantine-ranks", "1"],
           "--byzantine-ranks": ["--attack", "sign-flip"],
           "--attack-param": ["--attack", "ipm", "--byzantine-ranks", "1"],
           "--attack-seed": ["--attack", "gaussian", "--byzantine-ranks", "1"],
           "--momentum": ["--optimizer", "sgd"], "--ogb": ["--out", "o"], "--ogb-split": ["--out", "o", "--ogb", "d"],
           "--igb": ["--out", "o"], "--mag240m": ["--out", "o"],
           **{f: ["--out", "o", "--igb", "d"] for f in ("--igb-size", "--igb-classes",
                                                     "--igb-feature-dim", "--igb-labelled",
                                                     "--add-reverse")}}
"""Options whose non-default value is valid only with others (instead of BASE's options)."""
CLI_ONLY = {("prepare", "evaluation"), ("prepare", "eval_batch_size"),
            ("prepare", "ray_address"), ("prepare", "progress")}
"""Options that are settings of the command itself, not of a config."""
CLI_ONLY |= {("synth", "typed")}  # picks synth's config: TypedSynthConfig
_TYPED = ["o", "--typed", "igbh", "--papers", "100"]  # after "synth --out"
CONTEXT.update({"--papers": _TYPED[:3], **{f"--{rel}-degree": _TYPED for rel in (
    "cites", "written-by", "affiliated-to", "topic")}})
_LINK_FILES = [*BASE["ingest"][1:], "--link-val", "v", "--link-test", "t"]
CONTEXT.update({"--link-val": _LINK_FILES[:-4] + _LINK_FILES[-2:],
                "--link-test": _LINK_FILES[:-2], "--link-val-neg": _LINK_FILES,
                "--link-test-neg": _LINK_FILES})


def _other_value(action: argparse.Action) -> tuple[list[str], object]:
    """A command-line value of ``action`` other than its default, and what it parses to."""
    flag, default = action.option_strings[0], action.default
    if action.nargs == 0:  # store_true, store_false, --no-eval
        if default:
            flag = next((f for f in action.option_strings if f.startswith("--no-")), flag)
        return [flag], not default
    if action.choices:
        value = next(c for c in action.choices if c != default)
        return [flag, str(value)], value
    if action.type is parse_fanouts:
        return [f"{flag}=3,2"], (3, 2)
    if action.type is parse_relation_fanouts:
        return [flag, "cites=3,2,1"], (("cites", (3, 2, 1)),)
    if action.type is parse_bytes:
        return [flag, "3K"], 3072
    if action.type is parse_names:
        return [flag, "nnm,clip"], ("nnm", "clip")
    if action.type is parse_fractions:
        return [flag, "0.7,0.2,0.1"], (0.7, 0.2, 0.1)
    if action.type is parse_ranks:
        return [flag, "0,2"], (0, 2)
    if action.type is parse_param:
        return [flag, "eps=2.5"], {"eps": 2.5}
    if action.type is int:
        value = default + 1 if default else 300
        return [flag, str(value)], value
    if action.type is float:
        value = default / 2 if default else 0.25
        return [flag, str(value)], value
    if action.type in (Path, _location):
        return [flag, "p/x"], Path("p/x")
    return [flag, "cuda:1" if flag == "--device" else "x"], "cuda:1" if flag == "--device" else "x"


def _field(built: dict, dest: str):
    """The value the config field that ``dest`` names holds in ``configs(args)``."""
    prefix = max((p for p in built if dest.startswith(p)), key=len)
    value = built[prefix]
    for part in dest[len(prefix):].split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("command", sorted(BASE))
def test_every_option_reaches_its_config_field(command):
    checked = 0
    for action in _options(command):
        argv, value = _other_value(action)
        assert value != action.default, action.option_strings
        base = BASE[command]
        if action.option_strings[0] in CONTEXT:
            base = base[:2] if command != "ingest" else ["ingest"]
            base = [*base, *CONTEXT[action.option_strings[0]]]
        args = build_parser(command).parse_args([*base, *argv])
        assert getattr(args, action.dest) == value, action.option_strings
        if (command, action.dest) in CLI_ONLY:
            continue
        assert _field(configs(args), action.dest) == value, action.option_strings
        checked += 1
    assert checked >= {"train": 40, "prepare": 9, "demo": 3, "synth": 10, "ingest": 17}[command]


@pytest.mark.parametrize(("command", "defaults"), [
    ("train", lambda: {"": TrainConfig(dataset="DS"), "ray.": RayTrainConfig()}),
    ("prepare", lambda: {"sample.": SampleConfig(), "pack.": PackConfig()}),
    ("synth", lambda: {"": SynthConfig(out=Path("o"), num_nodes=100)}),
    ("ingest", lambda: {"": IngestConfig(edges=Path("e.npy"), out=Path("o"))}),
    ("demo", lambda: {"": DemoConfig()}),
])
def test_the_command_line_defaults_are_the_configs(command, defaults):
    assert configs(build_parser(command).parse_args(BASE[command])) == defaults()


def test_choices_are_the_configs_lists():
    from disktrain.models.link import DECODERS
    from disktrain.sample.plan import TASKS

    choices = {a.dest: tuple(a.choices) for a in _options("train") if a.choices}
    assert choices == {"model.model": MODELS, "plan_reuse": PLAN_REUSE,
                       "evaluation.mode": EVAL_MODES, "robust.aggregator": tuple(AGGREGATORS),
                       "on_nonfinite": ON_NONFINITE, "attack.attack": WORKER_ATTACKS,
                       "optimizer.optimizer": OPTIMIZERS, "task": TASKS,
                       "model.decoder": DECODERS}


def test_bad_model_options_fail_before_anything_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "nowhere"), "--model", "gat", "--hidden", "130"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "disktrain: error: ModelConfig.hidden must be divisible by heads for model 'gat', got "
        "hidden=130, heads=4\n")


def test_help_and_info_do_not_import_torch(tiny_dataset):
    code = ("import sys\nfrom disktrain.cli import main\n"
            f"main(['info', {str(tiny_dataset)!r}])\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_info(tiny_dataset, capsys):
    assert main(["info", str(tiny_dataset), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_nodes"] == 300 and info["feature_dim"] == 16
    assert info["splits"] == {"train": 150, "val": 75, "test": 75}
    assert main(["info", str(tiny_dataset)]) == 0
    assert "num_nodes: 300\n" in capsys.readouterr().out


def test_info_not_a_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"disktrain: error: {tmp_path}: not a dataset directory " \
                                      "(no zarr.json)\n"


def test_synth(tmp_path, capsys):
    pytest.importorskip("disktrain.ingest.synth")
    out = tmp_path / "syn"
    assert main(["synth", "--out", str(out), "--nodes", "64", "--avg-degree", "4",
                 "--feature-dim", "8", "--classes", "3", "--seed", "1", "--no-progress"]) == 0
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (info["num_nodes"], info["feature_dim"], info["num_classes"]) == (64, 8, 3)


@pytest.mark.parametrize("argv,says", [
    (["synth", "--out", "OUT", "--nodes", "0"], "num_nodes must be in [2, 281474976710656], got 0"),
    (["prepare", "DATASET", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["ingest", "--edges", "e.npy", "--out", "OUT", "--chunk-rows", "0"],
     "chunk_rows must be >= 1, got 0"),
])
def test_invalid_settings_are_user_errors(tmp_path, capsys, argv, says):
    argv = [str(tmp_path / a) if a in ("OUT", "DATASET") else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"disktrain: error: {says}\n"


def test_an_internal_value_error_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(cfg):
        raise ValueError("an internal bug")

    monkeypatch.setattr("disktrain.train.train", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["train", str(tmp_path), "--no-progress"])


def test_synth_split_fractions_and_feature_dtype(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["synth", "--out", str(out), "--nodes", "1000", "--feature-dim", "4",
                 "--train-fraction", "0.05", "--val-fraction", "0.01", "--test-fraction",
                 "0.02", "--feature-dtype", "float16", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {"train": 50, "val": 10, "test": 20}
    assert info["feature_dtype"] == "float16"


@pytest.mark.slow
def test_train_says_when_it_reuses_pre_sampled_epochs(tmp_path, capsys):
    ds = tmp_path / "g"
    assert main(["synth", "--out", str(ds), "--nodes", "400", "--feature-dim", "4",
                 "--no-progress"]) == 0
    assert main(["prepare", str(ds), "--fanouts", "2", "--batch-size", "64", "--epochs", "1",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", str(ds), "--epochs", "2", "--hidden", "8", "--no-progress",
                 "--plan-reuse", "cycle"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert "holds 1 pre-sampled epoch(s) for 2 training epochs" in captured.err
    assert (result["sampled_epochs"], result["reused_sampled_epochs"]) == (1, True)
    assert result["fresh_epochs"] == 0
    assert 0.5 < result["wall_share"]["compute"] + result["wall_share"]["wait"] <= 1.0
    # the default prepares the second epoch afresh instead, and says nothing
    assert main(["train", str(ds), "--epochs", "2", "--hidden", "8", "--no-progress",
                 "--checkpoint-dir", str(tmp_path / "c2")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert "pre-sampled" not in captured.err
    assert (result["reused_sampled_epochs"], result["fresh_epochs"]) == (False, 1)
