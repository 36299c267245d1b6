"""Atomic writes: build under a temporary sibling, rename into place at the end.

A temporary's name says who owns it: ``NAME.tmp-<host>-<pid>-<start>-<random>`` (``.old-``
for a replaced directory awaiting deletion), where ``host`` hashes the host name and
``start`` the boot id and the process's start time, so a reused pid or a reboot does not
pass for the owner. A failed run removes its temporary itself; a killed one (SIGKILL) cannot,
so the first write of a process into a directory removes the temporaries there whose owner is
gone, and says so on stderr. Temporaries of live processes and of other hosts (a shared
filesystem) are left alone, as are resumable partial stores (``samples.partial``).

The same owner identity (:func:`owner`) marks what a run keeps beyond one write (a training
run's fresh epochs, :func:`disktrain.storage.roots.new_run`), and :func:`require_writable`
refuses up front a directory a run could not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from disktrain.errors import ConfigError
from disktrain.storage.io import disk_full_errors

_TEMPORARY = re.compile(r"\.(?P<kind>tmp|old)-(?P<owner>[0-9a-f]{8}-[0-9]+-[0-9a-f]{8})-"
                        r"[0-9a-f]{8}$")
_swept: set[tuple[int, str]] = set()
_sweep_lock = threading.Lock()


def _hash8(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


@cache
def _host() -> str:
    return _hash8(socket.gethostname())


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_tag(pid: int) -> str | None:
    """Identity of the live process ``pid`` on this host (boot id and start time), or None
    if there is no such process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: liveness only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return _hash8("")
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
    if fields[0] in ("Z", "X"):
        return None
    return _hash8(f"{_boot_id()}:{fields[19]}")  # field 22 of stat: start time


def owner() -> str:
    """This process as the owner of what it writes: ``<host>-<pid>-<start>`` (above)."""
    pid = os.getpid()
    return f"{_host()}-{pid}-{start_tag(pid)}"


def owner_gone(tag: str) -> bool:
    """Whether the owner ``tag`` (:func:`owner`; a malformed one counts as gone) ran on this
    host and has ended."""
    parts = tag.strip().split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return True
    host, pid, start = parts
    return host == _host() and start_tag(int(pid)) != start


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the temporary (or replaced) sibling of a write in progress."""
    return _TEMPORARY.search(Path(path).name) is not None


def temporary_name(final: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh sibling of ``final`` owned by this process (``kind``: tmp or old)."""
    final = Path(final)
    return final.with_name(f"{final.name}.{kind}-{owner()}-{uuid.uuid4().hex[:8]}")


def remove_stale(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``directory`` whose owner process is gone; return them."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = _TEMPORARY.search(entry.name)
        if m is None or not owner_gone(m["owner"]):
            continue
        path = Path(entry.path)
        is_dir = entry.is_dir(follow_symlinks=False)
        if is_dir:
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        what = "directory" if is_dir else "file"
        print(f"disktrain: removed stale temporary {what} {path} left by an interrupted run",
              file=sys.stderr)
    return removed


def _sweep_once(directory: Path) -> None:
    """:func:`remove_stale` on the first write of this process into ``directory``."""
    key = (os.getpid(), str(directory.absolute()))
    with _sweep_lock:
        if key in _swept:
            return
        remove_stale(directory)
        _swept.add(key)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` only if the block succeeds.

    On any exception the temporary directory is removed, so a crash never leaves a
    half-written store under ``final``; a full disk met in the block is a
    :class:`~disktrain.errors.DiskSpaceError` naming the file (or ``final``).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(final.parent)
    tmp = temporary_name(final)
    try:
        with disk_full_errors(final):
            tmp.mkdir()
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(src: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory ``src`` to ``final``, replacing what is there.

    ``final`` is never missing or half-written: an old one is renamed aside first and
    deleted only after ``src`` is in place.
    """
    src, final = Path(src), Path(final)
    _sweep_once(final.parent)
    if final.exists():
        old = temporary_name(final, "old")
        os.rename(final, old)
        os.rename(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, final)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    _sweep_once(path.parent)
    tmp = temporary_name(path.with_name(f".{path.name}"))
    try:
        with disk_full_errors(path), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_problem(directory: str | os.PathLike) -> str | None:
    """Why this process cannot create files in the existing ``directory``, or None: os.access,
    then a file made and removed (root passes os.access on many a directory it cannot write)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return ("a read-only filesystem" if os.statvfs(directory).f_flag & os.ST_RDONLY
                else "no write permission for this user")
    probe = temporary_name(Path(directory) / ".write-probe")
    try:
        probe.touch(exist_ok=False)
    except OSError as e:
        return e.strerror
    probe.unlink()
    return None


def require_writable(directory: str | os.PathLike, what: str, fix: str) -> None:
    """ConfigError unless files can be made in ``directory`` (or, not there yet, the directory
    it would be made in); the message says ``what`` goes there and ``fix``, how to go elsewhere."""
    path = Path(directory).absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    if (why := write_problem(path)) is not None:
        raise ConfigError(f"{path} is not writable ({why}): {what}; {fix}")
