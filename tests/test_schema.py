"""Store schemas: each store's declared arrays are what its writers write (shape, dtype,
chunking), and a declaration's shape follows from the store's attributes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from disktrain.pack.store import PACKED
from disktrain.sample.store import SAMPLES, group_name
from disktrain.storage.dataset import DATASET
from disktrain.storage.schema import ROWS, SHARDS, SINGLE, ArrayMeta, ArraySpec


def test_shape_from_attributes():
    spec = ArraySpec("a", ("num_nodes+1", "feature_dim", "unknown"), "int64")
    assert spec.shape_in({"num_nodes": 4, "feature_dim": 2}) == (5, 2, None)
    assert spec.shape_in({}) == (None, None, None)


def _check_declared(group: zarr.Group, specs: tuple[ArraySpec, ...], dims: dict) -> list[str]:
    """Compare the arrays ``specs`` declare with those of ``group``; the names checked."""
    checked = []
    for spec in specs:
        if spec.name not in group:
            assert spec.present is not True and not dims.get(spec.present), spec.name
            continue
        array = group[spec.name]
        want = spec.shape_in(dims)
        assert len(want) == array.ndim, spec.name
        assert all(w is None or w == got for w, got in zip(want, array.shape)), (
            spec.name, want, array.shape)
        assert array.dtype == np.dtype(dims.get(spec.dtype, spec.dtype)), spec.name
        sharded = array.shards is not None
        assert sharded == (spec.chunks == SHARDS and array.nbytes > 0), spec.name
        if spec.chunks == SINGLE:
            assert array.chunks == array.shape, spec.name
        else:
            assert array.chunks[1:] == array.shape[1:], spec.name
        meta = ArrayMeta.parse(json.loads((Path(group.store.root) / group.path / spec.name
                                           / "zarr.json").read_bytes()))
        assert meta.checksummed and meta.shape == array.shape, spec.name
        checked.append(spec.name)
    return checked


def test_stores_hold_what_they_declare(prepared):
    dataset = zarr.open_group(prepared, mode="r")
    attrs = dict(dataset.attrs)
    assert _check_declared(dataset, DATASET.arrays, attrs)[:4] == [
        "indptr", "indices", "features", "labels"]
    assert [a.chunks for a in DATASET.arrays][:3] == [SINGLE, SINGLE, ROWS]

    samples = zarr.open_group(prepared / "samples", mode="r")
    sample_attrs = dict(samples.attrs)
    assert _check_declared(samples, SAMPLES.arrays, attrs) == ["access_counts"]
    group_size = sample_attrs["config"]["group_size"]
    num_layers = len(sample_attrs["config"]["fanouts"])
    for g in range(sample_attrs["num_groups"]):
        batches = min(group_size, sample_attrs["num_batches"] - g * group_size)
        dims = {"batches": batches, "num_layers": num_layers, "blocks": batches * num_layers}
        names = _check_declared(samples[f"groups/{group_name(g)}"], SAMPLES.groups, dims)
        assert names == [a.name for a in SAMPLES.groups if a.present is True]  # one type

    packed = zarr.open_group(prepared / "packed", mode="r")
    packed_attrs = dict(packed.attrs)
    dims = {**packed_attrs, "feature_dim": attrs["feature_dim"],
            "feature_dtype": attrs["feature_dtype"],
            "num_batches": sample_attrs["num_batches"],
            "num_input_nodes": sample_attrs["num_input_nodes"],
            "num_cache_rows": packed_attrs["n_gpu"] + packed_attrs["n_cpu"]}
    assert len(_check_declared(packed, PACKED.arrays, dims)) == len(PACKED.arrays)


@pytest.mark.parametrize("meta", [
    {"node_type": "group"},
    {"node_type": "array", "chunk_grid": {"name": "regular", "configuration": {
        "chunk_shape": [2, 3]}}, "shape": [4], "codecs": [], "data_type": "int64"},
])
def test_unreadable_metadata(meta):
    with pytest.raises((KeyError, ValueError)):
        ArrayMeta.parse(meta)
