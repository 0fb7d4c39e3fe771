"""Where a tile's pixels come from: a raster source that any process can read a halo'd window of.

A :class:`Source` is a small picklable value: the bands to read (hrefs of GeoTIFFs/COGs, band indexes, and
how their DN become reflectance × 10000), and the grid they share. Workers read their own windows from it
(HTTP range reads of COGs), so no process ever holds an array the size of the area being processed.

Windows are given on the source's grid and may reach past its edge by a halo: such pixels are mirrored
(:func:`reflect_index`, ``numpy.pad``'s ``reflect``) at the edge of the *source* (the item, or the file),
never at the edge of an area of interest. An output pixel therefore depends only on its source, whatever
the AOI or the tile size, and two overlapping AOIs of one item agree where they overlap.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from stacsr.io.grid import GeoBox, GridError, Window, from_rasterio
from stacsr.io.read import GDAL_ENV, ReadError, with_retries
from stacsr.plumbing.redaction import first_line, redact

SignFn = Callable[[dict[str, Any]], dict[str, Any]]

# A window's bands are read side by side: GDAL decodes (and, remotely, waits on HTTP) without the GIL. On a whole
# tile on a 16-core GPU node, band after band, the reader thread was the slowest stage (README "Benchmarks").
_BAND_READERS = ThreadPoolExecutor(8, thread_name_prefix="stacsr-band-read")


class Radiometry(Protocol):
    """Turns a band's DN into reflectance × 10000 (uint16, 0 = nodata): :class:`stacsr.catalog.radiometry.Radiometry`."""

    def to_uint16(self, dn: np.ndarray) -> np.ndarray: ...


class Source(Protocol):
    """Pixels on a grid, readable a window at a time from any process."""

    grid: GeoBox

    @property
    def bands(self) -> int: ...

    def read(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """uint16 ``(bands, h, w)`` of each window (reflected past the source's edge), 0 = nodata."""
        ...


def reflect_index(length: int, start: int, stop: int) -> np.ndarray:
    """Indexes into ``[0, length)`` of positions ``start … stop-1``, mirrored at both ends as ``numpy.pad``'s
    ``reflect`` mode mirrors (repeatedly, when the reach exceeds the length)."""
    before, after = max(0, -start), max(0, stop - length)
    return np.pad(np.arange(length), (before, after), mode="reflect")[start + before : stop + before]


def _reflected(length_rows: int, length_cols: int, window: Window) -> tuple[np.ndarray, np.ndarray]:
    return (
        reflect_index(length_rows, window.row, window.row + window.height),
        reflect_index(length_cols, window.col, window.col + window.width),
    )


def gather(
    read_block: Callable[[Window], np.ndarray], shape: tuple[int, int], windows: Sequence[Window]
) -> list[np.ndarray]:
    """Each window of a ``shape`` source, reflected at its edges, from one read of the block that holds them
    all (``read_block(window) -> (bands, h, w)``, the window inside the source)."""
    index = [_reflected(*shape, w) for w in windows]
    r0, r1 = min(int(r.min()) for r, _ in index), max(int(r.max()) for r, _ in index) + 1
    c0, c1 = min(int(c.min()) for _, c in index), max(int(c.max()) for _, c in index) + 1
    block = read_block(Window(r0, c0, r1 - r0, c1 - c0))
    return [block[:, rows[:, None] - r0, cols[None, :] - c0] for rows, cols in index]


@dataclass(frozen=True)
class ArraySource:
    """An image already in memory (evaluation, tests): ``(bands, rows, cols)`` uint16 on ``grid``."""

    image: np.ndarray
    grid: GeoBox | None = None

    @property
    def bands(self) -> int:
        return self.image.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[2]

    def read(self, windows: Sequence[Window]) -> list[np.ndarray]:
        return gather(lambda w: self.image[(slice(None), *w.slices)], self.shape, windows)


@dataclass(frozen=True)
class Band:
    """One layer of a source: band ``index`` (1-based) of the raster at ``href``, and its radiometry (None: the
    file already holds reflectance × 10000)."""

    href: str
    index: int = 1
    radiometry: Radiometry | None = None
    key: str = ""  # the asset key it came from, for error messages


@dataclass(frozen=True)
class RasterSource:
    """Bands of GeoTIFFs/COGs sharing ``grid``. For a STAC item, ``item`` is the (unsigned) item whose assets
    the bands name (:attr:`Band.key`) and ``sign`` (e.g. Planetary Computer SAS) signs it at read time, so
    tokens are fresh however long a run lasts. ``name`` names the source in errors."""

    layers: tuple[Band, ...]
    grid: GeoBox
    name: str
    item: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    sign: SignFn | None = field(default=None, compare=False, repr=False)

    @property
    def bands(self) -> int:
        return len(self.layers)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.grid.shape.yx)  # type: ignore[return-value]

    def signed(self) -> "RasterSource":
        """The same source with signed hrefs and nothing left to sign (what travels to remote workers)."""
        if self.sign is None or self.item is None:
            return self
        assets = self.sign(self.item)["assets"]
        layers = tuple(replace(b, href=assets[b.key]["href"]) for b in self.layers)
        return replace(self, layers=layers, item=None, sign=None)

    def read(self, windows: Sequence[Window]) -> list[np.ndarray]:
        source = self.signed()
        return gather(source._read_block, self.shape, windows)

    def _read_block(self, window: Window) -> np.ndarray:
        return np.stack(list(_BAND_READERS.map(lambda b: self._read_band(b, window), self.layers)))

    def _read_band(self, band: Band, window: Window) -> np.ndarray:
        try:
            dn = with_retries(lambda: _read_window(band, self.grid, window))
        except (RasterioError, RasterioIOError, RuntimeError) as e:
            what = f"asset {band.key} ({redact(band.href)}) of item {self.name}" if band.key else redact(band.href)
            raise ReadError(f"cannot read {what}: {first_line(e)}") from None
        return band.radiometry.to_uint16(dn) if band.radiometry else dn


