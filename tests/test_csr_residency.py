"""Where a dataset's CSR lives (disktrain.storage.residency): read into huge-page memory or memory-mapped,
the same arrays and samples either way, checked either way, chosen by policy and budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tinygraphs import make_dataset

from disktrain.errors import CorruptDataError
from disktrain.kernels.sampling import sample_batches
from disktrain.storage import dataset as dataset_mod
from disktrain.storage.dataset import Dataset, chunk_file
from disktrain.storage.residency import HUGE_PAGE, pmd_mapped_share

BIG = 1 << 40
"""A budget every test CSR fits."""


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("residency") / "d", num_nodes=400,
                        num_edges=5000)


def csr_bytes(path: Path) -> int:
    ds = Dataset(path, csr="map")
    return ds.indptr.nbytes + ds.indices.nbytes


def sample(ds: Dataset):
    seeds = ds.split("train")[:64].astype(np.int64)
    return sample_batches(ds.indptr, ds.indices, seeds, np.array([0, 32, 64], np.int64),
                          [5, 3], 7)


def test_loaded_and_mapped_csr_are_equal_and_sample_alike(graph):
    mapped = Dataset(graph, csr="map")
    loaded = Dataset(graph, csr="memory", csr_budget=BIG)
    assert not mapped.csr_in_memory and isinstance(mapped.indices, np.memmap)
    assert loaded.csr_in_memory and not isinstance(loaded.indices, np.memmap)
    for name in ("indptr", "indices"):
        a, b = getattr(mapped, name), getattr(loaded, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    x, y = sample(mapped), sample(loaded)
    for field in ("nodes", "node_offsets", "hop_counts", "edge_src", "edge_dst",
                  "edge_offsets"):
        assert np.array_equal(getattr(x, field), getattr(y, field)), field


def test_loaded_csr_is_in_aligned_memory_and_shared(graph):
    a = Dataset(graph, csr="memory", csr_budget=BIG)
    b = Dataset(graph, csr="memory", csr_budget=BIG)
    assert a.indices is b.indices  # one copy per process while someone holds it
    assert not a.indices.flags.writeable  # read-only, as the map is
    assert a.indices.ctypes.data % HUGE_PAGE == 0 and a.indptr.ctypes.data % HUGE_PAGE == 0


@pytest.mark.parametrize("name", ["indptr", "indices"])
def test_corrupted_chunk_is_named_on_the_loaded_path(graph, tmp_path, name):
    d = Path(shutil.copytree(graph, tmp_path / "d"))
    f = chunk_file(d / name, 0)
    data = bytearray(f.read_bytes())
    data[5] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match=rf"dataset {d}: array '{name}': chunk file "
                       rf"{f} failed its crc32c check.*re-create the dataset"):
        getattr(Dataset(d, csr="memory", csr_budget=BIG), name)


def test_truncated_chunk_is_named_on_the_loaded_path(graph, tmp_path):
    d = Path(shutil.copytree(graph, tmp_path / "d"))
    f = chunk_file(d / "indices", 0)
    f.write_bytes(f.read_bytes()[:-9])
    with pytest.raises(CorruptDataError, match=rf"chunk file {f} has \d+ bytes, expected"):
        assert Dataset(d, csr="memory", csr_budget=BIG).indices is None  # raises first


def test_csr_over_budget_is_mapped(graph):
    need = csr_bytes(graph)
    over = Dataset(graph, csr="memory", csr_budget=need - 1)
    assert not over.csr_in_memory and isinstance(over.indptr, np.memmap)
    fits = Dataset(graph, csr="memory", csr_budget=need)
    assert fits.csr_in_memory


def test_default_budget_is_a_share_of_available_memory(graph, monkeypatch):
    from disktrain.storage import residency

    need = csr_bytes(graph)
    monkeypatch.setattr(residency, "mem_available", lambda: 2 * need - 2)
    assert not Dataset(graph, csr="memory").csr_in_memory
    monkeypatch.setattr(residency, "mem_available", lambda: 2 * need)
    assert Dataset(graph, csr="memory").csr_in_memory


@pytest.mark.parametrize("share, in_memory", [(1.0, False), (0.0, True)])
def test_auto_reads_into_memory_what_the_kernel_maps_in_small_pages(graph, monkeypatch, share,
                                                                    in_memory):
    monkeypatch.setattr(dataset_mod, "pmd_mapped_share", lambda array: share)
    ds = Dataset(graph)
    assert ds.csr_in_memory is in_memory
    assert np.array_equal(ds.indices, Dataset(graph, csr="map").indices)


def test_auto_probes_the_smaller_array_and_reads_each_file_once(graph, tmp_path, monkeypatch):
    """In 4 KiB pages, the probe (indptr, the smaller) is copied from the map it was checked
    through; indices is read straight into memory, not through the page cache first."""
    from disktrain.storage import residency

    fresh = tmp_path / "d"  # a copy no test loaded before (a process shares what it loaded)
    shutil.copytree(graph, fresh)
    probed, checked, direct = [], [], []
    monkeypatch.setattr(dataset_mod, "pmd_mapped_share",
                        lambda array: probed.append(array.nbytes) or 0.0)
    verify = dataset_mod.verify_flat_once
    monkeypatch.setattr(dataset_mod, "verify_flat_once",
                        lambda root, name, *a: checked.append(name) or verify(root, name, *a))
    read = residency.check_chunk
    monkeypatch.setattr(residency, "check_chunk",
                        lambda path, *a, **k: direct.append(Path(path).parent.parent.name)
                        or read(path, *a, **k))
    ds = Dataset(fresh)
    assert ds.csr_in_memory and not isinstance(ds.indices, np.memmap)
    assert checked == ["indptr"] and direct == ["indices"]
    assert probed == [ds.indptr.nbytes] and ds.indptr.nbytes < ds.indices.nbytes
    mapped = Dataset(graph, csr="map")
    assert np.array_equal(ds.indices, mapped.indices) and np.array_equal(ds.indptr,
                                                                         mapped.indptr)


def test_auto_probes_both_arrays_when_the_first_is_in_huge_pages(graph, tmp_path,
                                                                  monkeypatch):
    fresh = tmp_path / "d"
    shutil.copytree(graph, fresh)
    shares = iter([1.0, 0.0])  # indptr in 2 MiB pages, indices not: both in memory
    monkeypatch.setattr(dataset_mod, "pmd_mapped_share", lambda array: next(shares))
    ds = Dataset(fresh)
    assert ds.csr_in_memory and not isinstance(ds.indptr, np.memmap)
    assert np.array_equal(ds.indices, Dataset(graph, csr="map").indices)


def test_auto_maps_what_is_over_budget(graph, monkeypatch):
    monkeypatch.setattr(dataset_mod, "pmd_mapped_share", lambda array: 0.0)
    assert not Dataset(graph, csr_budget=csr_bytes(graph) - 1).csr_in_memory


def test_pmd_mapped_share_of_a_map(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(np.arange(3 * HUGE_PAGE // 8, dtype=np.int64).tobytes())
    share = pmd_mapped_share(np.memmap(f, np.int64, "r"))
    assert 0.0 <= share <= 1.0
    assert pmd_mapped_share(np.zeros(10)) == 1.0  # smaller than one huge page


@pytest.mark.parametrize("kwargs, match", [({"csr": "ram"}, r"csr must be one of .*'ram'"),
                                           ({"csr_budget": -1}, r"csr_budget .* got -1")])
def test_bad_residency_arguments_are_named(graph, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Dataset(graph, **kwargs)


def test_mem_available_counts_the_memory_cgroups_room(monkeypatch, tmp_path):
    """Inside a memory cgroup (v1 here, faked under tmp_path) the room is its limit less its
    usage beyond page cache, when that is less than MemAvailable."""
    from disktrain.storage import residency

    group = tmp_path / "memory" / "job"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(str(3 << 30))
    (group / "memory.usage_in_bytes").write_text(str(2 << 30))
    (group / "memory.stat").write_text(f"cache {1 << 30}\nrss {1 << 30}\n")
    real_open, real_path = open, residency.Path

    def fake_open(path, *a, **kw):
        return real_open(tmp_path / "cgroup", *a, **kw) if path == "/proc/self/cgroup" \
            else real_open(path, *a, **kw)
    (tmp_path / "cgroup").write_text("4:memory:/job\n0::/\n")
    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(residency, "Path", lambda p: tmp_path / "memory" if
                        str(p) == "/sys/fs/cgroup/memory" else real_path(p))
    assert residency._cgroup_room() == 2 << 30  # 3 GiB limit - (2 GiB used - 1 GiB cache)
    assert residency.mem_available() <= 2 << 30
    (group / "memory.limit_in_bytes").write_text(str(1 << 62))  # unlimited
    assert residency._cgroup_room() is None
