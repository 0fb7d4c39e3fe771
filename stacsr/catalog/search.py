"""Searching a STAC API for Sentinel-2 L2A items over an area of interest.

Items come back as plain dicts (``items_as_dicts``), unsigned: signing happens only when pixels are
read, so no token ever reaches an output. Cloud cover is filtered server-side (STAC ``query``) and
the result is sorted by cloud cover here as well, since not every server honours ``sortby``.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime, timezone
from typing import Any, Iterable

from stacsr.catalog.presets import Preset
from stacsr.io.grid import epsg_of

BBox = tuple[float, float, float, float]


class SearchError(ValueError):
    """Bad search parameters, or nothing found."""


def check_bbox(bbox: Iterable[float]) -> BBox:
    """Validate a lon/lat bbox (west, south, east, north)."""
    w, s, e, n = (float(v) for v in bbox)
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise SearchError(f"bbox {w} {s} {e} {n} lies outside longitude ±180 / latitude ±90")
    if w >= e:
        raise SearchError(f"bbox west ({w}) must be less than east ({e}); crossing the antimeridian is not supported")
    if s >= n:
        raise SearchError(f"bbox south ({s}) must be less than north ({n})")
    return w, s, e, n


def check_datetime(text: str | None) -> str | None:
    """Validate a STAC datetime or interval (``2024-06-01/2024-08-31``, open ends ``..`` allowed)."""
    if not text:
        return None
    parts = text.split("/")
    if len(parts) > 2:
        raise SearchError(f"datetime {text!r} is not a date or a start/end interval")
    try:
        bounds = [None if p in ("", "..") else datetime.fromisoformat(p.replace("Z", "+00:00")) for p in parts]
    except ValueError:
        raise SearchError(f"datetime {text!r} is not ISO 8601 (e.g. 2024-06-01/2024-08-31)") from None
    bounds = [b.replace(tzinfo=b.tzinfo or timezone.utc) if b else b for b in bounds]  # naive = UTC, as in STAC
    if len(bounds) == 2 and None not in bounds and bounds[0] > bounds[1]:
        raise SearchError(f"datetime interval {text!r} ends before it starts")
    return text


def search(
    preset: Preset,
    bbox: Iterable[float] | None,
    datetime_: str | None = None,
    max_cloud: float | None = None,
    limit: int | None = None,
    mgrs: str | None = None,
) -> list[dict[str, Any]]:
    """Items of ``preset.collection`` intersecting ``bbox`` (and/or of MGRS tile ``mgrs``), least cloudy first."""
    if bbox is None and mgrs is None:
        raise SearchError("a search needs a bbox or an MGRS tile")
    bbox = check_bbox(bbox) if bbox is not None else None
    datetime_ = check_datetime(datetime_)
    check_cloud(max_cloud)
    if limit is not None and limit < 1:
        raise SearchError(f"limit {limit} must be at least 1")
    client = open_client(preset.url)
    query: dict[str, Any] = {"eo:cloud_cover": {"lte": max_cloud}} if max_cloud is not None else {}
    if mgrs is not None:
        query.update(mgrs_query(preset, check_mgrs(mgrs)))
    found = client.search(
        collections=[preset.collection],
        bbox=bbox,
        datetime=datetime_,
        query=query or None,
        sortby=[{"field": "properties.eo:cloud_cover", "direction": "asc"}],
        max_items=limit,
    )
    items = (normalise(i) for i in found.items_as_dicts())
    return order(i for i in items if mgrs is None or tile_of(i, preset) == mgrs.upper())


_MGRS = re.compile(r"^\d{1,2}[C-HJ-NP-X][A-HJ-NP-Z]{2}$")


def check_cloud(max_cloud: float | None) -> None:
    """A cloud cover bound in [0, 100] percent (checked before any request)."""
    if max_cloud is not None and not 0 <= max_cloud <= 100:
        raise SearchError(f"max cloud cover {max_cloud:g} is not a percentage in [0, 100]")


def check_mgrs(tile: str) -> str:
    """An MGRS 100 km tile id such as ``32TLR`` (upper-cased), or a :class:`SearchError`."""
    tile = str(tile).strip().upper().removeprefix("MGRS-")
    if not _MGRS.match(tile):
        raise SearchError(f"{tile!r} is not an MGRS tile id (e.g. 32TLR)")
    return tile


def mgrs_query(preset: Preset, tile: str) -> dict[str, Any]:
    """The STAC ``query`` selecting one MGRS tile: Earth Search's ``grid:code`` or Planetary Computer's
    ``s2:mgrs_tile`` (the latter for any other API too)."""
    if preset.name == "earth-search":
        return {"grid:code": {"eq": f"MGRS-{tile}"}}
    return {"s2:mgrs_tile": {"eq": tile}}


STAC_RETRIES = 5
STAC_TIMEOUT = (15.0, 60.0)  # connect, read (seconds)


def open_client(url: str) -> Any:
    """A pystac-client ``Client`` whose requests (searches are POSTs, pages included) are retried with
    back-off on connection errors, timeouts, 429 (honouring Retry-After) and 5xx; bounded by
    :data:`STAC_RETRIES` and :data:`STAC_TIMEOUT`."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(
        total=STAC_RETRIES,
        backoff_factor=0.3,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    return Client.open(url, stac_io=StacApiIO(max_retries=retry, timeout=STAC_TIMEOUT), timeout=STAC_TIMEOUT)


def cloud(item: dict[str, Any]) -> float:
    value = item.get("properties", {}).get("eo:cloud_cover")
    return float(value) if value is not None else 100.0


def order(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Least cloudy first; ties broken by newest, then id, so runs are deterministic."""
    items = sorted(items, key=lambda i: i["id"])
    items = sorted(items, key=lambda i: i.get("properties", {}).get("datetime") or "", reverse=True)
    return sorted(items, key=cloud)


def tile_of(item: dict[str, Any], preset: Preset) -> str:
    """The MGRS tile (or, failing that, the CRS) an item belongs to."""
    props = item.get("properties", {})
    for key in preset.mgrs_keys:
        if props.get(key):
            return str(props[key]).removeprefix("MGRS-")
    return f"EPSG:{epsg_of(props)}"


def best_per_tile(items: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """Keep the least cloudy item of each MGRS tile (``items`` must already be ordered)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        tile = tile_of(item, preset)
        if tile not in seen:
            seen.add(tile)
            kept.append(item)
    return kept


def normalise(item: dict[str, Any]) -> dict[str, Any]:
    """Put ``proj:epsg`` next to ``proj:code`` (item and assets): stackstac 0.5 reads only the former."""
    item = copy.deepcopy(item)
    for holder in [item.get("properties", {}), *item.get("assets", {}).values()]:
        if "proj:code" in holder and holder.get("proj:epsg") is None:
            epsg = epsg_of(holder)
            if epsg is not None:
                holder["proj:epsg"] = epsg
    return item