def _read_window(band: Band, grid: GeoBox, window: Window) -> np.ndarray:
    """DN of ``window`` (inside ``grid``) of one band; the raster is resampled (nearest) onto ``grid`` when its
    own grid differs from the one its catalogue declares."""
    rio_window = RioWindow(window.col, window.row, window.width, window.height)
    with rasterio.Env(**GDAL_ENV), rasterio.open(band.href) as src:
        if _same_grid(src, grid):
            return src.read(band.index, window=rio_window)
        rows, cols = grid.shape.yx
        with WarpedVRT(src, crs=grid.crs.to_wkt(), transform=grid.affine, width=cols, height=rows, nodata=0) as vrt:
            return vrt.read(band.index, window=rio_window)


def _same_grid(src: Any, grid: GeoBox) -> bool:
    return (
        (src.height, src.width) == tuple(grid.shape.yx)
        and src.crs is not None
        and src.crs == grid.crs.to_wkt()
        and np.allclose(tuple(src.transform)[:6], tuple(grid.affine)[:6], atol=1e-6)
    )


def file_source(href: str) -> tuple[RasterSource, list[str | None]]:
    """A GeoTIFF as a source (its bands as they are, reflectance × 10000) and its band descriptions; refuses
    rasters that are not uint16 or have no CRS or are rotated, naming the file."""

    def probe() -> tuple[GeoBox, int, tuple[str, ...], list[str | None]]:
        with rasterio.Env(**GDAL_ENV), rasterio.open(href) as src:
            grid = from_rasterio(src.transform, src.crs, (src.height, src.width))
            return grid, src.count, src.dtypes, list(src.descriptions)

    try:
        grid, count, dtypes, descriptions = with_retries(probe)
    except RasterioError as e:
        raise ReadError(f"cannot read {redact(href)}: {first_line(e)}") from None
    except GridError as e:
        raise ReadError(f"{redact(href)}: {e}") from None
    if set(dtypes) != {"uint16"}:
        raise ReadError(
            f"{redact(href)} is {dtypes[0] if len(set(dtypes)) == 1 else '/'.join(dtypes)}; "
            "stacsr expects uint16 reflectance x 10000"
        )
    layers = tuple(Band(href, i) for i in range(1, count + 1))
    return RasterSource(layers, grid, redact(href)), descriptions
