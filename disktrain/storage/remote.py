"""Object storage (S3 and what else pyarrow's filesystems reach): stores published under a URL,
staged per node on local disk, packed rows read by ranged GETs.

A dataset, its sample store and packed stores may live under ``s3://bucket/prefix`` (or
``gs://``, any URL ``pyarrow.fs.FileSystem.from_uri`` accepts). Object stores have no rename,
so a prefix is complete only once its manifest is written, last::

    URL/disktrain-manifest.json   {"manifest_id", "created", "dataset_id",
                                   "files": {relative path: [size, crc32c of the file]}}
    URL/<every file of the local directory, same relative paths>

:func:`publish` uploads a local dataset directory (only the files the remote manifest does
not already hold with the same size and crc), then the manifest, then deletes the objects
the new manifest does not name. A prefix without a manifest is incomplete and refused.

:func:`stage` makes a node-local copy (``stage_dir()``, ``DISKTRAIN_STAGE_DIR``) that the
rest of disktrain opens as an ordinary dataset directory: the metadata files are downloaded
at once; every chunk file, and the sample groups' metadata, is fetched on first use
(:func:`fetch_missing`, called by the readers of chunks and metadata) and kept, so a node
downloads the sample groups, cache rows and feature chunks it reads once; packed ``rows``
shards are never downloaded whole: :class:`RemoteFiles` reads a batch's range with one ranged
GET per shard file. Every downloaded file is checked against the
manifest's size and crc32c; ranged reads are checked per chunk by their readers.

The object store itself: :mod:`disktrain.storage.objstore` (credentials, errors).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from disktrain.errors import DataError
from disktrain.storage.atomic import atomic_dir, atomic_write_bytes
from disktrain.storage.objstore import (
    MANIFEST,
    Remote,
    file_digest,
    named_errors,
)

MARKER = ".disktrain-remote.json"
"""In a staged directory: the URL it stages and the manifest it was staged from."""
_LAZY = re.compile(r"(^|/)c((/\d+)+|(\.\d+)+)$|(^|/)groups/g\d+/")
"""Files fetched on first use, not when staged: chunk files (``ARRAY/c/i/j``, shard files
``ARRAY/c.K.0``) and everything of a sample store's groups (a node reads its own)."""
_UPLOAD_THREADS = 8


def stage_dir() -> Path:
    """Where this node stages remote stores: ``DISKTRAIN_STAGE_DIR``, else
    ``$XDG_CACHE_HOME/disktrain/stage`` (``~/.cache/disktrain/stage``)."""
    if base := os.environ.get("DISKTRAIN_STAGE_DIR"):
        return Path(base)
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "disktrain" / "stage"


def _published_files(local: Path) -> list[str]:
    """The files of ``local`` a publish uploads: not locks, temporaries, stores being made,
    runs' fresh epochs or staging markers."""
    skip = re.compile(r"(^|/)(\.lock(\.[^/]*)?|epochs|[^/]*\.partial|" + re.escape(MARKER)
                      + r")(/|$)|\.(tmp|old)-")
    return sorted(str(p.relative_to(local)) for p in local.rglob("*")
                  if p.is_file() and not skip.search(str(p.relative_to(local))))


def _store_of(rel: str) -> str:
    """The store a dataset's file belongs to: ``samples``, ``packed``,
    ``eval/SPLIT/samples|packed``, or ``""`` (the dataset's own arrays)."""
    parts = rel.split("/")
    depth = 3 if parts[0] == "eval" else 1 if parts[0] in ("samples", "packed") else 0
    return "/".join(parts[:depth]) if len(parts) > depth else ""


def _kept(old: dict, digests: dict) -> dict:
    """The files of the remote manifest ``old`` that a staged copy (its files: ``digests``)
    has not fetched but still holds: those of every store whose ``zarr.json`` is unchanged
    (not re-made)."""
    return {r: tuple(v) for r, v in old.items() if r not in digests
            and (meta := _meta(_store_of(r))) in digests
            and digests[meta] == tuple(old.get(meta, ()))}


def _meta(store: str) -> str:
    return f"{store}/zarr.json" if store else "zarr.json"


