"""Grid maths, in one place.

A grid is an odc-geo :class:`~odc.geo.geobox.GeoBox`: CRS + affine transform + shape, a value object.
Everything stacsr does to georeferencing goes through the functions here:

- :func:`item_grid` — the native grid of a STAC asset (``proj:*`` fields);
- :func:`aoi_window` — the pixel window of an area of interest, snapped *outward* to whole pixels;
- :func:`zoom_in` — the output grid: same CRS, same origin, pixel size ÷ scale;
- :class:`Window` — integer pixel windows, with the halo and scale arithmetic used by tiling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import box

if TYPE_CHECKING:
    import numpy as np

__all__ = ["GeoBox", "Window", "item_grid", "aoi_window", "zoom_in", "from_rasterio", "epsg_of", "own", "crop_to_own"]


class GridError(ValueError):
    """A grid that stacsr cannot work on (rotated, no CRS, no overlap…)."""


@dataclass(frozen=True)
class Window:
    """An integer pixel window: rows ``[row, row + height)``, columns ``[col, col + width)``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def pad(self, n: int) -> "Window":
        """The window grown by ``n`` pixels on every side (may go outside the image)."""
        return Window(self.row - n, self.col - n, self.height + 2 * n, self.width + 2 * n)

    def scale(self, factor: int) -> "Window":
        """The same footprint on a grid ``factor`` times finer."""
        return Window(self.row * factor, self.col * factor, self.height * factor, self.width * factor)

    def shift(self, drow: int, dcol: int) -> "Window":
        return Window(self.row + drow, self.col + dcol, self.height, self.width)


def own(core: Window, origin: tuple[int, int] = (0, 0)) -> Window:
    """The part of ``core`` that its tile writes: all of it, but for a last tile shifted back inside the area
    (:func:`stacsr.tiles.plan`), only what its neighbour does not cover. Every pixel is then written by exactly one
    tile, so the output does not depend on the order tiles finish in. ``origin``: the area's first pixel."""
    row, col = core.row - origin[0], core.col - origin[1]
    skip_r, skip_c = -row % core.height, -col % core.width  # to the next multiple of the tile size
    return Window(core.row + skip_r, core.col + skip_c, core.height - skip_r, core.width - skip_c)


def crop_to_own(
    core: Window, tile: "np.ndarray", scale: int, origin: tuple[int, int] = (0, 0)
) -> tuple[Window, "np.ndarray"]:
    """``(own window, the tile's output for it)`` of a core's output (``scale`` × finer)."""
    mine = own(core, origin)
    r, c = (mine.row - core.row) * scale, (mine.col - core.col) * scale
    return mine, tile[:, r:, c:]


def epsg_of(props: Mapping[str, Any]) -> int | None:
    """EPSG code from ``proj:epsg`` or ``proj:code`` ("EPSG:32632"), whichever is there."""
    if props.get("proj:epsg") is not None:
        return int(props["proj:epsg"])
    code = props.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    return None


def item_grid(item: Mapping[str, Any], asset_key: str) -> GeoBox:
    """Native grid of one asset of a STAC item dict, from its projection fields.

    Asset-level ``proj:*`` fields win over item-level ones, as the projection extension says.
    """
    props = dict(item.get("properties", {}))
    asset = {k: v for k, v in item["assets"][asset_key].items() if k.startswith("proj:")}
    if "proj:epsg" in asset or "proj:code" in asset:  # the asset's CRS replaces the item's, whichever field says it
        for key in ("proj:epsg", "proj:code"):
            props.pop(key, None)
    props.update(asset)
    epsg = epsg_of(props)
    transform, shape = props.get("proj:transform"), props.get("proj:shape")
    if epsg is None or transform is None or shape is None:
        raise GridError(
            f"item {item.get('id')!r} asset {asset_key!r} lacks proj:epsg/proj:code, proj:transform or proj:shape"
        )
    affine = Affine(*transform[:6])
    return _checked(GeoBox((int(shape[0]), int(shape[1])), affine, f"EPSG:{epsg}"))


def from_rasterio(transform: Affine, crs: Any, shape: tuple[int, int]) -> GeoBox:
    """Grid of a raster opened with rasterio; refuses rasters without CRS or that are not north-up."""
    if crs is None:
        raise GridError("the raster has no CRS")
    return _checked(GeoBox(shape, transform, crs))


def _checked(grid: GeoBox) -> GeoBox:
    a = grid.affine
    if a.b != 0 or a.d != 0 or a.a <= 0 or a.e >= 0:
        raise GridError(f"the grid is not north-up (transform {tuple(a)[:6]}); rotated rasters are not supported")
    return grid


