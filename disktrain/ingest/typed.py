"""Typed (heterogeneous) datasets in: node types, relations, per-type features, written as one
dataset directory (layout: :mod:`disktrain.storage.dataset`).

Every typed source (the IGB / IGBH, MAG240M and OGB heterogeneous importers, the IGBH-like
generator) becomes :class:`TypedInputs`: node counts per type, per relation a re-iterable
stream of ``(src, dst)`` chunks in ids local to each type, per-type features, labels and
splits on the target type. :func:`write_typed_dataset` checks them, streams them (a CSR per
relation by destination, each type's features in row blocks) under a temporary name and
renames the directory into place when complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr

from disktrain.errors import DataError
from disktrain.ingest.csr import CSRConfig, EdgeChunks, build_csr, spill_bytes
from disktrain.ingest.inputs import FeatureSource, check_splits, write_features
from disktrain.storage.atomic import atomic_dir
from disktrain.storage.dataset import (
    SPLITS,
    DatasetMeta,
    NodeType,
    Relation,
    dataset_bytes,
    index_dtype,
    new_id,
    provenance,
    relation_name,
    write_small_array,
)
from disktrain.storage.diskspace import require_free
from disktrain.storage.lock import write_lock

REVERSE_PREFIX = "rev_"
"""The relation ``(dst, rev_<rel>, src)`` added for ``(src, rel, dst)`` by ``add_reverse``."""


@dataclass(frozen=True, kw_only=True)
class TypedInputs:
    """A typed dataset's inputs, checked on construction as far as they can be before the
    edges and features stream (which are checked as they stream)."""

    node_counts: dict[str, int]
    """Node type -> its number of nodes; the types' order is the dataset's."""
    relations: dict[Relation, EdgeChunks]
    """``(src_type, rel, dst_type)`` -> a function returning a fresh iterator of
    ``(src, dst)`` integer chunks, ids local to each type."""
    target_type: str
    """The type whose nodes carry the labels and the splits."""
    num_input_edges: dict[Relation, int] = field(default_factory=dict)
    """Input edges per relation (progress bars, the spill file's reservation); absent: 0,
    unknown."""
    features: dict[str, FeatureSource] = field(default_factory=dict)
    """Per-type features; a type without an entry has none."""
    labels: np.ndarray | None = None
    """int64 (num target nodes,): class ids, -1 for an unlabelled node."""
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    """Split name -> int64 ids of labelled target nodes."""
    sources: dict[str, str] = field(default_factory=dict)
    """Input name -> where it came from (recorded in the provenance)."""

    def __post_init__(self) -> None:
        if not self.node_counts:
            raise DataError("typed dataset: no node types given")
        for name, count in self.node_counts.items():
            _check_name(name, "node type")
            if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
                raise DataError(f"node type {name!r}: node count must be a positive integer, "
                                f"got {count!r}")
        if not self.relations:
            raise DataError("typed dataset: no relations given")
        for rel in self.relations:
            src, name, dst = rel
            _check_name(name, "relation")
            for end, kind in ((src, "source"), (dst, "destination")):
                if end not in self.node_counts:
                    raise DataError(f"relation {rel}: {kind} type {end!r} is not a node type "
                                    f"(types: {sorted(self.node_counts)})")
        for kind, names in (("features", self.features), ("num_input_edges",
                                                          self.num_input_edges)):
            known = self.node_counts if kind == "features" else self.relations
            unknown = [n for n in names if n not in known]
            if unknown:
                raise DataError(f"{kind} given for unknown {unknown[0]!r} (known: {list(known)})")
        for t, source in self.features.items():
            if source.num_rows != self.node_counts[t]:
                raise DataError(f"node type {t!r}: features {source.path} have "
                                f"{source.num_rows} rows, but the type has {self.node_counts[t]} "
                                "nodes")
        if self.target_type not in self.node_counts:
            raise DataError(f"target type {self.target_type!r} is not a node type "
                            f"(types: {list(self.node_counts)})")
        self._check_labels_and_splits()

    def _check_labels_and_splits(self) -> None:
        num = self.node_counts[self.target_type]
        where = self.sources.get("labels", "labels")
        labels = None if self.labels is None else np.asarray(self.labels)
        if labels is not None:
            if labels.shape != (num,) or not np.issubdtype(labels.dtype, np.integer):
                raise DataError(f"{where}: labels must be integers, one per "
                                f"{self.target_type!r} node ({num}), got {labels.dtype} of "
                                f"shape {labels.shape}")
            if labels.size and labels.min() < -1:
                row = int(np.flatnonzero(labels < -1)[0])
                raise DataError(f"{where}: row {row}: label {int(labels[row])} (class ids are "
                                ">= 0; -1 marks an unlabelled node)")
        for split, ids in self.splits.items():
            if split not in SPLITS:
                raise DataError(f"split {split!r}: must be one of {SPLITS}")
            if labels is None:
                raise DataError(f"split {split!r} on type {self.target_type!r}, which has no "
                                "labels")
        splits = check_splits({name: (self.sources.get(name, f"{name} split"), np.asarray(ids))
                               for name, ids in self.splits.items()}, num)
        for split, ids in splits.items():
            unlabelled = np.flatnonzero(labels[ids] < 0)
            if unlabelled.size:
                raise DataError(f"{self.sources.get(split, split)}: {split} split row "
                                f"{unlabelled[0]}: node {ids[unlabelled[0]]} of type "
                                f"{self.target_type!r} has no label")


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or "__" in name or "/" in name:
        raise DataError(f"{what} name {name!r}: must be a non-empty string without '__' or '/'")


def write_typed_dataset(out: Path, inputs: TypedInputs, *, add_reverse: bool = False,
                        dedup: bool = False, progress: bool = True, overwrite: bool = False,
                        importer: str | None = None) -> Path:
    """Write ``inputs`` as the typed dataset directory ``out`` (a temporary name renamed into
    place when complete), after checking the disk has room. ``add_reverse`` adds
    ``(dst, rev_<rel>, src)`` for every relation (unless the inputs hold it already);
    ``dedup`` keeps one copy of repeated edges of a relation; ``importer`` goes into the
    provenance."""
    out = Path(out)
    target = inputs.target_type  # first: its local ids are the global ids
    counts = {t: int(inputs.node_counts[t]) for t in
              [target, *(t for t in inputs.node_counts if t != target)]}
    relations = dict(inputs.relations)
    if add_reverse:
        for (src, rel, dst), chunks in inputs.relations.items():
            back = (dst, REVERSE_PREFIX + rel, src)
            if back not in relations:
                relations[back] = _reversed(chunks)
    edges = {r: inputs.num_input_edges.get(r, 0) or inputs.num_input_edges.get(
        (r[2], r[1][len(REVERSE_PREFIX):], r[0]), 0) for r in relations}
    index = index_dtype(max(counts.values()))
    require_free(out, _disk_need(inputs, counts, edges, index), "ingest")
    csr = CSRConfig(dedup=dedup, progress=progress)
    with write_lock(out, "ingest"), atomic_dir(out, overwrite=overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w")
        dataset_id, types = new_id(), []
        for t, n in counts.items():
            source = inputs.features.get(t)
            sub = group.require_group(f"types/{t}")
            write_features(sub, source, n, progress)
            types.append(NodeType(t, n, source.dim if source else 0,
                                  str(source.dtype if source else np.dtype(np.float32))))
            sub.attrs.update(asdict(DatasetMeta(  # the type's nodes: a dataset without edges
                num_nodes=n, num_edges=0, feature_dim=types[-1].feature_dim, num_classes=0,
                feature_dtype=types[-1].feature_dtype, dataset_id=dataset_id)))
        stored = []
        for rel, chunks in relations.items():
            sub = group.require_group(f"relations/{relation_name(rel)}")
            num = build_csr(sub, _checked(rel, chunks, counts), counts[rel[2]], edges[rel],
                            csr, num_cols=counts[rel[0]])
            stored.append({"src": rel[0], "rel": rel[1], "dst": rel[2], "num_edges": num})
        labels = inputs.labels
        if labels is not None:
            write_small_array(group, "labels", np.asarray(labels, np.int64))
        for name, ids in inputs.splits.items():
            write_small_array(group, name, np.asarray(ids, np.int64))
        source = provenance(inputs.sources)
        source["ingest"] = {"add_reverse": add_reverse, "dedup": dedup}
        if importer is not None:
            source["ingest"]["importer"] = importer
        featured = [t for t in types if t.feature_dim]
        meta = DatasetMeta(
            num_nodes=sum(counts.values()), num_edges=sum(r["num_edges"] for r in stored),
            feature_dim=max((t.feature_dim for t in featured), default=0),
            num_classes=int(labels.max()) + 1 if labels is not None and labels.size else 0,
            feature_dtype=_common_dtype(featured), index_dtype=str(index), provenance=source,
            node_types=[asdict(t) for t in types], relations=stored, target_type=target,
            dataset_id=dataset_id)
        group.attrs.update(asdict(meta))
    return out


def _common_dtype(featured: list[NodeType]) -> str:
    """float16 when every featured type stores float16, else float32."""
    kinds = {t.feature_dtype for t in featured}
    return "float16" if kinds == {"float16"} else "float32"


def _reversed(chunks: EdgeChunks) -> EdgeChunks:
    def swapped() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for src, dst in chunks():
            yield dst, src
    return swapped


def _checked(rel: Relation, chunks: EdgeChunks, counts: dict[str, int]) -> EdgeChunks:
    """``chunks`` as int64, every id checked against its type's count (the error names the
    relation, the edge's position in it and the id)."""
    def checked() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0
        for src, dst in chunks():
            src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
            if src.shape != dst.shape or src.ndim != 1:
                raise DataError(f"relation {rel}: edge chunk at edge {start} has src of shape "
                                f"{src.shape} and dst of shape {dst.shape}")
            for ids, t, end in ((src, rel[0], "source"), (dst, rel[2], "destination")):
                bad = np.flatnonzero((ids < 0) | (ids >= counts[t]))
                if bad.size:
                    raise DataError(f"relation {rel}: edge {start + bad[0]} has {end} id "
                                    f"{ids[bad[0]]}, outside [0, {counts[t]}) of type {t!r}")
            yield src, dst
            start += len(src)
    return checked


def _disk_need(inputs: TypedInputs, counts: dict[str, int], edges: dict[Relation, int],
               index: np.dtype) -> int:
    """An upper bound of what the dataset holds on disk (each type's features, each
    relation's CSR and its spill file, labels and splits)."""
    need = 0
    for t, n in counts.items():
        f = inputs.features.get(t)
        need += dataset_bytes(num_nodes=n, num_edges=0, feature_dim=f.dim if f else 0,
                              feature_dtype=f.dtype if f else np.float32, labels=False,
                              splits={})
    for (src, _, dst), e in edges.items():
        need += counts[dst] * 8 + e * index.itemsize + spill_bytes(counts[dst], e,
                                                                  num_cols=counts[src])
    return need + 8 * counts[inputs.target_type] * (1 + len(inputs.splits))