_STORE_PREFIXES = ("samples", "packed", "packed.pieces", "eval")
"""Where a dataset's prepared stores (and the pieces Ray tasks pack them in) live under its
prefix: objects there that no manifest names (an interrupted run's) are deleted by the next
:func:`publish`."""


def publish(local: str | os.PathLike, url: str, *, progress: bool = False,
            uploaded: dict[str, tuple[int, int]] | None = None) -> dict:
    """Upload the dataset directory ``local`` (its prepared stores too) to ``url``; return the
    manifest written. Files the prefix already holds (same size and crc32c) are not sent again;
    a staged copy's files not fetched yet are kept where their store is unchanged; objects the
    old manifest named and the new one does not, and any under the prepared stores'
    prefixes (:data:`_STORE_PREFIXES`) it does not name, are deleted once it is written.

    ``uploaded``: files written to the prefix by others (relative path: size, crc32c; Ray
    tasks of :mod:`disktrain.cluster.ray_prepare`), named by the manifest whether or not
    ``local`` holds them."""
    from tqdm.auto import tqdm

    local, remote = Path(local), Remote.of(url)
    if not (local / "zarr.json").is_file():
        raise DataError(f"{local}: not a disktrain dataset directory (no zarr.json)")
    old = (remote.manifest(missing_ok=True) or {}).get("files", {})
    held = {**old, **(uploaded or {})}
    rels = _published_files(local)
    with ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="disktrain-upload") as pool:
        digests = dict(zip(rels, pool.map(lambda r: file_digest(local / r), rels)))
        send = [r for r in rels if tuple(held.get(r, ())) != digests[r]]
        with tqdm(total=sum(digests[r][0] for r in send), unit="B", unit_scale=True,
                  desc=f"upload {url}", disable=not progress) as bar:
            for size, _ in pool.map(lambda r: remote.upload(local / r, r), send):
                bar.update(size)
    if _marker(local).get("url") == remote.url:  # a staged copy: keep what it did not fetch
        digests.update(_kept(old, digests))
    digests.update({r: tuple(v) for r, v in (uploaded or {}).items() if r not in digests})
    attrs = json.loads((local / "zarr.json").read_text()).get("attributes", {})
    manifest = {"manifest_id": uuid.uuid4().hex, "dataset_id": attrs.get("dataset_id"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {r: list(digests[r]) for r in sorted(digests)}}
    remote.put_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())
    stores = {r for top in _STORE_PREFIXES for r in remote.listing(top)}  # (a run's orphans)
    remote.delete(sorted((set(old) | stores) - set(digests)))
    _mark(local, url, manifest)
    return manifest


def _mark(local: Path, url: str, manifest: dict) -> None:
    atomic_write_bytes(local / MARKER, json.dumps({"url": url.rstrip("/"),
                                                   **manifest}).encode())
    _staged_root.cache_clear()


