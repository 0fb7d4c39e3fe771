"""Training losses (stacsr.model.losses), checked on hand-computed inputs."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stacsr.model import losses as L
from stacsr.model.generator import Generator, GeneratorConfig

N = 10000.0  # norm_scale: images are reflectance × 10000


def softplus(x: float) -> float:
    return math.log(1 + math.exp(x))  # BCE with logits: target 1 → softplus(−x), target 0 → softplus(x)


def flat(values, size: int = 2) -> torch.Tensor:
    """A batch of one-band images, sample i filled with values[i] (in reflectance) × N."""
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 1, size, size) * N


# ------------------------------------------------------------------ weights


def test_loss_weights_defaults_and_validation():
    w = L.LossWeights()
    assert (w.gp, w.drift, w.gan_kind) == (10.0, 1e-3, "wgan-gp")
    assert L.LossWeights(gan_kind="ragan").gan_kind == "ragan"
    with pytest.raises(ValueError, match="gan_kind"):
        L.LossWeights(gan_kind="hinge")
    with pytest.raises(ValueError, match="l1"):
        L.LossWeights(l1=-1)


# ------------------------------------------------------------------ pyramids and content losses


def test_hr_pyramid_of_a_known_image():
    hr = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    p = L.hr_pyramid(hr, 3)
    assert [tuple(t.shape) for t in p] == [(1, 1, 1, 1), (1, 1, 2, 2), (1, 1, 4, 4)]
    assert p[0].item() == 7.5  # mean of 0..15
    assert p[1][0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]  # (0+1+4+5)/4, (2+3+6+7)/4, …
    assert p[2] is hr
    assert L.hr_pyramid(hr, 1) == [hr]


def test_hr_pyramid_refuses_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="multiples of 4"):
        L.hr_pyramid(torch.zeros(1, 1, 6, 8), 3)


def test_l1_and_l2_by_hand():
    sr = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]]) * N  # reflectance differences 1, −2, 3, 0 against zero
    hr = torch.zeros_like(sr)
    out = L.content_losses([sr], [hr], L.LossWeights(l1=1.0, l2=0.0))
    assert out["l1"].item() == pytest.approx(6 / 4)  # (1 + 2 + 3 + 0) / 4
    assert out["l2"].item() == pytest.approx(14 / 4)  # (1 + 4 + 9 + 0) / 4
    assert out["content"].item() == pytest.approx(1.5)
    assert "vgg" not in out
    out = L.content_losses([sr], [hr], L.LossWeights(l1=2.0, l2=0.5))
    assert out["content"].item() == pytest.approx(2.0 * 1.5 + 0.5 * 3.5)


def test_content_losses_sum_over_every_scale():
    coarse_sr, coarse_hr = torch.full((1, 1, 1, 1), 0.5 * N), torch.zeros(1, 1, 1, 1)  # |d| = 0.5
    fine_sr = torch.tensor([[[[0.1, 0.3], [0.0, 0.0]]]]) * N
    fine_hr = torch.zeros(1, 1, 2, 2)
    out = L.content_losses([coarse_sr, fine_sr], [coarse_hr, fine_hr], L.LossWeights(l1=1.0, l2=1.0))
    assert out["l1"].item() == pytest.approx(0.5 + 0.1)  # 0.5 + (0.1 + 0.3) / 4
    assert out["l2"].item() == pytest.approx(0.25 + 0.025)  # 0.25 + (0.01 + 0.09) / 4
    assert out["content"].item() == pytest.approx(0.6 + 0.275)
    with pytest.raises(ValueError, match="scales"):
        L.content_losses([coarse_sr], [coarse_hr, fine_hr], L.LossWeights())


def test_content_loss_trains_every_scale_of_the_generator():
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=4, scale=4, features=8, blocks=1))
    hr = torch.rand(2, 4, 16, 16) * 3000
    out = L.content_losses(g.forward_pyramid(torch.rand(2, 4, 4, 4) * 3000), L.hr_pyramid(hr, 3), L.LossWeights())
    out["content"].backward()
    for head in [*g.to_images, g.tail]:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ GAN losses


class LinearCritic(nn.Module):
    """D(pyramid) = Σ_scales Σ w·x on reflectance: its gradient is w everywhere, of norm ‖w‖."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(w) for w in weights])

    def forward(self, images):
        return sum((w * (x / N)).sum(dim=(1, 2, 3)) for w, x in zip(self.w, images))


def linear_critic(c0: float = 0.5, c1: float = 0.25) -> LinearCritic:
    # a 1×1 then a 2×2 pyramid: ‖w‖² = c0² + 4·c1²
    return LinearCritic([torch.full((1, 1, 1), c0), torch.full((1, 2, 2), c1)])


