"""A Ray head on this machine, bound to 127.0.0.1, and how our code reaches a Ray cluster.

Start a local head (blocks until Ctrl-C, SIGTERM or SIGHUP, then stops every process it
started)::

    python -m disktrain.cluster.head --num-cpus 4

then submit work to it (the token is the one the head was started with)::

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        -- python -m disktrain.cluster.job train DATASET --workers 2

Loopback only: ``ray start`` turns ``--node-ip-address 127.0.0.1`` into the machine's
routable address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set, which makes Ray a
single-machine cluster bound to 127.0.0.1; a process that connects to such a head with
``ray.init`` needs the same setting (jobs inherit it from the head). ``--host ADDR`` starts
a head for a multi-node cluster instead, reachable on ADDR.

Token authentication: with ``RAY_AUTH_MODE=token`` the head, every node and every client
(``ray job submit``, ``ray.init``) must share one token, from ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (``ray get-auth-token --generate``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from disktrain.errors import check_min

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Environment that keeps a Ray instance on this machine bound to 127.0.0.1."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop the head script: Ctrl-C, ``kill`` or a process manager, a closed
terminal."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free now on ``host`` (bind to port 0)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct TCP ports free now on ``host``: bound at once, then released (ports
    drawn one at a time can repeat, and Ray refuses two components on one port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """A Ray head started with ``ray start --head``."""

    host: str = LOOPBACK
    """Address the head binds to; anything but 127.0.0.1 is for multi-node clusters."""
    port: int = 0
    """GCS port (0: a free one)."""
    dashboard_port: int = 8265
    """Dashboard and job-submission port (0: a free one)."""
    num_cpus: int | None = None
    """Logical CPUs (default: the machine's); Ray Train needs one per worker."""
    num_gpus: int | None = None
    """GPUs (default: detected)."""
    temp_dir: str | None = None
    """Ray's session directory root (default: Ray's, /tmp/ray)."""
    ray: str = str(Path(sys.executable).with_name("ray"))
    """The ``ray`` executable; the head runs jobs' bare ``python`` from its environment."""

    def __post_init__(self):
        for name in ("port", "dashboard_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ValueError(f"{name} must be in [0, 65536), got {getattr(self, name)}")
        check_min(self, 0, "num_cpus", "num_gpus")

    @property
    def loopback(self) -> bool:
        return self.host in (LOOPBACK, "localhost")


@dataclass(frozen=True)
class HeadCommand:
    """How to start a head: the command, its extra environment and its ports."""

    argv: list[str]
    env: dict[str, str]
    port: int
    dashboard_port: int


def head_command(cfg: HeadConfig) -> HeadCommand:
    """The ``ray start --head --block`` command for ``cfg``.

    Every port is fixed up front (free ones for 0) so nothing collides with another Ray
    instance on the same machine.
    """
    bind = LOOPBACK if cfg.loopback else cfg.host
    flags = ("--ray-client-server-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    fresh = iter(free_ports(2 + len(flags), LOOPBACK if cfg.loopback else ""))
    pick = (lambda p: p or next(fresh))
    port, dashboard = pick(cfg.port), pick(cfg.dashboard_port)
    argv = [cfg.ray, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", bind, "--port", str(port),
            "--dashboard-host", bind, "--dashboard-port", str(dashboard)]
    for flag in flags:
        argv += [flag, str(pick(0))]
    for flag, value in (("--num-cpus", cfg.num_cpus), ("--num-gpus", cfg.num_gpus),
                        ("--temp-dir", cfg.temp_dir)):
        if value is not None:
            argv += [flag, str(value)]
    return HeadCommand(argv, dict(LOOPBACK_ENV) if cfg.loopback else {}, port, dashboard)


def session_pids(sid: int) -> list[int]:
    """The live processes (zombies aside) of session ``sid``, read from /proc (none where
    there is no /proc)."""
    pids = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            try:
                stat = Path("/proc", name, "stat").read_text() if name.isdigit() else ""
            except OSError:  # gone meanwhile
                continue
            # after "pid (comm)": state, ppid, pgrp, session, ...
            fields = stat.rpartition(")")[2].split()
            if fields and fields[0] != "Z" and int(fields[3]) == sid:
                pids.append(int(name))
    return pids


class Head:
    """A running head: a ``ray start --head --block`` child process, in a session of its own.

    ``stop()`` (or leaving the ``with`` block) sends it SIGTERM, upon which Ray stops every
    process of this head, and no other Ray instance on the machine (unlike ``ray stop``).
    """

    def __init__(self, cfg: HeadConfig = HeadConfig(), env: dict[str, str] | None = None,
                 log: str | Path | None = None):
        cmd = head_command(cfg)
        self.cfg, self.port, self.dashboard_port = cfg, cmd.port, cmd.dashboard_port
        self.env = {**os.environ, **(env or {}), **cmd.env}
        # no drain wait on SIGTERM: nothing serves traffic through this head
        self.env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        with open(log or os.devnull, "ab") as out:
            self.process = subprocess.Popen(cmd.argv, env=self.env,
                                            stdout=out if log else None,
                                            stderr=subprocess.STDOUT if log else None,
                                            start_new_session=True)

    @property
    def host(self) -> str:
        return LOOPBACK if self.cfg.loopback else self.cfg.host

    @property
    def address(self) -> str:
        """The GCS address (``ray.init`` and ``ray start --address``)."""
        return f"{self.host}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard / job-submission address (``ray job submit --address``)."""
        return f"http://{self.host}:{self.dashboard_port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the dashboard accepts connections; raise if the head died."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with status {self.process.returncode}")
            try:
                urllib.request.urlopen(self.dashboard_url + "/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers (401 without a token): up
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the Ray head at {self.dashboard_url} did not come up in "
                           f"{timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> int:
        """Stop this head and every process it started; return ray start's exit status.

        SIGTERM to ``ray start``, which stops its processes; then SIGKILL to whatever is
        left in the head's session (started for it alone; Ray gives each worker a process
        group of its own in it), waiting up to ``timeout`` seconds for each step.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        sid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGKILL)  # ray start's own group (also without /proc)
        deadline = time.monotonic() + timeout
        while (left := session_pids(sid)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        return self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray; return True if this call did ``ray.init`` (so the
    caller should ``ray.shutdown()``), False if it was already connected.

    ``address``: "auto" (the cluster this machine belongs to; the one a job runs in), a GCS
    address, or None: ``RAY_ADDRESS`` if set, else a new local instance with ``num_cpus``
    logical CPUs (never the cluster of the last ``ray start``, which may be gone). A new
    local instance binds 127.0.0.1, and a 127.0.0.1 address is reached as such, when this is
    the process's first ``import ray`` (see LOOPBACK_ENV).
    """
    local = address is None and not os.environ.get("RAY_ADDRESS")
    loopback = address is not None and address.rpartition(":")[0] in (LOOPBACK, "localhost")
    if (local or loopback) and "ray" not in sys.modules:
        for k, v in LOOPBACK_ENV.items():
            os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return False
    if local:
        # "local": not the cluster /tmp/ray/ray_current_cluster names (maybe a dead head);
        # with its dashboard (on 127.0.0.1): Ray Train's clean-up polls its state API
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                 dashboard_host=LOOPBACK)
    else:
        ray.init(address=address)
    return True


def has_token() -> bool:
    """Whether a Ray authentication token is configured for this user."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).exists()


class StopRequested(Exception):
    """One of STOP_SIGNALS arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """STOP_SIGNALS raise :class:`StopRequested` in the main thread while armed.

    One that arrives while disarmed is held, and ``arm()`` raises it: no signal falls
    between starting a process and knowing that it must be stopped, and none interrupts
    the stop itself. ``restore()`` puts the previous handlers back.
    """

    def __init__(self):
        self.received: int | None = None
        self.armed = False
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
        if self.armed:
            self.armed = False  # once: a second signal must not cut the stop short
            raise StopRequested(signum)

    def arm(self) -> None:
        self.armed = True  # before the check: a signal in between is raised by the handler
        if self.received is not None:
            self.armed = False
            raise StopRequested(self.received)

    def disarm(self) -> None:
        self.armed = False

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Start a head and block until a stop signal (SIGINT, SIGTERM or SIGHUP), then stop
    every process it started; return 0, or 1 if ``ray start`` exited on its own."""
    p = argparse.ArgumentParser(
        prog="python -m disktrain.cluster.head",
        description="Start a Ray head on this machine (bound to 127.0.0.1 unless --host) "
        "and block until interrupted; then stop it.")
    p.add_argument("--host", default=LOOPBACK,
                   help="address to bind (default: %(default)s; another one for multi-node)")
    p.add_argument("--port", type=int, default=0, help="GCS port (default: a free one)")
    p.add_argument("--dashboard-port", dest="dashboard_port", type=int, default=8265,
                   help="dashboard / job submission port (default: %(default)s)")
    p.add_argument("--num-cpus", dest="num_cpus", type=int, help="logical CPUs")
    p.add_argument("--num-gpus", dest="num_gpus", type=int, help="GPUs")
    p.add_argument("--temp-dir", dest="temp_dir", help="Ray's temporary directory root")
    args = p.parse_args(argv)
    try:
        cfg = HeadConfig(**vars(args))
    except ValueError as e:
        p.error(str(e))
    env = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    signals, head = StopSignals(), None
    try:
        signals.arm()
        if env["RAY_AUTH_MODE"] == "token" and not has_token():
            subprocess.run([cfg.ray, "get-auth-token", "--generate"], check=True,
                           stdout=subprocess.DEVNULL)
        signals.disarm()  # held until `head` names the process to stop
        head = Head(cfg, env=env)
        signals.arm()
        head.wait_ready()
        print(f"Ray head started on {head.address}, dashboard {head.dashboard_url} "
              f"(ray start pid {head.process.pid}; token authentication: "
              f"{env['RAY_AUTH_MODE']}).\nSubmit work with:\n"
              f"  RAY_AUTH_MODE={env['RAY_AUTH_MODE']} ray job submit --address "
              f"{head.dashboard_url} --working-dir . -- {sys.executable} -m "
              "disktrain.cluster.job train DATASET --workers 2\n"
              "(the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
              "~/.ray/auth_token, as for the head)\n"
              + (f"Connect a driver with ray.init(address='{head.address}') after "
                 f"export {' '.join(f'{k}={v}' for k, v in LOOPBACK_ENV.items())}\n"
                 if cfg.loopback else "")
              + "Ctrl-C (or SIGTERM, SIGHUP) stops the head.", flush=True)
        status = head.process.wait()
        print(f"ray start exited on its own with status {status}", file=sys.stderr)
        return 1
    except StopRequested as e:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"{e}: stopping the Ray head", file=sys.stderr, flush=True)
        return 0
    finally:
        signals.disarm()
        if head is not None:
            head.stop()
        signals.restore()


if __name__ == "__main__":
    sys.exit(main())
