"""Error lines and keeping secrets out of everything stacsr writes or prints: one place for both.

Signed URLs carry their token in the query string (Planetary Computer SAS ``st=…&se=…&sig=…``, S3 presigned
``X-Amz-…``); credentials can hide in ``user:password@``. :func:`redact` cleans one href, :func:`scrub` any
text (error lines, log messages), :func:`first_line` makes the one-line error a user sees, :func:`looks_secret`
spots what must be refused (a job spec holding a key), and :func:`install_log_scrubbing` applies :func:`scrub`
to every log record of the process, at every level (rasterio names datasets and GDAL's ``CPL_DEBUG`` names
URLs at DEBUG). ``import stacsr`` installs it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

# A query string wherever it appears (GDAL names files without their scheme, e.g. "B08.tif?st=…&sig=…:"),
# up to a quote, a blank, or a colon that ends the word (colons inside, as in se=…T12:52:44Z, are kept out).
_QUERY = re.compile(r"\?[^\s'\"]*?(?=:?(?:[\s'\"]|$))")
_USERINFO = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_SECRET = re.compile(
    r"sig=|sv=|se=|token=|X-Amz-|Signature=|Credential=|AKIA[0-9A-Z]{12,}|://[^/\s:@]+:[^/\s@]+@"
    r"|\b(?:Bearer|Basic)\s",
    re.IGNORECASE,
)
_installed = False


def redact(href: str) -> str:
    """``href`` without query string, fragment or ``user:password@`` (where signatures, tokens, keys live)."""
    if "://" not in href:
        return href.split("?", 1)[0]
    parts = urlsplit(href)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def scrub(text: str) -> str:
    """``text`` with every URL query string, ``user:password@`` and ``Bearer``/``Basic`` credential removed."""
    return _BEARER.sub(lambda m: f"{m[1]} ***", _USERINFO.sub("://", _QUERY.sub("", text)))


def first_line(e: BaseException) -> str:
    """First line of an error message, with every URL query string (tokens, signatures) removed."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return " ".join(redact(w) if "://" in w else w for w in scrub(text).split())


def looks_secret(text: str) -> bool:
    """Whether ``text`` holds something that looks like a signed URL, a token or an access key."""
    return bool(_SECRET.search(text))


def install_log_scrubbing() -> None:
    """Scrub every log record created from now on in this process (all loggers, all levels); idempotent."""
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logger's business, not ours
            return record
        if looks_secret(message):
            record.msg, record.args = scrub(message), None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
