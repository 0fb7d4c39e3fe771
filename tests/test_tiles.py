"""Seam-free tiling (stacsr.tiles), in-process and through the engines, and the receptive radius it relies on.

The promise: with a halo of at least ``Generator.receptive_radius`` input pixels, super-resolving tile by
tile gives the same output (within 1 DN of float noise) as super-resolving the whole image at once, for any
tile size and any image size — including images smaller than a tile, down to one pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stacsr import pipeline, tiles
from stacsr.engine import LocalEngine, RayEngine
from stacsr.io.grid import Window
from stacsr.io.source import ArraySource
from stacsr.model import package as P
from stacsr.model.generator import Generator, GeneratorConfig

TILE_SIZES = [16, 17, 31, 64, 256]
SHAPES = [(4, 75, 53), (4, 7, 5), (4, 1, 1)]  # none divisible by the tile sizes; one smaller than any tile
WHOLE = 4096  # the largest tile the CLI accepts: one tile holds the whole image
CONFIG = GeneratorConfig(bands=4, scale=4, features=8, blocks=2)


def image_of(shape: tuple[int, ...], seed: int = 0, low: int = 100, high: int = 6000) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=shape).astype(np.uint16)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> P.ModelPackage:
    """A small random-weight model, saved and loaded as a real package."""
    torch.manual_seed(0)
    generator = Generator(CONFIG)
    card = P.ModelCard(
        name="test-tiles",
        version="0.0.1",
        bands=["B02", "B03", "B04", "B08"],
        common_names=["blue", "green", "red", "nir"],
        architecture=CONFIG.to_dict(),
    )
    return P.save(card, generator, tmp_path_factory.mktemp("model") / "tiles-model")


@pytest.fixture(scope="module")
def predict(package) -> P.Predictor:
    return P.Predictor(package, device="cpu")


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def assert_not_trivial(out: np.ndarray) -> None:
    """The reference must carry signal: not constant, not mostly clamped to the uint16 limits."""
    assert out.dtype == np.uint16
    assert np.unique(out).size > min(out.size // 4, 50)
    assert ((out == 1) | (out == 65535)).mean() < 0.25


# ------------------------------------------------------------------ plan


@pytest.mark.parametrize("tile_size", TILE_SIZES + [1, 5])
@pytest.mark.parametrize("shape", [(75, 53), (7, 5), (1, 1), (64, 64), (256, 17), (100, 1)])
def test_plan_windows_are_equal_inside_and_cover_every_pixel(shape, tile_size):
    cores = tiles.plan(shape, tile_size)
    rows, cols = shape
    assert len({c.shape for c in cores}) == 1
    assert cores[0].shape == (min(tile_size, rows), min(tile_size, cols))
    count = np.zeros(shape, dtype=int)
    for c in cores:
        assert c.row >= 0 and c.col >= 0 and c.row + c.height <= rows and c.col + c.width <= cols
        count[c.slices] += 1
    assert (count >= 1).all()
    # no redundant tiles: each start is distinct, and only the last row/column of tiles overlaps
    assert len(set(cores)) == len(cores)
    assert len(cores) == -(-rows // min(tile_size, rows)) * -(-cols // min(tile_size, cols))


def test_plan_refuses_non_positive_tile_sizes():
    with pytest.raises(ValueError):
        tiles.plan((10, 10), 0)


def test_halo_windows_hold_core_and_halo_mirrored_at_the_image_edge():
    image = np.arange(2 * 9 * 11, dtype=np.uint16).reshape(2, 9, 11)
    halo = 3
    padded = np.pad(image, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    for core in (Window(2, 4, 5, 6), Window(0, 0, 9, 11), Window(6, 8, 3, 3)):
        [tile] = ArraySource(image).read([core.pad(halo)])
        np.testing.assert_array_equal(tile[:, halo:-halo, halo:-halo], image[(slice(None), *core.slices)])  # the core
        np.testing.assert_array_equal(tile, padded[(slice(None), *core.pad(halo).shift(halo, halo).slices)])


@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 1, 6), (3, 4, 1)])
def test_windows_of_one_pixel_wide_images(shape):
    image = image_of(shape)
    [tile] = ArraySource(image).read([Window(0, 0, shape[1], shape[2]).pad(11)])  # halo far larger than the image
    assert tile.shape == (3, shape[1] + 22, shape[2] + 22)
    if shape[1] == 1 and shape[2] == 1:
        np.testing.assert_array_equal(tile, np.broadcast_to(image, tile.shape))


# ------------------------------------------------------------------ seam-freeness, in process


@pytest.fixture(scope="module")
def whole_outputs(predict, package):
    """Whole-image outputs (one tile) of each test image: the references."""
    halo = package.receptive_radius
    return {shape: tiles.super_resolve(image_of(shape), predict, WHOLE, halo, 4) for shape in SHAPES}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tile_size", TILE_SIZES)
def test_tiled_output_equals_whole_image_output(predict, package, whole_outputs, shape, tile_size):
    image = image_of(shape)
    ref = whole_outputs[shape]
    assert ref.shape == (shape[0], shape[1] * 4, shape[2] * 4)
    assert_not_trivial(ref)
    for batch in (1, 3):
        out = tiles.super_resolve(image, predict, tile_size, package.receptive_radius, 4, batch=batch)
        assert max_abs_diff(out, ref) <= 1, (tile_size, batch)


def test_a_halo_below_the_receptive_radius_makes_seams(predict, package, whole_outputs):
    """The test above can fail: too small a halo gives visibly different tiles."""
    shape = SHAPES[0]
    image, ref = image_of(shape), whole_outputs[shape]
    radius = package.receptive_radius
    for halo in (0, radius // 2):
        out = tiles.super_resolve(image, predict, 16, halo, 4)
        assert max_abs_diff(out, ref) > 10, halo
        # … and the errors sit on the seams: tiled vs whole image with the *same* small halo
        same_halo = tiles.super_resolve(image, predict, WHOLE, halo, 4)
        assert max_abs_diff(out, same_halo) > 10, halo


# ------------------------------------------------------------------ receptive radius


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        GeneratorConfig(bands=3, scale=2, features=8, blocks=1),
        GeneratorConfig(bands=4, scale=8, features=8, blocks=1),
        GeneratorConfig(bands=4, scale=4, features=8, blocks=1, head_kernel=3, tail_kernel=9),
    ],
    ids=lambda c: f"x{c.scale}-b{c.blocks}-h{c.head_kernel}-t{c.tail_kernel}",
)
def test_receptive_radius_is_a_tight_upper_bound(config):
    torch.manual_seed(1)
    g = Generator(config).double().eval()
    radius, s = g.receptive_radius, config.scale
    n = 2 * radius + 9
    x = torch.from_numpy(np.random.default_rng(3).uniform(100, 6000, size=(1, config.bands, n, n)))
    with torch.no_grad():
        base = g(x)
    for r, c in [(n // 2, n // 2), (n // 2 - 1, n // 2 + 2)]:
        x2 = x.clone()
        x2[0, :, r, c] += 2500
        with torch.no_grad():
            changed = (g(x2) - base).abs().amax(dim=(0, 1)).numpy() > 0
        rows, cols = np.nonzero(changed)
        assert rows.size, "perturbing an input pixel must change some output"
        # distance (output pixels) of each changed pixel from the perturbed pixel's footprint [r·s, (r+1)·s)
        dist = np.maximum(
            np.maximum(r * s - rows, rows - ((r + 1) * s - 1)).clip(0),
            np.maximum(c * s - cols, cols - ((c + 1) * s - 1)).clip(0),
        )
        assert dist.max() <= radius * s + s, "receptive_radius is not an upper bound"
        assert dist.max() >= (radius - 2) * s, "receptive_radius is far from tight"
        # in input pixels: nothing further than the radius changes
        assert max(np.abs(rows // s - r).max(), np.abs(cols // s - c).max()) <= radius


# ------------------------------------------------------------------ through the pipeline and engines


def test_pipeline_local_engine_equals_whole_image(package, whole_outputs):
    engine = LocalEngine(package, batch=2, device="cpu")
    for shape in SHAPES:
        for tile_size in (16, 31):
            out = pipeline.super_resolve(image_of(shape), package, engine, tile_size=tile_size)
            assert max_abs_diff(out, whole_outputs[shape]) <= 1, (shape, tile_size)


def test_pipeline_propagates_nodata(package):
    image = image_of((4, 20, 30))
    image[2, 5, 7] = 0  # one band missing at one pixel: the output pixel's whole footprint is nodata
    out = pipeline.super_resolve(image, package, LocalEngine(package, device="cpu"), tile_size=16)
    assert (out[:, 20:24, 28:32] == 0).all()
    valid = np.ones(out.shape[1:], dtype=bool)
    valid[20:24, 28:32] = False
    assert (out[:, valid] > 0).all()


def test_pipeline_refuses_images_with_the_wrong_band_count(package):
    with pytest.raises(pipeline.InputError, match="3 bands"):
        pipeline.super_resolve(image_of((3, 10, 10)), package, LocalEngine(package, device="cpu"))


def test_pipeline_ray_engine_equals_local_engine(ray_local, package, whole_outputs):
    engine = RayEngine(package, batch=2)
    try:
        local = LocalEngine(package, batch=2, device="cpu")
        for shape in SHAPES:
            tile_size = 17
            on_ray = pipeline.super_resolve(image_of(shape), package, engine, tile_size=tile_size)
            in_process = pipeline.super_resolve(image_of(shape), package, local, tile_size=tile_size)
            np.testing.assert_array_equal(on_ray, in_process)
            assert max_abs_diff(on_ray, whole_outputs[shape]) <= 1
    finally:
        engine.close()


@pytest.mark.parametrize("shape, tile_size", [((100, 37), 16), ((64, 64), 16), ((10, 300), 64), ((5, 5), 256)])
def test_own_windows_write_every_pixel_exactly_once(shape, tile_size):
    """Tiles overlap where the last one shifts back; each pixel still has one writer, whatever the order."""
    from stacsr.io.grid import own

    for origin in ((0, 0), (7, 3)):
        count = np.zeros(shape, int)
        for core in tiles.plan(shape, tile_size):
            mine = own(core.shift(*origin), origin).shift(-origin[0], -origin[1])
            assert mine.row >= core.row and mine.col >= core.col and mine.height > 0 and mine.width > 0
            count[mine.slices] += 1
        assert (count == 1).all()


def test_one_default_tile_size_for_the_library_the_cli_and_job_specs():
    from stacsr.batch.spec import Resources
    from stacsr.cli.common import TileOpt

    assert TileOpt.default == Resources().tile_size == pipeline.DEFAULT_TILE_SIZE == 512