def aoi_window(grid: GeoBox, bbox: tuple[float, float, float, float], bbox_crs: str = "EPSG:4326") -> Window:
    """Pixel window of ``grid`` covering ``bbox`` (west, south, east, north), snapped outward.

    The bbox is projected as a densified polygon so that curved edges in the grid's CRS are covered,
    then every partially covered pixel is included. The window is clipped to the grid.
    """
    region = box(*bbox, crs=bbox_crs)
    pix = grid.project(region.to_crs(grid.crs, resolution=_densify_step(grid, bbox_crs))).boundingbox
    col0, row0 = math.floor(pix.left + 1e-9), math.floor(pix.bottom + 1e-9)
    col1, row1 = math.ceil(pix.right - 1e-9), math.ceil(pix.top - 1e-9)
    rows, cols = grid.shape.yx
    row0, col0 = max(row0, 0), max(col0, 0)
    row1, col1 = min(row1, rows), min(col1, cols)
    if row1 <= row0 or col1 <= col0:
        raise GridError("the area of interest does not overlap the raster")
    return Window(row0, col0, row1 - row0, col1 - col0)


def _densify_step(grid: GeoBox, bbox_crs: str) -> float:
    """Segment length used to densify the AOI polygon, in the units of ``bbox_crs``."""
    return 1e-3 if bbox_crs == "EPSG:4326" else abs(grid.affine.a) * 10


def crop(grid: GeoBox, window: Window) -> GeoBox:
    """Grid of a window (may extend outside ``grid``): same pixels, moved origin."""
    return GeoBox(window.shape, grid.affine @ Affine.translation(window.col, window.row), grid.crs)


def zoom_in(grid: GeoBox, scale: int) -> GeoBox:
    """Output grid of super-resolution: same CRS and origin, pixel size ÷ ``scale``, shape × ``scale``."""
    rows, cols = grid.shape.yx
    return GeoBox((rows * scale, cols * scale), grid.affine @ Affine.scale(1 / scale), grid.crs)


def area_km2(grid: GeoBox) -> float:
    """Ground area covered by a projected grid, in km²."""
    rows, cols = grid.shape.yx
    return abs(grid.affine.a * grid.affine.e) * rows * cols / 1e6


def zoom_out(grid: GeoBox, scale: int) -> GeoBox:
    """The same footprint in pixels ``scale`` times larger: same CRS and origin, shape ÷ ``scale`` (rounded up)."""
    return grid.zoom_out(scale)


def window_grid(transform: Sequence[float], crs: Any, window: Window) -> GeoBox:
    """Grid of ``window`` on the grid whose affine coefficients (a b c d e f) are ``transform``."""
    return crop(GeoBox(window.shape, Affine(*transform[:6]), crs), window)


def clip(window: Window, shape: tuple[int, int]) -> Window:
    """The part of ``window`` inside a raster of ``shape`` (rows, cols); 0 rows or columns when none."""
    row0, col0 = max(window.row, 0), max(window.col, 0)
    row1, col1 = min(window.row + window.height, shape[0]), min(window.col + window.width, shape[1])
    return Window(row0, col0, max(row1 - row0, 0), max(col1 - col0, 0))


def nearest_window(src: GeoBox, dst: GeoBox) -> tuple[Window, "np.ndarray", "np.ndarray"]:
    """``(window of dst, rows, cols)``: the pixels of ``dst`` holding the centres of ``src``'s rows and columns
    (nearest-neighbour resampling), as indexes into that window. Both grids share a CRS and axes."""
    import numpy as np

    if src.crs != dst.crs:
        raise GridError(f"the grids are in {src.crs} and {dst.crs}")
    m = ~dst.affine * src.affine  # src pixel coordinates -> dst pixel coordinates
    if m.b or m.d:
        raise GridError("the grids are rotated with respect to each other")
    rows = np.floor(m.e * (np.arange(src.height) + 0.5) + m.f).astype(np.int64)
    cols = np.floor(m.a * (np.arange(src.width) + 0.5) + m.c).astype(np.int64)
    row0, col0 = int(rows.min()), int(cols.min())
    window = Window(row0, col0, int(rows.max()) - row0 + 1, int(cols.max()) - col0 + 1)
    return window, rows - row0, cols - col0


def item_window(item: Mapping[str, Any], keys: Sequence[str], bbox: Sequence[float]) -> tuple[GeoBox, Window]:
    """The item's native grid (of asset ``keys[0]``) and the AOI's window on it, once every asset is known present."""
    missing = [k for k in keys if k not in item.get("assets", {})]
    if missing:
        raise GridError(f"item {item.get('id')} has no asset {', '.join(missing)} (needed for the model's bands)")
    try:
        grid = item_grid(item, keys[0])
        return grid, aoi_window(grid, bbox)
    except GridError as e:
        raise GridError(f"item {item.get('id')}: {e}") from None
