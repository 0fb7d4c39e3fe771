"""Pair manifests: where the training patches are, as a GeoParquet table (one row per patch).

Wald protocol (``kind="wald"``): Sentinel-2 alone. A row is a ``size × size`` window on an item's 10 m grid;
the HR patch is that window, the LR patch the same window degraded ×``scale`` when it is read
(:mod:`stacsr.train.degrade`, :func:`stacsr.train.data.read_pair`). Windows are sampled inside the area of
interest where the Scene Classification Layer (SCL, 20 m) says the ground is clear, and spread over the items
(round robin, non-overlapping first).

Columns (:data:`COLUMNS`): ``id``, ``kind``, ``item_id``, ``collection``, ``datetime``, ``epsg``,
``transform`` (the item's 10 m grid, affine a b c d e f), ``bands`` (model order), ``hrefs`` (JSON
``{band: href}``, UNSIGNED: query strings are dropped, so no token is ever stored), ``radiometry`` (JSON
``{band: [scale, offset]}``, DN → reflectance, from :mod:`stacsr.catalog.radiometry`), ``row``, ``col``,
``size`` (window on the 10 m grid), ``scale``, ``valid_fraction``, ``cloud_cover``, ``date_gap_days``
(0 for ``wald``) and ``geometry`` (WKB lon/lat polygon of the window's footprint). The file carries
GeoParquet ``geo`` metadata (WKB, OGC:CRS84) and ``stacsr:pairs`` metadata (kind, sizes, bands, seed).

Other kinds plug in here with their own builder producing the same columns (a cross-sensor builder would
fill ``date_gap_days`` and add its HR source columns) and a reader registered in
:data:`stacsr.train.data.READERS`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stacsr.catalog import radiometry
from stacsr.catalog.presets import Preset
from stacsr.io import grid as G
from stacsr.io.grid import Window
from stacsr.io.read import redact

KIND_WALD = "wald"
SCL_KEYS = ("SCL", "scl")
# SCL classes that make a pixel unusable: 0 nodata, 1 saturated/defective, 3 cloud shadow,
# 8/9 cloud medium/high probability, 10 thin cirrus.
INVALID_SCL = frozenset({0, 1, 3, 8, 9, 10})
DEFAULT_MIN_VALID = 0.99
MANIFEST_VERSION = 1
GEO_KEY, META_KEY = b"geo", b"stacsr:pairs"

SCHEMA = pa.schema([
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
])  # fmt: skip
COLUMNS = tuple(SCHEMA.names)


class PairsError(ValueError):
    """A manifest that cannot be built, written or read, or pairs that do not fit together."""


@dataclass(frozen=True)
class WaldWindow:
    """A sampled HR window on an item's 10 m grid and the fraction of its pixels that SCL calls clear."""

    window: Window
    valid_fraction: float


# ------------------------------------------------------------------ sampling


def scl_key(item: Mapping[str, Any]) -> str:
    """The item's Scene Classification asset key (``SCL`` on Planetary Computer, ``scl`` on Earth Search)."""
    for key in SCL_KEYS:
        if key in item.get("assets", {}):
            return key
    raise PairsError(f"item {item.get('id')} has no SCL asset ({' or '.join(SCL_KEYS)}): cannot tell clear pixels")


def model_bands(preset: Preset, bands: Sequence[str] | None = None) -> tuple[str, ...]:
    """The model's bands: ``bands`` if given, else the preset's band mapping in its order."""
    return tuple(bands) if bands else tuple(preset.assets)


def _aoi(item: Mapping[str, Any], preset: Preset, bbox, bands: Sequence[str]) -> tuple[G.GeoBox, Window]:
    keys = preset.asset_keys(list(bands))
    missing = [k for k in keys if k not in item.get("assets", {})]
    if missing:
        raise PairsError(f"item {item.get('id')} has no asset {', '.join(missing)} (needed for the model's bands)")
    try:
        grid = G.item_grid(item, keys[0])
        return grid, G.aoi_window(grid, bbox)
    except G.GridError as e:
        raise PairsError(f"item {item.get('id')}: {e}") from None


