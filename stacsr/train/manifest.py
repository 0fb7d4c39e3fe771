"""Pair manifests: the schema of the table of training patches (GeoParquet, one row per patch), its rows,
its metadata, and writing and reading it.

Columns (:data:`COLUMNS`, built by :func:`make_row`): ``id``, ``kind``, ``item_id``, ``collection``,
``datetime``, ``epsg``, ``transform`` (the item's 10 m grid, affine a b c d e f), ``bands`` (model order),
``hrefs`` (JSON ``{band: href}``, UNSIGNED: query strings are dropped, so no token is ever stored),
``radiometry`` (JSON ``{band: [scale, offset]}``, DN → reflectance, from :mod:`stacsr.catalog.radiometry`),
``row``, ``col`` (the window's origin on the 10 m grid), ``size`` (the HR patch side, for every kind),
``scale``, ``valid_fraction``, ``cloud_cover``, ``date_gap_days`` and ``geometry`` (WKB lon/lat polygon of the
window's footprint). The file carries GeoParquet ``geo`` metadata (WKB, OGC:CRS84) and ``stacsr:pairs``
metadata (kind, sizes, bands, seed).

Cross-sensor manifests carry the same columns plus :data:`HR_COLUMNS` (:data:`CROSS_SENSOR_SCHEMA`, see
:mod:`stacsr.train.pairs_cross_sensor`); Wald manifests keep exactly :data:`SCHEMA`.

Each pair kind is one module holding its builder and its reader (:mod:`.pairs_wald`, :mod:`.pairs_images`,
:mod:`.pairs_cross_sensor`); :data:`stacsr.train.data.KINDS` maps a ``kind`` to its reader.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from stacsr.catalog import radiometry
from stacsr.catalog.presets import Preset
from stacsr.io.grid import GeoBox, Window, crop
from stacsr.plumbing.redaction import first_line, redact
from stacsr.plumbing.storage import StoreError, atomic_output, open_fs

KIND_WALD = "wald"
KIND_CROSS_SENSOR = "cross-sensor"
DEFAULT_MIN_VALID = 0.99
MANIFEST_VERSION = 1
GEO_KEY, META_KEY = b"geo", b"stacsr:pairs"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("item_id", pa.string()),
        ("collection", pa.string()),
        ("datetime", pa.timestamp("us", tz="UTC")),
        ("epsg", pa.int32()),
        ("transform", pa.list_(pa.float64(), 6)),
        ("bands", pa.list_(pa.string())),
        ("hrefs", pa.string()),
        ("radiometry", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("size", pa.int32()),
        ("scale", pa.int32()),
        ("valid_fraction", pa.float64()),
        ("cloud_cover", pa.float64()),
        ("date_gap_days", pa.float64()),
        ("geometry", pa.binary()),
    ]
)
COLUMNS = tuple(SCHEMA.names)

HR_FIELDS = [
    ("hr_item_id", pa.string()),
    ("hr_collection", pa.string()),
    ("hr_datetime", pa.timestamp("us", tz="UTC")),
    ("hr_epsg", pa.int32()),
    ("hr_hrefs", pa.string()),
    ("hr_bands", pa.string()),
    ("hr_radiometry", pa.string()),
    ("calibrate", pa.bool_()),
]
HR_COLUMNS = tuple(name for name, _ in HR_FIELDS)
CROSS_SENSOR_SCHEMA = pa.schema(list(SCHEMA) + [pa.field(n, t) for n, t in HR_FIELDS])


class PairsError(ValueError):
    """A manifest that cannot be built, written or read, or pairs that do not fit together."""


# ------------------------------------------------------------------ rows


def model_bands(preset: Preset, bands: Sequence[str] | None = None) -> tuple[str, ...]:
    """The model's bands: ``bands`` if given, else the preset's band mapping in its order."""
    return tuple(bands) if bands else tuple(preset.assets)


def item_datetime(item: Mapping[str, Any]) -> datetime | None:
    """A STAC item's ``datetime`` (or ``start_datetime``); None when it has neither."""
    props = item.get("properties", {})
    text = props.get("datetime") or props.get("start_datetime")
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None


