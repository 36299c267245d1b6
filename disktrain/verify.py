"""``disktrain verify``: check every chunk of every array of a dataset and its derived stores.

Works from what is on disk alone: each array's ``zarr.json`` (shape, chunk grid, data type,
codecs) says which chunk files must exist and how large each is; every file is read once,
sequentially, in bounded slices, and its trailing crc32c compared (docs/FORMAT.md); a shard
file's size and index are checked, then each of its chunks (:mod:`~disktrain.storage.shards`).
The stores' attributes are checked against each other: the sample store and the packed store
must have been made from this dataset and from each other (``dataset_id``, ``samples_id``),
and must agree on their batches.

Nothing stops at the first problem: the :class:`Report` lists every one, with the store, the
array, the chunk file, the batches it holds and the step that rewrites it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from disktrain.errors import DataError
from disktrain.pack.store import FORMAT_VERSION as PACKED_FORMAT_VERSION
from disktrain.pack.store import PACKED, packed_ref
from disktrain.sample.store import SAMPLES, group_name, samples_ref
from disktrain.storage.chunkfile import CRC_BYTES, StoreRef, check_chunk, check_region
from disktrain.storage.dataset import DATASET, FORMAT_VERSION, dataset_ref
from disktrain.storage.lock import read_lock
from disktrain.storage.roots import EVAL_SPLITS, eval_root, runs_dir
from disktrain.storage.schema import CHECKSUM_CODECS, ArrayMeta, ArraySpec
from disktrain.storage.shards import ShardLayout

SLICE_BYTES = 32 << 20
"""Bytes read at a time (bounds memory whatever the chunk size)."""

BatchMap = Callable[["_Array", int, int], range | None]
"""(array, first-axis elements [lo, hi) of a chunk) -> the batches it holds (None: unknown)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong: where it is, what is wrong, and what rewrites it."""

    store: str
    """"dataset", "sample store" or "packed store"."""
    store_path: str
    problem: str
    rerun: str
    array: str | None = None
    """The array, relative to its store (e.g. ``groups/g000003/edge_src``)."""
    file: str | None = None
    """The chunk file at fault (None for a problem of the array or store as a whole)."""
    batches: range | None = None

    @property
    def message(self) -> str:
        """One line, worded as the training path's error for the same damage."""
        if self.array is not None and self.file is not None:
            ref = StoreRef(self.store, Path(self.store_path), self.rerun)
            return str(ref.corrupt(self.array, self.file, self.problem, self.batches))
        where = f"{self.store} {self.store_path}"
        if self.array is not None:
            where += f": array {self.array!r}"
        return f"{where} {self.problem}; {self.rerun}"

    def to_dict(self) -> dict:
        batches = self.batches
        return {"store": self.store, "store_path": self.store_path, "array": self.array,
                "file": self.file, "problem": self.problem,
                "batches": [batches.start, batches.stop - 1] if batches else None,
                "rerun": self.rerun, "message": self.message}


@dataclass
class Report:
    """What :func:`verify` found, and how much it read."""

    path: Path
    problems: list[Problem] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    """The stores checked ("dataset", then "sample store" and "packed store" if present)."""
    arrays: int = 0
    chunks: int = 0
    """Chunk files checked (existence, size, crc32c)."""
    bytes: int = 0
    """Bytes read and checksummed."""
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def gb_per_s(self) -> float | None:
        return self.bytes / 1e9 / self.seconds if self.seconds > 0 else None

    def steps(self) -> list[str]:
        """The distinct steps that repair everything found, in the order found."""
        return list(dict.fromkeys(p.rerun for p in self.problems))

    def to_dict(self) -> dict:
        return {"path": str(self.path), "clean": self.clean, "stores": self.stores,
                "problems": [p.to_dict() for p in self.problems], "steps": self.steps(),
                "arrays": self.arrays, "chunks": self.chunks, "bytes": self.bytes,
                "seconds": self.seconds, "gb_per_s": self.gb_per_s}

    def lines(self) -> list[str]:
        """A readable report: a verdict, one line per problem, the repair steps, totals."""
        verdict = "clean" if self.clean else f"DAMAGED ({len(self.problems)} problem(s))"
        out = [f"{self.path}: {verdict}"]
        out += [f"  {p.message}" for p in self.problems]
        if self.problems:
            out.append("to repair:")
            out += [f"  {step}" for step in self.steps()]
        rate = f"{self.gb_per_s:.2f} GB/s" if self.gb_per_s is not None else "-"
        size = (f"{self.bytes / 1e9:.2f} GB" if self.bytes >= 1e9
                else f"{self.bytes / 1e6:.2f} MB")
        out.append(f"checked {', '.join(self.stores)}: {self.arrays} arrays, {self.chunks} "
                   f"chunk files, {size} in {self.seconds:.2f} s ({rate})")
        return out


