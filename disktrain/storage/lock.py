"""Dataset locks: the readers of a dataset share ``DATASET/.lock``; a writer that would replace
or delete a store they may read holds it alone, or refuses.

``flock(2)``, never waiting: a conflict is a :class:`~disktrain.errors.DataError` naming the
other processes and what to do. Each hold leaves a note beside the lock file
(``DATASET/.lock.<pid>-<random>``: host, pid, command line, reading or rewriting) for a refusal
to name; the kernel drops a lock when its process exits, however it exits, and the note of a
process gone is ignored and removed. In one process, exclusive holds nest (``prepare`` holds
the lock while its sampling and packing take it again) and a reader inside one needs no lock of
its own; a reader keeps a writer of its own process out as it keeps any other. A directory
where the lock file can be neither made nor opened (read-only, without one) is not locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import shlex
import socket
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

from disktrain.errors import DataError
from disktrain.storage.atomic import atomic_write_bytes, start_tag
from disktrain.storage.roots import EVAL_SPLITS, eval_root, train_root

LOCK = ".lock"
_writing: dict[str, int] = {}
"""The datasets this process holds exclusively, by real path: how deeply nested."""
_guard = threading.Lock()


class DatasetLock:
    """A reader's hold on a dataset's lock until :meth:`release` (or garbage collection)."""

    def __init__(self, fd: int | None = None, note: Path | None = None):
        self._fd, self._note = fd, note

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            _remove(self._note)
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown: the kernel drops it
            pass


def read_lock(dataset: str | os.PathLike, step: str) -> DatasetLock:
    """Hold ``dataset``'s lock shared, as a reader, until released; ``step`` (e.g. "Loader")
    names the reader in the :class:`DataError` that names the writer holding it instead."""
    if os.path.realpath(dataset) in _writing:
        return DatasetLock()  # this process is its writer
    fd = _lock(Path(dataset), fcntl.LOCK_SH, step)
    return DatasetLock(fd, None if fd is None else _leave_note(Path(dataset), "reading"))


@contextlib.contextmanager
def write_lock(dataset: str | os.PathLike, step: str) -> Iterator[None]:
    """Hold ``dataset``'s lock alone for the block, to replace or delete stores its readers
    may read; ``step`` (e.g. "prepare") names the writer in the :class:`DataError` that names
    the readers (or writer) holding it instead."""
    key, path = os.path.realpath(dataset), Path(dataset)
    with _guard:
        fd = None if key in _writing else _lock(path, fcntl.LOCK_EX, step)
        _writing[key] = _writing.get(key, 0) + 1
    hold = DatasetLock(fd, None if fd is None else _leave_note(path, "rewriting"))
    try:
        yield
    finally:
        with _guard:
            _writing[key] -= 1
            if not _writing[key]:
                del _writing[key]
            hold.release()


def replacing(dataset: str | os.PathLike, stores: Iterable[Path],
              step: str) -> contextlib.AbstractContextManager:
    """:func:`write_lock` when one of ``stores`` (sample or packed stores about to be
    replaced) exists where any reader of ``dataset`` may read it: the training root or an
    evaluation root (a fresh epoch's root is read by the run preparing it alone); else
    nothing to hold."""
    shared = {train_root(dataset).resolve(),
              *(eval_root(dataset, split).resolve() for split in EVAL_SPLITS)}
    if any(store.exists() and store.parent.resolve() in shared for store in stores):
        return write_lock(dataset, step)
    return contextlib.nullcontext()


def _lock(directory: Path, how: int, step: str) -> int | None:
    """The lock file of ``directory`` open and flocked ``how``; None where it cannot be
    (no such file in a read-only directory, a filesystem without locks)."""
    try:
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        try:
            fd = os.open(directory / LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
    try:
        if _flock(fd, how):
            return fd
    except OSError:
        os.close(fd)
        return None
    os.close(fd)
    raise _refusal(directory, how == fcntl.LOCK_EX, step)


def _flock(fd: int, how: int) -> bool:
    """Whether ``fd`` is flocked ``how`` now, or once the loaders this process dropped in a
    reference cycle are collected (their holds go with them)."""
    for _ in range(2):
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            gc.collect()
    return False


def _refusal(directory: Path, exclusive: bool, step: str) -> DataError:
    holders = _holders(directory)
    who = "; ".join(map(_who, holders)) or "its lock is held"
    pids = " ".join(str(h["pid"]) for h in holders if not _mine(h))
    stop = f" (or stop it: kill {pids})" if pids else ""
    want, state, then = (("rewrite", "in use", "rerun") if exclusive
                         else ("read", "being rewritten", "retry"))
    return DataError(f"{step}: cannot {want} {directory} while it is {state} ({who}); wait for "
                     f"it to finish{stop}, then {then}")


def _mine(holder: dict) -> bool:
    return holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()


def _who(holder: dict) -> str:
    where = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
    if _mine(holder):
        where = " (this process: close its Loader first)"
    return f"pid {holder['pid']}{where} is {holder['doing']} it: {holder['command']}"


def _holders(directory: Path) -> list[dict]:
    """Who holds ``directory``'s lock, from their notes; the note of a process gone is
    removed."""
    holders, host = [], socket.gethostname()
    for note in sorted(directory.glob(f"{LOCK}.*")):
        try:
            holder = json.loads(note.read_text())
            gone = holder["host"] == host and start_tag(int(holder["pid"])) != holder["start"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if gone:
            _remove(note)
        else:
            holders.append(holder)
    return holders


def _leave_note(directory: Path, doing: str) -> Path | None:
    """Say beside the lock file who holds it (None where the directory is read-only), and
    remove the notes of processes gone."""
    _holders(directory)
    pid = os.getpid()
    note = directory / f"{LOCK}.{pid}-{uuid.uuid4().hex[:8]}"
    text = json.dumps({"host": socket.gethostname(), "pid": pid, "start": start_tag(pid),
                       "doing": doing, "command": _command()})
    try:
        atomic_write_bytes(note, text.encode())
    except (OSError, DataError):
        return None
    return note


def _command() -> str:
    """This process's command line on one line, at most 200 characters."""
    try:
        args = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        argv = [a.decode(errors="replace") for a in args]
    except OSError:
        argv = [sys.executable, *sys.argv]
    return " ".join(shlex.join(argv).split())[:200]


def _remove(note: Path | None) -> None:
    if note is not None:
        with contextlib.suppress(OSError):
            note.unlink(missing_ok=True)
