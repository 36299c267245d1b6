"""The command line: help texts, option-to-config mapping, info, synth wiring."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from disktrain.cli import build_parser, main
from disktrain.ingest import IngestConfig


@pytest.mark.parametrize("command", [[], ["ingest"], ["synth"], ["info"], ["verify"]])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: disktrain {' '.join(command)}".rstrip())


def _option_dests(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices[command]._actions if a.dest != "help"}


def test_ingest_options_are_config_fields():
    assert _option_dests("ingest") <= {f.name for f in dataclasses.fields(IngestConfig)}


def test_synth_options_are_config_fields():
    synth = pytest.importorskip("disktrain.synth")
    assert _option_dests("synth") <= {f.name for f in dataclasses.fields(synth.SynthConfig)}


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
    pytest.importorskip("disktrain.synth")
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