def two_scale(values) -> list[torch.Tensor]:
    return [flat(values, 1), flat(values, 2)]


def test_wgan_gp_on_a_linear_critic_by_hand():
    D = linear_critic(0.5, 0.5)  # ‖w‖² = 0.25 + 4 · 0.25 = 1.25; D(flat a) = 0.5a + 4 · 0.5a = 2.5a
    real, fake = two_scale([0.1, 0.2]), two_scale([0.3, 0.04])
    out = L.discriminator_loss("wgan-gp", D, real, fake, gp_weight=10.0, drift=1e-3)
    gp = (math.sqrt(1.25) - 1) ** 2
    drift = (0.25**2 + 0.5**2) / 2
    wasserstein = (0.75 + 0.1) / 2 - (0.25 + 0.5) / 2
    assert out["gp"].item() == pytest.approx(gp, rel=1e-5)
    assert out["drift"].item() == pytest.approx(drift, rel=1e-5)
    assert out["wasserstein"].item() == pytest.approx(wasserstein, rel=1e-5)
    assert out["d_loss"].item() == pytest.approx(wasserstein + 10.0 * gp + 1e-3 * drift, rel=1e-5)
    assert out["d_real"].item() == pytest.approx(0.375) and out["d_fake"].item() == pytest.approx(0.425)
    g = L.generator_adv_loss("wgan-gp", D, None, fake)
    assert g.item() == pytest.approx(-0.425)


@pytest.mark.parametrize("c0, c1", [(0.6, 0.4), (1.0, 0.0), (0.0, 0.1), (2.0, 1.0)])
def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm(c0, c1):
    D = linear_critic(c0, c1)
    torch.manual_seed(0)
    real, fake = two_scale([0.3, 0.1, 0.7]), two_scale([0.2, 0.9, 0.0])
    norm = math.sqrt(c0**2 + 4 * c1**2)
    assert L.gradient_penalty(D, real, fake).item() == pytest.approx((norm - 1) ** 2, abs=1e-6)
    out = L.discriminator_loss("wgan-gp", D, real, fake, gp_weight=3.0, drift=0.0)
    assert (out["d_loss"] - out["wasserstein"]).item() == pytest.approx(3.0 * (norm - 1) ** 2, abs=1e-5)


def test_gradient_penalty_trains_the_critic():
    D = linear_critic(2.0, 1.0)  # ‖w‖ = √8: the penalty pushes the weights down
    out = L.discriminator_loss("wgan-gp", D, two_scale([0.1]), two_scale([0.2]), gp_weight=10.0, drift=0.0)
    out["d_loss"].backward()
    assert D.w[0].grad.item() > 0 and (D.w[1].grad > 0).all()


def test_discriminator_loss_does_not_reach_the_generator():
    fake = [t.clone().requires_grad_(True) for t in two_scale([0.2, 0.3])]
    out = L.discriminator_loss("wgan-gp", linear_critic(), two_scale([0.1, 0.4]), fake)
    out["d_loss"].backward()
    assert all(t.grad is None for t in fake)


def constant_critic(images):
    """A discriminator returning one constant per sample: the value its coarsest image is filled with."""
    return images[0].mean(dim=(1, 2, 3)) / N


REAL, FAKE = [0.8, 0.6], [0.3, -0.1]


def test_lsgan_by_hand():
    out = L.discriminator_loss("lsgan", constant_critic, two_scale(REAL), two_scale(FAKE))
    # ½·mean((0.8−1)², (0.6−1)²) + ½·mean(0.3², 0.1²) = ½·0.1 + ½·0.05
    assert out["d_loss"].item() == pytest.approx(0.075)
    assert "gp" not in out
    g = L.generator_adv_loss("lsgan", constant_critic, None, two_scale(FAKE))
    assert g.item() == pytest.approx(0.5 * ((0.3 - 1) ** 2 + (-0.1 - 1) ** 2) / 2)  # 0.425


def test_relativistic_average_by_hand():
    # means: real 0.7, fake 0.1 → real − mean(fake) = (0.7, 0.5), fake − mean(real) = (−0.4, −0.8)
    out = L.discriminator_loss("ragan", constant_critic, two_scale(REAL), two_scale(FAKE))
    d = 0.5 * ((softplus(-0.7) + softplus(-0.5)) / 2 + (softplus(-0.4) + softplus(-0.8)) / 2)
    assert out["d_loss"].item() == pytest.approx(d, rel=1e-6)
    g = L.generator_adv_loss("ragan", constant_critic, two_scale(REAL), two_scale(FAKE))
    assert g.item() == pytest.approx(0.5 * ((softplus(0.7) + softplus(0.5)) / 2 + (softplus(0.4) + softplus(0.8)) / 2))
    with pytest.raises(ValueError, match="real"):
        L.generator_adv_loss("ragan", constant_critic, None, two_scale(FAKE))