def staged_path(url: str, base: str | os.PathLike | None = None) -> Path:
    """The local directory that stages ``url`` under ``base`` (default :func:`stage_dir`)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[1].strip("/"))[-80:]
    return Path(base or stage_dir()) / f"{name}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def stage(url: str, base: str | os.PathLike | None = None) -> Path:
    """Stage the published dataset ``url`` on this node (see the module docstring); return
    the local directory. A copy staged from the same manifest is reused; one from an older
    manifest is replaced, keeping (hard-linked) the files it holds that the new manifest
    names unchanged. Processes of one node staging at once download it once."""
    import fcntl

    remote = Remote.of(url)
    manifest = remote.manifest()
    path = staged_path(remote.url, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.stage-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one stager per node; the others wait, then reuse
        old = _marker(path)
        if old.get("manifest_id") != manifest["manifest_id"]:
            with atomic_dir(path, overwrite=True) as tmp:
                files = manifest["files"]
                for r in [r for r, v in old.get("files", {}).items()
                          if tuple(files.get(r, ())) == tuple(v) and (path / r).is_file()]:
                    (tmp / r).parent.mkdir(parents=True, exist_ok=True)
                    os.link(path / r, tmp / r)
                eager = [r for r in files if not _LAZY.search(r) and not (tmp / r).exists()]
                with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
                    list(pool.map(lambda r: remote.download(r, tmp / r, files[r]), eager))
                _mark(tmp, remote.url, manifest)
    _staged_root.cache_clear()  # another process may have re-staged it since this one looked
    return path


def _marker(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return {}


@cache
def _staged_root(directory: str) -> tuple[Path, str, dict] | None:
    """The staged directory holding ``directory`` (itself or an ancestor), its URL and
    manifest files; None outside any."""
    for d in (Path(directory), *Path(directory).parents):
        if marker := _marker(d):
            return d, marker["url"], marker["files"]
    return None


def _remote(url: str) -> Remote:
    """One :class:`Remote` per URL and endpoint in a process."""
    return _remote_at(url, os.environ.get("AWS_ENDPOINT_URL"))


@cache
def _remote_at(url: str, endpoint: str | None) -> Remote:
    return Remote.of(url)


_GROUP = re.compile(r"^(.*/)?groups/g\d+/")
_fetching: dict[str, threading.Lock] = {}
_fetching_lock = threading.Lock()


def fetch_missing(path: str | os.PathLike) -> bool:
    """Download ``path``, a file of a staged directory its manifest names but not fetched yet
    (chunk files and sample groups are fetched on first use); whether it was one. A sample
    group's files come together, in parallel (its reader needs them all); threads asking
    for the same one wait for one download."""
    path = Path(path).absolute()
    if (found := _staged_root(str(path.parent))) is None:
        return False
    root, url, files = found
    rel = str(path.relative_to(root))
    if rel not in files:
        return False
    unit = m.group(0) if (m := _GROUP.match(rel)) else rel
    with _fetching_lock:
        lock = _fetching.setdefault(f"{root}/{unit}", threading.Lock())
    with lock:
        want = [r for r in ([r for r in files if r.startswith(unit)] if unit != rel else [rel])
                if not (root / r).exists()]
        remote = _remote(url)
        with ThreadPoolExecutor(min(_UPLOAD_THREADS, max(1, len(want)))) as pool:
            list(pool.map(lambda r: remote.download(r, root / r, tuple(files[r])), want))
    return True


def prefetch(path: str | os.PathLike) -> None:
    """:func:`fetch_missing` of ``path``, a file of a staged directory not fetched yet, on a
    thread of its own (a file that fails is fetched again by the reader that needs it)."""
    path = Path(path).absolute()
    if not path.exists() and _staged_root(str(path.parent)) is not None:
        threading.Thread(target=_quietly, args=(path,), name="disktrain-prefetch",
                         daemon=True).start()


def _quietly(path: str | os.PathLike) -> None:
    with contextlib.suppress(Exception):
        fetch_missing(path)


class RemoteFiles:
    """Ranged reads of a staged directory's files that stay remote (packed ``rows`` shards):
    each file opened once per process (one HEAD), then one GET per :meth:`read_at`. Counts
    the requests and bytes (``stats``). Thread-safe."""

    def __init__(self, remote: Remote, root_rel: str):
        self.remote, self.root_rel = remote, root_rel
        self._files: dict[str, object] = {}
        self._lock = threading.Lock()
        self.requests = self.bytes = 0

    @classmethod
    def of(cls, directory: str | os.PathLike) -> RemoteFiles | None:
        """For a directory of a staged dataset: its remote files; None for a local one."""
        directory = Path(directory).absolute()
        if (found := _staged_root(str(directory))) is None:
            return None
        root, url, _ = found
        return cls(_remote(url), str(directory.relative_to(root)))

    def _open(self, name: str):
        if (f := self._files.get(name)) is None:  # opened outside the lock: a round trip
            rel = f"{self.root_rel}/{name}"
            with named_errors(self.remote.where(rel), "open"):
                f = self.remote.fs.open_input_file(self.remote.key(rel))
            with self._lock:
                self.requests += 1
                f = self._files.setdefault(name, f)
        return f

    def size(self, name: str) -> int:
        return self._open(name).size()

    def read_at(self, name: str, offset: int, nbytes: int) -> bytes:
        f = self._open(name)
        with named_errors(self.remote.where(f"{self.root_rel}/{name}"), "ranged read"):
            data = f.read_at(nbytes, offset)
        with self._lock:
            self.requests += 1
            self.bytes += len(data)
        return data
