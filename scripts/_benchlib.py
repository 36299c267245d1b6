"""Measuring a child process for the benchmarks (scripts/bench_vs_pyg.py, bench_billion.py,
bench_typed.py): memory cgroups, page-cache eviction, the regime a run happens in, disk
footprints, and the wall time, CPU, peak memory and storage reads of a command and its
descendants.

Storage reads come from ``os.wait4``'s rusage of the child: ``ru_inblock`` x 512 is the child's
``read_bytes`` of ``/proc/PID/io``, summed over all its threads and over every descendant it
reaped (checked on Linux for buffered reads, memory-mapped page faults, ``O_DIRECT`` reads,
other threads and a reaped grandchild). It counts the bytes its reads made the block layer
fetch (readahead included), not reads served by the page cache; a descendant that was never
reaped (an orphan) is not counted. ``ru_maxrss`` is the largest of the process's and its reaped
descendants' peaks, counts resident pages of mapped files, and starts from the parent's peak
RSS at the fork (so the parent, this script, keeps itself small). ``disk_read_bytes``
(``/proc/diskstats`` of the device holding the data) is the machine-wide count over the same
interval: every process's reads.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Self

CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def parse_bytes(text: str) -> int:
    """``2.5G``, ``800M``, ``1073741824`` -> bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 2.5G)") from None


