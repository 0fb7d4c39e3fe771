"""Ray engine under a worker loss: an item whose worker process dies mid-item runs again and changes no pixel."""

from __future__ import annotations

import numpy as np
import rasterio
import torch
from affine import Affine

from stacsr import tiles
from stacsr.engine import LocalEngine
from stacsr.io.grid import GeoBox
from stacsr.io.sink import CogTarget, SinkSpec
from stacsr.io.source import ArraySource
from stacsr.model.generator import Generator, GeneratorConfig
from stacsr.model.package import ModelCard, ModelPackage
from tests.fixtures.dying import DyingRayEngine


def small_package() -> ModelPackage:
    """A small random model, with its safetensors bytes (what Ray workers rebuild it from)."""
    from safetensors.torch import save

    torch.manual_seed(5)
    config = GeneratorConfig(features=8, blocks=2)
    g = Generator(config).eval()
    torch.nn.init.normal_(g.tail.weight, std=0.01)
    card = ModelCard("t", "0", ["B02", "B03", "B04", "B08"], ["blue", "green", "red", "nir"], config.to_dict())
    return ModelPackage(card, g, "x", save({k: v.contiguous() for k, v in g.state_dict().items()}))


def run_into(engine, image: np.ndarray, halo: int, path) -> np.ndarray:
    grid = GeoBox(image.shape[1:], Affine(10, 0, 600000, 0, -10, 5300000), "EPSG:32632")
    out = GeoBox((image.shape[1] * 4, image.shape[2] * 4), Affine(2.5, 0, 600000, 0, -2.5, 5300000), "EPSG:32632")
    sink = SinkSpec(out, (0, 0), 4, (CogTarget(str(path), (0, 1, 2, 3), ("B02", "B03", "B04", "B08")),))
    engine.run(ArraySource(image, grid), tiles.plan(image.shape[1:], 16), halo, sink)
    with rasterio.open(path) as src:
        return src.read()


def test_a_worker_lost_mid_item_costs_nothing(ray_local, tmp_path):
    package = small_package()
    image = np.random.default_rng(1).integers(500, 6000, (4, 80, 72)).astype(np.uint16)
    halo = package.receptive_radius
    expected = run_into(LocalEngine(package), image, halo, tmp_path / "local.tif")
    engine = DyingRayEngine(package, tmp_path / "markers", after=4)
    got = run_into(engine, image, halo, tmp_path / "ray.tif")
    assert engine.deaths() == 1  # the worker process really died mid-item, and the item ran again
    assert np.array_equal(got, expected)
    assert not list(tmp_path.glob(".*"))  # the dead attempt's half-written COG is not left beside the output
