"""Overviews built while tiles arrive (``stacsr.io.overviews``): the pyramids of the COGs are GDAL's own.

* ``halve`` is the mean of 2 × 2 blocks with nodata ignored, rounded half up;
* the levels are those that GDAL's COG driver picks (``OVERVIEWS=AUTO``), whatever the shape;
* a sink fed tiles in any order, with nodata holes and sizes that are not multiples of the factors, makes COGs
  whose every overview equals the one GDAL computes from the same full-resolution raster, levels made from
  the tiles and levels made afterwards alike; the COGs are valid and the scratch is gone.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from rio_cogeo.cogeo import cog_validate

from stacsr import tiles
from stacsr.io.overviews import aligned_levels, factors, halve
from stacsr.io.sink import CogTarget, SinkSpec, TileSink
from stacsr.io.write import BLOCKSIZE, cog_from_file
from tests.fixtures import rasters

GRID = Affine(2.5, 0, 600000, 0, -2.5, 5300000)


def reference_halve(a: np.ndarray) -> np.ndarray:
    """2 × 2 means ignoring zeros, written the slow, obvious way."""
    rows, cols = a.shape
    out = np.zeros((math.ceil(rows / 2), math.ceil(cols / 2)), np.uint16)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            block = a[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].astype(np.int64)
            valid = block[block != 0]
            out[r, c] = math.floor(valid.sum() / len(valid) + 0.5) if len(valid) else 0
    return out


def image_with_holes(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 65535, shape, dtype=np.uint16)
    image[rng.random(shape) < 0.2] = 0  # scattered nodata pixels
    image[: shape[0] // 3, : shape[1] // 4] = 0  # and a whole nodata corner
    return image


@pytest.mark.parametrize("shape", [(6, 8), (2, 2), (2, 10), (14, 2)])
def test_halve_is_the_mean_of_valid_pixels_rounded_half_up(shape):
    image = image_with_holes(shape, seed=sum(shape))
    image[0, :2], image[1, :2] = (0, 3), (2, 0)  # a block with a .5 mean once nodata is left out
    assert np.array_equal(halve(image[None])[0], reference_halve(image))
    full = np.full(shape, 7, np.uint16)
    full[-1, -1] = 8
    assert np.array_equal(halve(full[None])[0], reference_halve(full))  # no nodata: the fast path


@pytest.mark.parametrize("shape", [(512, 512), (513, 100), (1025, 2049), (3000, 700)])
def test_levels_are_those_of_gdals_cog_driver(tmp_path, shape):
    src = rasters.write_geotiff(tmp_path / "in.tif", np.ones((1, *shape), np.uint16), GRID)
    cog = cog_from_file(src, tmp_path / "cog.tif")
    with rasterio.open(cog) as ds:
        gdal_count = len(ds.overviews(1))
    ours = factors(shape, BLOCKSIZE)
    assert len(ours) == gdal_count
    for level, factor in enumerate(ours):
        with rasterio.open(cog, overview_level=level) as ds:
            assert ds.shape == (shape[0] // factor, shape[1] // factor)


def test_aligned_levels_follow_the_scale():
    assert [aligned_levels(s) for s in (1, 2, 3, 4, 6, 8)] == [0, 1, 0, 2, 1, 3]


@pytest.mark.parametrize("scale, tile", [(4, 100), (1, 300)])
def test_a_sinks_overviews_equal_gdals(tmp_path, scale, tile):
    """Scale 4: ÷2 and ÷4 from the tiles, ÷8 (of the odd 451 × 651) by GDAL; scale 1: all by GDAL."""
    out_shape = (1804, 2604)
    image = np.stack([image_with_holes(out_shape, 1), image_with_holes(out_shape, 2)])
    src_shape = (out_shape[0] // scale, out_shape[1] // scale)
    target = CogTarget(str(tmp_path / "out" / "sr.tif"), (1, 0), ("B03", "B02"))
    spec = SinkSpec(GeoBox(out_shape, GRID, "EPSG:32632"), (0, 0), scale, (target,), scratch=str(tmp_path / "s"))
    cores = tiles.plan(src_shape, tile)
    assert any(c.row % tile or c.col % tile for c in cores)  # the last ones overlap their neighbours
    random.Random(0).shuffle(cores)
    sink = TileSink(spec).open()
    for core in cores:
        rows, cols = (slice(s.start * scale, s.stop * scale) for s in core.slices)
        sink.write([(core, image[:, rows, cols])])
    assert sink.finish() == {target.url: target.url}

    reference = cog_from_file(
        rasters.write_geotiff(tmp_path / "full.tif", image[[1, 0]], GRID, nodata=0), tmp_path / "ref.tif"
    )
    assert factors(out_shape, BLOCKSIZE) == [2, 4, 8]
    for level in range(3):
        with (
            rasterio.open(target.url, overview_level=level) as ours,
            rasterio.open(reference, overview_level=level) as ref,
        ):
            assert ours.shape == ref.shape
            assert np.array_equal(ours.read(), ref.read()), level
    with rasterio.open(target.url) as cog:
        assert np.array_equal(cog.read(), image[[1, 0]])
        assert cog.descriptions == ("B03", "B02") and cog.nodata == 0 and cog.scales == (1e-4, 1e-4)
        assert cog.transform == GRID and cog.crs == "EPSG:32632"
    assert cog_validate(target.url) == (True, [], [])
    assert list((tmp_path / "s").iterdir()) == []
