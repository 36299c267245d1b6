"""Checkpoints: the state of a run's named parts (model, optimizer, loader, the run's counters,
every rank's RNG states and, as configured, every rank's worker-momentum average, the robust
aggregator's step and center, the attack's step), each part's ``state_dict()``; the newest k
kept. Resuming loads each part from its state (:func:`resume`).

Each checkpoint is one file named by the position training resumes at,
``ckpt-e{EPOCH}-b{BATCH}.pt`` (the checkpoint at the end of epoch 2 is
``ckpt-e000003-b00000000.pt``), written through a temporary file and a rename. A new file
never replaces the last good one: older files go only once the new one is in place, and a
model with non-finite parameters is refused. Reading takes the newest file that passes the
CRC-32 check of every member of its zip archive and loads with ``weights_only=True``; a
damaged newer file is skipped with a warning on stderr, and moved aside to ``NAME.damaged``
(never overwritten) when the resumed run writes its first checkpoint. When every file is
damaged, resuming is an error naming them (the files are left as they are).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from disktrain.errors import CheckpointError, NonFiniteError, check_min
from disktrain.loader.dist import DistEnv, broadcast_bytes
from disktrain.storage.atomic import atomic_write_bytes
from disktrain.train.health import nonfinite_tensors

NAME = re.compile(r"ckpt-e(\d+)-b(\d+)\.pt")
FORMAT = 2
"""A checkpoint: ``{"format": FORMAT, "epoch": .., "cursor": .., PART: its state, ...}``;
format 1 stored its fields side by side and is refused."""


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Where a training run checkpoints, how often, how many files it keeps, and whether it
    resumes."""

    dir: str | None = None
    """Where checkpoints go (default: RUN_DIR/checkpoints, the run's directory's, which is the
    dataset's unless given; see :meth:`directory`)."""
    every: int = 0
    """Also checkpoint every this many batches inside an epoch (0: at epoch ends only)."""
    keep: int = 2
    """Checkpoint files kept, newest first: the newest and, by default, one to fall back on
    when the newest cannot be read."""
    resume: bool = False
    """Continue from the newest checkpoint in rank 0's directory that loads (every rank
    resumes from it; refused when written by another number of workers)."""

    def __post_init__(self) -> None:
        check_min(self, 0, "every", owner="CheckpointConfig.")
        check_min(self, 1, "keep", owner="CheckpointConfig.")

    def directory(self, run_dir: str | Path) -> Path:
        """The checkpoint directory of a run writing to ``run_dir`` (``TrainConfig.writes_to``:
        its run directory, or its dataset)."""
        return Path(self.dir) if self.dir else Path(run_dir) / "checkpoints"


@dataclass(frozen=True)
class ModelRecord:
    """What a checkpoint's weights are: the sized model config (the fields of
    :class:`~disktrain.models.gnn.GNNConfig` or of a typed graph's
    :class:`~disktrain.models.hetero.HeteroGNNConfig`) and the dataset the model was trained
    on, as plain values (``weights_only`` loads them). A part of the trainer's checkpoints
    (``"model_record"``), from which inference rebuilds the model; a checkpoint written
    before it has none."""

    model: dict
    """The config's fields."""
    dataset: dict = field(default_factory=dict)
    """``dataset_id``, ``path``, ``num_nodes``, ``feature_dim``, ``num_classes``."""
    task: str = "node"
    """node: the weights are the model's; link: a link model's (its ``encoder.`` and
    ``decoder.``, :class:`~disktrain.models.link.LinkModel`)."""

    @classmethod
    def of(cls, config, dataset, task: str = "node") -> ModelRecord:
        """The record of model ``config`` trained on ``dataset`` (a :class:`Dataset`) for
        ``task``."""
        meta = dataset.meta
        return cls(dataclasses.asdict(config), {
            "dataset_id": meta.dataset_id, "path": str(dataset.path),
            "num_nodes": meta.num_nodes, "feature_dim": meta.feature_dim,
            "num_classes": meta.num_classes}, task)

    def state_dict(self) -> dict:
        return {"model": dict(self.model), "dataset": dict(self.dataset), "task": self.task}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: a resumed run records its own model and dataset (its model
        state must fit it all the same)."""


def checkpoint_name(epoch: int, cursor: int) -> str:
    """The file name of the checkpoint that resumes at batch ``cursor`` of ``epoch``."""
    return f"ckpt-e{epoch:06d}-b{cursor:08d}.pt"


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The checkpoint files in ``directory``, newest (furthest position) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m[1]), int(m[2]), p) for p in directory.iterdir()
             if (m := NAME.fullmatch(p.name))]
    return [p for *_, p in sorted(found, reverse=True)]


def load_bytes(data: bytes, where: str | Path) -> dict:
    """The checkpoint in ``data`` (tensors and plain values only); CheckpointError naming
    ``where`` when its archive is damaged or does not load."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise CheckpointError(f"{where}: archive member {bad} fails its CRC-32 check")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # a damaged file fails in many ways: zip, unpickler, storage reads
        raise CheckpointError(f"{where}: cannot load the checkpoint "
                              f"({type(e).__name__}: {e})") from e


