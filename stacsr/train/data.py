"""Reading training pairs: manifest rows → ``(lr, hr)`` arrays, one by one or as a Ray Data pipeline.

Each row's hrefs are stored unsigned; they are signed with ``preset.sign`` when the pixels are read (so a
long run renews tokens that expire), and only the window is fetched (GDAL range reads on COGs). Errors name
the asset without its query string. Radiometry is made uniform (reflectance × 10000, 0 = nodata) with the
manifest's per-band scale/offset (:mod:`stacsr.catalog.radiometry`), then the degradation makes the LR.

The optional cache folder keeps each decoded HR patch (uint16 ``.npz`` named after the row id and a digest of
its source) so that later epochs or runs read nothing remotely; degradation and noise are applied after the
cache, so they may change between runs.

Kinds: :data:`READERS` maps a manifest ``kind`` to its reader; ``wald`` is built in. A cross-sensor reader
(LR from Sentinel-2, HR from another collection resampled onto the S2 grid ÷ scale) registers itself there
and goes through the same :func:`check_pair`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
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
from stacsr.io.grid import GeoBox, Window
from stacsr.io.read import GDAL_ENV, ReadError, first_line, redact
from stacsr.train import degrade as D
from stacsr.train.pairs import KIND_WALD, PairsError, read_manifest

Reader = Callable[..., tuple[np.ndarray, np.ndarray]]


# ------------------------------------------------------------------ remote windows


def read_window(href: str, window: Window, asset: str = "", transform: Affine | None = None,
                epsg: int | None = None) -> np.ndarray:  # fmt: skip
    """Band 1 of ``href`` in ``window`` (pixels outside the raster are 0), fetched with range reads.

    With ``transform``/``epsg`` given, the raster must put the window exactly there (else :class:`PairsError`).
    """
    name = f"{asset} ({redact(href)})" if asset else redact(href)
    try:
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
    except RasterioError as e:
        raise ReadError(f"cannot read {name}: {first_line(e)}") from None


# ------------------------------------------------------------------ one pair


def pair_grids(row: Mapping[str, Any]) -> tuple[GeoBox, GeoBox]:
    """``(lr_grid, hr_grid)`` of a manifest row: the HR window on the item's 10 m grid and the same footprint
    with pixels ``scale`` times larger."""
    size, scale = int(row["size"]), int(row["scale"])
    if scale < 1 or size % scale:
        raise PairsError(f"pair {row['id']}: size {size} is not a multiple of the scale {scale}")
    hr_affine = Affine(*row["transform"][:6]) * Affine.translation(int(row["col"]), int(row["row"]))
    crs = f"EPSG:{int(row['epsg'])}"
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
    item = {"type": "Feature", "stac_version": "1.0.0", "id": row["item_id"], "collection": row.get("collection"),
            "geometry": None, "properties": {}, "links": [],
            "assets": {b: {"href": h} for b, h in hrefs.items()}}  # fmt: skip
    signed = preset.sign(item)  # now, not when the manifest was made: fresh tokens
    _, hr_grid = pair_grids(row)
    window = Window(int(row["row"]), int(row["col"]), int(row["size"]), int(row["size"]))
    radio = json.loads(row["radiometry"])
    layers = []
    for b in listed:
        dn = read_window(signed["assets"][b]["href"], window, asset=f"{b} of item {row['item_id']}",
                         transform=hr_grid.affine, epsg=int(row["epsg"]))  # fmt: skip
        layers.append(Radiometry(*radio[b]).to_uint16(dn))
    hr = np.stack(layers)
    if path is not None:
        _save(path, hr)
    return hr


def _save(path: Path, hr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, hr=hr)
        os.replace(tmp, path)  # atomic: workers sharing the folder never see half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_wald_pair(row: Mapping[str, Any], preset: Preset, degradation: str = "area", noise_std: float = 0.0, *,
                   sigma: float = D.DEFAULT_SIGMA, rng: np.random.Generator | None = None,
                   bands: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    hr = read_hr(row, preset, cache_dir, bands).astype(np.float32)
    lr = D.degrade(hr, int(row["scale"]), degradation, sigma=sigma, noise_std=noise_std, rng=rng)
    return lr, hr


READERS: dict[str, Reader] = {KIND_WALD: read_wald_pair}


def read_pair(row: Mapping[str, Any], preset: Preset, degradation: str = "area", noise_std: float = 0.0, *,
              sigma: float = D.DEFAULT_SIGMA, rng: np.random.Generator | None = None,
              bands: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(lr, hr)`` float32 reflectance × 10000 of a manifest row: ``(bands, size/scale, size/scale)`` and
    ``(bands, size, size)``, checked with :func:`check_pair`. ``degradation``: ``"area"`` or ``"mtf"``
    (``sigma`` in HR pixels); ``noise_std`` adds noise to LR; ``bands``: the model's bands, to refuse others."""
    if degradation not in D.DEGRADATIONS:
        raise PairsError(f"unknown degradation {degradation!r}: use {' or '.join(D.DEGRADATIONS)}")
    reader = READERS.get(row.get("kind"))
    if reader is None:
        raise PairsError(f"pair {row.get('id')}: unsupported kind {row.get('kind')!r} (readers: {', '.join(READERS)})")
    lr, hr = reader(row, preset, degradation, noise_std, sigma=sigma, rng=rng, bands=bands, cache_dir=cache_dir)
    check_pair(lr, hr, row, bands)
    return lr, hr


# ------------------------------------------------------------------ Ray Data


class _PairBatch:
    """The ``map_batches`` function: a pyarrow batch of manifest rows → ``{"id", "lr", "hr"}`` numpy columns."""

    def __init__(self, preset: Preset, degradation: str, noise_std: float, sigma: float,
                 bands: Sequence[str] | None, cache_dir: str | None, seed: int | None) -> None:  # fmt: skip
        self.preset, self.degradation, self.noise_std, self.sigma = preset, degradation, noise_std, sigma
        self.bands, self.cache_dir, self.seed = bands, cache_dir, seed

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        ids, lrs, hrs = [], [], []
        for row in batch.to_pylist():
            rng = None
            if self.noise_std:
                rng = np.random.default_rng(None if self.seed is None else [self.seed, zlib.crc32(row["id"].encode())])
            lr, hr = read_pair(row, self.preset, self.degradation, self.noise_std, sigma=self.sigma, rng=rng,
                               bands=self.bands, cache_dir=self.cache_dir)  # fmt: skip
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
    bands: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    rows_per_block: int = 8,
    filesystem: Any = None,
) -> Any:
    """A lazy ``ray.data.Dataset`` of ``{"id", "lr", "hr"}`` rows read from a manifest (path, ``s3://`` URI or
    pyarrow Table). Everything checkable without pixels (emptiness, bands, uniform size and scale, the
    degradation) is checked here; pixels are read by Ray tasks when the dataset is consumed.

    ``cache_dir`` must be a folder every Ray worker can reach (local disk on one node, a shared mount on a
    cluster). With ``noise_std`` and a ``seed``, each patch gets the same noise every epoch.
    """
    import pyarrow as pa
    import ray

    if degradation not in D.DEGRADATIONS:
        raise PairsError(f"unknown degradation {degradation!r}: use {' or '.join(D.DEGRADATIONS)}")
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
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, max(1, rows_per_block))]
    fn = _PairBatch(preset, degradation, noise_std, sigma, tuple(bands) if bands else None,
                    None if cache_dir is None else str(Path(cache_dir).resolve()), seed)  # fmt: skip
    return ray.data.from_arrow(blocks).map_batches(fn, batch_format="pyarrow", batch_size=rows_per_block)
