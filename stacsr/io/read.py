"""Reading rasters remotely: GDAL settings for cloud reads, bounded retries, rasters held open, whole small
GeoTIFFs, scenes.

Windows of items and files for tiles are read by :mod:`stacsr.io.source` through :class:`HeldRaster`: each
raster opened once per item, read in whole blocks (HTTP range requests on COGs), decoded blocks kept in a small
LRU so that neighbouring tiles reuse them. Error messages name the asset and strip query strings, so no token
is ever printed.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import rasterio
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window as RioWindow

from stacsr.io.grid import GeoBox, GridError, Window, from_rasterio
from stacsr.plumbing.redaction import first_line, redact
from stacsr.plumbing.retry import retry

IMAGE_SUFFIXES = (".tif", ".tiff")
T = TypeVar("T")
# GDAL settings for cloud reads: no directory listing, bounded timeouts, retries on transient HTTP errors
# (429 and 5xx, with back-off; timeouts too), a COG's header in one request. What /vsicurl/ fetched is kept
# while a file is open (an item's rasters are held open: HeldRaster), not across opens: a range cut short
# mid-body can stay in that cache and fail every retry, so a retry reopens the raster and fetches again.
# The same variables in the environment win (an operator's tuning).
_GDAL_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",  # bytes cached while a file is open …
    "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/:/vsis3/:/vsigs/:/vsiaz/",  # … not across opens: a retry refetches
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",  # the header (and the file's size) in the first GET: no HEAD
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


# ------------------------------------------------------------------ rasters held open for an item

MIN_CHUNK = 256  # rows: strips (blocks as wide as the raster) are read this many rows at a time, at least


class HeldRaster:
    """One raster held open while an item is read: bands ``indexes`` read together, in whole blocks.

    ``href()`` gives the href to read now (a signed one may change: the raster is then reopened). Reads go
    through a lock (a GDAL dataset is not thread-safe), each one under :data:`GDAL_ENV` and
    :func:`with_retries` (a failed read closes the raster and calls ``renew()``, so a retry opens it again,
    signed anew).

    On the declared ``grid`` a raster is read in chunks of whole blocks (its own blocks; strips several at a
    time, :data:`MIN_CHUNK` rows at least), decoded once and kept in an LRU that holds the rows of chunks one
    window spans plus one, across the raster: what row-major tiles with a halo and read-ahead need, so that no
    block is fetched twice (for a Sentinel-2 10 m band, 1024² blocks and 256-px tiles: 3 × 11 + 2 chunks of
    2 MiB). Only the blocks that windows touch are fetched. A raster whose own grid differs is
    resampled (nearest) onto ``grid`` by a WarpedVRT, exactly the window asked (the warp depends on it).

    ``blocks_read`` and ``bytes_read`` count the file's blocks fetched and their compressed bytes.
    """

    def __init__(
        self, href: Callable[[], str], indexes: Sequence[int], grid: GeoBox, renew: Callable[[], None] | None = None
    ) -> None:
        self._href, self.indexes, self.grid, self._renew = href, tuple(indexes), grid, renew
        self._lock = threading.Lock()
        self._opened: str | None = None
        self._src: Any = None
        self._vrt: Any = None
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._counted: set[tuple[int, int]] = set()
        self.blocks_read = self.bytes_read = 0

    def read(self, window: Window) -> np.ndarray:
        """DN ``(len(indexes), h, w)`` of ``window`` (inside ``grid``), in the file's dtype."""
        with self._lock:
            if not with_retries(self._open_now):
                return with_retries(lambda: self._warped(window))
            shape = self._chunk_shape
            rows = range(window.row // shape[0], (window.row + window.height - 1) // shape[0] + 1)
            cols = range(window.col // shape[1], (window.col + window.width - 1) // shape[1] + 1)
            across = math.ceil(self._src.width / shape[1])
            self._capacity = max(self._capacity, (len(rows) + 1) * across + 2)
            parts = self._chunks_of(rows, cols)
        out = np.empty((len(self.indexes), window.height, window.width), dtype=next(iter(parts.values())).dtype)
        for (i, j), chunk in parts.items():
            r0, c0 = i * shape[0], j * shape[1]
            rs = slice(max(r0, window.row), min(r0 + chunk.shape[1], window.row + window.height))
            cs = slice(max(c0, window.col), min(c0 + chunk.shape[2], window.col + window.width))
            out[:, rs.start - window.row : rs.stop - window.row, cs.start - window.col : cs.stop - window.col] = chunk[
                :, rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0
            ]
        return out

    def close(self) -> None:
        with self._lock:
            self._close()

    # -- under the lock

    def _open_now(self) -> bool:
        """Open (again, when closed or its href changed); whether the raster is on ``grid`` itself."""
        href = self._href()
        if self._src is None or href != self._opened:
            try:
                self._open(href)
            except Exception as e:
                raise self._failed(e) from None
        return self._vrt is None

    def _open(self, href: str) -> None:
        self._close()
        with rasterio.Env(**GDAL_ENV):
            src = rasterio.open(href)
            try:
                if not same_grid(src, self.grid):
                    rows, cols = self.grid.shape.yx
                    crs, affine = self.grid.crs.to_wkt(), self.grid.affine
                    self._vrt = WarpedVRT(src, crs=crs, transform=affine, width=cols, height=rows, nodata=0)
            except BaseException:
                src.close()
                raise
        self._src, self._opened = src, href
        bh, bw = src.block_shapes[0]
        self._block = (bh, bw)
        strips = bw >= src.width
        self._chunk_shape = (bh * math.ceil(MIN_CHUNK / bh), bw) if strips else (bh, bw)
        self._capacity = 2 * math.ceil(src.width / bw) + 2
        pixel = src.count == 1 or src.interleaving is None or src.interleaving.name == "pixel"
        self._size_bands = self.indexes[:1] if pixel else self.indexes

    def _failed(self, e: Exception) -> Exception:
        """After a failed read: closed (a retry reopens it, signed again when it can be: a token may have been
        refused); the error, naming the GDAL error that rasterio's "see previous exception" hides."""
        self._close()
        if self._renew is not None:
            self._renew()
        cause = e.__cause__
        return RasterioIOError(f"read failed: {cause}") if "previous exception" in str(e) and cause else e

    def _close(self) -> None:
        for d in (self._vrt, self._src):
            if d is not None:
                d.close()
        self._src = self._vrt = self._opened = None

    def _chunks_of(self, rows: range, cols: range) -> dict[tuple[int, int], np.ndarray]:
        """The chunks ``rows`` × ``cols``: those not held are fetched in one read (one multi-range request)."""
        missing = [(i, j) for i in rows for j in cols if (i, j) not in self._chunks]
        if missing:
            box = (min(i for i, _ in missing), max(i for i, _ in missing) + 1)
            box += (min(j for _, j in missing), max(j for _, j in missing) + 1)
            self._chunks.update(with_retries(lambda: self._fetch(*box)))
        parts = {}
        for key in ((i, j) for i in rows for j in cols):
            self._chunks.move_to_end(key)
            parts[key] = self._chunks[key]
        while len(self._chunks) > self._capacity:
            self._chunks.popitem(last=False)
        return parts

    def _fetch(self, i0: int, i1: int, j0: int, j1: int) -> dict[tuple[int, int], np.ndarray]:
        """Chunks ``[i0, i1) × [j0, j1)``, read at once, with the blocks they hold counted."""
        self._open_now()
        (ch, cw), src = self._chunk_shape, self._src
        r0, c0 = i0 * ch, j0 * cw
        window = RioWindow(c0, r0, min(j1 * cw, src.width) - c0, min(i1 * ch, src.height) - r0)
        try:
            with rasterio.Env(**GDAL_ENV):
                data = src.read(self.indexes, window=window)
        except Exception as e:
            raise self._failed(e) from None
        (bh, bw), size = self._block, src.block_size
        blocks = [(i, j) for i in range(r0 // bh, (r0 + window.height - 1) // bh + 1)
                  for j in range(c0 // bw, (c0 + window.width - 1) // bw + 1)]  # fmt: skip
        self.blocks_read += len(blocks)
        self.bytes_read += sum(size(b, i, j) for i, j in blocks for b in self._size_bands)
        return {
            (i, j): data[:, (i - i0) * ch : (i - i0 + 1) * ch, (j - j0) * cw : (j - j0 + 1) * cw]
            for i in range(i0, i1)
            for j in range(j0, j1)
        }

    def _warped(self, window: Window) -> np.ndarray:
        self._open_now()
        rio_window = RioWindow(window.col, window.row, window.width, window.height)
        try:
            with rasterio.Env(**GDAL_ENV):
                # band by band, as a fresh WarpedVRT would: the warp's chunks depend on what is read at once
                data = np.stack([self._vrt.read(b, window=rio_window) for b in self.indexes])
                bounds = transform_bounds(self.grid.crs.to_wkt(), self._src.crs, *self._bounds(window))
        except Exception as e:
            raise self._failed(e) from None
        touched = self._src.window(*bounds)
        (bh, bw), src = self._block, self._src
        r0, r1 = max(0, int(touched.row_off) - 1), min(src.height, int(touched.row_off + touched.height) + 2)
        c0, c1 = max(0, int(touched.col_off) - 1), min(src.width, int(touched.col_off + touched.width) + 2)
        blocks = {(i, j) for i in range(r0 // bh, (r1 - 1) // bh + 1) for j in range(c0 // bw, (c1 - 1) // bw + 1)}
        blocks = blocks if r0 < r1 and c0 < c1 else set()
        for i, j in blocks - self._counted:  # GDAL keeps the source's blocks while the raster is open: once each
            self.blocks_read += 1
            self.bytes_read += sum(src.block_size(b, i, j) for b in self._size_bands)
        self._counted |= blocks
        return data

    def _bounds(self, window: Window) -> tuple[float, float, float, float]:
        a = self.grid.affine
        xs = (a.c + window.col * a.a, a.c + (window.col + window.width) * a.a)
        ys = (a.f + window.row * a.e, a.f + (window.row + window.height) * a.e)
        return min(xs), min(ys), max(xs), max(ys)


def same_grid(src: Any, grid: GeoBox) -> bool:
    """Whether the open raster ``src`` lies on ``grid`` itself (its pixels need no resampling)."""
    return (
        (src.height, src.width) == tuple(grid.shape.yx)
        and src.crs is not None
        and src.crs == grid.crs.to_wkt()
        and np.allclose(tuple(src.transform)[:6], tuple(grid.affine)[:6], atol=1e-6)
    )


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
