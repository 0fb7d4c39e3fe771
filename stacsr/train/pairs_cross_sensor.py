"""Cross-sensor pairs (``kind="cross-sensor"``): Sentinel-2 10 m is the LR, another sensor the HR. Builder and reader.

The HR comes from a co-located higher-resolution STAC collection (default NAIP on Planetary Computer) acquired
within ``max_days`` of the S2 item. The LR window is ``size / scale`` pixels at (``row``, ``col``) of the S2
item's 10 m grid; the HR grid is that window zoomed in ×``scale`` (:func:`stacsr.io.grid.zoom_in`: same CRS,
same origin), onto which the HR raster is resampled from its own CRS when read. ``size`` is thus the HR patch
side, as for every kind. Rows carry :data:`stacsr.train.manifest.HR_COLUMNS` besides the usual columns:
``hr_item_id``, ``hr_collection``, ``hr_datetime``, ``hr_epsg``, ``hr_hrefs`` (JSON ``{asset: href}``,
unsigned), ``hr_bands`` (JSON ``{band: [asset, 1-based band index]}``), ``hr_radiometry`` (JSON ``{band:
[scale, offset]}``, DN → reflectance) and ``calibrate``; ``date_gap_days`` is ``|HR − S2|`` in days.

The reader (:func:`read_cross_sensor_pair`) reads the S2 window as LR (radiometry applied, as the Wald reader
reads its HR) and the HR raster through a GDAL warped VRT onto the HR grid, from the HR's own CRS, with
average resampling when the HR pixels are finer than the target (bilinear otherwise), then scales its DNs to
reflectance × 10000 and, when the row says ``calibrate``, fits gain and offset per band so that the area mean
of HR matches LR (least squares over pixels valid in both, as SR4RS did with Spot). The cache keeps both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from stacsr.catalog.presets import Preset
from stacsr.io.grid import GeoBox, GridError, crop, item_grid, window_grid, zoom_in
from stacsr.io.window import read_warped
from stacsr.plumbing.redaction import redact
from stacsr.train import degrade
from stacsr.train.manifest import (
    CROSS_SENSOR_SCHEMA,
    DEFAULT_MIN_VALID,
    HR_COLUMNS,
    KIND_CROSS_SENSOR,
    PairsError,
    item_datetime,
    item_fields,
    make_row,
    manifest_table,
    model_bands,
    sampling_meta,
)
from stacsr.train.reading import read_s2, row_bands, row_window, save_cache, signed_hrefs, size_and_scale
from stacsr.train.sampling import WaldWindow, candidates, check_sampling, pick

# NAIP on Planetary Computer: one asset "image" with 4 uint8 bands in the order R, G, B, NIR (0.6 m, UTM).
# Model band -> (asset key, 1-based band index of that asset).
NAIP_BAND_MAP: dict[str, tuple[str, int]] = {
    "B02": ("image", 3),
    "B03": ("image", 2),
    "B04": ("image", 1),
    "B08": ("image", 4),
}
# NAIP DN 0–255 are not reflectances: a simple linear scale, reflectance = DN / 255 (so ×10000 at read time),
# DN 0 = nodata. Per-patch calibration (``calibrate``) then fits gain and offset to Sentinel-2 per band.
NAIP_RADIOMETRY = (1 / 255, 0.0)

Candidate = tuple[WaldWindow, int, float]  # an S2 window, the index of its HR item, their gap in days

# ------------------------------------------------------------------ building


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
        grid = item_grid(hr_item, asset)
        geom = grid.extent
        step = abs(grid.affine.a) * 16
    except (GridError, KeyError):
        if not hr_item.get("geometry"):
            raise PairsError(f"HR item {hr_item.get('id')} has neither proj:* fields nor a geometry") from None
        geom, step = Geometry(hr_item["geometry"], "EPSG:4326"), 1e-4
    return geom.to_crs(crs, resolution=step).geom


def search_hr_items(
    url: str,
    collection: str,
    bbox: Sequence[float],
    s2_items: Sequence[Mapping[str, Any]],
    max_days: float,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Items of the HR ``collection`` at the STAC API ``url`` over ``bbox``, from ``max_days`` before the
    first S2 acquisition to ``max_days`` after the last (unsigned, like every searched item)."""
    from stacsr.catalog.search import check_bbox, normalise, open_client  # the STAC client only when searching

    dts = [d for d in (item_datetime(i) for i in s2_items) if d is not None]
    if not dts:
        return []
    span = [min(dts) - timedelta(days=max_days), max(dts) + timedelta(days=max_days)]
    found = open_client(url).search(collections=[collection], bbox=check_bbox(bbox), datetime=span, max_items=limit)
    return sorted((normalise(i) for i in found.items_as_dicts()), key=lambda i: str(i["id"]))


