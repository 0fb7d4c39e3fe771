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

Cross-sensor (``kind="cross-sensor"``, :func:`build_cross_sensor_manifest`): Sentinel-2 10 m is the LR and a
co-located higher-resolution STAC collection (default NAIP on Planetary Computer) the HR, acquired within
``max_days`` of the S2 item. The LR window is ``size / scale`` pixels at (``row``, ``col``) of the S2 item's
10 m grid; the HR grid is that window zoomed in ×``scale`` (:func:`stacsr.io.grid.zoom_in`: same CRS, same
origin), onto which the HR raster is resampled from its own CRS when read. ``size`` is thus the HR patch side
for both kinds (the model always sees ``size`` HR and ``size / scale`` LR pixels). Such manifests carry the
same columns plus :data:`HR_COLUMNS` (:data:`CROSS_SENSOR_SCHEMA`): ``hr_item_id``, ``hr_collection``,
``hr_datetime``, ``hr_epsg``, ``hr_hrefs`` (JSON ``{asset: href}``, unsigned), ``hr_bands`` (JSON
``{band: [asset, 1-based band index]}``), ``hr_radiometry`` (JSON ``{band: [scale, offset]}``, DN →
reflectance) and ``calibrate`` (fit HR to S2 per patch when read); ``date_gap_days`` is ``|HR − S2|`` in days.
Wald manifests keep exactly :data:`SCHEMA`, and :data:`COLUMNS` (what every manifest must have) is unchanged.

Other kinds plug in here with their own builder producing the same columns and a reader registered in
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
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stacsr.catalog import radiometry
from stacsr.catalog.presets import Preset
from stacsr.io import grid as G
from stacsr.io.grid import Window
from stacsr.io.read import Scene, first_line, redact
from stacsr.pipeline import InputError, item_window

KIND_WALD = "wald"
SCL_KEYS = ("SCL", "scl")
# SCL classes that make a pixel unusable: 0 nodata, 1 saturated/defective, 3 cloud shadow,
# 8/9 cloud medium/high probability, 10 thin cirrus.
INVALID_SCL = frozenset({0, 1, 3, 8, 9, 10})
DEFAULT_IMAGE_BANDS = ("B02", "B03", "B04", "B08")  # images without a preset: the model's RGBN
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

KIND_CROSS_SENSOR = "cross-sensor"
# NAIP on Planetary Computer: one asset "image" with 4 uint8 bands in the order R, G, B, NIR (0.6 m, UTM).
# Model band -> (asset key, 1-based band index of that asset).
NAIP_BAND_MAP: dict[str, tuple[str, int]] = {"B02": ("image", 3), "B03": ("image", 2), "B04": ("image", 1),
                                             "B08": ("image", 4)}  # fmt: skip
# NAIP DN 0–255 are not reflectances: a simple linear scale, reflectance = DN / 255 (so ×10000 at read time),
# DN 0 = nodata. Per-patch calibration (``calibrate``) then fits gain and offset to Sentinel-2 per band.
NAIP_RADIOMETRY = (1 / 255, 0.0)
HR_FIELDS = [
    ("hr_item_id", pa.string()),
    ("hr_collection", pa.string()),
    ("hr_datetime", pa.timestamp("us", tz="UTC")),
    ("hr_epsg", pa.int32()),
    ("hr_hrefs", pa.string()),
    ("hr_bands", pa.string()),
    ("hr_radiometry", pa.string()),
    ("calibrate", pa.bool_()),
]  # fmt: skip
HR_COLUMNS = tuple(name for name, _ in HR_FIELDS)
CROSS_SENSOR_SCHEMA = pa.schema(list(SCHEMA) + [pa.field(n, t) for n, t in HR_FIELDS])


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
    try:
        return item_window(dict(item), preset.asset_keys(list(bands)), bbox)
    except InputError as e:
        raise PairsError(str(e)) from None


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


