"""The dataset lock: readers (Loader, info, verify) share it, a writer that would replace their
stores (prepare, synth over a dataset) refuses while one reads, naming it; a reader refuses
while a writer rewrites; the kernel drops a killed holder's lock."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_user_error

from disktrain.cli import main
from disktrain.errors import DataError
from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.loader.loader import Loader
from disktrain.loader.pipeline import PackedLoader
from disktrain.storage.lock import read_lock, replacing, write_lock
from disktrain.storage.roots import epoch_root

LOADER = """
import sys
import numpy as np
import torch
import disktrain
from disktrain.storage.dataset import Dataset

loader = disktrain.Loader(sys.argv[1], "train", plan_reuse="cycle")
features = torch.from_numpy(np.asarray(Dataset(sys.argv[1]).features[:]))
wrong = 0
for i, batch in enumerate(loader):
    wrong += not torch.equal(batch.x, features[batch.n_id])
    if i == 0:
        print("ready", flush=True)
        sys.stdin.readline()
print(f"wrong {wrong} of {i + 1}", flush=True)
sys.stdin.readline()
"""
"""A Loader iterating the dataset ``argv[1]``: it says ready after its first batch, waits for
a line, then iterates on and says how many batches were not ``features[n_id]``."""

HOLD = """
import sys
from disktrain.storage.lock import read_lock, write_lock

lock = write_lock(sys.argv[1], "prepare") if sys.argv[2] == "write" else read_lock(sys.argv[1],
                                                                                  "Loader")
with lock:
    print("ready", flush=True)
    sys.stdin.readline()
"""
"""Holds the lock of ``argv[1]`` (``argv[2]``: write or read) until a line comes."""

PREPARE = ["--fanouts", "2,2", "--batch-size", "32", "--no-eval", "--no-progress"]


@contextlib.contextmanager
def holder(*args: str):
    """A process running ``python -c ARGS``, once it says ready; killed (SIGKILL) at the end."""
    proc = subprocess.Popen([sys.executable, "-c", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def say(proc: subprocess.Popen) -> str:
    """Send ``proc`` a line; its answer."""
    proc.stdin.write("\n")
    proc.stdin.flush()
    return proc.stdout.readline()


@pytest.mark.slow
def test_prepare_is_refused_while_a_loader_iterates_which_reads_right_batches(prepared,
                                                                              capsys):
    with holder(LOADER, str(prepared)) as loader:
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", str(prepared), *PREPARE])
        assert_user_error(exit_info.value.code, capsys.readouterr().err,
                          f"prepare: cannot rewrite {prepared} while it is in use (pid "
                          f"{loader.pid} is reading it: {sys.executable} -c ",
                          f"wait for it to finish (or stop it: kill {loader.pid}), then rerun")
        assert say(loader).startswith("wrong 0 of ")
    # killed: the kernel dropped its lock, and its note is removed
    assert main(["prepare", str(prepared), *PREPARE]) == 0
    assert not list(prepared.glob(".lock.*"))


def test_readers_coexist_info_and_verify_read_a_dataset_a_loader_holds(prepared, capsys):
    with holder(HOLD, str(prepared), "read"), Loader(prepared, plan_reuse="cycle") as mine:
        next(iter(mine))
        assert main(["info", str(prepared)]) == 0
        assert main(["verify", str(prepared)]) == 0
    assert "packed" in capsys.readouterr().out


def test_readers_are_refused_while_a_writer_rewrites(prepared, capsys):
    with holder(HOLD, str(prepared), "write") as writer:
        rewriting = f"(pid {writer.pid} is rewriting it: "
        with pytest.raises(DataError, match=rf"^Loader: cannot read .* \(pid {writer.pid} is "
                           rf"rewriting it: .* \(or stop it: kill {writer.pid}\), then retry$"):
            Loader(prepared)
        for command in ("info", "verify"):
            with pytest.raises(SystemExit) as exit_info:
                main([command, str(prepared)])
            assert_user_error(exit_info.value.code, capsys.readouterr().err,
                              f"{command}: cannot read {prepared} while it is being rewritten",
                              rewriting)
    with Loader(prepared, plan_reuse="cycle") as loader:  # killed: its lock is gone
        next(iter(loader))


def test_synth_over_a_dataset_is_refused_while_it_is_read(tmp_path):
    ds = synthesize(SynthConfig(out=tmp_path / "g", num_nodes=100, feature_dim=4,
                                progress=False))
    with holder(HOLD, str(ds), "read") as reader, pytest.raises(
            DataError, match=rf"^synth: cannot rewrite .* \(pid {reader.pid} is reading it"):
        synthesize(SynthConfig(out=ds, num_nodes=100, feature_dim=4, overwrite=True,
                               progress=False))


def test_in_one_process_writes_nest_and_a_reader_keeps_its_own_writer_out(prepared):
    with write_lock(prepared, "prepare"), write_lock(prepared, "prepare: sampling"):
        read_lock(prepared, "Loader").release()  # inside its own write: no lock of its own
    reading = read_lock(prepared, "Loader")
    mine = r"pid \d+ \(this process: close its Loader first\) is reading it: "
    with pytest.raises(DataError, match=mine), write_lock(prepared, "prepare"):
        pass
    epoch = epoch_root(prepared, 3) / "samples"
    epoch.mkdir(parents=True)
    with replacing(prepared, [epoch], "prepare: sampling"):
        pass  # a fresh epoch's store is its run's own: replaced under the run's reader
    with pytest.raises(DataError), replacing(prepared, [prepared / "samples"], "prepare"):
        pass
    reading.release()
    with replacing(prepared, [prepared / "samples"], "prepare"):
        pass
    assert sorted(p.name for p in Path(prepared).glob(".lock*")) == [".lock"]


def test_a_loader_dropped_in_a_reference_cycle_lets_a_prepare_in(prepared):
    gc.disable()
    try:
        loader = PackedLoader(prepared)
        loader.itself = loader
        del loader  # its hold goes only when the collector finds the cycle
        with write_lock(prepared, "prepare"):
            pass
    finally:
        gc.enable()


def test_a_second_run_on_a_checkpoint_directory_in_use_is_refused(tmp_path):
    """Two runs writing one checkpoint directory would prune each other's checkpoints: while
    one holds it, `train` refuses, naming the other process."""
    from helpers import prepare
    from tinygraphs import make_dataset

    from disktrain.models import ModelConfig
    from disktrain.train import TrainConfig, train
    from disktrain.train.checkpoint import CheckpointConfig

    path = make_dataset(tmp_path / "ds")
    prepare(path)
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(ckpt), "write"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "ready"
        cfg = TrainConfig(dataset=str(path), epochs=1, progress=False,
                          model=ModelConfig(hidden=8), checkpoint=CheckpointConfig(dir=str(ckpt)))
        with pytest.raises(DataError, match=f"train: cannot rewrite {ckpt} while it is in use "
                                            rf"\(pid {other.pid} "):
            train(cfg)
    finally:
        other.communicate("\n", timeout=30)
    assert train(cfg)["epochs"] == 1  # free again
