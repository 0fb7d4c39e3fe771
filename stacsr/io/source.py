"""Where a tile's pixels come from: a raster source that any process can read a halo'd window of.

A :class:`Source` is a small picklable value: the bands to read (hrefs of GeoTIFFs/COGs, band indexes, and
how their DN become reflectance × 10000), and the grid they share. Workers read their own windows from it
(HTTP range reads of COGs), so no process ever holds an array the size of the area being processed.

Windows are given on the source's grid and may reach past its edge by a halo: such pixels are mirrored
(:func:`reflect_index`, ``numpy.pad``'s ``reflect``) at the edge of the *source* (the item, or the file),
never at the edge of an area of interest. An output pixel therefore depends only on its source, whatever
the AOI or the tile size, and two overlapping AOIs of one item agree where they overlap.

An item is read through ``source.open()``: each of its rasters opened once, read in whole blocks that
neighbouring tiles share (:class:`stacsr.io.read.HeldRaster`), so each byte of the source is fetched about
once; hrefs are signed again before their token expires, however long the item takes.
"""

from __future__ import annotations

import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Protocol, Sequence
from urllib.parse import unquote

import numpy as np
import rasterio
from rasterio.errors import RasterioError, RasterioIOError

from stacsr.io.grid import GeoBox, GridError, Window, from_rasterio
from stacsr.io.read import GDAL_ENV, HeldRaster, ReadError, with_retries
from stacsr.plumbing.redaction import first_line, redact

SignFn = Callable[[dict[str, Any]], dict[str, Any]]

# A window's bands are read side by side: GDAL decodes (and, remotely, waits on HTTP) without the GIL. On a whole
# tile on a 16-core GPU node, band after band, the reader thread was the slowest stage (README "Benchmarks").
_BAND_READERS = ThreadPoolExecutor(8, thread_name_prefix="stacsr-band-read")
RENEW_BEFORE = 180.0  # seconds: hrefs are signed again this long before their token expires (at most) …
MAX_AGE = 1800.0  # … or after this long when no expiry can be read from them
_EXPIRY = re.compile(r"[?&]se=([^&#]+)")  # a SAS token's signed expiry


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

    def open(self) -> AbstractContextManager["Opened"]:
        """The source held open for one item's reads (what an engine reads from)."""
        ...


class Opened(Source, Protocol):
    """A source held open: what it has read so far."""

    @property
    def bytes_read(self) -> int:
        """Compressed bytes of the source's blocks read."""
        ...

    @property
    def blocks_read(self) -> int: ...


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

    def open(self) -> AbstractContextManager["ArraySource"]:
        return nullcontext(self)

    @property
    def bytes_read(self) -> int:
        return 0

    @property
    def blocks_read(self) -> int:
        return 0


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
        """One-shot: the windows from the source opened for them alone (an item's reads: :meth:`open`)."""
        with self.open() as opened:
            return opened.read(windows)

    @contextmanager
    def open(self) -> Iterator["OpenedRasters"]:
        """The source held open for one item: :class:`OpenedRasters`, closed on leaving."""
        opened = OpenedRasters(self)
        try:
            yield opened
        finally:
            opened.close()


class OpenedRasters:
    """A :class:`RasterSource` held open for one item, with its ``bands``, ``grid``, ``shape`` and ``read``.

    Layers are grouped by href: each raster is one :class:`~stacsr.io.read.HeldRaster`, opened once and read
    for all its band indexes at once (a 4-band file: one raster; a STAC item: one per asset), rasters side by
    side. Decoded blocks are kept per raster (at most two rows of blocks across it: see ``HeldRaster``), so
    row-major tiles read each block about once. ``bytes_read`` and ``blocks_read`` add up what they fetched.
    Signed hrefs are signed again :data:`RENEW_BEFORE` their token's expiry (``se=``), or after
    :data:`MAX_AGE`; a raster whose href changed is reopened. Signed hrefs never appear in errors.
    """

    def __init__(self, source: RasterSource) -> None:
        self.source, self.grid = source, source.grid
        self._signing = threading.Lock()
        self._sign()
        groups: dict[str, list[int]] = {}
        layers = source.layers
        for n, band in enumerate(layers):
            groups.setdefault(band.href, []).append(n)
        self._rasters = [
            (tuple(ns), HeldRaster(lambda n=ns[0]: self.href(n), [layers[k].index for k in ns], self.grid, self.renew))
            for ns in groups.values()
        ]

    @property
    def bands(self) -> int:
        return self.source.bands

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for _, r in self._rasters)

    @property
    def blocks_read(self) -> int:
        return sum(r.blocks_read for _, r in self._rasters)

    def open(self) -> AbstractContextManager["OpenedRasters"]:
        return nullcontext(self)

    def href(self, n: int) -> str:
        """The href to read layer ``n`` from now, signed again first when its token is due."""
        with self._signing:
            if time.time() >= self._due:
                self._sign()
            return self._hrefs[n]

    def renew(self) -> None:
        """Sign again before the next read (after a failed one: its token may have been refused)."""
        with self._signing:
            self._due = min(self._due, time.time())

    def _sign(self) -> None:
        now, source = time.time(), self.source
        self._hrefs = tuple(b.href for b in source.signed().layers)
        signs = source.sign is not None and source.item is not None
        self._due = renewal_time(now, [token_expiry(h) for h in self._hrefs]) if signs else math.inf

    def read(self, windows: Sequence[Window]) -> list[np.ndarray]:
        return gather(self._read_block, self.shape, windows)

    def _read_block(self, window: Window) -> np.ndarray:
        layers: list[np.ndarray] = [np.empty(0)] * self.bands
        for (ns, _), dn in zip(self._rasters, _BAND_READERS.map(lambda r: self._read(*r, window), self._rasters)):
            for k, n in enumerate(ns):
                band = self.source.layers[n]
                layers[n] = band.radiometry.to_uint16(dn[k]) if band.radiometry else dn[k]
        return np.stack(layers)

    def _read(self, ns: tuple[int, ...], raster: HeldRaster, window: Window) -> np.ndarray:
        try:
            return raster.read(window)
        except (RasterioError, RasterioIOError, RuntimeError) as e:
            band, name = self.source.layers[ns[0]], self.source.name
            what = f"asset {band.key} ({redact(band.href)}) of item {name}" if band.key else redact(band.href)
            raise ReadError(f"cannot read {what}: {first_line(e)}") from None

    def close(self) -> None:
        for _, raster in self._rasters:
            raster.close()


def token_expiry(href: str) -> float | None:
    """When a SAS-signed href's token expires (``se=``, seconds since the epoch); None without one."""
    m = _EXPIRY.search(href)
    try:
        when = datetime.fromisoformat(unquote(m[1]).replace("Z", "+00:00")) if m else None
    except ValueError:
        return None
    return None if when is None else (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def renewal_time(now: float, expiries: Sequence[float | None]) -> float:
    """When hrefs signed at ``now`` with tokens expiring at ``expiries`` are signed again: :data:`RENEW_BEFORE`
    the first expiry, or a quarter of the time left when that is shorter (a signer may hand back the same token
    until it is nearly expired); :data:`MAX_AGE` after ``now`` when none is known."""
    known = [e for e in expiries if e is not None]
    if not known:
        return now + MAX_AGE
    first = min(known)
    return first - min(RENEW_BEFORE, max(0.0, first - now) / 4)


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
