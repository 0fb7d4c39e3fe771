"""Reading rasters remotely: GDAL settings for cloud reads, bounded retries, whole small GeoTIFFs, scenes.

Windows of items and files for tiles are read by :mod:`stacsr.io.source` (only the blocks a window needs,
by HTTP range requests on COGs). Error messages name the asset and strip query strings, so no token is
ever printed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
import rasterio
from rasterio.errors import RasterioError, RasterioIOError

from stacsr.io.grid import GeoBox, GridError, from_rasterio
from stacsr.plumbing.redaction import first_line, redact
from stacsr.plumbing.retry import retry

IMAGE_SUFFIXES = (".tif", ".tiff")
T = TypeVar("T")
# GDAL settings for cloud reads: no directory listing, bounded timeouts, retries on transient HTTP errors
# (429 and 5xx, with back-off; timeouts too). The same variables in the environment win (an operator's tuning).
_GDAL_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",  # blocks cached while a file is open …
    "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/:/vsis3/:/vsigs/:/vsiaz/",  # … not across opens: a retry refetches
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
}
GDAL_ENV = {k: os.environ.get(k, v) for k, v in _GDAL_DEFAULTS.items()}
# Our own retries of a whole read, for what GDAL does not retry (a connection reset mid-body): bounded.
READ_RETRIES = int(os.environ.get("STACSR_READ_RETRIES", "3"))
_PERMANENT = re.compile(r"HTTP response code: 4(?!29)\d\d|does not exist|not recognized as|No such file")


def is_permanent(e: BaseException) -> bool:
    """A read error that retrying cannot cure (missing object, refused access, not a raster)."""
    return bool(_PERMANENT.search(str(e)))


def with_retries(read: Callable[[], T], retries: int | None = None, delay: float = 0.5) -> T:
    """``read()`` under the retry policy, tried again after a transient GDAL/rasterio error at most
    ``retries`` more times; a permanent error (:func:`is_permanent`) or the last one is raised as it is."""

    def transient(e: BaseException) -> bool:
        return isinstance(e, (RasterioError, RasterioIOError, RuntimeError)) and not is_permanent(e)

    return retry(read, transient, READ_RETRIES if retries is None else retries, delay)


class ReadError(RuntimeError):
    """An asset that cannot be read."""


@dataclass
class Raster:
    """A whole raster read into memory with its grid."""

    data: np.ndarray  # (bands, rows, cols)
    grid: GeoBox
    descriptions: list[str | None]
    nodata: float | None


def read_raster(href: str) -> Raster:
    """Read a GeoTIFF (any rasterio-readable href) whole; refuses rasters without CRS or rotated."""

    def read() -> Raster:
        with rasterio.Env(**GDAL_ENV), rasterio.open(href) as src:
            grid = from_rasterio(src.transform, src.crs, (src.height, src.width))
            return Raster(src.read(), grid, list(src.descriptions), src.nodata)

    try:
        return with_retries(read)
    except RasterioError as e:
        raise ReadError(f"cannot read {redact(href)}: {first_line(e)}") from None
    except GridError as e:
        raise ReadError(f"{redact(href)}: {e}") from None


# ------------------------------------------------------------------ scenes of local GeoTIFFs


@dataclass(frozen=True)
class Scene:
    """One date of a multi-band GeoTIFF: ``href`` reads exactly its bands, in model order (a GDAL ``vrt://``
    connection string when the file holds other bands too); ``band_hrefs`` reads each band alone."""

    name: str
    path: str
    indexes: tuple[int, ...]  # 1-based band indexes of the model's bands in the file
    date: str | None = None

    @property
    def href(self) -> str:
        return band_href(self.path, self.indexes)

    @property
    def band_hrefs(self) -> tuple[str, ...]:
        return tuple(band_href(self.path, (i,)) for i in self.indexes)


def band_href(path: str, indexes: Sequence[int]) -> str:
    """A GDAL href reading ``indexes`` (1-based) of ``path`` in that order (``vrt://path?bands=…``)."""
    return f"vrt://{path}?bands={','.join(map(str, indexes))}"


def list_images(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """GeoTIFFs named by ``paths``: files as given, folders → their ``*.tif``/``*.tiff`` (sorted)."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise ReadError(f"{p} does not exist")
    if not found:
        raise ReadError(f"no GeoTIFF (.tif, .tiff) found in {', '.join(map(str, items)) or 'the input'}")
    return found


_DATED = re.compile(r"^(?P<prefix>.+?)[_ ](?P<band>[A-Za-z0-9]+)$")


def scenes(path: str | Path, bands: Sequence[str]) -> list[Scene]:
    """The scenes of a GeoTIFF that holds ``bands``, found by its band descriptions.

    - descriptions equal to the band names (``B02``…, any order): one scene named after the file;
    - ``<date>_<band>`` (e.g. ``2018-04-26_B02``, a time stack): one scene per prefix holding every band;
    - no descriptions and exactly ``len(bands)`` bands: one scene, bands assumed in model order.
    Anything else raises :class:`ReadError` naming the file and the missing bands.
    """
    path = str(Path(path).resolve())
    stem = Path(path).stem
    try:
        with rasterio.Env(**GDAL_ENV), rasterio.open(path) as src:
            names = [d or "" for d in src.descriptions]
    except RasterioError as e:
        raise ReadError(f"cannot read {path}: {first_line(e)}") from None
    wanted = list(bands)
    if not any(names):
        if len(names) != len(wanted):
            raise ReadError(
                f"{path} has {len(names)} unnamed bands; expected {len(wanted)} ({', '.join(wanted)}) "
                "or band descriptions naming them"
            )
        return [Scene(stem, path, tuple(range(1, len(wanted) + 1)))]
    if set(wanted) <= set(names):
        return [Scene(stem, path, tuple(names.index(b) + 1 for b in wanted))]
    groups: dict[str, dict[str, int]] = {}
    for i, n in enumerate(names, 1):
        m = _DATED.match(n)
        if m and m["band"] in wanted:
            groups.setdefault(m["prefix"], {})[m["band"]] = i
    found = [
        Scene(f"{stem}_{p}", path, tuple(g[b] for b in wanted), p) for p, g in groups.items() if set(g) == set(wanted)
    ]
    if not found:
        raise ReadError(f"{path}: no scene with bands {', '.join(wanted)} (band descriptions: {', '.join(names)})")
    return found
