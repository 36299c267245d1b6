"""Where a training run writes (issue 25): fresh epochs in a directory of the run's own, so
runs on one dataset never meet; a read-only dataset refused up front unless the run has a
writable --run-dir; the fresh-epoch preparer gone with a killed trainer, without a traceback,
and its run directory removed by the next run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import SAMPLE, assert_user_error, prepare
from tinygraphs import make_dataset

from disktrain.cli import main
from disktrain.storage import atomic
from disktrain.storage.roots import OWNER, new_run, remove_stale_runs, runs_dir
from disktrain.train.checkpoint import checkpoint_files, checkpoint_name

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ("--hidden", "8", "--max-batches", "2", "--no-progress")


@pytest.fixture
def one_epoch(tmp_path) -> Path:
    """A prepared tiny dataset holding one sampled epoch: later ones are prepared fresh."""
    path = make_dataset(tmp_path / "ds")
    prepare(path, replace(SAMPLE, epochs=1), evaluation=True)
    return path


def _train(dataset: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "disktrain", "train", str(dataset), *TRAIN, *args]


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie no reaper collected counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_stale_run_directories_go_live_ones_stay(tmp_path, capsys):
    mine = new_run(tmp_path)
    dead = runs_dir(tmp_path) / "run-dead"
    dead.mkdir()
    (dead / OWNER).write_text(f"{atomic.owner().split('-')[0]}-{2**22 + 1}-00000000")
    legacy = runs_dir(tmp_path) / "e000003"  # an earlier disktrain's, without an owner
    legacy.mkdir()
    assert remove_stale_runs(runs_dir(tmp_path)) == [legacy, dead]
    assert sorted(runs_dir(tmp_path).iterdir()) == [mine]
    err = capsys.readouterr().err
    assert f"disktrain: removed stale run directory {dead} (fresh epochs) left by a training " \
           "run that is no longer running" in err


@pytest.mark.slow
def test_two_trains_on_one_dataset_at_once(one_epoch, tmp_path):
    """Both prepare their fresh epochs 1 and 2 at once, each in its own run directory (they
    collided in DS/epochs before)."""
    runs = [subprocess.Popen(_train(one_epoch, "--epochs", "3", "--checkpoint-dir",
                                    str(tmp_path / f"ck{i}")),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        assert json.loads(out.splitlines()[-1])["fresh_epochs"] == 2
    assert list(runs_dir(one_epoch).iterdir()) == []  # each removed its own


@pytest.fixture
def read_only(one_epoch, tmp_path, monkeypatch):
    """``one_epoch`` where this process cannot write it: a read-only bind mount of it where
    this test may mount, else (no mount permission: a container without CAP_SYS_ADMIN) the
    writability probe told so for its directory. The tests run as root, whom chmod a-w does
    not stop."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(one_epoch), str(mount)],
                          capture_output=True, check=False) if shutil.which("mount") else None
    if done is not None and done.returncode == 0:
        try:
            if os.access(mount, os.W_OK):
                pytest.skip("a read-only bind mount here stays writable")
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)
        return
    probe = atomic.write_problem
    monkeypatch.setattr(atomic, "write_problem", lambda d: "a read-only filesystem (simulated)"
                        if Path(d).is_relative_to(one_epoch) else probe(d))
    yield one_epoch


def test_read_only_dataset_refused_before_anything_loads(read_only, monkeypatch, capsys):
    def loads(*args, **kw):
        raise AssertionError("the loader was built")

    monkeypatch.setattr("disktrain.train.loop.Loader", loads)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(read_only), *TRAIN])
    assert_user_error(exit_info.value.code, capsys.readouterr().err,
                      f"{read_only} is not writable (a read-only filesystem",
                      f"the run's checkpoints go to {read_only / 'checkpoints'}",
                      "--run-dir DIR (TrainConfig.run_dir)")


@pytest.mark.slow
def test_run_dir_trains_a_read_only_dataset_and_resumes(read_only, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(read_only), *TRAIN, "--epochs", "2", "--run-dir",
                 str(run_dir)]) == 0
    assert main(["train", str(read_only), *TRAIN, "--epochs", "3", "--run-dir",
                 str(run_dir), "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["resumed_at"] == [2, 0] and summary["fresh_epochs"] == 2
    assert checkpoint_files(run_dir / "checkpoints")[0].name == checkpoint_name(3, 0)
    assert list(runs_dir(run_dir).iterdir()) == []


@pytest.mark.slow
def test_killed_trainer_takes_its_preparer_along(one_epoch, tmp_path, capsys):
    """SIGKILL the trainer while its preparer works through 20 epochs asked ahead: the
    preparer ends at once, without a traceback; the next run removes the run directory."""
    trainer = subprocess.Popen(_train(one_epoch, "--epochs", "30", "--prepare-ahead", "20",
                                      "--checkpoint-dir", str(tmp_path / "ck")),
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 120
        while not (started := list(runs_dir(one_epoch).glob("*/e000001"))):
            assert trainer.poll() is None and time.monotonic() < deadline, \
                "no fresh epoch was started"
            time.sleep(0.01)
        preparer = _preparer_of(started[0].parent)
        trainer.kill()
        killed = time.monotonic()
        _, err = trainer.communicate(timeout=30)  # its stderr ends once the preparer's does
        while not _gone(preparer) and time.monotonic() - killed < 2:
            time.sleep(0.02)
        assert _gone(preparer), "the preparer outlived its trainer by 2 s"
        assert "Traceback" not in err and "BrokenPipe" not in err, err[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            trainer.kill()
    capsys.readouterr()
    new_run(one_epoch)
    assert f"removed stale run directory {started[0].parent}" in capsys.readouterr().err


def _preparer_of(run: Path) -> int:
    """The pid of the process preparing fresh epochs in ``run``."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(run) in (proc / "cmdline").read_text():
                return int(proc.name)
    raise AssertionError(f"no process prepares {run}")
