"""No secret in any log record, at any level: query strings (SAS tokens, signatures, ``X-Amz-*`` keys) and
``user:password@`` are removed from every record's message before any handler sees it.

Libraries log hrefs at DEBUG (rasterio names datasets, GDAL's ``CPL_DEBUG`` output names URLs, urllib3 names
request paths); a signed Planetary Computer href carries its token in the query. :func:`install` wraps the
process's log record factory once (idempotent); ``import stacsr`` calls it.
"""

from __future__ import annotations

import logging
import re

_SECRETISH = re.compile(r"sig=|se=|sv=|token|X-Amz-|Signature=|Credential=|://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
_QUERY = re.compile(r"\?[^\s'\"]*")
_USERINFO = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
_installed = False


def scrub(text: str) -> str:
    """``text`` with every URL query string and ``user:password@`` removed."""
    return _USERINFO.sub("://", _QUERY.sub("", text))


def install() -> None:
    """Scrub every log record created from now on in this process (all loggers, all levels)."""
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
        if _SECRETISH.search(message):
            record.msg, record.args = scrub(message), None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