def _hr_radiometry(
    hr_radiometry: Mapping[str, Sequence[float]] | Sequence[float] | None, bands: Sequence[str]
) -> dict[str, list[float]]:
    """``{band: [scale, offset]}`` of the HR: one pair for every band, or one per band (default NAIP's)."""
    if hr_radiometry is None:
        hr_radiometry = NAIP_RADIOMETRY
    if isinstance(hr_radiometry, Mapping):
        return {b: [float(v) for v in hr_radiometry[b]] for b in bands}
    return {b: [float(v) for v in hr_radiometry] for b in bands}


def _near(
    item: Mapping[str, Any], hr_items: Sequence[Mapping[str, Any]], max_days: float
) -> list[tuple[float, str, int]]:
    """``[(gap in days, HR id, HR index)]`` of the HR items within ``max_days`` of ``item``, nearest first."""
    when = item_datetime(item)
    near = [
        (g, str(h["id"]), k)
        for k, h in enumerate(hr_items)
        if (g := _gap_days(when, item_datetime(h))) is not None and g <= max_days
    ]
    return sorted(near)


def _covered(found: Sequence[WaldWindow], grid: GeoBox, feet: Sequence[Any]) -> list[int]:
    """For each window of ``found`` (on ``grid``), the index of the first of ``feet`` covering it (-1: none)."""
    import shapely

    boxes = shapely.box(*np.array([crop(grid, w.window).boundingbox.bbox for w in found]).T)
    chosen = np.full(len(found), -1)
    for j, foot in reversed(list(enumerate(feet))):  # the first (nearest in time) wins: it is written last
        chosen[shapely.covers(foot, boxes)] = j
    return chosen.tolist()


def _candidates(
    item: Mapping[str, Any],
    hr_items: Sequence[Mapping[str, Any]],
    hr_asset: str,
    preset: Preset,
    keys: Sequence[str],
    bbox: Sequence[float],
    lr_size: int,
    seed: int,
    min_valid: float,
    bands: Sequence[str],
    stride: int | None,
    max_days: float,
) -> list[Candidate]:
    """The item's clear LR windows that an HR item within ``max_days`` covers entirely, in sampling order."""
    near = _near(item, hr_items, max_days)
    if not near:
        return []
    rng = np.random.default_rng([seed, zlib.crc32(str(item["id"]).encode())])
    try:
        grid = item_grid(item, keys[0])
        found = candidates(item, preset, bbox, lr_size, rng, min_valid, bands, stride, True)
    except (PairsError, GridError) as e:
        if "does not overlap" not in str(e):
            raise
        return []
    if not found:
        return []
    feet = [hr_footprint(hr_items[k], hr_asset, grid.crs) for _, _, k in near]
    return [(w, near[j][2], near[j][0]) for w, j in zip(found, _covered(found, grid, feet)) if j >= 0]


