"""Reading rasters onto grids: one band in a pixel window (:func:`read_window`: range reads on COGs, retried,
outside pixels 0), or bands resampled onto another grid (:func:`read_warped`: a GDAL warped VRT)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from stacsr.io.grid import GeoBox, GridError, Window, clip
from stacsr.io.read import GDAL_ENV, ReadError, with_retries
from stacsr.plumbing.redaction import first_line, redact


def read_window(
    href: str, window: Window, asset: str = "", transform: Sequence[float] | None = None, epsg: int | None = None
) -> np.ndarray:
    """Band 1 of ``href`` in ``window`` (pixels outside the raster are 0), fetched with range reads.

    With ``transform``/``epsg`` given, the raster must put the window exactly there (else :class:`GridError`);
    :class:`ReadError` when it cannot be read.
    """
    name = f"{asset} ({redact(href)})" if asset else redact(href)

    def read() -> np.ndarray:
        with rasterio.Env(**GDAL_ENV), rasterio.open(href) as src:
            _check_grid(src, window, name, transform, epsg)
            inside = clip(window, (src.height, src.width))
            out = np.zeros(window.shape, dtype=src.dtypes[0])
            if inside.height and inside.width:
                rows, cols = inside.shift(-window.row, -window.col).slices
                out[rows, cols] = src.read(1, window=_rio(inside))
            return out

    try:
        return with_retries(read)
    except RasterioError as e:
        raise ReadError(f"cannot read {name}: {first_line(e)}") from None


def _rio(window: Window) -> RioWindow:
    return RioWindow(window.col, window.row, window.width, window.height)


def _check_grid(
    src: rasterio.DatasetReader, window: Window, name: str, transform: Sequence[float] | None, epsg: int | None
) -> None:
    """Refuse a raster that is not in EPSG:``epsg`` or does not put ``window`` at ``transform``."""
    if epsg is not None and (src.crs is None or src.crs.to_epsg() != epsg):
        raise GridError(f"{name} is in {src.crs}, the manifest says EPSG:{epsg}")
    if transform is None:
        return
    found = tuple(src.window_transform(_rio(window)))[:6]
    if not np.allclose(found, tuple(transform)[:6], rtol=0, atol=1e-6):
        raise GridError(
            f"{name} is not on the manifest's grid: window {window} lies at {found}, expected {tuple(transform)[:6]}"
        )


def read_warped(href: str, grid: GeoBox, indexes: Sequence[int], name: str = "") -> np.ndarray:
    """Bands ``indexes`` (1-based) of ``href`` resampled onto ``grid`` from the raster's own CRS (warped VRT: only
    the blocks needed are fetched), float32, 0 = nodata (outside the raster, or DN 0 when it declares no
    nodata). Average resampling when the raster's pixels are finer than the grid's, bilinear otherwise.
    :class:`GridError` for a raster without CRS, ``ValueError`` for a band it lacks, :class:`ReadError`."""
    name = name or redact(href)
    rows, cols = grid.shape.yx
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(href) as src:
            if src.crs is None:
                raise GridError(f"{name} has no CRS")
            bad = [k for k in indexes if not 1 <= k <= src.count]
            if bad:
                raise ValueError(f"{name} has {src.count} band(s), not band {bad[0]}")
            finer = _native_res_m(src) < abs(grid.affine.a)  # target grids are projected (S2: metres)
            resampling = Resampling.average if finer else Resampling.bilinear
            nodata = src.nodata if src.nodata is not None else 0
            target = {"crs": str(grid.crs), "transform": grid.affine, "width": cols, "height": rows}
            with WarpedVRT(src, **target, resampling=resampling, src_nodata=nodata, nodata=0, dtype="float32") as vrt:
                return vrt.read(list(indexes))
    except RasterioError as e:
        raise ReadError(f"cannot read {name}: {first_line(e)}") from None


def _native_res_m(src: rasterio.DatasetReader) -> float:
    """Pixel size of a projected raster in metres (geographic rasters: degrees × 111 km)."""
    res = abs(src.res[0])
    return res * 111_000.0 if src.crs.is_geographic else res * float(src.crs.linear_units_factor[1])