def test_generator_adversarial_losses_give_the_fake_a_gradient():
    for kind in L.GAN_KINDS:
        fake = [t.clone().requires_grad_(True) for t in two_scale(FAKE)]
        L.generator_adv_loss(kind, linear_critic(), two_scale(REAL), fake).backward()
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in fake), kind


def test_unknown_gan_kind_is_refused():
    with pytest.raises(ValueError, match="hinge"):
        L.discriminator_loss("hinge", constant_critic, two_scale(REAL), two_scale(FAKE))
    with pytest.raises(ValueError, match="hinge"):
        L.generator_adv_loss("hinge", constant_critic, None, two_scale(FAKE))


# ------------------------------------------------------------------ VGG19 perceptual features

TORCHVISION_VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def test_vgg19_layout_matches_torchvision():
    assert L.VGG19_LAYERS["relu1_1"] == 1 and L.VGG19_LAYERS["relu2_2"] == 8
    assert L.VGG19_LAYERS["relu5_4"] == 35 and L.VGG19_LAYERS["pool5"] == 36
    vgg = L.VGGFeatures()
    keys = list(vgg.state_dict())
    assert keys == [f"features.{i}.{p}" for i in TORCHVISION_VGG19_CONVS for p in ("weight", "bias")]
    shapes = {k: tuple(v.shape) for k, v in vgg.state_dict().items()}
    assert shapes["features.0.weight"] == (64, 3, 3, 3) and shapes["features.34.weight"] == (512, 512, 3, 3)
    assert vgg.min_size == 16 and L.VGGFeatures("relu2_2").min_size == 2
    assert vgg.rgb == (2, 1, 0)  # B02, B03, B04 first → red, green, blue
    with pytest.raises(ValueError, match="relu9_9"):
        L.VGGFeatures("relu9_9")


def write_vgg(path, layer: str = "relu2_2", extra: dict | None = None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in L.VGGFeatures(layer).state_dict().items()}
    save_file({**state, **(extra or {})}, str(path))
    return state


def test_vgg_loads_a_local_file_and_is_deterministic(tmp_path):
    state = write_vgg(tmp_path / "vgg.safetensors", extra={"classifier.0.weight": torch.zeros(2, 2)})
    vgg = L.load_vgg(tmp_path / "vgg.safetensors", layer="relu2_2")
    for k, v in state.items():
        assert torch.equal(vgg.state_dict()[k], v), k
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    x = torch.rand(2, 4, 8, 8) * 0.3
    y = vgg(x)
    assert y.shape == (2, 128, 4, 4)
    assert torch.equal(y, L.load_vgg(tmp_path / "vgg.safetensors", layer="relu2_2")(x))
    assert not torch.equal(y, vgg(torch.rand(2, 4, 8, 8) * 0.3))
    # another file gives other features: the weights really come from the file
    write_vgg(tmp_path / "other.safetensors", seed=1)
    assert not torch.allclose(y, L.load_vgg(tmp_path / "other.safetensors", layer="relu2_2")(x))


def test_vgg_reads_the_first_three_bands_as_rgb(tmp_path):
    write_vgg(tmp_path / "vgg.safetensors")
    vgg = L.load_vgg(tmp_path / "vgg.safetensors", layer="relu2_2")
    x = torch.rand(1, 4, 8, 8) * 0.3
    nir_changed = x.clone()
    nir_changed[:, 3] = 0.9
    assert torch.equal(vgg(x), vgg(nir_changed))  # band 4 (B08) is not seen
    # B02, B03, B04 = blue, green, red: the network sees (B04, B03, B02)
    as_rgb = L.load_vgg(tmp_path / "vgg.safetensors", layer="relu2_2", rgb=(0, 1, 2))
    torch.testing.assert_close(vgg(x), as_rgb(x[:, [2, 1, 0]]))
    assert not torch.allclose(vgg(x), as_rgb(x))
    # ImageNet normalisation: the ImageNet mean colour (as B02, B03, B04 = blue, green, red) is a zero input,
    # so relu1_1 gives relu(bias) everywhere
    relu1_1 = L.load_vgg(tmp_path / "vgg.safetensors", layer="relu1_1")
    r, g, b = L.IMAGENET_MEAN
    mean_colour = torch.tensor([b, g, r, 0.5]).reshape(1, 4, 1, 1).expand(1, 4, 3, 3)
    out = relu1_1(mean_colour)
    bias = relu1_1.features[0].bias.clamp(min=0).reshape(1, -1, 1, 1).expand_as(out)
    torch.testing.assert_close(out, bias)
    assert not torch.allclose(relu1_1(mean_colour + 0.1), bias)


