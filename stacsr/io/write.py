"""Writing Cloud-Optimized GeoTIFFs with GDAL's COG driver, atomically.

Each COG is written to a hidden temporary name in its destination folder and renamed into place only
when complete, so a crash never leaves a partial file under a final name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from stacsr.io.grid import GeoBox
from stacsr.io.units import REFLECTANCE_SCALE
from stacsr.plumbing.redaction import first_line
from stacsr.plumbing.storage import atomic_file


class WriteError(OSError):
    """A COG that could not be written (nothing is left under its name)."""


# Fast compression levels: on 4× super-resolved uint16 with predictor 2, deflate level 1 writes 3× faster
# than level 6 for files about 20 % larger (make bench). Compression runs on all cores.
LEVELS = {"deflate": 1, "zstd": 1}
BLOCKSIZE = 512
# GDAL's block cache is bounded in stacsr/__init__.py. No GDAL debug messages while a COG is made: closing its
# VRT source logs one while GDAL holds its dataset-list lock, and rasterio's log handler then waits for the GIL,
# which another thread closing a dataset holds while it waits for that lock (a deadlock seen with CPL_DEBUG=ON).
# In a thread other than the main one, rasterio sets this for the calling thread only.
GDAL_WRITE_ENV = {"GDAL_NUM_THREADS": "ALL_CPUS", "CPL_DEBUG": "OFF"}


def cog_options(compress: str = "deflate", overviews: str = "AUTO") -> dict[str, str]:
    """Creation options of GDAL's COG driver: internal 512² tiles, predictor 2, averaged overviews down to one
    tile (``overviews="FORCE_USE_EXISTING"``: the source's own, made beforehand), compression on all cores,
    and BigTIFF whenever the file could pass 4 GB (``IF_NEEDED`` never makes one when compression is on)."""
    compress = compress.lower()
    options = {
        "COMPRESS": compress.upper(),
        "PREDICTOR": "2",
        "BLOCKSIZE": str(BLOCKSIZE),
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
        "OVERVIEWS": overviews,
        "OVERVIEW_RESAMPLING": "AVERAGE",
    }
    if compress in LEVELS:
        options["LEVEL"] = str(LEVELS[compress])
    return options


def cog_from_file(src: str | Path, path: str | Path, compress: str = "deflate", overviews: str = "AUTO") -> Path:
    """Make the COG ``path`` from the raster file ``src`` (read block by block, never whole), atomically:
    GDAL's COG driver builds the overviews in a temporary file beside ``path`` (or takes ``src``'s, see
    :func:`cog_options`) and writes the tiles."""
    path = Path(path)
    try:
        with atomic_file(path) as tmp, rasterio.Env(**GDAL_WRITE_ENV):
            rasterio.shutil.copy(str(src), str(tmp), driver="COG", **cog_options(compress, overviews))
    except (RasterioError, CPLE_BaseError, OSError) as e:  # disk full, file size limit, I/O error
        raise WriteError(f"cannot write {path}: {first_line(e)}") from None
    return path


def raster_profile(grid: GeoBox, count: int, nodata: int = 0) -> dict:
    """GeoTIFF profile of a uint16 raster on ``grid``."""
    rows, cols = grid.shape.yx
    return dict(
        driver="GTiff",
        count=count,
        height=rows,
        width=cols,
        dtype="uint16",
        crs=grid.crs.to_wkt(),
        transform=grid.affine,
        nodata=nodata,
    )


def describe(dst, descriptions: Sequence[str] | None, scale: float | None) -> None:
    """Band descriptions and the reflectance scale of an open dataset."""
    for i, text in enumerate(descriptions or [], start=1):
        dst.set_band_description(i, text)
    if scale is not None:
        dst.scales = (scale,) * dst.count
        dst.offsets = (0.0,) * dst.count


def write_cog(
    path: str | Path,
    array: np.ndarray,
    grid: GeoBox,
    descriptions: Sequence[str] | None = None,
    nodata: int = 0,
    compress: str = "deflate",
    scale: float | None = REFLECTANCE_SCALE,
) -> Path:
    """Write an in-memory ``array`` (bands, rows, cols) on ``grid`` as a COG at ``path`` (small rasters: the
    demo, tests; whole items go through :class:`stacsr.io.sink.TileSink`)."""
    if array.ndim == 2:
        array = array[None]
    if array.shape[1:] != tuple(grid.shape.yx):
        raise ValueError(f"array shape {array.shape[1:]} does not match grid shape {tuple(grid.shape.yx)}")
    profile = {**raster_profile(grid, array.shape[0], nodata), "dtype": array.dtype.name}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(array)
            describe(dst, descriptions, scale)
        return cog_from_file(mem.name, path, compress)
