"""The head script's stop signals and its clean-up of a session, without Ray (a fake
``ray start``); tests/test_ray.py stops a real head with SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import pytest

from disktrain.cluster.head import (
    STOP_SIGNALS,
    Head,
    HeadConfig,
    StopRequested,
    StopSignals,
    session_pids,
)


@pytest.fixture
def signals():
    s = StopSignals()
    try:
        yield s
    finally:
        s.restore()


def test_ctrl_c_kill_and_a_closed_terminal_stop_the_head():
    assert set(STOP_SIGNALS) == {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_raises_while_armed(signals, signum):
    signals.arm()
    with pytest.raises(StopRequested) as e:
        signal.raise_signal(signum)
    assert e.value.signum == signum
    signal.raise_signal(signum)  # a second one while the first is handled: held, not raised
    assert signals.received == signum


def test_a_stop_signal_while_disarmed_is_raised_by_arm(signals):
    signal.raise_signal(signal.SIGTERM)
    with pytest.raises(StopRequested, match="SIGTERM"):
        signals.arm()


def test_restore_puts_the_previous_handlers_back():
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    StopSignals().restore()
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


FAKE_RAY = """\
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a ray start that does not stop its processes
# a worker in a process group of its own, as Ray's raylet starts them
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
time.sleep(600)
"""


def test_stop_kills_what_ray_start_leaves_in_its_session(tmp_path):
    fake = tmp_path / "ray"
    fake.write_text(f"#!{sys.executable}\n{FAKE_RAY}")
    fake.chmod(0o755)
    head = Head(HeadConfig(ray=str(fake), dashboard_port=0))
    try:
        sid = head.process.pid
        assert _wait_for(lambda: len(session_pids(sid)) == 2), session_pids(sid)
        worker = next(p for p in session_pids(sid) if p != sid)
        assert os.getpgid(worker) != sid  # out of reach of killpg(ray start's group)
        head.stop(timeout=1)
        assert session_pids(sid) == []
    finally:
        for pid in session_pids(head.process.pid):
            os.kill(pid, signal.SIGKILL)
        head.process.kill()
        head.process.wait()


def test_session_pids_lists_live_processes_only():
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        assert session_pids(proc.pid) == [proc.pid]
        proc.kill()
        assert _wait_for(lambda: session_pids(proc.pid) == [])  # a zombie until reaped
    finally:
        proc.kill()
        proc.wait()
    assert session_pids(os.getsid(0)) != []  # this process's own session
