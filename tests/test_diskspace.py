"""Disk space: estimates against what is written, preallocation, stale temporaries, and full
filesystems (a small tmpfs, where the test may mount one; skipped otherwise)."""

from __future__ import annotations

import errno
import gzip
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from helpers import assert_user_error, disk_use

from disktrain.errors import DiskSpaceError
from disktrain.ingest import IngestConfig, ingest
from disktrain.ingest.edges import open_edges
from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.pack import PackConfig, PackedStore, pack_dataset
from disktrain.pack.store import packed_store_bytes
from disktrain.sample import SampleConfig, SampleStore, sample_dataset
from disktrain.sample.plan import SamplePlan
from disktrain.sample.store import batch_bound, sample_store_bytes
from disktrain.storage import atomic
from disktrain.storage.atomic import atomic_dir, atomic_write_bytes, remove_stale, temporary_name
from disktrain.storage.dataset import Dataset
from disktrain.storage.diskspace import require_free
from disktrain.storage.io import disk_full_errors, preallocate

ROOT = Path(__file__).resolve().parents[1]



def run_cli(*args, script: str | None = None) -> subprocess.CompletedProcess:
    """``disktrain ARGS`` in a fresh process (``script`` runs first, in that process)."""
    code = (script or "") + "\nfrom disktrain.cli import main\nraise SystemExit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=ROOT)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)`` mounts a tmpfs of ``size`` bytes and returns its directory."""
    mounts = []

    def mount(size: int) -> Path:
        path = tmp_path / f"fs{len(mounts)}"
        path.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                   str(path)], capture_output=True, check=False)
        except FileNotFoundError:
            pytest.skip("no mount command")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


# Preallocation and the error helpers.

