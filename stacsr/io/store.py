"""Putting finished files into their final place: a local folder or object storage (``s3://``, ``gs://``,
``az://``/``abfs://``) through pyarrow's filesystems, whose credentials come from the environment or the
standard SDK chains (AWS_*, ``~/.aws``, instance roles; GOOGLE_APPLICATION_CREDENTIALS; AZURE_*), never from
arguments.

A file is first uploaded under a temporary key beside its final one, then moved into place, so a reader (or
a catalogue) never sees half an object under a final name. Transient failures are retried with back-off.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from stacsr.io.read import first_line, redact

REMOTE_SCHEMES = ("s3://", "gs://", "az://", "abfs://")
RETRIES = 5
T = TypeVar("T")


class StoreError(RuntimeError):
    """Object storage refused or failed an operation after the retries."""


def is_remote(url: str) -> bool:
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
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                      session_token=os.environ.get("AWS_SESSION_TOKEN"))  # fmt: skip
    return fs.S3FileSystem(**kwargs)


def filesystem(url: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path)`` of a remote URL. ``s3://`` honours ``AWS_ENDPOINT_URL`` (S3-compatible
    stores such as MinIO, or a local test server) as well as the standard credential chain."""
    from pyarrow import fs

    if url.startswith("s3://"):
        return s3_filesystem_from_env(), url[len("s3://"):]
    if url.startswith("az://"):
        url = "abfs://" + url[len("az://"):]
    return fs.FileSystem.from_uri(url)


def retry(what: str, fn: Callable[[], T], retries: int = RETRIES, delay: float = 0.2) -> T:
    """``fn()``, retried with exponential back-off on OSError (pyarrow's network errors); a StoreError
    naming ``what`` when every try failed."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except OSError as e:
            if attempt == retries:
                raise StoreError(f"{what} failed after {retries + 1} tries: {first_line(e)}") from None
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def put(local: str | Path, url: str) -> str:
    """Place the finished local file ``local`` at ``url`` (a path or remote URL) atomically; returns ``url``."""
    local = Path(local)
    if not is_remote(url):
        dest = Path(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)
        return url
    fs_, path = filesystem(url)
    head, _, name = path.rpartition("/")
    tmp = f"{head}/.tmp-{uuid.uuid4().hex[:12]}-{name}"

    def upload() -> None:
        with open(local, "rb") as src, fs_.open_output_stream(tmp) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)

    retry(f"upload of {redact(url)}", upload)
    retry(f"move of {redact(url)} into place", lambda: fs_.move(tmp, path))
    return url


def exists(url: str) -> bool:
    if not is_remote(url):
        return Path(url).is_file()
    from pyarrow import fs

    fs_, path = filesystem(url)
    return retry(f"lookup of {redact(url)}", lambda: fs_.get_file_info(path)).type == fs.FileType.File


def write_text(url: str, text: str) -> str:
    """Write a small text file (a run report) atomically at ``url``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stacsr-put-") as folder:
        local = Path(folder) / "file"
        local.write_text(text)
        return put(local, url)
