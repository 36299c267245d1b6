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
(:func:`fetch_missing`, called by the readers of chunks and metadata) and kept, so a node downloads the sample groups, cache rows and feature chunks it
reads once; packed ``rows`` shards are never downloaded whole: :class:`RemoteFiles` reads a
batch's range with one ranged GET per shard file. Every downloaded file is checked against the
manifest's size and crc32c; ranged reads are checked per chunk by their readers.

Why pyarrow's filesystem layer rather than Zarr's store API: it is already a dependency
(Zarr's ``FsspecStore`` would add s3fs and aiobotocore, its ``ObjectStore`` obstore), its S3
client is the AWS C++ SDK (the standard credential chain, retries, multipart uploads,
thread-safe ranged ``read_at`` without the GIL), and Ray Train takes the same filesystem object
as ``storage_filesystem`` for checkpoints. The stores stay Zarr v3 on the object store.

Credentials and the endpoint come only from the environment and the standard AWS files
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws/credentials``, ``AWS_ENDPOINT_URL``, ...,
through pyarrow's AWS SDK); nothing here logs or stores them. Failures are ``RemoteError``
naming the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import google_crc32c

from disktrain.errors import DataError
from disktrain.storage.atomic import atomic_dir, atomic_write_bytes, temporary_name

MANIFEST = "disktrain-manifest.json"
"""The completion manifest at the root of a published prefix, written last."""
MARKER = ".disktrain-remote.json"
"""In a staged directory: the URL it stages and the manifest it was staged from."""
_LAZY = re.compile(r"(^|/)c((/\d+)+|(\.\d+)+)$|(^|/)groups/g\d+/")
"""Files fetched on first use, not when staged: chunk files (``ARRAY/c/i/j``, shard files
``ARRAY/c.K.0``) and everything of a sample store's groups (a node reads its own)."""
_UPLOAD_THREADS = 8


class RemoteError(DataError):
    """An object store that cannot be reached, a missing bucket or object, a denied request,
    an incomplete prefix: the message names the URL."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names object storage (``scheme://...``, not ``file://``)."""
    return re.match(r"^[a-z][a-z0-9+.-]*://", str(path)) is not None and \
        not str(path).startswith("file://")


def stage_dir() -> Path:
    """Where this node stages remote stores: ``DISKTRAIN_STAGE_DIR``, else
    ``$XDG_CACHE_HOME/disktrain/stage`` (``~/.cache/disktrain/stage``)."""
    if base := os.environ.get("DISKTRAIN_STAGE_DIR"):
        return Path(base)
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "disktrain" / "stage"


def _problem(error: OSError) -> str:
    """A short reason for a failed request (pyarrow's message without request ids)."""
    text = str(error)
    for code, why in (("NETWORK_CONNECTION", "cannot reach the endpoint"),
                      ("NO_SUCH_BUCKET", "the bucket does not exist"),
                      ("ACCESS_DENIED", "access denied (check the credentials: environment, ~/.aws)"),
                      ("INVALID_ACCESS_KEY_ID", "the access key is not valid"),
                      ("SIGNATURE_DOES_NOT_MATCH", "the secret key is not valid")):
        if code in text:
            return f"{why}: {text.split(' (Request ID')[0]}"
    if isinstance(error, FileNotFoundError):
        return "no such object"
    return text.split(" (Request ID")[0]


@contextlib.contextmanager
def _errors(url: str, doing: str):
    try:
        yield
    except RemoteError:
        raise
    except OSError as e:
        raise RemoteError(f"{url}: {doing} failed: {_problem(e)}") from None


@dataclass
class Remote:
    """A prefix of an object store, ``url``, through pyarrow's filesystem layer."""

    url: str
    fs: object = field(repr=False)
    base: str
    """``bucket/prefix`` as ``fs`` names it."""

    @classmethod
    def of(cls, url: str) -> Remote:
        url = url.rstrip("/")
        fs, base = _filesystem(url)
        if not base.strip("/") or "/" not in base.strip("/"):
            raise RemoteError(f"{url}: give a prefix inside the bucket "
                              "(s3://bucket/prefix), not a bare bucket")
        return cls(url, fs, base.strip("/"))

    def key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def where(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def manifest(self, missing_ok: bool = False) -> dict | None:
        """The prefix's manifest; a prefix without one is a ``RemoteError`` (incomplete)
        unless ``missing_ok`` (None)."""
        with _errors(self.url, f"reading {MANIFEST}"):
            try:
                with self.fs.open_input_stream(self.key(MANIFEST)) as f:
                    data = f.read()
            except FileNotFoundError:
                bucket = self.base.split("/")[0]
                if self.fs.get_file_info(bucket).type.name == "NotFound":
                    raise RemoteError(f"{self.url}: the bucket {bucket!r} does not exist "
                                      "(or is not visible with these credentials)") from None
                if missing_ok:
                    return None
                raise RemoteError(
                    f"{self.url}: no {MANIFEST}: not a complete disktrain dataset (nothing "
                    "was published there, or an upload did not finish; publish it again)"
                ) from None
        try:
            manifest = json.loads(data)
            manifest["files"] = {k: tuple(v) for k, v in manifest["files"].items()}
            return manifest
        except (ValueError, KeyError, TypeError) as e:
            raise RemoteError(f"{self.where(MANIFEST)}: not a disktrain manifest ({e})") from None

    def download(self, rel: str, path: Path, expect: tuple[int, int]) -> None:
        """Object ``rel`` to local file ``path`` (atomically), checked against ``expect``
        (size, crc32c)."""
        tmp = temporary_name(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        crc, size = 0, 0
        try:
            with _errors(self.where(rel), "download"), \
                    self.fs.open_input_stream(self.key(rel)) as src, open(tmp, "wb") as dst:
                while block := src.read(16 << 20):
                    dst.write(block)
                    crc, size = google_crc32c.extend(crc, block), size + len(block)
            if (size, crc) != tuple(expect):
                raise RemoteError(f"{self.where(rel)}: downloaded {size} bytes with crc32c "
                                  f"{crc:#010x}, but {MANIFEST} says {expect[0]} bytes, "
                                  f"{expect[1]:#010x} (changed or corrupted; publish again)")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def upload(self, path: Path, rel: str) -> None:
        with _errors(self.where(rel), "upload"), open(path, "rb") as src, \
                self.fs.open_output_stream(self.key(rel)) as dst:
            shutil.copyfileobj(src, dst, 16 << 20)

    def put_bytes(self, rel: str, data: bytes) -> None:
        with _errors(self.where(rel), "upload"), self.fs.open_output_stream(self.key(rel)) as f:
            f.write(data)

    def delete(self, rels: list[str]) -> None:
        for rel in rels:
            with _errors(self.where(rel), "delete"), contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self.key(rel))


def append_line(url: str, line: str) -> None:
    """Append ``line`` to the object at ``url`` (a metrics file: object stores have no append,
    so the object is read and written whole; a few KB per epoch)."""
    fs, key = _filesystem(url)
    with _errors(url, "appending to"):
        try:
            with fs.open_input_stream(key) as f:
                old = f.read()
        except FileNotFoundError:
            old = b""
        with fs.open_output_stream(key) as f:
            f.write(old + line.encode())


def _filesystem(url: str):
    """pyarrow's filesystem of ``url`` and the path in it (S3: tuned by :func:`_s3`);
    credentials or options in the URL are refused (not echoed: they may hold a secret)."""
    import pyarrow.fs

    scheme, rest = url.split("://", 1)
    if "@" in rest.split("/", 1)[0] or "?" in rest:
        raise RemoteError(f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}/...: "
                          "credentials or options in the URL are refused; give them in the "
                          "environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL, ...) "
                          "or ~/.aws")

    with _errors(url, "opening the object store"):
        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(url)  # S3: finds the bucket's region
        except pyarrow.lib.ArrowInvalid as e:
            raise RemoteError(f"{url}: not an object-store URL pyarrow can open ({e}); "
                              "give s3://bucket/prefix (or gs://, ...)") from None
    return (_s3(fs.region) if isinstance(fs, pyarrow.fs.S3FileSystem) else fs), path


REQUEST_TIMEOUT_S = 60.0
"""An S3 request's socket timeout (the SDK's 3 s fails large ranged GETs of a busy server)."""


def _s3(region: str):
    """pyarrow's S3 filesystem for ``region``: uploads written part by part as they come
    (pyarrow's background writes would buffer a whole shard file in memory per upload), the
    endpoint ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_MAX_ATTEMPTS`` tries per
    request (default 3: the AWS SDKs' standard retries); credentials: the SDK's chain."""
    import pyarrow.fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 3)
    return pyarrow.fs.S3FileSystem(
        region=region, endpoint_override=endpoint or None, background_writes=False,
        request_timeout=REQUEST_TIMEOUT_S, connect_timeout=10.0,
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=attempts))