def test_preallocate_reserves_blocks(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        preallocate(fd, 3 << 20, path)
    finally:
        os.close(fd)
    assert path.stat().st_size == 3 << 20
    assert path.stat().st_blocks * 512 >= 3 << 20  # reserved, not a sparse file


def test_preallocate_full_disk_is_disk_space_error_naming_file(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    path = tmp_path / "indices" / "c" / "0"
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(DiskSpaceError, match="no space left") as e:
            preallocate(fd, 1 << 20, path)
    finally:
        os.close(fd)
    assert str(path) in str(e.value) and str(1 << 20) in str(e.value)


def test_preallocate_without_fallocate_support_sizes_file(tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        preallocate(fd, 12345, path)
    finally:
        os.close(fd)
    assert path.stat().st_size == 12345


def test_require_free_says_needed_and_free(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    require_free(tmp_path / "new" / "dir", 1, "ingest")  # a parent that exists is asked
    with pytest.raises(DiskSpaceError, match="ingest: needs about 1000000000000000 bytes") as e:
        require_free(tmp_path, 10**15, "ingest")
    free_said = int(str(e.value).split("only ")[1].split(" bytes")[0])
    assert abs(free_said - free) < 1 << 30 and str(tmp_path) in str(e.value)


def test_disk_full_errors_names_file_and_passes_other_errors(tmp_path):
    named = pytest.raises(DiskSpaceError, match=r"/x/c/0: no space left on the device \(\d+")
    with named, disk_full_errors(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/c/0")
    unnamed = pytest.raises(DiskSpaceError, match=f"{tmp_path}: no space left")
    with unnamed, disk_full_errors(tmp_path):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(PermissionError), disk_full_errors(tmp_path):
        raise PermissionError(errno.EACCES, "Permission denied")


# Estimates: upper bounds, within 20% of what is written.

def recorded_need(monkeypatch, module) -> list[int]:
    """The byte counts ``module`` passes to require_free."""
    needs = []
    real = module.require_free
    monkeypatch.setattr(module, "require_free",
                        lambda path, need, what: (needs.append(need), real(path, need, what)))
    return needs


def recorded_peak(monkeypatch) -> list[int]:
    """Disk use of the dataset being written just before the CSR build removes its spill
    file (when, with the spill file, the most is on disk): filled in by the build."""
    from disktrain.ingest import csr

    peaks = []
    real = csr._Spill.__exit__

    def record(spill, *exc):
        peaks.append(disk_use(spill.path.parent))
        real(spill, *exc)

    monkeypatch.setattr(csr._Spill, "__exit__", record)
    return peaks


@pytest.mark.parametrize("dedup", [False, True])
def test_synth_estimate_bounds_what_it_writes(tmp_path, monkeypatch, dedup):
    """The estimate bounds the most synth holds on disk: the CSR and its spill file while
    it is built, or the whole dataset."""
    import disktrain.ingest.synth as synth_mod

    needs, peaks = recorded_need(monkeypatch, synth_mod), recorded_peak(monkeypatch)
    out = synthesize(SynthConfig(out=tmp_path / "ds", num_nodes=20_000, feature_dim=16,
                                 dedup=dedup, progress=False))
    peak = max(peaks[0], disk_use(out))
    assert peak <= needs[0] <= 1.2 * peak


def test_ingest_estimate_bounds_what_it_writes(tmp_path, monkeypatch):
    import disktrain.ingest.inputs as ingest_mod

    rng = np.random.default_rng(0)
    n, e = 20_000, 150_000
    np.save(tmp_path / "edges.npy", rng.integers(0, n, (e, 2)))
    np.save(tmp_path / "x.npy", rng.standard_normal((n, 24)))
    np.save(tmp_path / "y.npy", rng.integers(0, 5, n))
    perm = rng.permutation(n)
    for name, ids in (("train", perm[:10_000]), ("val", perm[10_000:15_000])):
        np.save(tmp_path / f"{name}.npy", ids)
    needs, peaks = recorded_need(monkeypatch, ingest_mod), recorded_peak(monkeypatch)
    out = ingest(IngestConfig(edges=tmp_path / "edges.npy", out=tmp_path / "ds",
                              features=tmp_path / "x.npy", labels=tmp_path / "y.npy",
                              train=tmp_path / "train.npy", val=tmp_path / "val.npy",
                              undirected=True, progress=False))
    peak = max(peaks[0], disk_use(out))  # features first, then the CSR and its spill file
    assert peak <= needs[0] <= 1.2 * peak


def write_csv_edges(path: Path, num_edges: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    table = pa.table({"src": rng.integers(0, 10**6, num_edges),
                      "dst": rng.integers(0, 10**6, num_edges)})
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            pcsv.write_csv(table, f)
    else:
        pcsv.write_csv(table, path)


@pytest.mark.parametrize(("name", "num_edges", "exact"), [
    ("small.csv", 1000, True), ("large.csv", 400_000, False), ("small.csv.gz", 1000, True),
    ("large.csv.gz", 1_500_000, False)])
def test_csv_row_estimate(tmp_path, name, num_edges, exact):
    write_csv_edges(tmp_path / name, num_edges)
    reader = open_edges(tmp_path / name)
    estimate = reader.estimate_rows()
    if exact:
        assert estimate == num_edges
    else:
        assert num_edges <= estimate <= 1.2 * num_edges


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, SampleConfig]:
    path = tmp_path_factory.mktemp("prepared") / "ds"
    synthesize(SynthConfig(out=path, num_nodes=20_000, feature_dim=16, progress=False))
    cfg = SampleConfig(fanouts=(5, 5), batch_size=256, epochs=2, group_size=2)
    sample_dataset(path, cfg, progress=False)
    pack_dataset(path, PackConfig(cpu_cache_bytes=64 * 500), progress=False)
    return path, cfg


def test_sample_store_estimate_bounds_what_it_writes(prepared):
    path, cfg = prepared
    dataset = Dataset(path)
    plan = SamplePlan(cfg, dataset.split("train"))
    estimate = sample_store_bytes(dataset, plan)
    written = disk_use(SampleStore(path).path)
    assert written <= estimate <= 1.2 * written
    assert sample_store_bytes(dataset, plan, num_groups=plan.num_groups // 2) < estimate / 1.8


def test_packed_store_estimate_matches_what_it_writes(prepared):
    store = PackedStore(prepared[0])
    estimate = packed_store_bytes(
        padded_rows=store.attrs["padded_rows"], row_bytes=16 * 4,
        chunk_rows=store.chunk_rows, shard_bytes=PackConfig().shard_bytes,
        num_slots=int(store.slot_offsets[-1]),
        num_cache_rows=store.n_gpu + store.n_cpu, num_batches=store.num_batches)
    written = disk_use(store.path)
    assert store.n_cpu == 500 and written <= estimate <= 1.05 * written


def test_batch_bound():
    # 10 seeds, fanouts 3 then 2: 30 edges reach 30 more nodes, then 40 * 2 edges.
    assert batch_bound(10, (3, 2), 1000, 10**6) == (120, 110)
    assert batch_bound(10, (3, 2), 50, 10**6) == (50, 110)  # at most every node
    assert batch_bound(10, (3, 2), 1000, 25) == (60, 50)  # distinct rows: at most E a hop
    assert batch_bound(10, (-1,), 1000, 400) == (410, 400)


# Temporaries of interrupted runs.

def test_killed_writer_leaves_temporary_that_next_write_removes(tmp_path, capsys):
    final = tmp_path / "ds"
    script = textwrap.dedent(f"""
        import os, signal
        from disktrain.storage.atomic import atomic_dir
        with atomic_dir({str(final)!r}) as tmp:
            (tmp / "half").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    (stale,) = tmp_path.glob("ds.tmp-*")
    with atomic_dir(final) as tmp:
        (tmp / "whole").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert (final / "whole").exists()
    err = capsys.readouterr().err
    assert f"removed stale temporary directory {stale} left by an interrupted run" in err


def test_temporaries_of_live_processes_and_other_hosts_are_kept(tmp_path, capsys):
    final = tmp_path / "ds"
    live = temporary_name(final)
    live.mkdir()
    host, pid, start, rand = live.name.split(".tmp-")[1].split("-")
    reused = final.with_name(f"ds.tmp-{host}-{pid}-{'0' * 8}-{rand}")  # pid reused since
    reused.mkdir()
    foreign = final.with_name(f"ds.tmp-{'f' * 8}-{pid}-{start}-{rand}")
    foreign.mkdir()
    for kept in ("ds.tmp-0123abcd", "samples.partial", "other"):  # not ours to judge
        (tmp_path / kept).mkdir()
    assert remove_stale(tmp_path) == [reused]
    assert not reused.exists() and live.exists() and foreign.exists()
    assert (tmp_path / "samples.partial").exists() and (tmp_path / "ds.tmp-0123abcd").exists()
    assert "removed stale temporary directory" in capsys.readouterr().err


def test_stale_temporary_file_removed_by_atomic_write_bytes(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".latest.pt.tmp-{atomic._host()}-{dead.pid}-{'0' * 8}-{'1' * 8}"
    stale.write_bytes(b"half a checkpoint")
    atomic_write_bytes(tmp_path / "latest.pt", b"checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
    assert "removed stale temporary file" in capsys.readouterr().err


def test_full_disk_in_atomic_dir_names_file_and_removes_temporary(tmp_path):
    named = pytest.raises(DiskSpaceError, match=r"features/c/3/0: no space left")
    with named, atomic_dir(tmp_path / "ds"):
        raise OSError(errno.ENOSPC, "No space left on device", "ds.tmp/features/c/3/0")
    unnamed = pytest.raises(DiskSpaceError, match=f"{tmp_path / 'ds'}: no space left")
    with unnamed, atomic_dir(tmp_path / "ds"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# Full filesystems, through the command line.

@pytest.mark.slow
def test_ingest_refused_up_front_on_small_filesystem(tmp_path, tmpfs):
    fs = tmpfs(2 << 20)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "edges.npy", rng.integers(0, 20_000, (300_000, 2)))
    np.save(tmp_path / "x.npy", rng.standard_normal((20_000, 16)).astype(np.float32))
    proc = run_cli("ingest", "--edges", tmp_path / "edges.npy", "--features", tmp_path / "x.npy",
                   "--out", fs / "ds", "--no-progress")
    assert_user_error(proc.returncode, proc.stderr, "ingest: needs about", "bytes", "are free",
                      str(fs / "ds"))
    assert list(fs.iterdir()) == []


@pytest.mark.slow
def test_synth_refused_up_front_on_small_filesystem(tmpfs):
    fs = tmpfs(2 << 20)
    proc = run_cli("synth", "--out", fs / "ds", "--nodes", "50000", "--no-progress")
    assert_user_error(proc.returncode, proc.stderr, "synth: needs about", "are free")
    assert list(fs.iterdir()) == []


PREPARE = ("--fanouts", "5,5", "--batch-size", "256", "--epochs", "2", "--group-size", "2",
           "--no-progress")


@pytest.mark.parametrize(("size", "step"), [(4 << 20, "sampl"), (20 << 20, "pack")])
@pytest.mark.slow
def test_prepare_refused_up_front_on_small_filesystem(tmpfs, size, step):
    """The dataset fits; the sample store (~12 MB) or then the packed store (~27 MB) does not."""
    fs = tmpfs(size)
    synthesize(SynthConfig(out=fs / "ds", num_nodes=20_000, feature_dim=16, progress=False))
    before = sorted(p.name for p in (fs / "ds").iterdir())
    proc = run_cli("prepare", fs / "ds", *PREPARE)
    assert_user_error(proc.returncode, proc.stderr, "prepare", step, "needs about", "are free")
    after = sorted(p.name for p in (fs / "ds").iterdir())
    # packing is refused once every sample store (training, then evaluation) is written; the
    # dataset's lock file stays
    assert after == sorted(before + [".lock"] + (["eval", "samples"] if step == "pack" else []))
    assert not list(fs.rglob("*.tmp-*")) and not list(fs.rglob("*.partial"))


FILL_AFTER_CHECK = """
import sys
import disktrain.storage.diskspace as diskspace

_real = diskspace.require_free

def _check_then_fill(path, need, what):
    '''The check passes; then another process fills the filesystem but for 8 KiB.'''
    _real(path, need, what)
    diskspace.require_free = _real
    with open({filler!r}, "wb") as f:
        f.write(bytes(diskspace.free_bytes(path) - 8192))

diskspace.require_free = _check_then_fill  # commands import it when they run
"""


@pytest.mark.parametrize("command", ["synth", "ingest", "prepare"])
@pytest.mark.slow
def test_disk_filling_during_write_is_clean_error(tmp_path, tmpfs, command):
    fs = tmpfs(16 << 20)
    filler = fs / "filler"
    if command == "prepare":
        synthesize(SynthConfig(out=fs / "ds", num_nodes=5000, feature_dim=16, progress=False))
        args = ("prepare", fs / "ds", *PREPARE)
    elif command == "synth":
        args = ("synth", "--out", fs / "ds", "--nodes", "20000", "--feature-dim", "16",
                "--no-progress")
    else:
        rng = np.random.default_rng(0)
        np.save(tmp_path / "edges.npy", rng.integers(0, 20_000, (100_000, 2)))
        np.save(tmp_path / "x.npy", rng.standard_normal((20_000, 16)).astype(np.float32))
        args = ("ingest", "--edges", tmp_path / "edges.npy", "--features", tmp_path / "x.npy",
                "--out", fs / "ds", "--no-progress")
    proc = run_cli(*args, script=FILL_AFTER_CHECK.format(filler=str(filler)))
    assert filler.exists(), proc.stderr  # the check ran and passed
    assert_user_error(proc.returncode, proc.stderr, "no space left on the device")
    assert not list(fs.rglob("*.tmp-*"))
    if command != "prepare":  # prepare keeps its resumable partial stores
        assert list(fs.iterdir()) == [filler]
