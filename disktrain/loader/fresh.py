"""Fresh epochs prepared while training runs: a bounded window of epoch roots on disk.

Epochs beyond those `disktrain prepare` sampled are sampled and packed, one root each
(:func:`disktrain.pack.prepare.prepare_epoch`), by one background process of rank 0
(:func:`disktrain.pack.prepare.serve_epochs`) while the epochs before them train, at a lower CPU
priority so that compute keeps its cores. At most
``ahead`` epochs are prepared ahead of the one training; each root is deleted once its epoch
has trained. Every rank reads the root rank 0 prepared, so the ranks must share the
dataset's filesystem (one machine, or a shared mount).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import torch

from disktrain.errors import DataError
from disktrain.loader.dist import broadcast_bytes
from disktrain.storage.roots import epoch_root


class FreshEpochs:
    """Rank 0 prepares epochs ``first`` .. ``last - 1`` ahead of training; every rank waits
    for the epoch it is about to train with :meth:`root`.

    Call :meth:`ahead_of` when an epoch starts training, :meth:`root` before it, :meth:`done`
    once it has trained, and :meth:`close` at the end (it stops the process).
    """

    def __init__(self, dataset: str | Path, first: int, last: int, ahead: int, is_main: bool,
                 device: torch.device):
        if ahead < 1:
            raise ValueError(f"ahead must be >= 1, got {ahead}")
        self.dataset, self.first, self.last, self.ahead = Path(dataset), first, last, ahead
        self.is_main, self.device = is_main, device
        self._asked: set[int] = set()
        self._ready: dict[int, str] = {}
        self._proc = None
        self._deleting: list[threading.Thread] = []

    def _start(self) -> None:
        # a fresh interpreter (not multiprocessing: it would re-run the user's __main__)
        env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "disktrain.pack.prepare", "--serve-epochs", str(self.dataset)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self._results: queue.Queue = queue.Queue()
        threading.Thread(target=self._collect, args=(self._proc.stdout,), daemon=True,
                         name="disktrain-fresh-results").start()

    def _collect(self, lines) -> None:
        for line in lines:
            epoch, _, error = line.rstrip("\n").partition("\t")
            self._results.put((int(epoch), error))

    def sweep(self, keep_from: int) -> None:
        """Rank 0: remove epoch roots left behind (an interrupted run) outside the window
        ``keep_from`` .. ``keep_from + ahead``."""
        parent = epoch_root(self.dataset, 0).parent
        if not self.is_main or not parent.is_dir():
            return
        keep = {epoch_root(self.dataset, e).name
                for e in range(keep_from, keep_from + self.ahead + 1)}
        for path in parent.iterdir():
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def ahead_of(self, epoch: int) -> None:
        """Rank 0: ask for the fresh epochs in ``epoch`` .. ``epoch + ahead`` not yet asked."""
        if not self.is_main:
            return
        for e in range(max(epoch, self.first), min(epoch + self.ahead + 1, self.last)):
            if e not in self._asked:
                if self._proc is None:
                    self._start()
                self._proc.stdin.write(f"{e}\n")
                self._proc.stdin.flush()
                self._asked.add(e)

    def root(self, epoch: int) -> Path:
        """The prepared root of fresh epoch ``epoch``, once rank 0's preparer has finished it
        (every rank; a collective when distributed). Raises DataError when it failed."""
        error = None
        if self.is_main:
            self.ahead_of(epoch)
            error = self._wait(epoch)
        error = broadcast_bytes(error.encode() if self.is_main else None, self.device)
        if error:
            raise DataError(f"{self.dataset}: preparing fresh epoch {epoch} failed: "
                            f"{error.decode()}")
        return epoch_root(self.dataset, epoch)

    def _wait(self, epoch: int) -> str:
        while epoch not in self._ready:
            try:
                got, error = self._results.get(timeout=1.0)
            except queue.Empty:
                if self._proc.poll() is not None:
                    return (f"the preparing process ended (exit code {self._proc.returncode}) "
                            f"before epoch {epoch} was ready")
                continue
            self._ready[got] = error
        return self._ready.pop(epoch)

    def done(self, epoch: int) -> None:
        """Rank 0: delete fresh epoch ``epoch``'s root (it has trained), on a thread: removing
        thousands of chunk files takes seconds on some filesystems, which the next epoch
        need not wait for (:meth:`close` waits for them; a root left by a killed run is
        swept by the next)."""
        if self.is_main and epoch >= self.first:
            t = threading.Thread(target=shutil.rmtree, args=(epoch_root(self.dataset, epoch),),
                                 kwargs={"ignore_errors": True}, name="disktrain-delete-epoch",
                                 daemon=True)
            t.start()
            self._deleting.append(t)

    def close(self) -> None:
        """Stop the preparing process (an epoch being prepared is abandoned: its partial
        stores resume or are replaced next time) and wait for the deletions of trained epochs."""
        for t in self._deleting:
            t.join()
        self._deleting = []
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()  # an idle preparer ends at the end of its input
            self._proc.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.terminate()
            self._proc.wait()
        self._proc = None

