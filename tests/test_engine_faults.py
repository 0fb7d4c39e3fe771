"""Ray engine under a worker loss: killing a model actor mid-run costs no tile and changes no pixel."""

from __future__ import annotations

import numpy as np
import torch

from stacsr import tiles
from stacsr.engine import LocalEngine, RayEngine
from stacsr.io.source import ArraySource
from stacsr.model.generator import Generator, GeneratorConfig
from stacsr.model.package import ModelCard, ModelPackage


def small_package() -> ModelPackage:
    """A small random model, with its safetensors bytes (what Ray actors rebuild it from)."""
    from safetensors.torch import save

    torch.manual_seed(5)
    config = GeneratorConfig(features=8, blocks=2)
    g = Generator(config).eval()
    torch.nn.init.normal_(g.tail.weight, std=0.01)
    card = ModelCard("t", "0", ["B02", "B03", "B04", "B08"], ["blue", "green", "red", "nir"], config.to_dict())
    return ModelPackage(card, g, "x", save({k: v.contiguous() for k, v in g.state_dict().items()}))


def run(engine, image: np.ndarray, halo: int, kill_after: int | None = None) -> np.ndarray:
    cores = tiles.plan(image.shape[1:], 16)
    results = []
    for i, result in enumerate(engine.map(ArraySource(image), cores, halo)):
        results.append(result)
        if kill_after is not None and i == kill_after:
            import ray

            ray.kill(engine._actors[0], no_restart=False)  # a worker process dies; Ray restarts the actor
    assert sorted((c.row, c.col) for c, _ in results) == sorted((c.row, c.col) for c in cores)
    return tiles.stitch(results, image.shape[1:], image.shape[0], 4)


def test_killed_actor_costs_no_tile(ray_local):
    package = small_package()
    image = np.random.default_rng(1).integers(500, 6000, (4, 80, 72)).astype(np.uint16)
    halo = package.receptive_radius
    expected = run(LocalEngine(package), image, halo)
    engine = RayEngine(package, actors=2)
    try:
        got = run(engine, image, halo, kill_after=2)
        restarts = _restarts(engine._actors[0], ray_local.dashboard_url)
    finally:
        engine.close()
    assert restarts >= 1  # the actor really died and came back
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def _restarts(actor, address: str) -> int:
    from ray.util.state import get_actor

    return int(get_actor(actor._actor_id.hex(), address=address).num_restarts)
