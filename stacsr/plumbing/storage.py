"""Storage: a URI to a filesystem, atomic writes to a local path or an object key, one retry policy.

Local paths and object storage (``s3://``, ``gs://``, ``az://``/``abfs://``) go through pyarrow's
filesystems, whose credentials come from the environment or the standard SDK chains (AWS_*, ``~/.aws``,
instance roles; GOOGLE_APPLICATION_CREDENTIALS; AZURE_*), never from arguments.

A reader or a catalogue never sees half a file under a final name:

- a local file is written under a hidden temporary name beside its final one (``.NAME.<host>-<pid>-….part``)
  and renamed when complete; the names carry their process's host and pid (:func:`owner_tag`), so that the
  next write beside them removes what a killed process left (:func:`remove_stale`);
- ``s3://`` goes straight to its final key with boto3 (:func:`s3_client`): one PutObject up to one part, else
  a multipart upload streamed from the file in parts (:func:`part_size`), invisible until it is completed and
  aborted on any failure. pyarrow's S3 output stream cannot do this: its ``close()`` completes the upload, even
  on an exception, and it has no abort (apache/arrow issue 40502);
- ``gs://`` and ``az://`` (no abort there either) are written under a ``.tmp-…`` key and moved into place.

Transient failures (pyarrow's network errors are ``OSError``; botocore's connection errors, 5xx, 429, SlowDown)
are retried with :func:`stacsr.plumbing.retry.retry`.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import io
import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TypeVar
from urllib.parse import parse_qsl, urlparse

from stacsr.plumbing.redaction import first_line, redact
from stacsr.plumbing.retry import RETRIES, retry

REMOTE_SCHEMES = ("s3://", "gs://", "az://", "abfs://")
T = TypeVar("T")


class StoreError(RuntimeError):
    """Storage refused or failed an operation after the retries."""


def is_remote(url: str | os.PathLike) -> bool:
    return str(url).startswith(REMOTE_SCHEMES)


def join(root: str, *parts: str) -> str:
    """``root/part/…`` for a folder or a URL."""
    return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])


def s3_filesystem_from_env() -> Any:
    """A pyarrow ``S3FileSystem`` configured from the environment (endpoint, region, credentials)."""
    from pyarrow import fs

    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs.update(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
        )
    return fs.S3FileSystem(**kwargs)


def _s3_from_env() -> bool:
    return any(
        os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
    )


def open_fs(uri: str | os.PathLike, filesystem: Any = None) -> tuple[Any, str]:
    """``(pyarrow filesystem, path on it)`` of a local path or a URI: the one place a URI becomes a filesystem.

    A given ``filesystem`` is used as it is (the path is ``uri`` without its scheme). A local path becomes an
    absolute path on the local filesystem. An ``s3://`` URI with a query (``?endpoint_override=…``) is read by
    pyarrow; without one, ``AWS_ENDPOINT_URL``/``AWS_REGION`` (S3-compatible stores such as MinIO, or a local
    test server) configure it when set, else pyarrow finds the bucket's region. ``az://`` is ``abfs://``.
    """
    from pyarrow import fs

    uri = os.fspath(uri)
    if filesystem is not None:
        return filesystem, (uri.split("://", 1)[1] if "://" in uri else uri).rstrip("/")
    if "://" not in uri:
        return fs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3://") and "?" not in uri and _s3_from_env():
        return s3_filesystem_from_env(), uri[len("s3://") :].rstrip("/")
    if uri.startswith("az://"):
        uri = "abfs://" + uri[len("az://") :]
    try:
        fs_, path = fs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for bad URIs
        raise StoreError(f"cannot open {redact(uri)}: {first_line(e)}") from None
    return fs_, path.rstrip("/")


def retried(what: str, fn: Callable[[], T]) -> T:
    """``fn()`` under the retry policy for storage (``OSError`` is transient); a one-line
    :class:`StoreError` naming ``what`` when every try failed."""
    try:
        return retry(fn, lambda e: isinstance(e, OSError))
    except OSError as e:
        raise StoreError(f"{what} failed after {RETRIES + 1} tries: {first_line(e)}") from None


@contextmanager
def atomic_file(path: str | Path, suffix: str = ".part") -> Iterator[Path]:
    """A temporary local path beside ``path`` to write to; renamed onto ``path`` when the block succeeds,
    removed when it fails. The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s
    0600, so a tile server or another user can read what stacsr writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def owner_tag() -> str:
    """``<host>-<pid>``, for the names of this process's temporary files and folders."""
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_stale(folder: Path, prefix: str) -> list[Path]:
    """Delete the entries of ``folder`` named ``<prefix><host>-<pid>-…`` (see :func:`owner_tag`) that a process
    of this host left when it was killed: its pid no longer runs. Other hosts' entries (a shared disk) and
    those of running processes are left alone. Returns what was removed."""
    host = socket.gethostname()
    removed = []
    for entry in folder.glob(f"{glob.escape(prefix + host)}-*"):
        pid = entry.name[len(prefix + host) + 1 :].split("-", 1)[0]
        if pid.isdigit() and not pid_running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextmanager
def atomic_output(uri: str | os.PathLike, filesystem: Any = None) -> Iterator[tuple[Any, str]]:
    """``(filesystem, temporary path)`` to write ``uri``'s content to, on whatever storage ``uri`` names;
    moved onto ``uri`` when the block succeeds, removed when it fails."""
    uri = os.fspath(uri)
    fs_, path = open_fs(uri, filesystem)
    if type(fs_).__name__ == "LocalFileSystem":
        with atomic_file(path) as tmp:
            yield fs_, str(tmp)
        return
    head, _, name = path.rpartition("/")
    tmp = f"{head}/.tmp-{uuid.uuid4().hex[:12]}-{name}"
    try:
        yield fs_, tmp
        retried(f"move of {redact(uri)} into place", lambda: fs_.move(tmp, path))
    finally:
        try:
            fs_.delete_file(tmp)
        except OSError:
            pass  # moved into place, or never written


def _write(url: str, fill: Callable[[BinaryIO], None]) -> str:
    """Write ``url`` atomically, its content from ``fill(stream)``; a remote upload is retried whole (gs://, az://:
    under a temporary key, then moved)."""
    if not is_remote(url):
        with atomic_file(url) as tmp, open(tmp, "wb") as dst:
            fill(dst)
        return url
    with atomic_output(url) as (fs_, tmp):

        def upload() -> None:
            with fs_.open_output_stream(tmp) as dst:
                fill(dst)

        retried(f"upload of {redact(url)}", upload)
    return url


def put(local: str | Path, url: str) -> str:
    """Place the finished local file ``local`` at ``url`` (a path or remote URL) atomically; returns ``url``."""
    if url.startswith("s3://"):
        with open(local, "rb") as src:
            s3_upload(src, os.fstat(src.fileno()).st_size, url)
        return url

    def copy(dst: BinaryIO) -> None:
        with open(local, "rb") as src:
            shutil.copyfileobj(src, dst, 8 << 20)

    return _write(url, copy)


def put_stream(pieces: Callable[[], Iterable[bytes]], size: int, url: str) -> str:
    """Write the ``size`` bytes that ``pieces()`` yields at ``url`` (a path or remote URL) atomically, with no
    local copy: S3 through one multipart upload straight to the final key (:func:`s3_upload`), a local file
    written piece by piece and renamed into place when complete. Returns ``url``."""
    if url.startswith("s3://"):
        s3_upload(Pieces(iter(pieces())), size, url)
        return url

    def copy(dst: BinaryIO) -> None:
        written = 0
        for piece in pieces():
            written += dst.write(piece)
        if written != size:
            raise StoreError(f"cannot write {redact(url)}: {written:,} bytes made, {size:,} expected")

    return _write(url, copy)


