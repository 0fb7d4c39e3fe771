"""Training networks: the generator's output pyramid and the MSG-GAN discriminator (stacsr.model.discriminator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stacsr.model import package as P
from stacsr.model.discriminator import Discriminator, DiscriminatorConfig, MinibatchStdDev
from stacsr.model.generator import Generator, GeneratorConfig

SMALL = dict(features=8, blocks=1)


def inputs(bands: int, rows: int = 6, cols: int = 5, n: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(100, 6000, size=(n, bands, rows, cols)).astype(np.float32))


def bicubic(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


def zero_heads(g: Generator) -> None:
    with torch.no_grad():
        for conv in [g.tail, *g.to_images]:
            conv.weight.zero_()
            conv.bias.zero_()


# ------------------------------------------------------------------ generator pyramid


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("bands", [3, 4, 6])
def test_pyramid_shapes(scale, bands):
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=bands, scale=scale, **SMALL)).eval()
    levels = {2: 2, 4: 3, 8: 4}[scale]
    assert len(g.to_images) == levels - 1
    with torch.no_grad():
        pyramid = g.forward_pyramid(inputs(bands, 5, 7))
    assert [tuple(t.shape) for t in pyramid] == [(2, bands, 5 * 2**k, 7 * 2**k) for k in range(levels)]
    assert all(torch.isfinite(t).all() for t in pyramid)


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("residual", [True, False])
def test_forward_is_exactly_the_last_pyramid_output(scale, residual):
    torch.manual_seed(1)
    g = Generator(GeneratorConfig(bands=4, scale=scale, residual_bicubic=residual, **SMALL)).eval()
    x = inputs(4)
    with torch.no_grad():
        assert torch.equal(g(x), g.forward_pyramid(x)[-1])
        # and the intermediates are not copies of it (so the equality above can fail)
        assert not torch.equal(bicubic(g.forward_pyramid(x)[-2], 2), g(x))


def test_forward_does_not_run_the_intermediate_heads():
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=4, scale=8, **SMALL)).eval()
    calls = []
    for head in g.to_images:
        head.register_forward_hook(lambda module, args, out: calls.append(module))
    with torch.no_grad():
        g(inputs(4))
        assert calls == []
        g.forward_pyramid(inputs(4))
    assert calls == list(g.to_images)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_zeroed_heads_give_bicubic_at_every_scale(scale):
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=4, scale=scale, **SMALL)).eval()
    x = inputs(4, 7, 6)
    with torch.no_grad():
        live = g.forward_pyramid(x)
        zero_heads(g)
        pyramid = g.forward_pyramid(x)
    torch.testing.assert_close(pyramid[0], x, rtol=1e-5, atol=1e-2)
    for k, y in enumerate(pyramid[1:], start=1):
        torch.testing.assert_close(y, bicubic(x, 2**k), rtol=1e-5, atol=1e-2)
    # live heads (random initialisation) are not bicubic: the check above can fail
    assert (live[0] - x).abs().max() > 10 and (live[1] - bicubic(x, 2)).abs().max() > 10


def test_intermediates_without_residual_bicubic_are_the_heads_alone():
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=4, scale=4, residual_bicubic=False, **SMALL)).eval()
    zero_heads(g)
    with torch.no_grad():
        assert all(y.abs().max() == 0 for y in g.forward_pyramid(inputs(4)))


def test_default_package_pyramid():
    """The shipped (trained) package: its x1 and x2 heads exist and were trained (they are not the zeroed
    heads of an untrained model), and the pyramid's last level is exactly the inference output."""
    pkg = P.load("default")
    g = pkg.generator
    assert len(g.to_images) == 2 and all(head.weight.abs().max() > 0 for head in g.to_images)
    x = inputs(4, 9, 8)
    with torch.no_grad():
        y = g(x)
        pyramid = g.forward_pyramid(x)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(9, 8), (18, 16), (36, 32)]
    assert torch.equal(pyramid[-1], y)


# ------------------------------------------------------------------ discriminator


def pyramid(bands: int, scale: int, n: int = 2, h: int = 4, w: int = 5, seed: int = 0) -> list[torch.Tensor]:
    levels = int(np.log2(scale)) + 1
    return [inputs(bands, h * 2**k, w * 2**k, n=n, seed=seed + k) for k in range(levels)]


@pytest.mark.parametrize("bands", [3, 4, 6])
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_discriminator_scores_one_value_per_sample(bands, scale):
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(bands=bands, scale=scale, features=8, max_features=16))
    out = d(pyramid(bands, scale, n=3))
    assert out.shape == (3,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_gradients_reach_every_parameter_and_every_scale(spectral_norm):
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(bands=4, scale=4, features=8, spectral_norm=spectral_norm))
    images = [t.requires_grad_(True) for t in pyramid(4, 4, n=4)]
    d(images).sum().backward()
    params = list(d.named_parameters())
    assert len(params) > 10
    for name, p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for k, image in enumerate(images):
        assert image.grad is not None and image.grad.abs().sum() > 0, f"scale {k}"