def lattice_windows(mask: np.ndarray, patch_size: int, stride: int | None, rng: np.random.Generator,
                    min_valid: float, overlap: bool = True, origin: tuple[int, int] = (0, 0)) -> list[WaldWindow]:  # fmt: skip
    """Windows of ``patch_size`` on a lattice of step ``stride`` (default ``patch_size // 4``) over ``mask``
    (True = valid) whose valid fraction is ≥ ``min_valid``, in sampling order (:func:`_order`); ``origin``
    (row, col) places the mask on its grid."""
    if min(mask.shape) < patch_size:
        return []
    stride = stride or max(1, patch_size // 4)
    r, c, counts = _window_sums(mask, patch_size, stride)
    fraction = counts / float(patch_size * patch_size)
    order = _order((fraction >= min_valid) & (counts > 0), math.ceil(patch_size / stride) - 1, rng, overlap)
    return [WaldWindow(Window(origin[0] + int(r[i]), origin[1] + int(c[j]), patch_size, patch_size),
                       float(fraction[i, j])) for i, j in order]  # fmt: skip


def _candidates(
    item: Mapping[str, Any], preset: Preset, bbox, patch_size: int, rng: np.random.Generator, min_valid: float,
    bands: Sequence[str], stride: int | None, overlap: bool,
) -> list[WaldWindow]:  # fmt: skip
    grid, aoi = _aoi(item, preset, bbox, bands)
    if min(aoi.shape) < patch_size:
        return []
    mask = valid_mask(item, preset, grid, aoi)
    return lattice_windows(mask, patch_size, stride, rng, min_valid, overlap, (aoi.row, aoi.col))


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


def _check_sampling(patches: int, patch_size: int, scale: int) -> None:
    if scale < 1 or patch_size < scale or patch_size % scale:
        raise PairsError(f"patch size {patch_size} must be a positive multiple of the scale {scale}")
    if patches < 1:
        raise PairsError(f"patches must be ≥ 1, not {patches}")


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
    _check_sampling(patches, patch_size, scale)
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
    picked: list[tuple[int, WaldWindow]] = _spread(per_item, patches)
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


def _scene_datetime(scene: Scene) -> datetime | None:
    try:
        return datetime.fromisoformat(scene.date).replace(tzinfo=timezone.utc) if scene.date else None
    except ValueError:
        return None


def image_windows(scene: Scene, patch_size: int, rng: np.random.Generator, min_valid: float,
                  stride: int | None) -> tuple[G.GeoBox, list[WaldWindow]]:  # fmt: skip
    """The scene's grid and its candidate windows (valid = every band > 0), in sampling order."""
    import rasterio

    from stacsr.io.read import GDAL_ENV

    with rasterio.Env(**GDAL_ENV), rasterio.open(scene.href) as src:
        if set(src.dtypes) != {"uint16"}:
            raise PairsError(f"{scene.path} is {src.dtypes[0]}; stacsr expects uint16 reflectance × 10000")
        try:
            grid = G.from_rasterio(src.transform, src.crs, (src.height, src.width))
        except G.GridError as e:  # no CRS, rotated
            raise PairsError(f"{scene.path}: {e}") from None
        mask = (src.read() > 0).all(axis=0)
    return grid, lattice_windows(mask, patch_size, stride, rng, min_valid)


def build_image_manifest(
    paths: Sequence[str | os.PathLike],
    patches: int,
    patch_size: int,
    scale: int,
    bands: Sequence[str] = DEFAULT_IMAGE_BANDS,
    seed: int = 0,
    min_valid: float = DEFAULT_MIN_VALID,
    stride: int | None = None,
) -> pa.Table:
    """A ``wald`` manifest from 10 m GeoTIFFs (uint16 reflectance × 10000, 0 = nodata) instead of a STAC search.

    Every scene of every file (:func:`stacsr.io.read.scenes`: single dates, or ``<date>_<band>`` time stacks)
    is an "item"; its bands are read through ``vrt://file?bands=k`` hrefs, so the rows are ordinary ``wald``
    rows read by the same reader. A pixel is valid when every band is > 0. Windows lie on a lattice of step
    ``stride`` (default ``patch_size // 4``), non-overlapping ones first, then overlapping ones, spread over
    the scenes round robin. Deterministic for a given ``seed``.
    """
    from stacsr.io.read import ReadError, scenes

    _check_sampling(patches, patch_size, scale)
    if not paths:
        raise PairsError("no images to sample pairs from")
    try:
        found = [s for p in paths for s in scenes(p, bands)]
    except ReadError as e:
        raise PairsError(str(e)) from None
    per_scene, grids = [], []
    for scene in found:
        rng = np.random.default_rng([seed, zlib.crc32(scene.name.encode())])
        grid, windows = image_windows(scene, patch_size, rng, min_valid, stride)
        grids.append(grid)
        per_scene.append(windows)
    picked = _spread(per_scene, patches)
    if not picked:
        raise PairsError(f"no {patch_size}×{patch_size} window with ≥ {min_valid:.0%} valid pixels in "
                         f"{len(found)} scene(s): the manifest would be empty")  # fmt: skip
    if len(picked) < patches:
        warnings.warn(f"only {len(picked)} of {patches} patches found in {len(found)} scene(s)", stacklevel=2)
    picked.sort(key=lambda p: (p[0], p[1].window.row, p[1].window.col))
    rows, boxes = [], []
    for i, ww in picked:
        scene, grid, w = found[i], grids[i], ww.window
        wkb, bounds = _footprint_wkb(grid, w)
        boxes.append(bounds)
        rows.append({
            "id": f"{scene.name}_r{w.row}_c{w.col}_s{w.height}", "kind": KIND_WALD, "item_id": scene.name,
            "collection": None, "datetime": _scene_datetime(scene), "epsg": grid.crs.epsg,
            "transform": list(grid.affine)[:6], "bands": list(bands),
            "hrefs": json.dumps(dict(zip(bands, scene.band_hrefs))),
            "radiometry": json.dumps({b: [radiometry.DEFAULT_SCALE, 0.0] for b in bands}),
            "row": w.row, "col": w.col, "size": w.height, "scale": scale, "valid_fraction": ww.valid_fraction,
            "cloud_cover": None, "date_gap_days": 0.0, "geometry": wkb,
        })  # fmt: skip
    meta = {"version": MANIFEST_VERSION, "kind": KIND_WALD, "patch_size": patch_size, "scale": scale,
            "bands": list(bands), "min_valid": min_valid, "seed": seed, "source": "images"}  # fmt: skip
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


# ------------------------------------------------------------------ cross-sensor


def hr_band_map_of(text: str | Mapping[str, Any] | None) -> dict[str, tuple[str, int]]:
    """An HR band map: ``None`` → :data:`NAIP_BAND_MAP`; a mapping ``{band: (asset, index)}``; or text
    ``"B02=image:3,B03=image:2,…"``. Band indexes are 1-based."""
    if text is None:
        return dict(NAIP_BAND_MAP)
    if isinstance(text, str):
        parsed: dict[str, Any] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            band, _, spec = part.partition("=")
            asset, _, index = spec.partition(":")
            if not band.strip() or not asset.strip() or not index.strip().isdigit():
                raise PairsError(f"HR band map {text!r} is not of the form B02=image:3,B03=image:2,…")
            parsed[band.strip()] = (asset.strip(), int(index))
        text = parsed
    out = {str(b): (str(v[0]), int(v[1])) for b, v in dict(text).items()}
    bad = [b for b, (_, i) in out.items() if i < 1]
    if not out or bad:
        raise PairsError(f"HR band map {out} needs 1-based band indexes (bad: {', '.join(bad)})")
    return out


def _gap_days(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else abs((a - b).total_seconds()) / 86400.0


def hr_footprint(hr_item: Mapping[str, Any], asset: str, crs: Any) -> Any:
    """Shapely polygon, in ``crs``, of the HR item's data: its asset grid (``proj:*``) when it has one, else
    the item's geometry (lon/lat). Projected densely, so curved edges are followed."""
    from odc.geo.geom import Geometry

    try:
        grid = G.item_grid(hr_item, asset)
        geom = grid.extent
        step = abs(grid.affine.a) * 16
    except (G.GridError, KeyError):
        if not hr_item.get("geometry"):
            raise PairsError(f"HR item {hr_item.get('id')} has neither proj:* fields nor a geometry") from None
        geom, step = Geometry(hr_item["geometry"], "EPSG:4326"), 1e-4
    return geom.to_crs(crs, resolution=step).geom


def search_hr_items(url: str, collection: str, bbox: Sequence[float], s2_items: Sequence[Mapping[str, Any]],
                    max_days: float, limit: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Items of the HR ``collection`` at the STAC API ``url`` over ``bbox``, from ``max_days`` before the
    first S2 acquisition to ``max_days`` after the last (unsigned, like every searched item)."""
    from stacsr.catalog.search import check_bbox, normalise, open_client

    dts = [d for d in (_datetime(i) for i in s2_items) if d is not None]
    if not dts:
        return []
    span = [min(dts) - timedelta(days=max_days), max(dts) + timedelta(days=max_days)]
    found = open_client(url).search(collections=[collection], bbox=check_bbox(bbox), datetime=span, max_items=limit)
    return sorted((normalise(i) for i in found.items_as_dicts()), key=lambda i: str(i["id"]))


def build_cross_sensor_manifest(
    s2_items: Sequence[Mapping[str, Any]],
    hr_items: Sequence[Mapping[str, Any]],
    preset: Preset,
    hr_band_map: Mapping[str, Any] | str | None,
    bbox: Sequence[float],
    patches: int,
    patch_size: int,
    scale: int,
    max_days: float = 30,
    seed: int = 0,
    min_valid: float = DEFAULT_MIN_VALID,
    bands: Sequence[str] | None = None,
    stride: int | None = None,
    calibrate: bool = True,
    hr_radiometry: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
) -> pa.Table:
    """A ``cross-sensor`` manifest: windows of ``patch_size / scale`` pixels on the S2 items' 10 m grids (LR,
    SCL-clear fraction ≥ ``min_valid``) that an HR item acquired within ``max_days`` covers entirely; the HR
    patch (``patch_size`` pixels) is the same footprint, resampled when read. When several HR items cover a
    window, the nearest in time (then the smallest id) is used. Spread over the S2 items round robin, like
    :func:`build_wald_manifest`; deterministic for a given ``seed``.

    ``hr_band_map``: ``{model band: (asset, 1-based index)}`` (``None``: NAIP, :data:`NAIP_BAND_MAP`).
    ``hr_radiometry``: ``(scale, offset)`` for every band, or ``{band: (scale, offset)}``, DN → reflectance
    (default :data:`NAIP_RADIOMETRY`). ``calibrate``: the reader fits HR to S2 per patch and band.
    """
    import shapely

    if not s2_items:
        raise PairsError("no Sentinel-2 items to sample pairs from (area, dates, cloud cover)")
    _check_sampling(patches, patch_size, scale)
    if max_days < 0:
        raise PairsError(f"max_days must be ≥ 0, not {max_days}")
    bands = model_bands(preset, bands)
    keys = preset.asset_keys(list(bands))
    band_map = hr_band_map_of(hr_band_map)
    missing = [b for b in bands if b not in band_map]
    if missing:
        raise PairsError(f"the HR band map has no entry for band(s) {', '.join(missing)} (it maps {', '.join(band_map)})")
    if hr_radiometry is None:
        hr_radiometry = NAIP_RADIOMETRY
    radio = ({b: [float(v) for v in hr_radiometry[b]] for b in bands} if isinstance(hr_radiometry, Mapping)
             else {b: [float(v) for v in hr_radiometry] for b in bands})  # fmt: skip
    hr_assets = sorted({band_map[b][0] for b in bands})
    usable_hr = [h for h in hr_items if all(a in h.get("assets", {}) for a in hr_assets)]
    if not usable_hr:
        raise PairsError(f"no HR item with asset(s) {', '.join(hr_assets)} to pair with (HR collection, area, dates)")
    lr_size = patch_size // scale
    per_item: list[list[tuple[WaldWindow, int, float]]] = []
    for item in s2_items:
        when = _datetime(item)
        near = [(g, str(h["id"]), k) for k, h in enumerate(usable_hr)
                if (g := _gap_days(when, _datetime(h))) is not None and g <= max_days]  # fmt: skip
        if not near:
            per_item.append([])
            continue
        near.sort()
        rng = np.random.default_rng([seed, zlib.crc32(str(item["id"]).encode())])
        try:
            grid = G.item_grid(item, keys[0])
            found = _candidates(item, preset, bbox, lr_size, rng, min_valid, bands, stride, True)
        except (PairsError, G.GridError) as e:
            if "does not overlap" not in str(e):
                raise
            found = []
        if not found:
            per_item.append([])
            continue
        feet = [hr_footprint(usable_hr[k], hr_assets[0], grid.crs) for _, _, k in near]
        a = grid.affine
        cols = np.array([w.window.col for w in found], dtype=np.float64)
        rows_ = np.array([w.window.row for w in found], dtype=np.float64)
        boxes = shapely.box(a.c + cols * a.a, a.f + (rows_ + lr_size) * a.e, a.c + (cols + lr_size) * a.a, a.f + rows_ * a.e)
        chosen = np.full(len(found), -1)
        for j, foot in reversed(list(enumerate(feet))):  # the nearest in time wins: it is written last
            chosen[shapely.covers(foot, boxes)] = j
        per_item.append([(w, near[j][2], near[j][0]) for w, j in zip(found, chosen) if j >= 0])
    picked = _spread(per_item, patches)
    if not picked:
        raise PairsError(
            f"no {lr_size}×{lr_size} Sentinel-2 window with ≥ {min_valid:.0%} clear pixels (SCL) covered by an HR "
            f"item within {max_days:g} days in the area of interest of any of the {len(s2_items)} item(s): "
            "the manifest would be empty"
        )
    if len(picked) < patches:
        warnings.warn(f"only {len(picked)} of {patches} cross-sensor patches found", stacklevel=2)
    picked.sort(key=lambda p: (p[0], p[1][0].window.row, p[1][0].window.col))
    out, bounds_all = [], []
    for i, (ww, k, gap) in picked:
        item, hr, w = s2_items[i], usable_hr[k], ww.window
        grid = G.item_grid(item, keys[0])
        wkb, bounds = _footprint_wkb(grid, w)
        bounds_all.append(bounds)
        cloud = item.get("properties", {}).get("eo:cloud_cover")
        try:
            hr_epsg = G.item_grid(hr, hr_assets[0]).crs.epsg
        except G.GridError:
            hr_epsg = None
        out.append({
            "id": f"{item['id']}_x_{hr['id']}_r{w.row}_c{w.col}_s{patch_size}", "kind": KIND_CROSS_SENSOR,
            "item_id": item["id"], "collection": item.get("collection"), "datetime": _datetime(item),
            "epsg": grid.crs.epsg, "transform": list(grid.affine)[:6], "bands": list(bands),
            "hrefs": json.dumps({b: redact(item["assets"][k_]["href"]) for b, k_ in zip(bands, keys)}),
            "radiometry": json.dumps({b: _radiometry(item, k_) for b, k_ in zip(bands, keys)}),
            "row": w.row, "col": w.col, "size": patch_size, "scale": scale, "valid_fraction": ww.valid_fraction,
            "cloud_cover": None if cloud is None else float(cloud), "date_gap_days": float(gap), "geometry": wkb,
            "hr_item_id": hr["id"], "hr_collection": hr.get("collection"), "hr_datetime": _datetime(hr),
            "hr_epsg": hr_epsg, "hr_hrefs": json.dumps({a_: redact(hr["assets"][a_]["href"]) for a_ in hr_assets}),
            "hr_bands": json.dumps({b: list(band_map[b]) for b in bands}), "hr_radiometry": json.dumps(radio),
            "calibrate": bool(calibrate),
        })  # fmt: skip
    meta = {"version": MANIFEST_VERSION, "kind": KIND_CROSS_SENSOR, "patch_size": patch_size, "scale": scale,
            "bands": list(bands), "min_valid": min_valid, "seed": seed, "preset": preset.name, "max_days": max_days,
            "calibrate": bool(calibrate), "hr_bands": {b: list(band_map[b]) for b in bands},
            "hr_collections": sorted({str(h.get("collection")) for h in usable_hr})}  # fmt: skip
    return with_metadata(pa.Table.from_pylist(out, schema=CROSS_SENSOR_SCHEMA), meta, _union(bounds_all))


def _spread(per_item: Sequence[Sequence[Any]], patches: int) -> list[tuple[int, Any]]:
    """Round robin over the items' candidate lists until ``patches`` are picked."""
    picked: list[tuple[int, Any]] = []
    depth = 0
    while len(picked) < patches and any(depth < len(f) for f in per_item):
        for i, found in enumerate(per_item):
            if depth < len(found) and len(picked) < patches:
                picked.append((i, found[depth]))
        depth += 1
    return picked


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
        raise PairsError(f"cannot write pairs manifest {redact(path)}: {first_line(e)}") from None
    return path


def read_manifest(path: str | os.PathLike, filesystem: Any = None) -> pa.Table:
    """Read a manifest written by :func:`write_manifest` (local path or ``s3://``); clear errors when the path
    cannot be read, the file is not a manifest, or it lists no pairs."""
    path = os.fspath(path)
    try:
        fs_, target = _filesystem(path, filesystem)
        table = pq.read_table(target, filesystem=fs_)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise PairsError(f"cannot read pairs manifest {redact(path)}: {first_line(e)}") from None
    return check_manifest(table, f"pairs manifest {redact(path)}")