def _hr_fields(
    hr: Mapping[str, Any], hr_assets: Sequence[str], hr_bands: Mapping[str, Any], radio: Any, calibrate: bool
) -> dict[str, Any]:
    """The :data:`~stacsr.train.manifest.HR_COLUMNS` of a row whose HR is ``hr``."""
    try:
        hr_epsg = item_grid(hr, hr_assets[0]).crs.epsg
    except GridError:
        hr_epsg = None
    return {
        "hr_item_id": hr["id"],
        "hr_collection": hr.get("collection"),
        "hr_datetime": item_datetime(hr),
        "hr_epsg": hr_epsg,
        "hr_hrefs": json.dumps({a: redact(hr["assets"][a]["href"]) for a in hr_assets}),
        "hr_bands": json.dumps(hr_bands),
        "hr_radiometry": json.dumps(radio),
        "calibrate": bool(calibrate),
    }


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
    :func:`stacsr.train.pairs_wald.build_wald_manifest`; deterministic for a given ``seed``.

    ``hr_band_map``: ``{model band: (asset, 1-based index)}`` (``None``: NAIP, :data:`NAIP_BAND_MAP`).
    ``hr_radiometry``: ``(scale, offset)`` for every band, or ``{band: (scale, offset)}``, DN → reflectance
    (default :data:`NAIP_RADIOMETRY`). ``calibrate``: the reader fits HR to S2 per patch and band.
    """
    if not s2_items:
        raise PairsError("no Sentinel-2 items to sample pairs from (area, dates, cloud cover)")
    check_sampling(patches, patch_size, scale)
    if max_days < 0:
        raise PairsError(f"max_days must be ≥ 0, not {max_days}")
    bands = model_bands(preset, bands)
    keys = preset.asset_keys(list(bands))
    band_map = hr_band_map_of(hr_band_map)
    missing = [b for b in bands if b not in band_map]
    if missing:
        raise PairsError(
            f"the HR band map has no entry for band(s) {', '.join(missing)} (it maps {', '.join(band_map)})"
        )
    radio = _hr_radiometry(hr_radiometry, bands)
    hr_assets = sorted({band_map[b][0] for b in bands})
    usable_hr = [h for h in hr_items if all(a in h.get("assets", {}) for a in hr_assets)]
    if not usable_hr:
        raise PairsError(f"no HR item with asset(s) {', '.join(hr_assets)} to pair with (HR collection, area, dates)")
    lr_size = patch_size // scale
    per_item = [
        _candidates(
            item, usable_hr, hr_assets[0], preset, keys, bbox, lr_size, seed, min_valid, bands, stride, max_days
        )
        for item in s2_items
    ]
    picked = pick(
        per_item,
        patches,
        lambda c: c[0].window,
        f"no {lr_size}×{lr_size} Sentinel-2 window with ≥ {min_valid:.0%} clear pixels (SCL) covered by an HR "
        f"item within {max_days:g} days in the area of interest of any of the {len(s2_items)} item(s): "
        "the manifest would be empty",
        "cross-sensor patches found",
    )
    hr_bands = {b: list(band_map[b]) for b in bands}
    rows = []
    for i, (ww, k, gap) in picked:
        item, hr = s2_items[i], usable_hr[k]
        grid, fields = item_grid(item, keys[0]), item_fields(item, bands, keys)
        name = f"{item['id']}_x_{hr['id']}"
        row = make_row(
            name,
            KIND_CROSS_SENSOR,
            grid,
            ww.window,
            patch_size,
            scale,
            bands,
            ww.valid_fraction,
            date_gap_days=float(gap),
            **fields,
        )
        rows.append({**row, **_hr_fields(hr, hr_assets, hr_bands, radio, calibrate)})
    meta = sampling_meta(
        KIND_CROSS_SENSOR,
        patch_size,
        scale,
        bands,
        min_valid,
        seed,
        preset=preset.name,
        max_days=max_days,
        calibrate=bool(calibrate),
        hr_bands=hr_bands,
        hr_collections=sorted({str(h.get("collection")) for h in usable_hr}),
    )
    return manifest_table(rows, meta, CROSS_SENSOR_SCHEMA)


# ------------------------------------------------------------------ reading


def pair_grids(row: Mapping[str, Any]) -> tuple[GeoBox, GeoBox]:
    """``(lr_grid, hr_grid)``: the LR window (``size / scale`` pixels) on the S2 item's 10 m grid, and that grid
    zoomed in ×``scale`` (same origin)."""
    size, scale = size_and_scale(row)
    lr = window_grid(row["transform"], f"EPSG:{int(row['epsg'])}", row_window(row, size // scale))
    return lr, zoom_in(lr, scale)


def read_hr_warped(row: Mapping[str, Any], preset: Preset, hr_grid: GeoBox, listed: Sequence[str]) -> np.ndarray:
    """The row's HR raster resampled onto ``hr_grid`` (warped VRT from its own CRS: only the blocks needed are
    fetched) as reflectance × 10000 float32 ``(bands, size, size)``; 0 = nodata (outside the raster, or DN 0
    when the raster declares no nodata)."""
    missing = [c for c in HR_COLUMNS if row.get(c) is None and c != "hr_datetime"]
    if missing:
        raise PairsError(f"pair {row.get('id')}: cross-sensor row without HR source column(s) {', '.join(missing)}")
    band_map, hrefs = json.loads(row["hr_bands"]), json.loads(row["hr_hrefs"])
    radio = json.loads(row["hr_radiometry"])
    absent = [b for b in listed if b not in band_map or b not in radio or band_map[b][0] not in hrefs]
    if absent:
        raise PairsError(f"pair {row['id']}: band mismatch: no HR source for band(s) {', '.join(absent)}")
    signed = signed_hrefs(preset, row["hr_item_id"], row.get("hr_collection"), hrefs)
    out = np.zeros((len(listed), *hr_grid.shape.yx), dtype=np.float32)
    for asset in sorted({band_map[b][0] for b in listed}):
        which = [(i, int(band_map[b][1])) for i, b in enumerate(listed) if band_map[b][0] == asset]
        name = f"HR {asset} of item {row['hr_item_id']} ({redact(signed[asset])})"
        try:
            data = read_warped(signed[asset], hr_grid, [k for _, k in which], name)
        except ValueError as e:  # no CRS, or not the bands the row names
            raise PairsError(str(e)) from None
        for (i, _), layer in zip(which, data):
            scale, offset = radio[listed[i]]
            value = np.clip((layer * scale + offset) * 10000.0, 1.0, 65535.0)
            out[i] = np.where(layer != 0, value, 0.0)
    return out


def calibrate(lr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hr calibrated, gains, offsets)``: per band, least squares ``lr ≈ gain · area_mean(hr) + offset`` over
    pixels valid in both (LR ≠ 0 and all of the HR block ≠ 0), then ``gain · hr + offset`` on valid HR pixels
    (clipped to [1, 65535], so it never turns into nodata). Fewer than 2 valid pixels or a flat HR: the gain
    is the ratio of the means (offset 0), or 1 when nothing is valid."""
    hrm = degrade.area(hr, scale)
    out = hr.copy()
    gains, offsets = np.ones(len(hr)), np.zeros(len(hr))
    for b in range(len(hr)):
        ok = (lr[b] != 0) & (hrm[b] != 0)
        x, y = hrm[b][ok].astype(np.float64), lr[b][ok].astype(np.float64)
        if x.size >= 2 and x.var() > 1e-6:
            gains[b], offsets[b] = np.polyfit(x, y, 1)
        elif x.size and x.mean() > 0:
            gains[b] = y.mean() / x.mean()
        valid = hr[b] != 0
        out[b] = np.where(valid, np.clip(gains[b] * hr[b] + offsets[b], 1.0, 65535.0), 0.0)
    return out, gains, offsets


