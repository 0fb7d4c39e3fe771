"""Reflectance consistency holds after clipping: every 4 × 4 output block averages to its 10 m input pixel
within 1 DN at every valid pixel, also where the network rings below 1 DN beside a bright edge (dark water
beside land or cloud) and the output must be clipped (``model.generator.clamp_consistent``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stacsr import demo, tiles
from stacsr.model.generator import clamp_consistent
from stacsr.model.package import Predictor, load

SCALE = 4


def block_mean(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], a.shape[1] // SCALE, SCALE, a.shape[2] // SCALE, SCALE).mean(axis=(2, 4))


def step_edges() -> np.ndarray:
    """200 DN beside 3000 DN, 1 DN strips, a 12000 DN block: the worst case for ringing."""
    image = np.full((4, 64, 64), 200, np.uint16)
    image[:, :, 32:] = 3000
    image[:, 20:24, :] = 1
    image[:, 40:44, 10:14] = 12000
    image[:, 50:, 50:] = 65535
    return image


def random_image() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 20000, (4, 64, 64)).astype(np.uint16)


def demo_ground() -> np.ndarray:
    """The demo's landscape (water beside town and bare soil) at 10 m, a realistic scene."""
    return np.rint(demo.block_mean(demo.ground(seed=5), SCALE)[:, :96, :96]).astype(np.uint16)


@pytest.fixture(scope="module")
def package():
    return load("default")


@pytest.mark.parametrize("make", [step_edges, random_image, demo_ground])
def test_every_block_mean_is_its_input_within_one_dn(package, make):
    image = make()
    fixed = tiles.super_resolve(image, Predictor(package), 32, package.receptive_radius, SCALE)
    error = np.abs(block_mean(fixed.astype(np.float64)) - image)
    assert error.max() <= 1.0, error.max()
    unfixed = Predictor(package)
    unfixed.consistent = False  # what clipping alone does: the test could fail
    if make is not demo_ground:
        before = tiles.super_resolve(image, unfixed, 32, package.receptive_radius, SCALE)
        assert np.abs(block_mean(before.astype(np.float64)) - image).max() > 50


def test_clamp_consistent_keeps_unclipped_blocks_and_stays_in_range():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8) * 3000 + 500  # far from the bounds: only the two blocks below get clipped
    y = x.repeat_interleave(SCALE, 2).repeat_interleave(SCALE, 3) + torch.randn(2, 3, 32, 32) * 50
    y = y + (x - torch.nn.functional.avg_pool2d(y, SCALE)).repeat_interleave(SCALE, 2).repeat_interleave(SCALE, 3)
    y[0, 0, :4, :4] = -5000.0  # one block rings far below 1
    y[0, 0, :4, 4:8] += 10**6  # one above 65535
    out = clamp_consistent(y, x, SCALE)
    assert out.min() >= 1 and out.max() <= 65535
    means = torch.nn.functional.avg_pool2d(out, SCALE)
    assert (means - x).abs().max() < 0.02
    untouched = torch.ones_like(x, dtype=torch.bool)
    untouched[0, 0, 0, :2] = False
    big = untouched.repeat_interleave(SCALE, 2).repeat_interleave(SCALE, 3)
    assert torch.equal(out[big], y.clamp(1, 65535)[big])  # blocks nothing clipped are left as they were