def valid_mask(item: Mapping[str, Any], preset: Preset, grid10: G.GeoBox, window: Window) -> np.ndarray:
    """Clear-ground mask of ``window`` of the 10 m grid ``grid10``, from the item's SCL (nearest neighbour).

    SCL is read remotely (signed at read time) for the window only; pixels outside the SCL raster are invalid.
    """
    from stacsr.train.data import read_window  # data imports this module

    key = scl_key(item)
    try:
        grid20 = G.item_grid(item, key)
    except G.GridError as e:
        raise PairsError(f"item {item.get('id')}: {e}") from None
    if grid20.crs != grid10.crs:
        raise PairsError(f"item {item.get('id')}: SCL is in {grid20.crs}, the bands in {grid10.crs}")
    a10, inv20 = grid10.affine, ~grid20.affine
    xs = a10.c + (window.col + np.arange(window.width) + 0.5) * a10.a  # centres of the 10 m pixels
    ys = a10.f + (window.row + np.arange(window.height) + 0.5) * a10.e
    cols = np.floor(inv20.a * xs + inv20.c).astype(np.int64)  # north-up grids: x and y separate
    rows = np.floor(inv20.e * ys + inv20.f).astype(np.int64)
    scl_window = Window(int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1),
                        int(cols.max() - cols.min() + 1))  # fmt: skip
    signed = preset.sign(dict(item))
    scl = read_window(signed["assets"][key]["href"], scl_window, asset=f"{key} of item {item.get('id')}")
    classes = scl[np.ix_(rows - scl_window.row, cols - scl_window.col)]
    return ~np.isin(classes, list(INVALID_SCL))


