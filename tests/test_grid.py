"""Grid maths (stacsr.io.grid): AOI windows, STAC projection fields, zoom, crop, Window arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from stacsr.io import grid as G
from stacsr.io.grid import GridError, Window

# A 10 m UTM 32N grid of 100 x 120 pixels, origin (600000, 5000000).
X0, Y0, RES = 600_000.0, 5_000_000.0, 10.0
ROWS, COLS = 100, 120


@pytest.fixture
def grid() -> G.GeoBox:
    return G.GeoBox((ROWS, COLS), Affine(RES, 0, X0, 0, -RES, Y0), "EPSG:32632")


def utm_bbox(col0: float, row0: float, col1: float, row1: float) -> tuple[float, float, float, float]:
    """(west, south, east, north) in UTM metres of fractional pixel columns/rows [col0, col1) x [row0, row1)."""
    return X0 + col0 * RES, Y0 - row1 * RES, X0 + col1 * RES, Y0 - row0 * RES


# ------------------------------------------------------------------ aoi_window


def test_aoi_window_snaps_outward_to_partially_covered_pixels(grid):
    # edges at col 10.3 .. 20.6 and row 5.5 .. 9.2: pixels 10..20 and 5..9 are (partly) covered
    w = G.aoi_window(grid, utm_bbox(10.3, 5.5, 20.6, 9.2), "EPSG:32632")
    assert w == Window(row=5, col=10, height=5, width=11)


def test_aoi_window_on_pixel_edges_takes_no_extra_pixel(grid):
    w = G.aoi_window(grid, utm_bbox(10, 5, 20, 9), "EPSG:32632")
    assert w == Window(row=5, col=10, height=4, width=10)


def test_aoi_window_inside_one_pixel_is_that_pixel(grid):
    w = G.aoi_window(grid, utm_bbox(33.2, 44.1, 33.7, 44.9), "EPSG:32632")
    assert w == Window(row=44, col=33, height=1, width=1)


def test_aoi_window_is_clipped_to_the_grid(grid):
    w = G.aoi_window(grid, utm_bbox(-50.5, 90.5, 5.5, 300.0), "EPSG:32632")
    assert w == Window(row=90, col=0, height=ROWS - 90, width=6)
    whole = G.aoi_window(grid, utm_bbox(-1000, -1000, 1000, 1000), "EPSG:32632")
    assert whole == Window(0, 0, ROWS, COLS)


@pytest.mark.parametrize(
    "bbox",
    [
        utm_bbox(COLS + 1, 10, COLS + 5, 20),  # east of the grid
        utm_bbox(10, -20, 20, -5),  # north of the grid
        utm_bbox(COLS, 10, COLS + 3, 20),  # touching the east edge only
    ],
)
def test_aoi_window_without_overlap_raises(grid, bbox):
    with pytest.raises(GridError, match="does not overlap"):
        G.aoi_window(grid, bbox, "EPSG:32632")


def test_aoi_window_of_a_lonlat_bbox_covers_the_pixels_it_was_made_from(grid):
    # lon/lat bbox of the pixel centres of rows 20..40, cols 30..60: the window holds them all, and
    # (the bbox being a small lon/lat rectangle) not much more.
    to_ll = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    xs, ys = [], []
    for r in (20, 40):
        for c in (30, 60):
            x, y = grid.affine @ (c + 0.5, r + 0.5)
            lon, lat = to_ll.transform(x, y)
            xs.append(lon)
            ys.append(lat)
    w = G.aoi_window(grid, (min(xs), min(ys), max(xs), max(ys)))
    assert w.row <= 20 and w.col <= 30
    assert w.row + w.height >= 41 and w.col + w.width >= 61
    assert w.row >= 18 and w.col >= 28 and w.row + w.height <= 43 and w.col + w.width <= 63


# ------------------------------------------------------------------ item_grid

TRANSFORM = [RES, 0.0, X0, 0.0, -RES, Y0]


def stac_item(props: dict, asset: dict | None = None) -> dict:
    return {"id": "S2X", "properties": {"datetime": "2024-06-01T10:00:00Z", **props}, "assets": {"B02": asset or {}}}


def test_item_grid_reads_proj_epsg():
    g = G.item_grid(stac_item({"proj:epsg": 32632, "proj:shape": [ROWS, COLS], "proj:transform": TRANSFORM}), "B02")
    assert g.crs.epsg == 32632
    assert g.shape.yx == (ROWS, COLS)
    assert tuple(g.affine)[:6] == tuple(TRANSFORM)


def test_item_grid_reads_proj_code_and_nine_element_transforms():
    props = {"proj:code": "EPSG:32633", "proj:shape": [ROWS, COLS], "proj:transform": TRANSFORM + [0, 0, 1]}
    g = G.item_grid(stac_item(props), "B02")
    assert g.crs.epsg == 32633
    assert tuple(g.affine)[:6] == tuple(TRANSFORM)


def test_item_grid_asset_fields_win_over_item_fields():
    props = {"proj:epsg": 32632, "proj:shape": [ROWS, COLS], "proj:transform": TRANSFORM}
    asset = {"proj:shape": [ROWS // 2, COLS // 2], "proj:transform": [20.0, 0, X0, 0, -20.0, Y0]}
    g = G.item_grid(stac_item(props, asset), "B02")
    assert g.shape.yx == (ROWS // 2, COLS // 2)
    assert g.affine.a == 20.0 and g.affine.e == -20.0
    assert g.crs.epsg == 32632  # not overridden: inherited from the item


@pytest.mark.parametrize(
    "item_crs, asset_crs",
    [
        ({"proj:epsg": 32632}, {"proj:epsg": 32633}),
        ({"proj:epsg": 32632}, {"proj:code": "EPSG:32633"}),  # the asset's proj:code beats the item's proj:epsg
        ({"proj:code": "EPSG:32632"}, {"proj:epsg": 32633}),
    ],
)
def test_item_grid_asset_crs_wins_whatever_field_names_it(item_crs, asset_crs):
    props = {**item_crs, "proj:shape": [ROWS, COLS], "proj:transform": TRANSFORM}
    assert G.item_grid(stac_item(props, asset_crs), "B02").crs.epsg == 32633


def test_item_grid_refuses_rotated_transforms():
    rotated = list(Affine.translation(X0, Y0) @ Affine.rotation(10) @ Affine.scale(RES, -RES))[:6]
    props = {"proj:epsg": 32632, "proj:shape": [ROWS, COLS], "proj:transform": rotated}
    with pytest.raises(GridError, match="north-up"):
        G.item_grid(stac_item(props), "B02")
    sheared = [RES, 0.5, X0, 0.0, -RES, Y0]
    with pytest.raises(GridError, match="north-up"):
        G.item_grid(stac_item({**props, "proj:transform": sheared}), "B02")
    south_up = [RES, 0.0, X0, 0.0, RES, Y0]
    with pytest.raises(GridError, match="north-up"):
        G.item_grid(stac_item({**props, "proj:transform": south_up}), "B02")


@pytest.mark.parametrize("missing", ["proj:epsg", "proj:shape", "proj:transform"])
def test_item_grid_needs_crs_shape_and_transform(missing):
    props = {"proj:epsg": 32632, "proj:shape": [ROWS, COLS], "proj:transform": TRANSFORM}
    del props[missing]
    with pytest.raises(GridError, match="lacks"):
        G.item_grid(stac_item(props), "B02")


def test_from_rasterio_needs_a_crs():
    with pytest.raises(GridError, match="no CRS"):
        G.from_rasterio(Affine(RES, 0, X0, 0, -RES, Y0), None, (10, 10))


# ------------------------------------------------------------------ zoom_in / crop


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_zoom_in_keeps_crs_and_origin_and_divides_the_pixel_size(grid, scale):
    z = G.zoom_in(grid, scale)
    assert z.crs == grid.crs
    assert (z.affine.c, z.affine.f) == (grid.affine.c, grid.affine.f)
    assert z.affine.a == pytest.approx(RES / scale) and z.affine.e == pytest.approx(-RES / scale)
    assert z.affine.b == 0 and z.affine.d == 0
    assert z.shape.yx == (ROWS * scale, COLS * scale)
    # same footprint
    assert z.affine @ (COLS * scale, ROWS * scale) == pytest.approx(grid.affine @ (COLS, ROWS))


def test_zoom_in_output_pixel_centres_lie_in_their_parent_pixel(grid):
    rng = np.random.default_rng(42)
    scale = 4
    z = G.zoom_in(grid, scale)
    inverse = ~grid.affine
    for r, c in zip(rng.integers(0, ROWS * scale, 500), rng.integers(0, COLS * scale, 500)):
        x, y = z.affine @ (c + 0.5, r + 0.5)
        col, row = inverse @ (x, y)
        assert (math.floor(row), math.floor(col)) == (r // scale, c // scale), (r, c, row, col)


def test_crop_moves_the_origin_to_the_window(grid):
    g = G.crop(grid, Window(row=5, col=7, height=10, width=20))
    assert g.shape.yx == (10, 20)
    assert (g.affine.c, g.affine.f) == (X0 + 7 * RES, Y0 - 5 * RES)
    assert (g.affine.a, g.affine.e) == (RES, -RES)
    assert g.crs == grid.crs
    # a window that starts outside the grid (negative offsets) is allowed
    out = G.crop(grid, Window(row=-2, col=-3, height=4, width=4))
    assert (out.affine.c, out.affine.f) == (X0 - 3 * RES, Y0 + 2 * RES)


def test_crop_then_zoom_in_matches_zoom_in_then_crop(grid):
    w = Window(row=12, col=30, height=9, width=14)
    a = G.zoom_in(G.crop(grid, w), 4)
    b = G.crop(G.zoom_in(grid, 4), w.scale(4))
    assert a.shape == b.shape
    assert tuple(a.affine) == pytest.approx(tuple(b.affine))


def test_area_km2(grid):
    assert G.area_km2(grid) == pytest.approx(ROWS * COLS * RES * RES / 1e6)


# ------------------------------------------------------------------ Window


def test_window_slices_and_shape():
    w = Window(row=2, col=3, height=4, width=5)
    assert w.shape == (4, 5)
    a = np.arange(100).reshape(10, 10)
    assert a[w.slices].shape == (4, 5)
    assert a[w.slices][0, 0] == a[2, 3] and a[w.slices][-1, -1] == a[5, 7]


def test_window_pad_scale_shift():
    w = Window(row=2, col=3, height=4, width=5)
    assert w.pad(2) == Window(0, 1, 8, 9)
    assert w.pad(3) == Window(-1, 0, 10, 11)  # may leave the image
    assert w.pad(0) == w
    assert w.scale(4) == Window(8, 12, 16, 20)
    assert w.shift(1, -2) == Window(3, 1, 4, 5)
    assert w.pad(2).shift(2, 2) == Window(2, 3, 8, 9)
    assert w.pad(2).scale(4) == w.scale(4).pad(8)
    with pytest.raises(AttributeError):
        w.row = 0  # frozen value object