def item_fields(item: Mapping[str, Any], bands: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """What a STAC item gives :func:`make_row`: id, collection, date, cloud cover, and per band (asset ``keys``)
    its unsigned href and its radiometry."""
    return {
        "item_id": item["id"],
        "collection": item.get("collection"),
        "datetime": item_datetime(item),
        "cloud_cover": item.get("properties", {}).get("eo:cloud_cover"),
        "hrefs": {b: redact(item["assets"][k]["href"]) for b, k in zip(bands, keys)},
        "radiometry": {b: _radiometry(item, k) for b, k in zip(bands, keys)},
    }


def _radiometry(item: Mapping[str, Any], key: str) -> list[float]:
    r = radiometry.of_asset(item, key)
    return [r.scale, r.offset]


def _footprint_wkb(grid: GeoBox, window: Window) -> bytes:
    import shapely

    return shapely.to_wkb(crop(grid, window).extent.to_crs("EPSG:4326").geom)  # odc-geo keeps lon/lat order


def make_row(
    name: str,
    kind: str,
    grid: GeoBox,
    window: Window,
    size: int,
    scale: int,
    bands: Sequence[str],
    valid_fraction: float,
    *,
    item_id: str,
    hrefs: Mapping[str, str],
    radiometry: Mapping[str, Sequence[float]],
    collection: str | None = None,
    datetime: datetime | None = None,
    cloud_cover: float | None = None,
    date_gap_days: float = 0.0,
) -> dict[str, Any]:
    """One manifest row (:data:`COLUMNS`): ``window`` of ``grid``, read from ``hrefs``; its id is
    ``<name>_r<row>_c<col>_s<size>``."""
    return {
        "id": f"{name}_r{window.row}_c{window.col}_s{size}",
        "kind": kind,
        "item_id": item_id,
        "collection": collection,
        "datetime": datetime,
        "epsg": grid.crs.epsg,
        "transform": list(grid.affine)[:6],
        "bands": list(bands),
        "hrefs": json.dumps(dict(hrefs)),
        "radiometry": json.dumps({b: list(v) for b, v in radiometry.items()}),
        "row": window.row,
        "col": window.col,
        "size": size,
        "scale": scale,
        "valid_fraction": valid_fraction,
        "cloud_cover": None if cloud_cover is None else float(cloud_cover),
        "date_gap_days": date_gap_days,
        "geometry": _footprint_wkb(grid, window),
    }


def manifest_table(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], schema: pa.Schema = SCHEMA) -> pa.Table:
    """The manifest of ``rows`` with its GeoParquet metadata (bbox of every footprint) and ``meta``."""
    import shapely

    bbox = shapely.total_bounds(shapely.from_wkb([r["geometry"] for r in rows]))
    return with_metadata(pa.Table.from_pylist(list(rows), schema=schema), meta, [float(v) for v in bbox])


def sampling_meta(
    kind: str, patch_size: int, scale: int, bands: Sequence[str], min_valid: float, seed: int, **extra: Any
) -> dict[str, Any]:
    """The manifest metadata every builder writes (format version, kind, sampling), plus its own ``extra``."""
    return {
        "version": MANIFEST_VERSION,
        "kind": kind,
        "patch_size": patch_size,
        "scale": scale,
        "bands": list(bands),
        "min_valid": min_valid,
        "seed": seed,
        **extra,
    }


# ------------------------------------------------------------------ metadata


def geo_metadata(bbox: Sequence[float] | None = None) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata for the WKB ``geometry`` column in OGC:CRS84."""
    from pyproj import CRS

    crs = CRS.from_string("OGC:CRS84").to_json_dict()
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs}
    if bbox is not None:
        column["bbox"] = [float(v) for v in bbox]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def with_metadata(
    table: pa.Table, meta: Mapping[str, Any] | None = None, bbox: Sequence[float] | None = None
) -> pa.Table:
    """``table`` with GeoParquet ``geo`` metadata (and ``stacsr:pairs`` metadata when ``meta`` is given)."""
    old = dict(table.schema.metadata or {})
    old[GEO_KEY] = json.dumps(geo_metadata(bbox)).encode()
    if meta is not None:
        old[META_KEY] = json.dumps(dict(meta)).encode()
    return table.replace_schema_metadata(old)


def manifest_metadata(table: pa.Table) -> dict[str, Any]:
    """The ``stacsr:pairs`` metadata of a manifest (``{}`` when absent)."""
    raw = (table.schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


# ------------------------------------------------------------------ reading and writing


def check_manifest(table: pa.Table, where: str = "manifest") -> pa.Table:
    """Refuse an empty manifest or one without the columns every reader needs."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise PairsError(f"{where} is not a stacsr pairs manifest: column(s) {', '.join(missing)} missing")
    if table.num_rows == 0:
        raise PairsError(f"{where} is empty: it lists no pairs")
    return table


def write_manifest(table: pa.Table, path: str | os.PathLike, filesystem: Any = None) -> str:
    """Write ``table`` as GeoParquet to a local path or a URI (``s3://bucket/key``…); returns ``path``.

    The filesystem comes from :func:`stacsr.plumbing.storage.open_fs` (S3 settings from the URI's query or the
    environment) unless a pyarrow ``filesystem`` is given. The file is written under a temporary name and moved
    into place (:func:`stacsr.plumbing.storage.atomic_output`), so a reader never sees half a manifest.
    """
    path = os.fspath(path)
    check_manifest(table, f"manifest for {redact(path)}")
    if GEO_KEY not in (table.schema.metadata or {}):
        table = with_metadata(table)
    try:
        with atomic_output(path, filesystem) as (fs_, tmp):
            pq.write_table(table, tmp, filesystem=fs_)
    except (OSError, pa.ArrowException, StoreError) as e:
        raise PairsError(f"cannot write pairs manifest {redact(path)}: {first_line(e)}") from None
    return path


def read_manifest(path: str | os.PathLike, filesystem: Any = None) -> pa.Table:
    """Read a manifest written by :func:`write_manifest` (local path or URI); clear errors when the path cannot
    be read, the file is not a manifest, or it lists no pairs."""
    path = os.fspath(path)
    try:
        fs_, target = open_fs(path, filesystem)
        table = pq.read_table(target, filesystem=fs_)
    except (OSError, pa.ArrowException, ValueError, StoreError) as e:
        raise PairsError(f"cannot read pairs manifest {redact(path)}: {first_line(e)}") from None
    return check_manifest(table, f"pairs manifest {redact(path)}")
