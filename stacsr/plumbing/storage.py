"""Storage: a URI to a filesystem, atomic writes to a local path or an object key, one retry policy.

Local paths and object storage (``s3://``, ``gs://``, ``az://``/``abfs://``) go through pyarrow's
filesystems, whose credentials come from the environment or the standard SDK chains (AWS_*, ``~/.aws``,
instance roles; GOOGLE_APPLICATION_CREDENTIALS; AZURE_*), never from arguments.

A file is written under a temporary name beside its final one (a hidden ``.…part`` file, or a ``.tmp-…`` key)
and moved into place when complete, so a reader or a catalogue never sees half a file under a final name.
Local temporary names carry their process's host and pid (:func:`owner_tag`), so that the next write beside
them removes what a killed process left (:func:`remove_stale`).
Transient failures (pyarrow's network errors are ``OSError``) are retried with :func:`stacsr.plumbing.retry.retry`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TypeVar
from urllib.parse import urlparse

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
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
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
    """Write ``url`` atomically, its content from ``fill(stream)``; a remote upload is retried whole."""
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

    def copy(dst: BinaryIO) -> None:
        with open(local, "rb") as src:
            shutil.copyfileobj(src, dst, 8 << 20)

    return _write(url, copy)


def exists(url: str) -> bool:
    if not is_remote(url):
        return Path(url).is_file()
    from pyarrow import fs

    fs_, path = open_fs(url)
    return retried(f"lookup of {redact(url)}", lambda: fs_.get_file_info(path)).type == fs.FileType.File


def write_bytes(url: str, data: bytes) -> str:
    """Write a small file (a run report, an item) atomically at ``url``."""
    return _write(url, lambda dst: dst.write(data))


def write_text(url: str, text: str) -> str:
    return write_bytes(url, text.encode("utf-8"))