def own_memory_cgroup(proc_cgroup: str) -> str | None:
    """This process's cgroup-v1 memory path (``/a/b``) from the text of /proc/self/cgroup."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


class MemoryCgroup:
    """A cgroup-v1 memory group of our own with ``limit`` bytes (page cache included; None: no
    limit), nested in this process's memory cgroup under ``root`` (default ``CGROUP_V1``), so
    whatever accounts for this process still covers it. ``MemoryCgroup.create`` returns None,
    with the reason in ``MemoryCgroup.unavailable``, where cgroups v1 cannot be used."""

    unavailable = ""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, name: str, limit: int | None,
               root: Path | None = None) -> MemoryCgroup | None:
        root = CGROUP_V1 if root is None else root
        try:
            parent = own_memory_cgroup(Path("/proc/self/cgroup").read_text()) or "/"
            path = root / parent.lstrip("/") / name
            path.mkdir()
        except OSError as e:
            cls.unavailable = f"cannot create a memory cgroup under {root}: {e}"
            return None
        if not (path / "cgroup.procs").exists():  # an ordinary directory, not cgroupfs
            path.rmdir()
            cls.unavailable = f"{root} is not a cgroup-v1 memory hierarchy"
            return None
        group = cls(path)
        try:
            if limit is not None:
                (path / "memory.limit_in_bytes").write_text(str(limit))
        except OSError as e:
            group.remove()
            cls.unavailable = f"cannot set {path}/memory.limit_in_bytes: {e}"
            return None
        return group

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside the group: a shell joins it, then execs ``argv``."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"',
                str(self.path / "cgroup.procs"), *argv]

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def stats(self) -> dict:
        """Peak usage (page cache included), limit hits and OOM kills so far."""
        oom = dict(line.split() for line in self._read("memory.oom_control").splitlines())
        return {"cgroup_max_usage_bytes": int(self._read("memory.max_usage_in_bytes")),
                "cgroup_failcnt": int(self._read("memory.failcnt")),
                "cgroup_oom_kills": int(oom.get("oom_kill", 0))}

    def pids(self) -> list[int]:
        return [int(p) for p in self._read("cgroup.procs").split()]

    def remove(self) -> None:
        """Kill what is left in the group (only our own descendants can be there), then
        remove it; its page-cache charges move to the parent."""
        for _ in range(50):
            try:
                left = self.pids()
            except OSError:
                return
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # the killed processes are still exiting
                time.sleep(0.1)
        raise RuntimeError(f"could not remove cgroup {self.path}: processes {self.pids()}")


def data_files(paths) -> list[Path]:
    """Every regular file under the given files and directories."""
    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(f for f in p.rglob("*") if f.is_file())
    return out


def evict(paths) -> None:
    """``sync``, then drop every file under ``paths`` from the page cache
    (``posix_fadvise(DONTNEED)``; pages a running process has mapped stay)."""
    os.sync()
    for f in data_files(paths):
        try:
            fd = os.open(f, os.O_RDONLY)
        except FileNotFoundError:  # removed meanwhile (a fresh epoch trained)
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths, block: int = 16 << 20) -> int:
    """Read every file under ``paths`` once, so it sits in the page cache; bytes read."""
    total = 0
    buf = bytearray(block)
    for f in data_files(paths):
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total


class PeriodicEvictor:
    """The fallback where no memory cgroup can be made: evict ``paths`` every ``interval``
    seconds while a run goes on (about once per batch), so reads keep going to storage.
    Pages the process has mapped (the peer's feature map) cannot be dropped this way."""

    def __init__(self, paths, interval: float):
        self.paths, self.interval = list(paths), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            evict(self.paths)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Regime:
    """Where a run happens: ``warm_files`` read into the page cache (in_ram), or ``files``
    dropped from it and the run's memory capped (out_of_core); holds the cgroup its commands
    run in (unlimited in RAM, for its peak usage) or the fallback evictor."""

    def __init__(self, name: str, files: list[Path], mem_limit: int, evict_interval: float,
                 tag: str, warm_files: list[Path] | None = None):
        self.name, self.files, self.mem_limit = name, files, mem_limit
        self.warm_files = files if warm_files is None else warm_files
        self.evict_interval, self.tag = evict_interval, tag
        self.cgroup: MemoryCgroup | None = None
        self.evictor: PeriodicEvictor | None = None
        self.method = "none"

    def __enter__(self) -> Self:
        limit = self.mem_limit if self.name == "out_of_core" else None
        if self.name == "out_of_core":
            evict(self.files)
        else:
            warm(self.warm_files)
        self.cgroup = MemoryCgroup.create(self.tag, limit)
        if self.name == "out_of_core":
            if self.cgroup is not None:
                self.method = "cgroup-v1"
            else:
                self.method = "periodic-eviction"
                self.evictor = PeriodicEvictor(self.files, self.evict_interval).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.evictor is not None:
            self.evictor.__exit__(*exc)
        if self.cgroup is not None:
            self.cgroup.remove()

    @property
    def info(self) -> dict:
        return {"out_of_core_method": self.method,
                "memory_limit_bytes": self.mem_limit if self.method == "cgroup-v1" else None,
                "cgroup_note": MemoryCgroup.unavailable if self.cgroup is None else None}


def footprint(root: Path) -> int:
    """Bytes of the files under ``root`` (hard links counted once)."""
    seen, total = set(), 0
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def in_child(func, *args):
    """``func(*args)`` in a spawned process, so its memory maps and arrays never count in
    this process's peak RSS (which every later child's ``ru_maxrss`` starts from)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


def device_of(path: Path) -> str | None:
    """The /proc/diskstats name of the block device holding ``path`` (None if none)."""
    st = os.stat(path)
    key = (os.major(st.st_dev), os.minor(st.st_dev))
    for fields in map(str.split, Path("/proc/diskstats").read_text().splitlines()):
        if (int(fields[0]), int(fields[1])) == key:
            return fields[2]
    return None


def diskstats_read_bytes(text: str, device: str) -> int | None:
    """Bytes read from ``device`` since boot, from the text of /proc/diskstats."""
    for fields in map(str.split, text.splitlines()):
        if len(fields) > 5 and fields[2] == device:
            return int(fields[5]) * 512
    return None


def disk_read_bytes(device: str | None) -> int | None:
    if device is None:
        return None
    return diskstats_read_bytes(Path("/proc/diskstats").read_text(), device)


def run_measured(argv: list[str], *, cgroup: MemoryCgroup | None = None,
                 stderr_path: Path, device: str | None = None,
                 timeout_s: float | None = None) -> dict:
    """Run ``argv`` as a child in its own session (and ``cgroup``); its stdout, exit code,
    wall/user/sys seconds, peak RSS and bytes read/written (rusage of the child and its
    reaped descendants; the peak RSS is the largest single process's), machine-wide disk
    reads over the run, and the cgroup's figures.
    Whatever of the session is left when the child exits is killed."""
    disk0 = disk_read_bytes(device)
    timed_out = threading.Event()

    def on_timeout(pid: int) -> None:
        timed_out.set()
        _kill_group(pid)

    out_path = stderr_path.with_name(stderr_path.name + ".stdout")
    # stdout to a file, not a pipe: a descendant left holding the pipe would block the read
    with open(stderr_path, "ab") as err, open(out_path, "w+b") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cgroup.wrap(argv) if cgroup else argv, stdout=out,
                                stderr=err, start_new_session=True)
        timer = threading.Timer(timeout_s, on_timeout, (proc.pid,)) if timeout_s else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:  # interrupted: leave nothing running
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - t0
        _kill_group(proc.pid)  # descendants left in its session
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    out_path.unlink()
    disk1 = disk_read_bytes(device)
    record = {
        "argv": argv, "returncode": proc.returncode, "wall_s": wall,
        "timed_out": timed_out.is_set(),
        "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "read_bytes": usage.ru_inblock * 512, "written_bytes": usage.ru_oublock * 512,
        "disk_read_bytes": None if disk0 is None or disk1 is None else disk1 - disk0,
        "stdout": stdout}
    if cgroup is not None:
        record.update(cgroup.stats())
    return record


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stderr_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_header(name: str, script: str, args: argparse.Namespace, argv: list[str] | None,
               work: Path) -> dict:
    """A benchmark's JSON record before its steps: the command, the machine, the config
    (``args``; ``memory_limit`` as ``memory_limit_bytes``), the work directory."""
    import shlex
    import sys

    return {"benchmark": name,
            "command": shlex.join([sys.executable, script, *(sys.argv[1:] if argv is None
                                                             else argv)]),
            "machine": {"cores": os.cpu_count(), "mem_total_bytes":
                        os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")},
            "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                          if k not in ("memory_limit", "out", "plot")},
                       "memory_limit_bytes": args.memory_limit},
            "workdir": str(work), "steps": {}}


def write_json(result: dict, path: Path | None) -> None:
    """``result`` to ``path`` (if any), through a temporary file renamed into place."""
    if path is not None:
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.rename(path)


def last_json(stdout: str) -> dict | None:
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
