"""An object-store prefix (``s3://bucket/prefix``, any URL ``pyarrow.fs.FileSystem.from_uri``
opens) through pyarrow's filesystem layer: its manifest, whole-object downloads checked
against it, uploads, deletes; failures as :class:`RemoteError` naming the URL.

Why pyarrow's filesystem layer rather than Zarr's store API: it is already a dependency
(Zarr's ``FsspecStore`` would add s3fs and aiobotocore, its ``ObjectStore`` obstore), its S3
client is the AWS C++ SDK (the standard credential chain, retries, multipart uploads,
thread-safe ranged ``read_at`` without the GIL), and Ray Train takes the same filesystem object
as ``storage_filesystem`` for checkpoints.

Credentials and the endpoint come only from the environment and the standard AWS files
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws/credentials``, ``AWS_ENDPOINT_URL``, ...,
through pyarrow's AWS SDK); a URL holding credentials or options is refused, and nothing here
logs or stores them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from crc32c import crc32c

from disktrain.errors import DataError
from disktrain.storage.atomic import temporary_name

MANIFEST = "disktrain-manifest.json"
"""The completion manifest at the root of a published prefix, written last."""


class RemoteError(DataError):
    """An object store that cannot be reached, a missing bucket or object, a denied request,
    an incomplete prefix: the message names the URL."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names object storage (``scheme://...``, not ``file://``)."""
    return re.match(r"^[a-z][a-z0-9+.-]*://", str(path)) is not None and \
        not str(path).startswith("file://")


def _problem(error: OSError) -> str:
    """A short reason for a failed request (pyarrow's message without request ids)."""
    text = str(error)
    for code, why in (("NETWORK_CONNECTION", "cannot reach the endpoint"),
                      ("NO_SUCH_BUCKET", "the bucket does not exist"),
                      ("ACCESS_DENIED", "access denied (check the credentials, ~/.aws)"),
                      ("INVALID_ACCESS_KEY_ID", "the access key is not valid"),
                      ("SIGNATURE_DOES_NOT_MATCH", "the secret key is not valid")):
        if code in text:
            return f"{why}: {text.split(' (Request ID')[0]}"
    if isinstance(error, FileNotFoundError):
        return "no such object"
    return text.split(" (Request ID")[0]


@contextlib.contextmanager
def named_errors(url: str, doing: str):
    """OSErrors of the block as :class:`RemoteError` naming ``url`` and what was being done."""
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
        with named_errors(self.url, f"reading {MANIFEST}"):
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
            with named_errors(self.where(rel), "download"), \
                    self.fs.open_input_stream(self.key(rel)) as src, open(tmp, "wb") as dst:
                while block := src.read(16 << 20):
                    dst.write(block)
                    crc, size = crc32c(block, crc), size + len(block)
            if (size, crc) != tuple(expect):
                raise RemoteError(f"{self.where(rel)}: downloaded {size} bytes with crc32c "
                                  f"{crc:#010x}, but {MANIFEST} says {expect[0]} bytes, "
                                  f"{expect[1]:#010x} (changed or corrupted; publish again)")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writing(self, rel: str):
        """Object ``rel`` as a writable (:class:`Digest`: its size and crc32c once written)."""
        with named_errors(self.where(rel), "upload"), \
                self.fs.open_output_stream(self.key(rel)) as dst:
            yield Digest(dst)

    def upload(self, path: Path, rel: str, offset: int = 0,
               nbytes: int | None = None) -> tuple[int, int]:
        """Local file ``path`` (or its ``nbytes`` from byte ``offset``) as object ``rel``; the
        object's (size, crc32c)."""
        with open(path, "rb") as src, self.writing(rel) as dst:
            src.seek(offset)
            left = nbytes if nbytes is not None else os.fstat(src.fileno()).st_size - offset
            while left > 0 and (block := src.read(min(left, 16 << 20))):
                dst.write(block)
                left -= len(block)
        return dst.size, dst.crc

    def read_into(self, rel: str, f) -> int:
        """Object ``rel`` written to the writable ``f``; its size."""
        size = 0
        with named_errors(self.where(rel), "download"), \
                self.fs.open_input_stream(self.key(rel)) as src:
            while block := src.read(16 << 20):
                f.write(block)
                size += len(block)
        return size

    def delete_tree(self, rel: str) -> None:
        """Every object under ``rel/`` (none: nothing to do)."""
        with named_errors(self.where(rel), "delete"):
            self.fs.delete_dir_contents(self.key(rel), missing_dir_ok=True)

    def listing(self, rel: str) -> list[str]:
        """Every object under ``rel/``, relative to the prefix (none: empty)."""
        from pyarrow.fs import FileSelector, FileType

        with named_errors(self.where(rel), "list"):
            infos = self.fs.get_file_info(FileSelector(self.key(rel), recursive=True,
                                                       allow_not_found=True))
        return [i.path[len(self.base) + 1:] for i in infos if i.type == FileType.File]

    def put_bytes(self, rel: str, data: bytes) -> None:
        with named_errors(self.where(rel), "upload"), \
                self.fs.open_output_stream(self.key(rel)) as f:
            f.write(data)

    def delete(self, rels: list[str]) -> None:
        for rel in rels:
            with named_errors(self.where(rel), "delete"), contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self.key(rel))


class Digest:
    """A writable passing bytes on to ``f``, counting their size and crc32c."""

    def __init__(self, f):
        self.f, self.size, self.crc = f, 0, 0

    def write(self, data) -> None:
        self.f.write(data)
        self.size += len(data)
        self.crc = crc32c(data, self.crc)


def append_line(url: str, line: str) -> None:
    """Append ``line`` to the object at ``url`` (a metrics file: object stores have no append,
    so the object is read and written whole; a few KB per epoch)."""
    fs, key = _filesystem(url)
    with named_errors(url, "appending to"):
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

    with named_errors(url, "opening the object store"):
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
            crc, size = crc32c(block, crc), size + len(block)
    return size, crc