def cache_path(cache_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """``cache_dir/<row id>-<digest of the LR and HR sources>.npz``."""
    sources = [row[c] for c in ("hrefs", "radiometry", "hr_hrefs", "hr_bands", "hr_radiometry")]
    place = [int(row[c]) for c in ("row", "col", "size", "scale")]
    source = json.dumps([*sources, bool(row["calibrate"]), *place])
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(row["id"]))
    return Path(cache_dir) / f"{safe}-{digest}.npz"


def _cached(path: Path | None, lr_grid: GeoBox, hr_grid: GeoBox) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lr, hr)`` from the cache file ``path`` when it holds arrays of the grids' shapes."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as f:
            lr, hr = f["lr"], f["hr"]
    except (OSError, ValueError, KeyError):
        return None
    if lr.shape[1:] != tuple(lr_grid.shape.yx) or hr.shape[1:] != tuple(hr_grid.shape.yx):
        return None
    return lr, hr


def read_cross_sensor_pair(
    row: Mapping[str, Any],
    preset: Preset,
    degradation: str = "area",
    noise_std: float = 0.0,
    *,
    sigma: float = degrade.DEFAULT_SIGMA,
    rng: np.random.Generator | None = None,
    bands: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    sigma_min: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, hr)`` of a cross-sensor row: LR the S2 window, HR the other sensor on the zoomed grid (see the
    module). ``degradation``/``sigma``/``sigma_min`` do not apply (the LR is real); ``noise_std`` still adds
    noise to LR."""
    listed, hrefs = row_bands(row, bands)
    lr_grid, hr_grid = pair_grids(row)
    path = cache_path(cache_dir, row) if cache_dir is not None else None
    cached = _cached(path, lr_grid, hr_grid)
    if cached is not None:
        lr, hr = cached
    else:
        lr = read_s2(row, preset, listed, hrefs, lr_grid).astype(np.float32)
        hr = read_hr_warped(row, preset, hr_grid, listed)
        if row.get("calibrate"):
            hr = calibrate(lr, hr, int(row["scale"]))[0]
        if path is not None:
            save_cache(path, hr.astype(np.float32), lr=lr.astype(np.float32))
    lr, hr = lr.astype(np.float32), hr.astype(np.float32)
    if noise_std:
        lr = degrade.noise(lr, noise_std, rng)
    return lr, hr