def file_digest(path: Path) -> tuple[int, int]:
    """(size, crc32c) of local file ``path``."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            crc, size = google_crc32c.extend(crc, block), size + len(block)
    return size, crc


def _published_files(local: Path) -> list[str]:
    """The files of ``local`` a publish uploads: not locks, temporaries, runs' fresh epochs or
    staging markers."""
    skip = re.compile(r"(^|/)(\.lock(\.[^/]*)?|epochs|" + re.escape(MARKER) + r")(/|$)|\.(tmp|old)-")
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


def publish(local: str | os.PathLike, url: str, *, progress: bool = False) -> dict:
    """Upload the dataset directory ``local`` (its prepared stores too) to ``url``; return the
    manifest written. Files the prefix already holds (same size and crc32c) are not sent again;
    a staged copy's files not fetched yet are kept where their store is unchanged; objects the
    new manifest does not name are deleted once it is written."""
    from tqdm.auto import tqdm

    local, remote = Path(local), Remote.of(url)
    if not (local / "zarr.json").is_file():
        raise DataError(f"{local}: not a disktrain dataset directory (no zarr.json)")
    old = (remote.manifest(missing_ok=True) or {}).get("files", {})
    rels = _published_files(local)
    with ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="disktrain-upload") as pool:
        digests = dict(zip(rels, pool.map(lambda r: file_digest(local / r), rels)))
        send = [r for r in rels if tuple(old.get(r, ())) != digests[r]]
        with tqdm(total=sum(digests[r][0] for r in send), unit="B", unit_scale=True,
                  desc=f"upload {url}", disable=not progress) as bar:
            for r in pool.map(lambda r: remote.upload(local / r, r) or r, send):
                bar.update(digests[r][0])
    if _marker(local).get("url") == remote.url:  # a staged copy: keep what it did not fetch
        digests.update(_kept(old, digests))
    attrs = json.loads((local / "zarr.json").read_text()).get("attributes", {})
    manifest = {"manifest_id": uuid.uuid4().hex, "dataset_id": attrs.get("dataset_id"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {r: list(digests[r]) for r in sorted(digests)}}
    remote.put_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())
    remote.delete(sorted(set(old) - set(digests)))
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
    manifest is replaced. Processes of one node staging at once download it once."""
    import fcntl

    remote = Remote.of(url)
    manifest = remote.manifest()
    path = staged_path(remote.url, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.stage-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one stager per node; the others wait, then reuse
        if _marker(path).get("manifest_id") == manifest["manifest_id"]:
            return path
        with atomic_dir(path, overwrite=True) as tmp:
            eager = [r for r in manifest["files"] if not _LAZY.search(r)]
            with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
                list(pool.map(lambda r: remote.download(r, tmp / r, manifest["files"][r]),
                              eager))
            _mark(tmp, remote.url, manifest)
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
            with _errors(self.remote.where(rel), "open"):
                f = self.remote.fs.open_input_file(self.remote.key(rel))
            with self._lock:
                self.requests += 1
                f = self._files.setdefault(name, f)
        return f

    def size(self, name: str) -> int:
        return self._open(name).size()

    def read_at(self, name: str, offset: int, nbytes: int) -> bytes:
        f = self._open(name)
        with _errors(self.remote.where(f"{self.root_rel}/{name}"), "ranged read"):
            data = f.read_at(nbytes, offset)
        with self._lock:
            self.requests += 1
            self.bytes += len(data)
        return data