def _window_sums(mask: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid-pixel counts of every ``size`` window on a lattice of step ``stride`` (summed-area table)."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    r = np.arange(0, mask.shape[0] - size + 1, stride)
    c = np.arange(0, mask.shape[1] - size + 1, stride)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    counts = sat[rr + size, cc + size] - sat[rr, cc + size] - sat[rr + size, cc] + sat[rr, cc]
    return r, c, counts


def _order(eligible: np.ndarray, blocked_radius: int, rng: np.random.Generator, overlap: bool) -> list[tuple[int, int]]:
    """Lattice cells of ``eligible`` in sampling order: a random non-overlapping set first, then the rest."""
    cells = np.argwhere(eligible)
    cells = cells[rng.permutation(len(cells))]
    blocked = np.zeros(eligible.shape, dtype=bool)
    first, rest = [], []
    k = blocked_radius
    for i, j in cells:
        if blocked[i, j]:
            rest.append((int(i), int(j)))
            continue
        first.append((int(i), int(j)))
        blocked[max(i - k, 0) : i + k + 1, max(j - k, 0) : j + k + 1] = True
    return first + (rest if overlap else [])


def _candidates(
    item: Mapping[str, Any], preset: Preset, bbox, patch_size: int, rng: np.random.Generator, min_valid: float,
    bands: Sequence[str], stride: int | None, overlap: bool,
) -> list[WaldWindow]:  # fmt: skip
    grid, aoi = _aoi(item, preset, bbox, bands)
    if min(aoi.shape) < patch_size:
        return []
    stride = stride or max(1, patch_size // 4)
    mask = valid_mask(item, preset, grid, aoi)
    r, c, counts = _window_sums(mask, patch_size, stride)
    fraction = counts / float(patch_size * patch_size)
    eligible = (fraction >= min_valid) & (counts > 0)
    order = _order(eligible, math.ceil(patch_size / stride) - 1, rng, overlap)
    return [WaldWindow(Window(aoi.row + int(r[i]), aoi.col + int(c[j]), patch_size, patch_size), float(fraction[i, j]))
            for i, j in order]  # fmt: skip


def sample_wald_windows(
    item: Mapping[str, Any],
    preset: Preset,
    bbox: Sequence[float],
    patches: int,
    patch_size: int,
    rng: np.random.Generator,
    min_valid: float = DEFAULT_MIN_VALID,
    bands: Sequence[str] | None = None,
    stride: int | None = None,
    overlap: bool = True,
) -> list[WaldWindow]:
    """Up to ``patches`` windows of ``patch_size`` on the item's 10 m grid, inside the AOI ``bbox`` (lon/lat),
    each with an SCL-clear fraction ≥ ``min_valid``.

    Candidates lie on a lattice of step ``stride`` (default ``patch_size // 4``) over the AOI window; a random
    non-overlapping set is taken first, then (``overlap=True``) overlapping ones. Fewer windows come back when
    the AOI has fewer clear candidates.
    """
    if patches < 1 or patch_size < 1:
        raise PairsError(f"patches ({patches}) and patch size ({patch_size}) must be ≥ 1")
    if not 0 <= min_valid <= 1:
        raise PairsError(f"min_valid must lie in [0, 1], not {min_valid}")
    found = _candidates(item, preset, bbox, patch_size, rng, min_valid, model_bands(preset, bands), stride, overlap)
    return found[:patches]


# ------------------------------------------------------------------ the manifest


def _footprint_wkb(grid: G.GeoBox, window: Window) -> tuple[bytes, tuple[float, float, float, float]]:
    import shapely

    geom = G.crop(grid, window).extent.to_crs("EPSG:4326").geom  # odc-geo keeps lon/lat order (CRS84)
    return shapely.to_wkb(geom), tuple(geom.bounds)


def _datetime(item: Mapping[str, Any]) -> datetime | None:
    props = item.get("properties", {})
    text = props.get("datetime") or props.get("start_datetime")
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None


def build_wald_manifest(
    items: Sequence[Mapping[str, Any]],
    preset: Preset,
    bbox: Sequence[float],
    patches: int,
    patch_size: int,
    scale: int,
    seed: int = 0,
    min_valid: float = DEFAULT_MIN_VALID,
    bands: Sequence[str] | None = None,
    stride: int | None = None,
) -> pa.Table:
    """A ``wald`` manifest of ``patches`` windows spread over ``items`` (round robin; an item short of clear
    windows leaves its share to the others). Deterministic for a given ``seed``.

    Raises :class:`PairsError` when nothing can be sampled; warns when fewer than ``patches`` were found.
    """
    if not items:
        raise PairsError("no items to sample pairs from (area, dates, cloud cover)")
    if scale < 1 or patch_size < scale or patch_size % scale:
        raise PairsError(f"patch size {patch_size} must be a positive multiple of the scale {scale}")
    if patches < 1:
        raise PairsError(f"patches must be ≥ 1, not {patches}")
    bands = model_bands(preset, bands)
    keys = preset.asset_keys(list(bands))
    per_item = []
    for item in items:
        rng = np.random.default_rng([seed, zlib.crc32(str(item["id"]).encode())])
        try:
            found = sample_wald_windows(item, preset, bbox, patches, patch_size, rng, min_valid, bands, stride)
        except PairsError as e:
            if "does not overlap" not in str(e):
                raise
            warnings.warn(str(e), stacklevel=2)
            found = []
        per_item.append(found)
    picked: list[tuple[int, WaldWindow]] = []
    depth = 0
    while len(picked) < patches and any(depth < len(f) for f in per_item):
        for i, found in enumerate(per_item):
            if depth < len(found) and len(picked) < patches:
                picked.append((i, found[depth]))
        depth += 1
    if not picked:
        raise PairsError(
            f"no {patch_size}×{patch_size} window with ≥ {min_valid:.0%} clear pixels (SCL) in the area of "
            f"interest of any of the {len(items)} item(s): the manifest would be empty"
        )
    if len(picked) < patches:
        warnings.warn(f"only {len(picked)} of {patches} patches found with ≥ {min_valid:.0%} clear pixels", stacklevel=2)
    picked.sort(key=lambda p: (p[0], p[1].window.row, p[1].window.col))
    rows, boxes = [], []
    for i, ww in picked:
        item, w = items[i], ww.window
        grid = G.item_grid(item, keys[0])
        wkb, bounds = _footprint_wkb(grid, w)
        boxes.append(bounds)
        props = item.get("properties", {})
        cloud = props.get("eo:cloud_cover")
        rows.append({
            "id": f"{item['id']}_r{w.row}_c{w.col}_s{w.height}", "kind": KIND_WALD, "item_id": item["id"],
            "collection": item.get("collection"), "datetime": _datetime(item), "epsg": grid.crs.epsg,
            "transform": list(grid.affine)[:6], "bands": list(bands),
            "hrefs": json.dumps({b: redact(item["assets"][k]["href"]) for b, k in zip(bands, keys)}),
            "radiometry": json.dumps({b: _radiometry(item, k) for b, k in zip(bands, keys)}),
            "row": w.row, "col": w.col, "size": w.height, "scale": scale, "valid_fraction": ww.valid_fraction,
            "cloud_cover": None if cloud is None else float(cloud), "date_gap_days": 0.0, "geometry": wkb,
        })  # fmt: skip
    meta = {"version": MANIFEST_VERSION, "kind": KIND_WALD, "patch_size": patch_size, "scale": scale,
            "bands": list(bands), "min_valid": min_valid, "seed": seed, "preset": preset.name}  # fmt: skip
    return with_metadata(pa.Table.from_pylist(rows, schema=SCHEMA), meta, _union(boxes))


def _radiometry(item: Mapping[str, Any], key: str) -> list[float]:
    r = radiometry.of_asset(item, key)
    return [r.scale, r.offset]


def _union(boxes: Iterable[tuple[float, float, float, float]]) -> list[float]:
    b = np.array(list(boxes), dtype=np.float64)
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


def geo_metadata(bbox: Sequence[float] | None = None) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata for the WKB ``geometry`` column in OGC:CRS84."""
    from pyproj import CRS

    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"],
                              "crs": CRS.from_string("OGC:CRS84").to_json_dict()}  # fmt: skip
    if bbox is not None:
        column["bbox"] = [float(v) for v in bbox]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def with_metadata(table: pa.Table, meta: Mapping[str, Any] | None = None, bbox: Sequence[float] | None = None) -> pa.Table:
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


def _filesystem(path: str, filesystem: Any = None) -> tuple[Any, str]:
    from pyarrow import fs

    path = os.fspath(path)
    if filesystem is not None:
        return filesystem, path.split("://", 1)[1] if "://" in path else path
    if "://" not in path:
        return fs.LocalFileSystem(), os.path.abspath(path)
    return fs.FileSystem.from_uri(path)


def check_manifest(table: pa.Table, where: str = "manifest") -> pa.Table:
    """Refuse an empty manifest or one without the columns every reader needs."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise PairsError(f"{where} is not a stacsr pairs manifest: column(s) {', '.join(missing)} missing")
    if table.num_rows == 0:
        raise PairsError(f"{where} is empty: it lists no pairs")
    return table


def write_manifest(table: pa.Table, path: str | os.PathLike, filesystem: Any = None) -> str:
    """Write ``table`` as GeoParquet to a local path or an ``s3://bucket/key`` URI; returns ``path``.

    S3 settings (endpoint, region, credentials) come from the URI's query (pyarrow's ``from_uri``) or the
    environment (``AWS_ENDPOINT_URL``…), unless a pyarrow ``filesystem`` is given. Local files are written
    under a temporary name and renamed, so a reader never sees half a manifest.
    """
    path = os.fspath(path)
    check_manifest(table, f"manifest for {redact(path)}")
    if GEO_KEY not in (table.schema.metadata or {}):
        table = with_metadata(table)
    try:
        fs_, target = _filesystem(path, filesystem)
        parent = target.rsplit("/", 1)[0] if "/" in target else ""
        if parent:
            fs_.create_dir(parent, recursive=True)
        if type(fs_).__name__ == "LocalFileSystem":
            tmp = f"{parent}/.{os.path.basename(target)}.{uuid.uuid4().hex[:8]}.part"
            try:
                pq.write_table(table, tmp, filesystem=fs_)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            pq.write_table(table, target, filesystem=fs_)
    except (OSError, pa.ArrowException) as e:
        raise PairsError(f"cannot write pairs manifest {redact(path)}: {_one_line(e)}") from None
    return path


def read_manifest(path: str | os.PathLike, filesystem: Any = None) -> pa.Table:
    """Read a manifest written by :func:`write_manifest` (local path or ``s3://``); clear errors when the path
    cannot be read, the file is not a manifest, or it lists no pairs."""
    path = os.fspath(path)
    try:
        fs_, target = _filesystem(path, filesystem)
        table = pq.read_table(target, filesystem=fs_)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise PairsError(f"cannot read pairs manifest {redact(path)}: {_one_line(e)}") from None
    return check_manifest(table, f"pairs manifest {redact(path)}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
