"""Fresh epochs prepared while training runs: a bounded window of epoch roots on disk.

Epochs beyond those `disktrain prepare` sampled are sampled and packed, one root each
(:func:`disktrain.pack.prepare.prepare_epoch`), by one background process of rank 0 while the
epochs before them train, at a lower CPU priority so that compute keeps its cores. At most
``ahead`` epochs are prepared ahead of the one training; each root is deleted once its epoch
has trained. The roots live in a directory of the run's own (``new_run`` of
:mod:`disktrain.storage.roots`: under the dataset, or under the run directory a read-only
dataset needs), removed when the run closes, or by a later run when this one was killed; so
runs sharing a dataset never meet. The process ends with the trainer, even a killed one (it
watches its input). Every rank reads the roots rank 0 prepared, so the ranks must share that
filesystem (one machine, or a shared mount).
"""

from __future__ import annotations

import json
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
from disktrain.storage.atomic import require_writable
from disktrain.storage.roots import epoch_root, new_run


class FreshEpochs:
    """Rank 0 prepares epochs ``first`` .. ``last - 1`` ahead of training, in a directory of
    its own under ``run_dir`` (the dataset, or a writable directory of the run); every rank
    waits for the epoch it is about to train with :meth:`root`.

    Call :meth:`ahead_of` when an epoch starts training, :meth:`root` before it, :meth:`done`
    once it has trained, and :meth:`close` at the end (it stops the process and removes the
    run's directory).
    """

    def __init__(self, dataset: str | Path, run_dir: str | Path, first: int, last: int,
                 ahead: int, is_main: bool, device: torch.device):
        if ahead < 1:
            raise ValueError(f"ahead must be >= 1, got {ahead}")
        self.dataset, self.run_dir = Path(dataset), Path(run_dir)
        self.first, self.last, self.ahead = first, last, ahead
        self.is_main, self.device = is_main, device
        self.run: Path | None = None
        """Rank 0: this run's directory of epoch roots, once the process started."""
        self._asked: set[int] = set()
        self._ready: dict[int, str] = {}
        self._proc = None
        self._deleting: list[threading.Thread] = []

    def _start(self) -> None:
        require_writable(self.run_dir, "fresh epochs are prepared there (plan_reuse 'fresh')",
                         "give the run a writable directory: disktrain train --run-dir DIR, "
                         "or Loader(..., run_dir=DIR)")
        self.run = new_run(self.run_dir)
        # a fresh interpreter (not multiprocessing: it would re-run the user's __main__), in a
        # process group of its own: a Ctrl-C is the trainer's, whose close() stops it
        env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "disktrain.pack.prepare", "--serve-epochs", str(self.dataset),
             str(self.run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            bufsize=1, env=env, process_group=0)
        self._results: queue.Queue = queue.Queue()
        threading.Thread(target=self._collect, args=(self._proc.stdout,), daemon=True,
                         name="disktrain-fresh-results").start()

    def _collect(self, lines) -> None:
        for line in lines:
            epoch, _, error = line.rstrip("\n").partition("\t")
            self._results.put((int(epoch), error))

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
        answer = None
        if self.is_main:
            self.ahead_of(epoch)
            error = self._wait(epoch)
            answer = json.dumps({"error": error,
                                 "root": str(epoch_root(self.run, epoch))}).encode()
        answer = json.loads(broadcast_bytes(answer, self.device))
        if answer["error"]:
            raise DataError(f"{self.dataset}: preparing fresh epoch {epoch} failed: "
                            f"{answer['error']}")
        return Path(answer["root"])

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
        need not wait for (:meth:`close` waits for them)."""
        if self.is_main and epoch >= self.first:
            t = threading.Thread(target=shutil.rmtree, args=(epoch_root(self.run, epoch),),
                                 kwargs={"ignore_errors": True}, name="disktrain-delete-epoch",
                                 daemon=True)
            t.start()
            self._deleting.append(t)

    def close(self) -> None:
        """Stop the preparing process (an epoch being prepared is abandoned), wait for the
        deletions of trained epochs and remove the run's directory."""
        for t in self._deleting:
            t.join()
        self._deleting = []
        if self._proc is not None:
            try:
                self._proc.stdin.close()  # the preparer ends at the end of its input
                self._proc.wait(timeout=5.0)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.terminate()
                self._proc.wait()
            self._proc = None
        if self.run is not None:
            shutil.rmtree(self.run, ignore_errors=True)
            self.run = None