def test_vgg_gradient_flows_to_the_image(tmp_path):
    write_vgg(tmp_path / "vgg.safetensors")
    vgg = L.load_vgg(tmp_path / "vgg.safetensors", layer="relu2_2")
    x = (torch.rand(1, 3, 8, 8) * 0.3).requires_grad_(True)
    vgg(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_content_vgg_term(tmp_path):
    write_vgg(tmp_path / "vgg.safetensors")
    vgg = L.load_vgg(tmp_path / "vgg.safetensors", layer="relu2_2")
    w = L.LossWeights(l1=0.0, vgg=2.0)
    hr = [torch.rand(1, 4, 1, 1) * 3000, torch.rand(1, 4, 4, 4) * 3000]  # 1 px: below the VGG's minimum
    same = L.content_losses(hr, hr, w, vgg)
    assert same["vgg"].item() == 0 and same["content"].item() == 0
    sr = [hr[0] + 500, hr[1] * 0.5]
    out = L.content_losses(sr, hr, w, vgg)
    expected = torch.mean((vgg(sr[1] / N) - vgg(hr[1] / N)) ** 2)  # the 1-pixel scale is skipped
    assert out["vgg"].item() == pytest.approx(expected.item(), rel=1e-6) and expected > 0
    assert out["content"].item() == pytest.approx(2.0 * expected.item(), rel=1e-6)


def test_missing_vgg_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "vgg19.safetensors"
    with pytest.raises(ValueError, match=r"VGG weights file .*vgg19.safetensors not found"):
        L.load_vgg(missing)
    with pytest.raises(ValueError, match="not found"):
        L.perceptual_network(L.LossWeights(vgg=1e-3), missing)
    with pytest.raises(ValueError, match="no VGG weights file"):
        L.perceptual_network(L.LossWeights(vgg=1e-3), None)
    assert L.perceptual_network(L.LossWeights(vgg=0.0), missing) is None  # off: the file is not needed
    with pytest.raises(ValueError, match="VGG"):
        L.content_losses([torch.zeros(1, 3, 4, 4)], [torch.zeros(1, 3, 4, 4)], L.LossWeights(vgg=1.0), None)


def test_bad_vgg_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        L.load_vgg(tmp_path / "junk.safetensors")
    state = write_vgg(tmp_path / "short.safetensors", layer="relu1_2")
    assert "features.5.weight" not in state
    with pytest.raises(ValueError, match="missing features.5.weight"):
        L.load_vgg(tmp_path / "short.safetensors", layer="relu2_2")
    write_vgg(tmp_path / "wrong.safetensors", extra={"features.0.weight": torch.zeros(64, 4, 3, 3)})
    with pytest.raises(ValueError, match=r"features.0.weight is \(64, 4, 3, 3\)"):
        L.load_vgg(tmp_path / "wrong.safetensors", layer="relu2_2")


def test_interior_drops_the_same_footprint_at_every_scale():
    pyramid = [torch.arange(n * n, dtype=torch.float32).reshape(1, 1, n, n) for n in (12, 24, 48)]
    inner = L.interior(pyramid, 2)
    assert [tuple(y.shape[-2:]) for y in inner] == [(8, 8), (16, 16), (32, 32)]
    assert [float(y[0, 0, 0, 0]) for y in inner] == [2 * 12 + 2, 4 * 24 + 4, 8 * 48 + 8]  # same corner on the ground
    assert L.interior(pyramid, 0) == pyramid
    hr = torch.rand(2, 4, 48, 48)
    sr = hr.clone()
    sr[..., :8, :] += 1.0  # wrong only in the outer 2 LR pixels
    w = L.LossWeights(l1=1.0, l2=0.0, gan=0.0)
    full = L.content_losses(L.hr_pyramid(sr, 3), L.hr_pyramid(hr, 3), w, None, 1.0)["l1"]
    kept = L.content_losses(L.interior(L.hr_pyramid(sr, 3), 2), L.interior(L.hr_pyramid(hr, 3), 2), w, None, 1.0)["l1"]
    assert float(full) > 0 and float(kept) == pytest.approx(0.0, abs=1e-6)