def test_discriminator_normalises_its_input():
    """Images in DN ÷ norm_scale: the same pyramid in reflectance with norm_scale=1 scores the same."""
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(bands=4, scale=2, features=8))
    torch.manual_seed(0)
    d1 = Discriminator(DiscriminatorConfig(bands=4, scale=2, features=8, norm_scale=1.0))
    images = pyramid(4, 2)
    torch.testing.assert_close(d(images), d1([t / 10000 for t in images]))
    assert not torch.allclose(d(images), d1(images))


def test_discriminator_single_sample_and_different_samples():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(bands=4, scale=4, features=8))
    a, b = pyramid(4, 4, n=1, seed=0), pyramid(4, 4, n=1, seed=10)
    assert d(a).shape == (1,) and torch.isfinite(d(a)).all()
    assert not torch.equal(d(a), d(b))


def test_discriminator_refuses_a_wrong_pyramid():
    d = Discriminator(DiscriminatorConfig(bands=4, scale=4, features=8))
    good = pyramid(4, 4)
    with pytest.raises(ValueError, match="3 images"):
        d(good[1:])
    with pytest.raises(ValueError, match="doubling"):
        d([good[0], good[1], good[1]])
    with pytest.raises(ValueError, match="4, h, w"):
        d([t[:, :3] for t in good])
    with pytest.raises(ValueError, match="scale"):
        Discriminator(DiscriminatorConfig(scale=3))


def test_minibatch_stddev_by_hand():
    x = torch.zeros(4, 2, 1, 1)
    x[:, 0, 0, 0] = torch.tensor([1.0, 10.0, 3.0, 20.0])  # groups of 2: samples (0, 2) and (1, 3)
    x[:, 1, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 4.0])
    out = MinibatchStdDev(group=2)(x)
    assert out.shape == (4, 3, 1, 1)
    # group (0, 2): std of (1, 3) = 1, of (0, 0) = 0 → 0.5; group (1, 3): std (10, 20) = 5, (0, 4) = 2 → 3.5
    torch.testing.assert_close(out[:, 2, 0, 0], torch.tensor([0.5, 3.5, 0.5, 3.5]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, :2], x)
    assert (MinibatchStdDev(group=4)(x[:1])[:, 2] < 1e-3).all()  # a batch of one: zero


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_consistent_generator_degrades_back_to_its_input(scale):
    """With ``consistent``, the block mean of the (rounded uint16) output equals the input within 1 DN."""
    import numpy as np

    from stacsr.model.package import ModelCard, ModelPackage, Predictor

    torch.manual_seed(3)
    config = GeneratorConfig(bands=4, scale=scale, features=8, blocks=1, consistent=True)
    g = Generator(config).eval()
    torch.nn.init.normal_(g.tail.weight, std=0.01)  # far from bicubic, but inside the uint16 range
    card = ModelCard("t", "0", ["B02", "B03", "B04", "B08"], ["blue", "green", "red", "nir"], config.to_dict())
    predict = Predictor(ModelPackage(card, g, "x", b""))
    x = np.random.default_rng(0).integers(3000, 6000, (2, 4, 13, 11)).astype(np.uint16)
    y = predict(x).astype(np.float64)
    assert 1 < y.min() and y.max() < 65535  # no clipping: the constraint holds up to rounding only inside the range
    n, b, h, w = y.shape
    means = y.reshape(n, b, h // scale, scale, w // scale, scale).mean(axis=(3, 5))
    assert np.abs(means - x).max() <= 1.0
    inconsistent = Generator(GeneratorConfig(bands=4, scale=scale, features=8, blocks=1))
    inconsistent.load_state_dict(g.state_dict())
    y0 = Predictor(
        ModelPackage(
            ModelCard("t", "0", card.bands, card.common_names, inconsistent.config.to_dict()),
            inconsistent.eval(),
            "x",
            b"",
        )
    )(x).astype(np.float64)
    means0 = y0.reshape(n, b, h // scale, scale, w // scale, scale).mean(axis=(3, 5))
    assert np.abs(means0 - x).max() > 50  # the same weights without the constraint are far off


def test_consistent_adds_one_pixel_to_the_receptive_radius():
    base = GeneratorConfig(features=8, blocks=2)
    assert GeneratorConfig(features=8, blocks=2, consistent=True).receptive_radius == base.receptive_radius + 1