class Pieces(io.RawIOBase):
    """A read-only stream over byte pieces (what an upload reads part by part); a read may return less than
    asked (:func:`_read_parts` fills its parts)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, out) -> int:
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buffer = memoryview(piece)
        n = min(len(out), len(self._buffer))
        out[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def exists(url: str) -> bool:
    if not is_remote(url):
        return Path(url).is_file()
    from pyarrow import fs

    fs_, path = open_fs(url)
    return retried(f"lookup of {redact(url)}", lambda: fs_.get_file_info(path)).type == fs.FileType.File


def write_bytes(url: str, data: bytes) -> str:
    """Write a small file (a run report, an item) atomically at ``url``."""
    if url.startswith("s3://"):
        s3_upload(io.BytesIO(data), len(data), url)
        return url
    return _write(url, lambda dst: dst.write(data))


def write_text(url: str, text: str) -> str:
    return write_bytes(url, text.encode("utf-8"))


# -- S3: straight to the final key -------------------------------------------------------------------------

PART_SIZE = 64 << 20  # bytes per part of a multipart upload (more for files past PART_SIZE × MAX_PARTS)
MAX_PARTS = 10_000  # S3's limit on the parts of one upload
MAX_OBJECT = 5 << 40  # S3's limit on an object's size (5 TiB)
_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def part_size(nbytes: int) -> int:
    """Bytes per part for an upload of ``nbytes``: :data:`PART_SIZE`, or the whole MiBs that keep it within
    :data:`MAX_PARTS` parts (64 MiB up to 625 GiB; 525 MiB at S3's 5 TiB limit). One part is held in memory."""
    mib = 1 << 20
    return max(PART_SIZE, -(-nbytes // (MAX_PARTS * mib)) * mib)


def s3_client(url: str = "") -> Any:
    """A boto3 S3 client (one per configuration and process; boto3 clients are thread-safe). Endpoint and region
    come from an ``s3://…?endpoint_override=HOST:PORT&scheme=http&region=…`` URL's query, else from
    ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` and ``AWS_REGION``/``AWS_DEFAULT_REGION`` (as
    :func:`s3_filesystem_from_env`); credentials from the SDK's standard chain (environment, ``~/.aws``, web
    identity, container or instance roles). A custom endpoint is addressed path-style, like pyarrow does.
    Retries are left to :func:`s3_call`; request checksums only where S3 requires them (S3-compatible stores
    reject the newer ones), each part carrying its Content-MD5 instead."""
    query = dict(parse_qsl(url.partition("?")[2]))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if query.get("endpoint_override"):
        endpoint = f"{query.get('scheme', 'https')}://{query['endpoint_override']}"
    elif endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    creds = tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    key = (endpoint, region, os.environ.get("AWS_PROFILE"), hash(creds))
    with _CLIENTS_LOCK:  # a boto3 session is not thread-safe while it builds a client
        if key not in _CLIENTS:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": 1},
                connect_timeout=10,
                read_timeout=120,
                s3={"addressing_style": "path"} if endpoint else {},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            _CLIENTS[key] = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=region, config=config
            )
        return _CLIENTS[key]


def _transient(e: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = e.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "InternalError", "Throttling")
    return isinstance(e, (ConnectionError, HTTPClientError, OSError))


def s3_call(what: str, fn: Callable[[], T]) -> T:
    """``fn()`` (a boto3 call) under the retry policy; a one-line :class:`StoreError` naming ``what`` when it
    failed for good (a refusal such as AccessDenied at once, a transient error after every try)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return retry(fn, _transient)
    except (BotoCoreError, ClientError, OSError) as e:
        tries = f" after {RETRIES + 1} tries" if _transient(e) else ""
        reason = first_line(e).replace(" (reached max retries: 0)", "")  # botocore's own retries are off
        raise StoreError(f"{what} failed{tries}: {reason}") from None


def s3_upload(src: BinaryIO, size: int, url: str) -> None:
    """Write ``size`` bytes of ``src`` at the ``s3://`` ``url``, with nothing under the key until all is there.

    Up to one part (:func:`part_size`): one PutObject. Larger: a multipart upload, ``src`` read one part at a
    time; each request is retried, and on any failure (a refusal, retries spent, the source failing to read, an
    interrupt) the upload is aborted, so neither an object nor orphan parts remain. When even the abort fails
    the parts stay until a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them: a warning says
    so. The final key is never written any other way."""
    bucket, _, key = url[len("s3://") :].partition("?")[0].partition("/")
    if not bucket or not key:
        raise StoreError(f"not an object URL: {redact(url)}")
    if size > MAX_OBJECT:
        raise StoreError(f"cannot upload {redact(url)}: {size:,} bytes is more than S3's 5 TiB limit")
    client, what, chunk = s3_client(url), f"upload of {redact(url)}", part_size(size)
    if size <= chunk:
        data = src.read()
        md5 = _md5(data)
        s3_call(what, lambda: client.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=md5))
        return
    upload = s3_call(what, lambda: client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    ids = dict(Bucket=bucket, Key=key, UploadId=upload)
    try:
        parts = []
        sent = 0
        for number, data in enumerate(_read_parts(src, chunk), 1):
            parts.append(_upload_part(client, ids, number, data, what))
            sent += len(data)
        if sent != size:
            raise StoreError(f"{what} failed: the source changed size ({size:,} bytes expected, {sent:,} read)")
        _complete(client, ids, parts, size, what)
    except BaseException:
        try:
            s3_call(f"abort of the {what}", lambda: client.abort_multipart_upload(**ids))
        except StoreError as e:
            log.warning("%s; its parts stay until the bucket's lifecycle rule removes them", e)
        raise


def _upload_part(client: Any, ids: dict, number: int, data: bytes, what: str) -> dict:
    md5 = _md5(data)
    call = lambda: client.upload_part(**ids, PartNumber=number, Body=data, ContentMD5=md5)  # noqa: E731
    return {"PartNumber": number, "ETag": s3_call(f"{what} (part {number})", call)["ETag"]}


def _read_parts(src: BinaryIO, chunk: int) -> Iterator[bytes]:
    """``src`` in pieces of ``chunk`` bytes (the last one shorter), one in memory at a time; a source whose
    reads return less than asked (a raw stream) is read until the piece is full."""
    while data := src.read(chunk):
        if len(data) < chunk:
            piece = bytearray(data)
            while len(piece) < chunk and (more := src.read(chunk - len(piece))):
                piece += more
            data = bytes(piece)
        yield data


def _complete(client: Any, ids: dict, parts: list[dict], size: int, what: str) -> None:
    """Complete the upload; a retry that finds it gone (the first try did complete it, but its answer was lost)
    succeeds when the object has the expected size."""
    from botocore.exceptions import ClientError

    tries = 0

    def complete() -> None:
        nonlocal tries
        tries += 1
        try:
            client.complete_multipart_upload(**ids, MultipartUpload={"Parts": parts})
        except ClientError as e:
            if tries == 1 or e.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
            head = client.head_object(Bucket=ids["Bucket"], Key=ids["Key"])
            if head.get("ContentLength") != size:
                raise

    s3_call(f"{what} (completion)", complete)


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
