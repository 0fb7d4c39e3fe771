"""Reading training pairs: manifest rows → ``(lr, hr)`` arrays, one by one or as a Ray Data pipeline.

Each row's hrefs are stored unsigned; they are signed with ``preset.sign`` when the pixels are read (so a
long run renews tokens that expire), and only the window is fetched (GDAL range reads on COGs). Errors name
the asset without its query string. Radiometry is made uniform (reflectance × 10000, 0 = nodata) with the
manifest's per-band scale/offset (:mod:`stacsr.catalog.radiometry`), then the degradation makes the LR.

The optional cache folder keeps each decoded HR patch (uint16 ``.npz`` named after the row id and a digest of
its source) so that later epochs or runs read nothing remotely; degradation and noise are applied after the
cache, so they may change between runs.

Kinds: :data:`READERS` maps a manifest ``kind`` to its reader; ``wald`` and ``cross-sensor`` are built in.
The cross-sensor reader (:func:`read_cross_sensor_pair`) reads the S2 window as LR (radiometry applied, as the
Wald reader reads its HR) and the HR raster through a GDAL warped VRT onto the LR grid zoomed in ×scale (same
origin), from the HR's own CRS, with average resampling when the HR pixels are finer than the target (bilinear
otherwise), then scales its DNs to reflectance × 10000 and, when the row says ``calibrate``, fits gain and
offset per band so that the area mean of HR matches LR (least squares over pixels valid in both, as SR4RS
did with Spot). Both go through the same :func:`check_pair`; the cache keeps both LR and HR.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from stacsr.catalog.presets import Preset
from stacsr.catalog.radiometry import Radiometry
from stacsr.io.grid import GeoBox, Window, zoom_in
from stacsr.io.read import GDAL_ENV, ReadError, first_line, redact, with_retries
from stacsr.train import degrade as D
from stacsr.train.pairs import HR_COLUMNS, KIND_CROSS_SENSOR, KIND_WALD, PairsError, read_manifest

Reader = Callable[..., tuple[np.ndarray, np.ndarray]]


# ------------------------------------------------------------------ remote windows


def read_window(href: str, window: Window, asset: str = "", transform: Affine | None = None,
                epsg: int | None = None) -> np.ndarray:  # fmt: skip
    """Band 1 of ``href`` in ``window`` (pixels outside the raster are 0), fetched with range reads.

    With ``transform``/``epsg`` given, the raster must put the window exactly there (else :class:`PairsError`).
    """
    name = f"{asset} ({redact(href)})" if asset else redact(href)

    def read() -> np.ndarray:
        with rasterio.Env(**GDAL_ENV), rasterio.open(href) as src:
            if epsg is not None and (src.crs is None or src.crs.to_epsg() != epsg):
                raise PairsError(f"{name} is in {src.crs}, the manifest says EPSG:{epsg}")
            rio = RioWindow(window.col, window.row, window.width, window.height)
            if transform is not None and not np.allclose(tuple(src.window_transform(rio))[:6], tuple(transform)[:6], rtol=0, atol=1e-6):
                raise PairsError(f"{name} is not on the manifest's grid: window {window} lies at "
                                 f"{tuple(src.window_transform(rio))[:6]}, expected {tuple(transform)[:6]}")  # fmt: skip
            r0, c0 = max(window.row, 0), max(window.col, 0)
            r1, c1 = min(window.row + window.height, src.height), min(window.col + window.width, src.width)
            out = np.zeros(window.shape, dtype=src.dtypes[0])
            if r1 > r0 and c1 > c0:
                out[r0 - window.row : r1 - window.row, c0 - window.col : c1 - window.col] = src.read(
                    1, window=RioWindow(c0, r0, c1 - c0, r1 - r0))  # fmt: skip
            return out

    try:
        return with_retries(read)
    except RasterioError as e:
        raise ReadError(f"cannot read {name}: {first_line(e)}") from None


# ------------------------------------------------------------------ one pair


def pair_grids(row: Mapping[str, Any]) -> tuple[GeoBox, GeoBox]:
    """``(lr_grid, hr_grid)`` of a manifest row. ``wald``: the HR window on the item's 10 m grid and the same
    footprint with pixels ``scale`` times larger. ``cross-sensor``: the LR window (``size / scale`` pixels) on
    the S2 item's 10 m grid and that grid zoomed in ×``scale`` (same origin)."""
    size, scale = int(row["size"]), int(row["scale"])
    if scale < 1 or size % scale:
        raise PairsError(f"pair {row['id']}: size {size} is not a multiple of the scale {scale}")
    hr_affine = Affine(*row["transform"][:6]) * Affine.translation(int(row["col"]), int(row["row"]))
    crs = f"EPSG:{int(row['epsg'])}"
    if row.get("kind") == KIND_CROSS_SENSOR:
        lr = GeoBox((size // scale, size // scale), hr_affine, crs)  # the affine of the window's origin
        return lr, zoom_in(lr, scale)
    hr = GeoBox((size, size), hr_affine, crs)
    lr = GeoBox((size // scale, size // scale), hr_affine * Affine.scale(scale), crs)
    return lr, hr


def check_pair(lr: np.ndarray, hr: np.ndarray, row: Mapping[str, Any], bands: Sequence[str] | None = None) -> None:
    """Refuse pairs whose bands or footprints disagree: same band count (and the model's bands when given),
    LR and HR shapes those of their grids, HR footprint == LR footprint."""
    rid = row.get("id")
    if lr.ndim != 3 or hr.ndim != 3:
        raise PairsError(f"pair {rid}: expected (bands, rows, cols) arrays, got LR {lr.shape} and HR {hr.shape}")
    if lr.shape[0] != hr.shape[0]:
        raise PairsError(f"pair {rid}: band mismatch between LR ({lr.shape[0]} bands) and HR ({hr.shape[0]} bands)")
    if bands is not None and len(bands) != hr.shape[0]:
        raise PairsError(f"pair {rid}: {hr.shape[0]} bands but the model expects {len(bands)} ({', '.join(bands)})")
    lr_grid, hr_grid = pair_grids(row)
    if lr.shape[1:] != tuple(lr_grid.shape.yx) or hr.shape[1:] != tuple(hr_grid.shape.yx):
        raise PairsError(f"pair {rid}: LR {lr.shape[1:]} / HR {hr.shape[1:]} do not match the grids "
                         f"{tuple(lr_grid.shape.yx)} / {tuple(hr_grid.shape.yx)}")  # fmt: skip
    if not np.allclose(tuple(lr_grid.boundingbox), tuple(hr_grid.boundingbox), rtol=0, atol=1e-6):
        raise PairsError(f"pair {rid}: LR footprint {tuple(lr_grid.boundingbox)} != HR {tuple(hr_grid.boundingbox)}")


def row_bands(row: Mapping[str, Any], bands: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The row's bands and hrefs, checked against each other and against the model's ``bands``."""
    hrefs = json.loads(row["hrefs"])
    listed = list(row["bands"])
    if list(hrefs) != listed:
        raise PairsError(f"pair {row['id']}: band mismatch between its bands ({', '.join(listed)}) and its hrefs "
                         f"({', '.join(hrefs)})")  # fmt: skip
    if bands is not None and list(bands) != listed:
        raise PairsError(f"pair {row['id']}: band mismatch: the manifest has {', '.join(listed)} but the model "
                         f"expects {', '.join(bands)}")  # fmt: skip
    return listed, hrefs


def cache_path(cache_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """``cache_dir/<row id>-<digest of the source>.npz``: a changed manifest row never hits a stale patch."""
    source = json.dumps([row["hrefs"], row["radiometry"], int(row["row"]), int(row["col"]), int(row["size"])])
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(row["id"]))
    return Path(cache_dir) / f"{safe}-{digest}.npz"


def _read_s2(row: Mapping[str, Any], preset: Preset, listed: Sequence[str], hrefs: Mapping[str, str],
             window: Window, grid: GeoBox) -> np.ndarray:  # fmt: skip
    """Bands ``listed`` of the row's Sentinel-2 item in ``window`` (whose grid is ``grid``), as reflectance × 10000
    uint16. Hrefs are signed now, not when the manifest was made: tokens are always fresh."""
    item = {"type": "Feature", "stac_version": "1.0.0", "id": row["item_id"], "collection": row.get("collection"),
            "geometry": None, "properties": {}, "links": [],
            "assets": {b: {"href": h} for b, h in hrefs.items()}}  # fmt: skip
    signed = preset.sign(item)
    radio = json.loads(row["radiometry"])
    return np.stack([
        Radiometry(*radio[b]).to_uint16(read_window(
            signed["assets"][b]["href"], window, asset=f"{b} of item {row['item_id']}",
            transform=grid.affine, epsg=int(row["epsg"])))
        for b in listed
    ])  # fmt: skip


def read_hr(row: Mapping[str, Any], preset: Preset, cache_dir: str | os.PathLike | None = None,
            bands: Sequence[str] | None = None) -> np.ndarray:  # fmt: skip
    """The row's window as reflectance × 10000 uint16 ``(bands, size, size)``, 0 = nodata (cached if asked)."""
    listed, hrefs = row_bands(row, bands)
    path = cache_path(cache_dir, row) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as f:
                hr = f["hr"]
            if hr.shape == (len(listed), int(row["size"]), int(row["size"])):
                return hr
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is read again
    _, hr_grid = pair_grids(row)
    size = int(row["size"])
    hr = _read_s2(row, preset, listed, hrefs, Window(int(row["row"]), int(row["col"]), size, size), hr_grid)
    if path is not None:
        _save(path, hr)
    return hr


def _save(path: Path, hr: np.ndarray, **more: np.ndarray) -> None:
    from stacsr.io.write import atomic_file

    with atomic_file(path, suffix=".npz") as tmp, open(tmp, "wb") as f:  # workers sharing it never see half a file
        np.savez(f, hr=hr, **more)


def read_wald_pair(row: Mapping[str, Any], preset: Preset, degradation: str = "area", noise_std: float = 0.0, *,
                   sigma: float = D.DEFAULT_SIGMA, rng: np.random.Generator | None = None,
                   bands: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
                   sigma_min: float = 0.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    hr = read_hr(row, preset, cache_dir, bands).astype(np.float32)
    lr = D.degrade(hr, int(row["scale"]), degradation, sigma=sigma, noise_std=noise_std, rng=rng, sigma_min=sigma_min)
    return lr, hr


# ------------------------------------------------------------------ cross-sensor


def _s2_window(row: Mapping[str, Any], preset: Preset, lr_grid: GeoBox, listed: Sequence[str],
               hrefs: Mapping[str, str]) -> np.ndarray:  # fmt: skip
    """The S2 LR window as reflectance × 10000 float32 ``(bands, n, n)``, 0 = nodata."""
    n = int(lr_grid.shape.y)
    return _read_s2(row, preset, listed, hrefs, Window(int(row["row"]), int(row["col"]), n, n), lr_grid).astype(np.float32)


def read_hr_warped(row: Mapping[str, Any], preset: Preset, hr_grid: GeoBox, listed: Sequence[str]) -> np.ndarray:
    """The row's HR raster resampled onto ``hr_grid`` (warped VRT from its own CRS: only the blocks needed are
    fetched) as reflectance × 10000 float32 ``(bands, size, size)``; 0 = nodata (outside the raster, or DN 0
    when the raster declares no nodata)."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    missing = [c for c in HR_COLUMNS if row.get(c) is None and c != "hr_datetime"]
    if missing:
        raise PairsError(f"pair {row.get('id')}: cross-sensor row without HR source column(s) {', '.join(missing)}")
    band_map, hrefs = json.loads(row["hr_bands"]), json.loads(row["hr_hrefs"])
    radio = json.loads(row["hr_radiometry"])
    absent = [b for b in listed if b not in band_map or b not in radio or band_map[b][0] not in hrefs]
    if absent:
        raise PairsError(f"pair {row['id']}: band mismatch: no HR source for band(s) {', '.join(absent)}")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": row["hr_item_id"], "collection": row.get("hr_collection"),
            "geometry": None, "properties": {}, "links": [],
            "assets": {a: {"href": h} for a, h in hrefs.items()}}  # fmt: skip
    signed = preset.sign(item)  # at read time: fresh tokens
    rows_, cols_ = hr_grid.shape.yx
    out = np.zeros((len(listed), rows_, cols_), dtype=np.float32)
    for asset in sorted({band_map[b][0] for b in listed}):
        href = signed["assets"][asset]["href"]
        which = [(i, int(band_map[b][1])) for i, b in enumerate(listed) if band_map[b][0] == asset]
        name = f"HR {asset} of item {row['hr_item_id']} ({redact(href)})"
        try:
            with rasterio.Env(**GDAL_ENV), rasterio.open(href) as src:
                if src.crs is None:
                    raise PairsError(f"{name} has no CRS")
                bad = [k for _, k in which if not 1 <= k <= src.count]
                if bad:
                    raise PairsError(f"{name} has {src.count} band(s), not band {bad[0]}")
                finer = _native_res_m(src) < abs(hr_grid.affine.a)  # target grids are projected (S2: metres)
                nodata = src.nodata if src.nodata is not None else 0
                with WarpedVRT(src, crs=str(hr_grid.crs), transform=hr_grid.affine, width=cols_, height=rows_,
                               resampling=Resampling.average if finer else Resampling.bilinear,
                               src_nodata=nodata, nodata=0, dtype="float32") as vrt:  # fmt: skip
                    data = vrt.read([k for _, k in which])
        except RasterioError as e:
            raise ReadError(f"cannot read {name}: {first_line(e)}") from None
        for (i, _), layer in zip(which, data):
            scale, offset = radio[listed[i]]
            value = np.clip((layer * scale + offset) * 10000.0, 1.0, 65535.0)
            out[i] = np.where(layer != 0, value, 0.0)
    return out


def _native_res_m(src: Any) -> float:
    """Pixel size of a projected raster in metres (geographic rasters: degrees × 111 km)."""
    res = abs(src.res[0])
    return res * 111_000.0 if src.crs.is_geographic else res * float(src.crs.linear_units_factor[1])


def calibrate(lr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hr calibrated, gains, offsets)``: per band, least squares ``lr ≈ gain · area_mean(hr) + offset`` over
    pixels valid in both (LR ≠ 0 and all of the HR block ≠ 0), then ``gain · hr + offset`` on valid HR pixels
    (clipped to [1, 65535], so it never turns into nodata). Fewer than 2 valid pixels or a flat HR: the gain
    is the ratio of the means (offset 0), or 1 when nothing is valid."""
    hrm = D.area(hr, scale)
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


def _cross_cache_path(cache_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    source = json.dumps([row["hrefs"], row["radiometry"], row["hr_hrefs"], row["hr_bands"], row["hr_radiometry"],
                         bool(row["calibrate"]), int(row["row"]), int(row["col"]), int(row["size"]), int(row["scale"])])  # fmt: skip
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(row["id"]))
    return Path(cache_dir) / f"{safe}-{digest}.npz"


def read_cross_sensor_pair(row: Mapping[str, Any], preset: Preset, degradation: str = "area", noise_std: float = 0.0,
                           *, sigma: float = D.DEFAULT_SIGMA, rng: np.random.Generator | None = None,
                           bands: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
                           sigma_min: float = 0.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(lr, hr)`` of a cross-sensor row: LR the S2 window, HR the other sensor on the zoomed grid (see the
    module). ``degradation``/``sigma``/``sigma_min`` do not apply (the LR is real); ``noise_std`` still adds
    noise to LR."""
    listed, hrefs = row_bands(row, bands)
    lr_grid, hr_grid = pair_grids(row)
    scale = int(row["scale"])
    path = _cross_cache_path(cache_dir, row) if cache_dir is not None else None
    lr = hr = None
    if path is not None and path.is_file():
        try:
            with np.load(path) as f:
                lr, hr = f["lr"], f["hr"]
            if lr.shape[1:] != tuple(lr_grid.shape.yx) or hr.shape[1:] != tuple(hr_grid.shape.yx):
                lr = hr = None
        except (OSError, ValueError, KeyError):
            lr = hr = None
    if lr is None or hr is None:
        lr = _s2_window(row, preset, lr_grid, listed, hrefs)
        hr = read_hr_warped(row, preset, hr_grid, listed)
        if row.get("calibrate"):
            hr = calibrate(lr, hr, scale)[0]
        if path is not None:
            _save(path, hr.astype(np.float32), lr=lr.astype(np.float32))
    lr, hr = lr.astype(np.float32), hr.astype(np.float32)
    if noise_std:
        lr = D.noise(lr, noise_std, rng)
    return lr, hr


READERS: dict[str, Reader] = {KIND_WALD: read_wald_pair, KIND_CROSS_SENSOR: read_cross_sensor_pair}


def read_pair(row: Mapping[str, Any], preset: Preset, degradation: str = "area", noise_std: float = 0.0, *,
              sigma: float = D.DEFAULT_SIGMA, rng: np.random.Generator | None = None,
              bands: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
              sigma_min: float = 0.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(lr, hr)`` float32 reflectance × 10000 of a manifest row: ``(bands, size/scale, size/scale)`` and
    ``(bands, size, size)``, checked with :func:`check_pair`. ``degradation``: ``"area"``, ``"mtf"`` or ``"mixed"``
    (``sigma``, ``sigma_min`` in HR pixels: :func:`stacsr.train.degrade.degrade`); ``noise_std`` adds noise to
    LR; ``bands``: the model's bands, to refuse others."""
    if degradation not in D.TRAIN_DEGRADATIONS:
        raise PairsError(f"unknown degradation {degradation!r}: use {', '.join(D.TRAIN_DEGRADATIONS)}")
    reader = READERS.get(row.get("kind"))
    if reader is None:
        raise PairsError(f"pair {row.get('id')}: unsupported kind {row.get('kind')!r} (readers: {', '.join(READERS)})")
    lr, hr = reader(row, preset, degradation, noise_std, sigma=sigma, rng=rng, bands=bands, cache_dir=cache_dir,
                    sigma_min=sigma_min)  # fmt: skip
    check_pair(lr, hr, row, bands)
    return lr, hr


# ------------------------------------------------------------------ Ray Data


class _PairBatch:
    """The ``map_batches`` function: a pyarrow batch of manifest rows → ``{"id", "lr", "hr"}`` numpy columns."""

    def __init__(self, preset: Preset, degradation: str, noise_std: float, sigma: float,
                 bands: Sequence[str] | None, cache_dir: str | None, seed: int | None, sigma_min: float = 0.0) -> None:  # fmt: skip
        self.preset, self.degradation, self.noise_std, self.sigma = preset, degradation, noise_std, sigma
        self.bands, self.cache_dir, self.seed, self.sigma_min = bands, cache_dir, seed, sigma_min

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        ids, lrs, hrs = [], [], []
        for row in batch.to_pylist():
            rng = None
            if self.noise_std or self.degradation == "mixed":
                rng = np.random.default_rng(None if self.seed is None else [self.seed, zlib.crc32(row["id"].encode())])
            lr, hr = read_pair(row, self.preset, self.degradation, self.noise_std, sigma=self.sigma, rng=rng,
                               bands=self.bands, cache_dir=self.cache_dir, sigma_min=self.sigma_min)  # fmt: skip
            ids.append(row["id"])
            lrs.append(lr)
            hrs.append(hr)
        return {"id": np.array(ids, dtype=object), "lr": np.stack(lrs), "hr": np.stack(hrs)}


def pair_dataset(
    manifest: str | os.PathLike | Any,
    preset: Preset,
    degradation: str = "area",
    noise_std: float = 0.0,
    *,
    sigma: float = D.DEFAULT_SIGMA,
    sigma_min: float = 0.0,
    bands: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    rows_per_block: int = 8,
    filesystem: Any = None,
    shuffle: bool = False,
) -> Any:
    """A lazy ``ray.data.Dataset`` of ``{"id", "lr", "hr"}`` rows read from a manifest (path, ``s3://`` URI or
    pyarrow Table). Everything checkable without pixels (emptiness, bands, uniform size and scale, the
    degradation) is checked here; pixels are read by Ray tasks when the dataset is consumed.

    ``cache_dir`` must be a folder every Ray worker can reach (local disk on one node, a shared mount on a
    cluster). With ``noise_std`` and a ``seed``, each patch gets the same noise every epoch.

    ``shuffle``: manifests list patches scene by scene, and batches of neighbouring windows of one scene
    train badly. The rows are dealt at random into blocks of ``rows_per_block`` (once), and the blocks come in
    a new random order at every pass over the dataset (every training epoch), reproducible from ``seed``.
    (A full row shuffle per epoch, Ray Data's ``random_shuffle``, made a training epoch 10× slower here.)
    """
    import pyarrow as pa
    import ray

    if degradation not in D.TRAIN_DEGRADATIONS:
        raise PairsError(f"unknown degradation {degradation!r}: use {', '.join(D.TRAIN_DEGRADATIONS)}")
    table = manifest if isinstance(manifest, pa.Table) else read_manifest(manifest, filesystem)
    from stacsr.train.pairs import check_manifest

    check_manifest(table)
    unknown = sorted(set(table.column("kind").to_pylist()) - set(READERS))
    if unknown:
        raise PairsError(f"unsupported pair kind(s) {', '.join(map(str, unknown))} (readers: {', '.join(READERS)})")
    band_sets = {tuple(b) for b in table.column("bands").to_pylist()}
    if bands is not None and band_sets != {tuple(bands)}:
        raise PairsError(f"band mismatch: the manifest has {' / '.join(','.join(b) for b in sorted(band_sets))} "
                         f"but the model expects {','.join(bands)}")  # fmt: skip
    if len(band_sets) > 1:
        raise PairsError(f"the manifest mixes band sets {sorted(band_sets)}: one dataset needs one band set")
    for col in ("size", "scale"):
        values = set(table.column(col).to_pylist())
        if len(values) > 1:
            raise PairsError(f"the manifest mixes {col}s {sorted(values)}: one dataset needs one {col}")
    table = table.drop_columns(["geometry"])
    if shuffle:  # rows in random blocks (once), blocks in a new random order every epoch
        table = table.take(np.random.default_rng(seed).permutation(table.num_rows))
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, max(1, rows_per_block))]
    fn = _PairBatch(preset, degradation, noise_std, sigma, tuple(bands) if bands else None,
                    None if cache_dir is None else str(Path(cache_dir).resolve()), seed, sigma_min)  # fmt: skip
    ds = ray.data.from_arrow(blocks)
    if shuffle:
        from ray.data import RandomSeedConfig

        ds = ds.randomize_block_order(seed=None if seed is None else RandomSeedConfig(seed=seed, reseed_after_execution=True))
    return ds.map_batches(fn, batch_format="pyarrow", batch_size=rows_per_block)