@dataclass(frozen=True)
class _Array:
    """An array to check, as its ``zarr.json`` describes it."""

    ref: StoreRef
    name: str
    meta: ArrayMeta
    key: Callable[[tuple[int, ...]], Path]
    """File grid index -> chunk or shard file."""
    batches: BatchMap | None
    layout: ShardLayout | None = None
    """Where the chunks lie in shard files (None: a file per chunk)."""

    @property
    def file_bytes(self) -> int:
        """Size of every chunk (a file, or in a shard; edge chunks are full-size)."""
        return self.meta.chunk_bytes + CRC_BYTES * self.meta.checksummed

    @property
    def grid(self) -> tuple[int, ...]:
        """Files along each axis (none at all for a zero-size array)."""
        if self.meta.size == 0:
            return (0,)
        if self.layout is not None:
            return (self.layout.num_shards, *[1] * (len(self.meta.shape) - 1))
        return tuple(-(-s // c) for s, c in zip(self.meta.shape, self.meta.chunks))

    def span(self, index: tuple[int, ...], chunk: bool = False) -> tuple[int, int]:
        """The first-axis elements ``[lo, hi)`` of file ``index`` (``chunk``: of chunk
        ``index`` of the array's chunk grid)."""
        rows = self.meta.chunks[0] * (1 if chunk or not self.layout else self.layout.per_shard)
        lo = index[0] * rows
        return lo, min(lo + rows, self.meta.shape[0])


def _chunk_key(path: Path, encoding: dict) -> Callable[[tuple[int, ...]], Path]:
    """Chunk index -> file, for Zarr v3's ``default`` and ``v2`` chunk key encodings."""
    kind = encoding.get("name", "default")
    sep = (encoding.get("configuration") or {}).get("separator", "/" if kind == "default"
                                                     else ".")
    if kind == "default":
        return lambda index: path / sep.join(["c", *map(str, index)])
    if kind == "v2":
        return lambda index: path / (sep.join(map(str, index)) or "0")
    raise ValueError(f"unknown chunk key encoding {kind!r}")


class _Checker:
    """Collects the arrays to check and the problems found, then reads every chunk once."""

    def __init__(self, report: Report):
        self.report = report
        self.arrays: list[_Array] = []
        self.damaged: set[tuple[Path, str]] = set()
        """(store path, array) of every array with a problem."""
        self._chunk_problems: list[tuple[int, _Array, tuple[int, int]]] = []

    def problem(self, ref: StoreRef, problem: str, array: str | None = None,
                file: Path | None = None) -> None:
        self.report.problems.append(Problem(ref.kind, str(ref.path), problem, ref.rerun, array,
                                            None if file is None else str(file)))
        if array is not None:
            self.damaged.add((ref.path, array))

    def add(self, ref: StoreRef, name: str, shape: tuple | None = None,
            batches: BatchMap | None = None) -> _Array | None:
        """Read the metadata of array ``name`` of ``ref``'s store and queue its chunks.

        Reports it missing, unreadable, of another shape than ``shape`` (a tuple whose
        ``None`` entries match any length) or unverifiable (no crc32c). Returns the array
        unless its chunks cannot be checked at all.
        """
        meta_path = ref.path / name / "zarr.json"
        try:
            raw = json.loads(meta_path.read_bytes())
            meta = ArrayMeta.parse(raw)
            key = _chunk_key(ref.path / name, raw.get("chunk_key_encoding") or {})
        except FileNotFoundError:
            self.problem(ref, f"is missing (no {meta_path})", name)
            return None
        except (OSError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            self.problem(ref, f"has unreadable metadata {meta_path} ({type(e).__name__}: {e})",
                         name)
            return None
        self.report.arrays += 1
        if problem := meta.shape_problem(shape):
            self.problem(ref, problem, name)
        if not meta.checksummed:
            self.problem(ref, f"has codecs {meta.codecs}, not {CHECKSUM_CODECS}: unverifiable "
                         "(written by an older disktrain or another tool)", name)
            if meta.codecs != ["bytes"]:
                return None  # chunk sizes unknown (or a shard's chunks unchecked)
        layout = meta.shard_layout(ref.path / name) if meta.per_shard else None
        array = _Array(ref, name, meta, key, batches, layout)
        self.arrays.append(array)
        return array

    def run(self, progress: bool) -> None:
        """Check every chunk file of every queued array, in order."""
        total = sum(math.prod(a.grid) * a.file_bytes * (a.layout.per_shard if a.layout else 1)
                    for a in self.arrays if a.meta.checksummed)
        t0 = time.perf_counter()
        with tqdm(total=total, desc="verify", unit="B", unit_scale=True,
                  disable=not progress) as bar:
            for array in self.arrays:
                for index in itertools.product(*map(range, array.grid)):
                    path = array.key(index)
                    check = _check_file if array.layout is None else _check_shard
                    problems, read = check(path, array, index)
                    self.report.chunks += 1
                    self.report.bytes += read
                    bar.update(read)
                    for problem, span in problems:
                        self.problem(array.ref, problem, array.name, path)
                        self._chunk_problems.append((len(self.report.problems) - 1, array,
                                                     span))
        self.report.seconds += time.perf_counter() - t0

    def name_batches(self) -> None:
        """Add the batches of each damaged chunk (once every array has been checked, so
        that only offsets that checked clean are used)."""
        for i, array, (lo, hi) in self._chunk_problems:
            if array.batches is not None:
                p = self.report.problems[i]
                self.report.problems[i] = replace(p, batches=array.batches(array, lo, hi))


def _check_file(path: Path, array: _Array, index: tuple[int, ...]) -> tuple[list, int]:
    """(what is wrong with one chunk file, with the first-axis elements it holds; bytes
    read): missing, size, crc32c."""
    try:  # the size of a chunk file without a crc32c: nbytes + CRC_BYTES all the same
        problem, read = check_chunk(path, array.file_bytes - CRC_BYTES,
                                    slice_bytes=SLICE_BYTES, verify=array.meta.checksummed)
    except OSError as e:
        problem, read = f"cannot be read ({e.strerror})", 0
    return [(problem, array.span(index))] if problem else [], read


def _check_shard(path: Path, array: _Array, index: tuple[int, ...]) -> tuple[list, int]:
    """(what is wrong with one shard file, each with the first-axis elements it concerns;
    bytes read): missing, size, index, then each chunk's crc32c."""
    layout, shard = array.layout, index[0]
    try:
        if problem := layout.index_problem(shard):
            return [(problem, array.span(index))], 0
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return [(f"cannot be read ({e.strerror})", array.span(index))], 0
    problems, read = [], layout.index_bytes
    try:
        for j in range(layout.chunks_in(shard)):
            problem, got = check_region(fd, j * layout.stride, layout.chunk_bytes,
                                        slice_bytes=SLICE_BYTES)
            read += got
            if problem:
                problem = f"holds chunk {j} (at byte {j * layout.stride}), which {problem}"
                span = array.span((shard * layout.per_shard + j,), chunk=True)
                problems.append((problem, span))
    except OSError as e:
        problems.append((f"cannot be read ({e.strerror})", array.span(index)))
    finally:
        os.close(fd)
    return problems, read


def _group_attrs(path: Path) -> dict:
    """A Zarr group's attributes (OSError, ValueError or AttributeError if it is not one)."""
    meta = json.loads((path / "zarr.json").read_bytes())
    if meta.get("node_type") != "group":
        raise ValueError(f"node_type {meta.get('node_type')!r}, not 'group'")
    return dict(meta.get("attributes") or {})


def _store_attrs(check: _Checker, ref: StoreRef) -> dict | None:
    """A derived store's attributes, or None after reporting why they cannot be used."""
    meta_path = ref.path / "zarr.json"
    try:
        attrs = _group_attrs(ref.path)
    except FileNotFoundError:
        check.problem(ref, f"has no metadata ({meta_path} is missing)")
        return None
    except (OSError, ValueError, AttributeError) as e:
        check.problem(ref, f"has unreadable metadata {meta_path} ({e})")
        return None
    if not attrs.get("complete"):
        check.problem(ref, "is incomplete (the run writing it did not finish)")
        return None
    if not attrs.get("store_id"):
        check.problem(ref, "has no store_id attribute (written by an older disktrain)")
    return attrs


def _link(check: _Checker, ref: StoreRef, attrs: dict, key: str, source: StoreRef,
          source_key: str, source_attrs: dict) -> None:
    """Report ``ref``'s ``attrs[key]`` unless it is ``source``'s ``source_key``."""
    mine, theirs = attrs.get(key), source_attrs.get(source_key)
    if mine != theirs:
        check.problem(ref, f"was made from another {source.kind}: its {key} {mine!r} is not "
                      f"the {source_key} {theirs!r} of {source.kind} {source.path}")


def _bounds(array: _Array, lo: int, hi: int) -> range:
    """Element ``i`` bounds batches ``i - 1`` and ``i``."""
    return range(max(lo - 1, 0), min(hi, array.meta.shape[0] - 1))


class _Offsets:
    """A one-chunk int64 offsets array (batch_rows, slot_offsets), read once it checked clean:
    maps a chunk of the array it indexes (rows, slots) to batches."""

    def __init__(self, check: _Checker, offsets: _Array | None):
        self.check, self.offsets, self._values = check, offsets, None

    def values(self) -> np.ndarray | None:
        a = self.offsets
        m = None if a is None else a.meta
        usable = (m is not None and m.checksummed and len(m.shape) == 1 and m.shape[0] >= 2
                  and m.chunks == m.shape and m.dtype == np.dtype("<i8")
                  and (a.ref.path, a.name) not in self.check.damaged)
        if usable and self._values is None:
            self._values = np.fromfile(a.key((0,)), m.dtype, count=m.shape[0])
        return self._values if usable else None

    def __call__(self, array: _Array, lo: int, hi: int) -> range | None:
        """Batches ``b`` whose ``[offsets[b], offsets[b+1])`` meets elements ``[lo, hi)``."""
        values = self.values()
        if values is None:
            return None
        first = max(0, int(np.searchsorted(values, lo, side="right")) - 1)
        last = min(len(values) - 2, int(np.searchsorted(values, hi, side="left")) - 1)
        return range(first, last + 1)


def _add_all(check: _Checker, ref: StoreRef, specs: tuple[ArraySpec, ...], dims: dict,
             prefix: str = "", group: range | None = None) -> None:
    """Queue arrays ``specs`` of ``ref``'s store (under ``prefix``), those it may lack only
    if present, of the shapes ``dims`` give; ``group``: the batches of a sample group."""
    queued: dict[str, _Array | None] = {}
    maps = {None: None, "bounds": _bounds, "each": lambda _array, lo, hi: range(lo, hi),
            "group": lambda _array, _lo, _hi: group}
    for spec in specs:
        if spec.present is True or (spec.present and dims.get(spec.present)) or \
                (ref.path / prefix / spec.name).exists():
            batches = maps[spec.batches] if spec.batches in maps else \
                _Offsets(check, queued.get(spec.batches))
            queued[spec.name] = check.add(ref, prefix + spec.name, spec.shape_in(dims), batches)


def _check_dataset(check: _Checker, path: Path) -> tuple[StoreRef, dict]:
    """Queue the dataset's arrays; DataError if ``path`` is not a dataset at all."""
    ref = dataset_ref(path)
    try:
        attrs = _group_attrs(path)
    except FileNotFoundError:
        raise DataError(f"{path}: not a dataset directory (no zarr.json)") from None
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a dataset directory ({path / 'zarr.json'}: {e})") from None
    version = attrs.get("format_version")
    if not isinstance(version, int):
        raise DataError(f"{path}: not a disktrain dataset (format_version {version!r})")
    if version != FORMAT_VERSION:
        check.problem(ref, f"has format_version {version}, not {FORMAT_VERSION} (written by "
                      "another disktrain version; version 1 has no checksums)")
    elif not attrs.get("dataset_id"):
        check.problem(ref, "has no dataset_id attribute")
    if attrs.get("node_types"):
        _add_typed(check, ref, attrs)
    else:
        _add_all(check, ref, DATASET.arrays, attrs)
    return ref, attrs


def _add_typed(check: _Checker, ref: StoreRef, attrs: dict) -> None:
    """Queue a typed dataset's arrays: each type's features, each relation's CSR, the
    target type's labels and splits."""
    try:
        types = {t["name"]: t for t in attrs["node_types"]}
        relations = [(r["src"], r["rel"], r["dst"], int(r["num_edges"]))
                     for r in attrs["relations"]]
        target = types[attrs["target_type"]]
    except (KeyError, TypeError, ValueError) as e:
        check.problem(ref, f"has invalid typed attributes ({type(e).__name__}: {e})")
        return
    for name, t in types.items():
        _add_all(check, ref, (DATASET.array("features"),), t, f"types/{name}/")
    csr = tuple(a for a in DATASET.arrays if a.mapped)
    for src, rel, dst, num_edges in relations:
        _add_all(check, ref, csr, {"num_nodes": types[dst]["num_nodes"], "num_edges": num_edges,
                                   "index_dtype": attrs.get("index_dtype")},
                 f"relations/{src}__{rel}__{dst}/")
    _add_all(check, ref, tuple(a for a in DATASET.arrays if a.present is not True),
             {**attrs, "num_nodes": target["num_nodes"]})


def _check_samples(check: _Checker, ref: StoreRef, dataset: StoreRef,
                   dataset_attrs: dict) -> dict | None:
    """Queue the sample store's arrays; its attributes if usable."""
    attrs = _store_attrs(check, ref)
    if attrs is None:
        return None
    _link(check, ref, attrs, "dataset_id", dataset, "dataset_id", dataset_attrs)
    try:
        group_size = int(attrs["config"]["group_size"])
        num_layers = len(attrs["config"]["fanouts"])
        num_batches, num_groups = int(attrs["num_batches"]), int(attrs["num_groups"])
    except (KeyError, TypeError, ValueError) as e:
        check.problem(ref, f"has invalid attributes ({type(e).__name__}: {e})")
        return None
    if num_groups != -(-num_batches // group_size):
        check.problem(ref, f"has num_groups {num_groups}, which does not fit num_batches "
                      f"{num_batches} in groups of {group_size}")
    _add_all(check, ref, SAMPLES.arrays, {"num_nodes": dataset_attrs.get("num_nodes")})
    for g in range(num_groups):
        batches = range(g * group_size, min((g + 1) * group_size, num_batches))
        dims = {"batches": len(batches), "num_layers": num_layers,
                "blocks": len(batches) * num_layers * int(attrs.get("num_relations", 1)),
                "num_types": attrs.get("num_types")}
        _add_all(check, ref, SAMPLES.groups, dims, f"groups/{group_name(g)}/", batches)
    return attrs


def _check_packed(check: _Checker, ref: StoreRef, dataset: StoreRef, dataset_attrs: dict,
                  samples: StoreRef, samples_attrs: dict | None) -> dict | None:
    """Queue the packed store's arrays after checking what it was made from; its
    attributes if usable."""
    attrs = _store_attrs(check, ref)
    if attrs is None:
        return None
    _link(check, ref, attrs, "dataset_id", dataset, "dataset_id", dataset_attrs)
    version = attrs.get("format_version", 1)
    if version != PACKED_FORMAT_VERSION:
        check.problem(ref, f"has format version {version}, not {PACKED_FORMAT_VERSION} "
                      "(written by another disktrain version)")
    if samples_attrs is not None:
        _link(check, ref, attrs, "samples_id", samples, "store_id", samples_attrs)
        _link(check, ref, attrs, "sample_config", samples, "config", samples_attrs)
    elif not (samples.path / "zarr.json").exists():
        check.problem(ref, f"has no sample store ({samples.path} is missing)")
    n_gpu, n_cpu, sampled = attrs.get("n_gpu"), attrs.get("n_cpu"), samples_attrs or {}
    _add_all(check, ref, PACKED.arrays, {
        **attrs, "feature_dim": dataset_attrs.get("feature_dim"),
        "num_batches": sampled.get("num_batches"),
        "num_slots": (sampled.get("num_input_nodes") if (attrs.get("pack_config") or {}).get(
            "aggregate_first_hop", "off") == "off" else attrs.get("num_slots")),
        "num_cache_rows": None if n_gpu is None or n_cpu is None else n_gpu + n_cpu})
    return attrs


def _roots(path: Path) -> list[tuple[str, Path]]:
    """(label, root) of every set of prepared stores under the dataset at ``path``: the
    training root, the evaluation roots, the fresh epochs of the runs training there."""
    roots = [("", path)]
    roots += [(f"{split} ", eval_root(path, split)) for split in EVAL_SPLITS
              if eval_root(path, split).exists()]
    roots += [(f"{run.name} epoch {p.name[1:].lstrip('0') or '0'} ", p)
              for run in sorted(runs_dir(path).glob("*"))
              for p in sorted(run.glob("e*")) if p.is_dir()]
    return roots


def verify(dataset_dir: str | os.PathLike, progress: bool = False) -> Report:
    """Check the dataset at ``dataset_dir`` and its sample and packed stores, if present.

    Raises :class:`~disktrain.errors.DataError` only if ``dataset_dir`` is not a dataset;
    every problem found is in the returned :class:`Report`. ``progress`` shows a bar over
    the bytes to read (on stderr).
    """
    path = Path(dataset_dir)
    with read_lock(path, "verify"):  # a prepare meanwhile is refused, or refuses this
        report = Report(path)
        check = _Checker(report)
        dataset, dataset_attrs = _check_dataset(check, path)
        report.stores.append("dataset")
        train_packed = train_attrs = None
        for label, root in _roots(path):
            samples, packed = samples_ref(root / "samples"), packed_ref(root / "packed")
            samples_attrs = None
            if samples.path.exists():
                report.stores.append(f"{label}sample store")
                samples_attrs = _check_samples(check, samples, dataset, dataset_attrs)
            if not packed.path.exists():
                continue
            report.stores.append(f"{label}packed store")
            attrs = _check_packed(check, packed, dataset, dataset_attrs, samples, samples_attrs)
            if not label:
                train_packed, train_attrs = packed, attrs
            elif attrs is not None and attrs.get("tiers_from") is not None:
                if not (path / "packed").exists():
                    check.problem(packed, "uses the caches of the packed store "
                                  f"{path / 'packed'}, which is missing")
                elif train_attrs is not None:  # else its problem is reported already
                    _link(check, packed, attrs, "tiers_from", train_packed, "store_id",
                          train_attrs)
        check.run(progress)
        check.name_batches()
    return report