def read_newest(directory: str | Path, damaged: list[Path] | None = None
                ) -> tuple[Path, bytes] | None:
    """The newest checkpoint file in ``directory`` that loads, and its bytes; None if there is
    no checkpoint file.

    Each newer file that cannot be read or loaded is reported on stderr and appended to
    ``damaged``; CheckpointError naming every file when none loads.
    """
    skipped: list[tuple[Path, Exception]] = []
    for path in checkpoint_files(directory):
        try:
            data = path.read_bytes()
            load_bytes(data, path)
        except (OSError, CheckpointError) as e:
            skipped.append((path, e))
            continue
        for _, e in skipped:
            print(f"disktrain: warning: {e}; resuming from an older checkpoint, {path.name}",
                  file=sys.stderr)
        if damaged is not None:
            damaged += [p for p, _ in skipped]
        return path, data
    if skipped:
        raise CheckpointError(
            f"{directory}: every checkpoint fails its check, so the run cannot resume: "
            f"{'; '.join(str(e) for _, e in skipped)}. The files are left as they "
            "are: restore a good checkpoint there, or start a new run without --resume and "
            "another --checkpoint-dir")
    return None


def checkpoint_state(parts: dict, epoch: int, cursor: int) -> dict:
    """The checkpoint of ``parts`` (name -> an object with ``state_dict()``) resuming at batch
    ``cursor`` of ``epoch``; on every rank (a part may gather every rank's state)."""
    return {"format": FORMAT, "epoch": epoch, "cursor": cursor,
            **{name: part.state_dict() for name, part in parts.items()}}


def resume(parts: dict, directory: Path, writer: CheckpointWriter, env: DistEnv,
           device: torch.device) -> list[int] | None:
    """Load each of ``parts`` from the checkpoint rank 0 finds newest in its ``directory``
    (its bytes broadcast); return its ``[epoch, cursor]`` (None: none). CheckpointError on
    every rank for another format, number of workers, or a part's state that does not fit;
    a part it lacks starts afresh (said on stderr)."""
    damaged: list[Path] = []
    try:
        found = read_newest(directory, damaged) if env.is_main else None
    except CheckpointError:
        broadcast_bytes(b"", device)  # the other ranks stop too
        raise
    if found is not None:
        writer.adopt(found[0], damaged)
    elif env.is_main:
        print(f"disktrain: no checkpoint in {directory}; starting from the beginning",
              file=sys.stderr)
    data = broadcast_bytes(None if found is None else found[1], device)
    if data is None:
        return None
    if not data:
        raise CheckpointError(f"rank 0's checkpoints in {directory} all fail their check "
                              "(rank 0 names them)")
    state = load_bytes(data, found[0] if found else "rank 0's checkpoint")
    where = found[0] if found else \
        f"rank 0's {directory / checkpoint_name(int(state['epoch']), int(state['cursor']))}"
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{where}: a checkpoint of format {state.get('format', 1)}; this "
                              f"disktrain reads format {FORMAT} (start a new run without resume)")
    written_by = state["loader"]["world_size"]
    if written_by != env.world_size:
        raise CheckpointError(f"{where}: checkpoint written by {written_by} "
                              f"worker(s); resuming with {env.world_size} would change the run "
                              f"(resume with {written_by}, or start a new run without resume)")
    for name, part in parts.items():
        if name not in state:
            if env.is_main:
                print(f"disktrain: warning: {where} holds no {name} state (written by a run "
                      "without it); it starts afresh", file=sys.stderr)
            continue
        try:
            part.load_state_dict(state[name])
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{where}: its {name} state does not fit this run: "
                                  f"{e}") from e
    return [int(state["epoch"]), int(state["cursor"])]


class CheckpointWriter:
    """Writes a run's checkpoints into ``directory`` and keeps the newest ``keep`` of them.

    The files kept are the run's own: those it wrote and the one it resumed from
    (:meth:`adopt`). Once the first new checkpoint is written, the damaged newer ones the run
    skipped are moved aside to ``NAME.damaged`` and any other checkpoint file in the
    directory (an earlier run's) is removed, so a later resume never mixes runs.
    """

    def __init__(self, directory: str | Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self._kept: list[str] = []  # file names, oldest first
        self._damaged: list[Path] = []

    def adopt(self, path: str | Path, damaged: Iterable[Path] = ()) -> None:
        """Count ``path`` (the checkpoint a run resumed from) as the run's newest file; the
        ``damaged`` files it skipped are moved aside before the first new one is written."""
        self._kept = [Path(path).name]
        self._damaged = list(damaged)

    def save(self, state: dict) -> Path:
        """Write ``state`` (with ``epoch`` and ``cursor``) as a new file; remove what falls
        out of the newest ``keep``. Raises NonFiniteError, writing nothing, when a model
        parameter is not finite."""
        name = checkpoint_name(state["epoch"], state["cursor"])
        bad = nonfinite_tensors(state["model"])
        if bad:
            last = (f"the last good one, {self.directory / self._kept[-1]}, is kept"
                    if self._kept else "none was written before")
            raise NonFiniteError(f"{self.directory / name}: refusing to write a checkpoint "
                                 f"whose parameters {', '.join(bad)} are not finite; {last}")
        buf = io.BytesIO()
        torch.save(state, buf)
        return self.add(name, buf.getvalue())

    def add(self, name: str, data: bytes) -> Path:
        """Write the serialized checkpoint ``data`` as file ``name`` (atomically); remove what
        falls out of the newest ``keep``."""
        if not NAME.fullmatch(name):
            raise ValueError(f"not a checkpoint file name: {name!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        for bad in self._damaged:
            aside = bad.with_name(bad.name + ".damaged")
            with contextlib.suppress(FileNotFoundError):  # (gone meanwhile: nothing to keep)
                bad.rename(aside)
                print(f"disktrain: moved the damaged checkpoint {bad.name} aside to {aside}",
                      file=sys.stderr)
        self._damaged = []
        path = self.directory / name
        atomic_write_bytes(path, data)
        self._kept = [*(n for n in self._kept if n != name), name][-self.keep:]
        for old in checkpoint_files(self.directory):
            if old.name not in self._kept:
                old.unlink(missing_ok=True)
        return path
