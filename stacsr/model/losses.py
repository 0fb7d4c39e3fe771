"""Training losses of the SRGAN: content (L1, L2, VGG19 perceptual) on every scale, and GAN losses.

Pure torch (no torchvision, no downloads). Images are pyramids, coarse to fine, as the generator's
:meth:`~stacsr.model.generator.Generator.forward_pyramid` returns them and :func:`hr_pyramid` builds
them from the high-resolution target, in input units (reflectance × ``norm_scale``).

Content terms are computed on reflectance (÷ ``norm_scale``) and summed over the scales:

    l1  = Σ_scales mean |SR − HR|          l2 = Σ_scales mean (SR − HR)²
    vgg = Σ_scales mean (φ(SR) − φ(HR))²   φ = VGG19 features (relu5_4 by default, SRGAN's "VGG54")
    content = w_l1·l1 + w_l2·l2 + w_vgg·vgg

GAN losses (``D`` takes a pyramid and returns ``(N,)`` scores), ``kind``:

- ``"wgan-gp"`` (SR4RS's default): D: E[D(fake)] − E[D(real)] + λ_gp·E[(‖∇D(x̂)‖ − 1)²] + ε·E[D(real)²],
  x̂ = α·real + (1 − α)·fake with one α ~ U(0, 1) per sample, shared by all scales, and the gradient norm
  taken over all scales together (MSG-GAN) with respect to reflectance; G: −E[D(fake)].
- ``"lsgan"`` (Mao et al., a=0, b=c=1): D: ½E[(D(real) − 1)²] + ½E[D(fake)²]; G: ½E[(D(fake) − 1)²].
- ``"ragan"`` (relativistic average, ESRGAN; BCE with logits, averaged over both directions as BasicSR):
  D: ½[BCE(D(real) − E D(fake), 1) + BCE(D(fake) − E D(real), 0)];
  G: ½[BCE(D(real) − E D(fake), 0) + BCE(D(fake) − E D(real), 1)].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

GAN_KINDS = ("wgan-gp", "lsgan", "ragan")
Critic = Callable[[Sequence[Tensor]], Tensor]


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term (0 turns a term off) and the GAN loss kind."""

    l1: float = 1.0
    l2: float = 0.0
    vgg: float = 0.0  # needs a local VGG19 weights file (load_vgg)
    gan: float = 1e-3
    gp: float = 10.0  # WGAN-GP gradient penalty weight λ
    drift: float = 1e-3  # WGAN-GP drift weight ε (ProGAN): keeps D(real) near 0
    gan_kind: str = "wgan-gp"

    def __post_init__(self) -> None:
        if self.gan_kind not in GAN_KINDS:
            raise ValueError(f"gan_kind must be one of {', '.join(GAN_KINDS)}, not {self.gan_kind!r}")
        for name in ("l1", "l2", "vgg", "gan", "gp", "drift"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"loss weight {name} must be ≥ 0, not {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ pyramids and content losses


def hr_pyramid(hr: Tensor, levels: int) -> list[Tensor]:
    """The HR target at every scale of the generator's pyramid, coarse to fine (area mean by 2^k).

    ``levels`` = log2(scale) + 1; the last entry is ``hr`` itself, the first is ``hr`` averaged over
    2^(levels−1) × 2^(levels−1) blocks (the LR grid).
    """
    if levels < 1:
        raise ValueError(f"levels must be ≥ 1, not {levels}")
    factor = 2 ** (levels - 1)
    if hr.ndim != 4 or hr.shape[-2] % factor or hr.shape[-1] % factor:
        raise ValueError(f"HR target {tuple(hr.shape)} must be (N, bands, H, W) with H and W multiples of {factor}")
    return [F.avg_pool2d(hr, 2 ** (levels - 1 - k)) if k < levels - 1 else hr for k in range(levels)]


def interior(pyramid: Sequence[Tensor], border: int) -> list[Tensor]:
    """Each level of a coarse-to-fine pyramid without ``border`` LR pixels at every edge (``border × 2^k``
    pixels at level k): the outputs whose receptive field reaches the patch's zero padding, which inference
    (tiles with a halo) never produces."""
    if border <= 0:
        return list(pyramid)
    return [
        y[..., border * 2**k : y.shape[-2] - border * 2**k, border * 2**k : y.shape[-1] - border * 2**k]
        for k, y in enumerate(pyramid)
    ]


def content_losses(
    sr_pyramid: Sequence[Tensor],
    hr_pyramid: Sequence[Tensor],
    weights: LossWeights,
    vgg: "VGGFeatures | None" = None,
    norm_scale: float = 10000.0,
) -> dict[str, Tensor]:
    """Content terms summed over scales on reflectance: ``{"l1", "l2"[, "vgg"], "content"}``.

    ``l1`` and ``l2`` are always returned (for logging); ``vgg`` when ``weights.vgg > 0`` (then ``vgg`` must
    be given) and is computed on the scales at least ``vgg.min_size`` pixels wide. ``content`` is the
    weighted total.
    """
    if len(sr_pyramid) != len(hr_pyramid):
        raise ValueError(f"{len(sr_pyramid)} SR scales but {len(hr_pyramid)} HR scales")
    if weights.vgg > 0 and vgg is None:
        raise ValueError("the VGG loss weight is > 0 but no VGG19 network was given (load_vgg(path))")
    zero = sr_pyramid[-1].new_zeros(())
    terms = {"l1": zero, "l2": zero}
    if weights.vgg > 0:
        terms["vgg"] = zero
    for sr, hr in zip(sr_pyramid, hr_pyramid):
        if sr.shape != hr.shape:
            raise ValueError(f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ")
        diff = (sr - hr) / norm_scale
        terms["l1"] = terms["l1"] + diff.abs().mean()
        terms["l2"] = terms["l2"] + diff.square().mean()
        if weights.vgg > 0 and min(sr.shape[-2:]) >= vgg.min_size:
            terms["vgg"] = terms["vgg"] + F.mse_loss(vgg(sr / norm_scale), vgg(hr / norm_scale))
    content = weights.l1 * terms["l1"] + weights.l2 * terms["l2"]
    if "vgg" in terms:
        content = content + weights.vgg * terms["vgg"]
    return {**terms, "content": content}


# ------------------------------------------------------------------ VGG19 perceptual features

# torchvision's VGG19 "features": numbers = conv output channels, "M" = 2×2 max pooling
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_layer_names() -> dict[str, int]:
    """``{"relu1_1": 1, "relu1_2": 3, "pool1": 4, …, "relu5_4": 35, "pool5": 36}``: index in ``features``."""
    names, index, block, conv = {}, 0, 1, 1
    for item in VGG19_LAYOUT:
        if item == "M":
            names[f"pool{block}"] = index
            index, block, conv = index + 1, block + 1, 1
        else:
            names[f"relu{block}_{conv}"] = index + 1
            index, conv = index + 2, conv + 1
    return names


VGG19_LAYERS = _vgg19_layer_names()


class VGGFeatures(nn.Module):
    """VGG19 convolutional features up to ``layer`` (default ``relu5_4``), frozen, built without torchvision.

    Parameter names are torchvision's (``features.0.weight``, ``features.0.bias``, ``features.2.weight``, …),
    so a file made from torchvision's ``vgg19`` state dict (saved as safetensors) loads as is
    (:func:`load_vgg`). Input: ``(N, bands ≥ 3, H, W)`` reflectance; the bands at ``rgb`` (indices into the
    model's bands, default ``(2, 1, 0)``: with the bands in Sentinel-2 order B02, B03, B04 = blue, green, red
    first, the first three bands reversed are R, G, B) are taken as an RGB image in [0, 1], normalised by
    the ImageNet mean and standard deviation. Parameters do not train; gradients flow to the input.
    """

    def __init__(self, layer: str = "relu5_4", rgb: Sequence[int] = (2, 1, 0)) -> None:
        super().__init__()
        if layer not in VGG19_LAYERS:
            raise ValueError(f"unknown VGG19 layer {layer!r}: one of {', '.join(VGG19_LAYERS)}")
        if len(rgb) != 3:
            raise ValueError(f"rgb must name 3 band indices, not {rgb}")
        self.layer, self.rgb = layer, tuple(int(i) for i in rgb)
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=False)]
                channels = item
        self.features = nn.Sequential(*layers[: VGG19_LAYERS[layer] + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def min_size(self) -> int:
        """Smallest input side the network takes (each max pooling halves it)."""
        return 2 ** sum(isinstance(m, nn.MaxPool2d) for m in self.features)

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always in eval mode (no dropout/batch norm here anyway)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] <= max(self.rgb):
            raise ValueError(f"VGG features need (N, bands, H, W) with band indices {self.rgb}, not {tuple(x.shape)}")
        rgb = x[:, list(self.rgb)]
        return self.features((rgb - self.mean) / self.std)


def load_vgg(path: str | Path, layer: str = "relu5_4", rgb: Sequence[int] = (2, 1, 0)) -> VGGFeatures:
    """VGG19 features with weights from a local safetensors file (torchvision key names); never downloads.

    Keys beyond ``layer`` (deeper convolutions, ``classifier.*``) are ignored. Raises ``ValueError`` when
    the file is missing, is not safetensors, or lacks or mis-shapes a needed weight.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"VGG weights file {path} not found: the perceptual (VGG) loss needs VGG19 weights as a local "
            "safetensors file with torchvision key names (features.0.weight, …); set the VGG weight to 0 to train "
            "without it"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"VGG weights file {path} is not a safetensors file ({e})") from None
    net = VGGFeatures(layer, rgb)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [
        f"{k} is {tuple(state[k].shape)}, not {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        raise ValueError(
            f"VGG weights file {path} does not hold VGG19 features up to {layer}: "
            + "; ".join(([f"missing {', '.join(missing[:4])}"] if missing else []) + wrong[:4])
        )
    net.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()})
    return net


def perceptual_network(weights: LossWeights, path: str | Path | None, layer: str = "relu5_4") -> VGGFeatures | None:
    """The VGG network the content loss needs: None when the VGG weight is 0, else loaded from ``path``."""
    if weights.vgg <= 0:
        return None
    if path is None:
        raise ValueError("the VGG loss weight is > 0 but no VGG weights file was given: give its path")
    return load_vgg(path, layer)


# ------------------------------------------------------------------ GAN losses


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ValueError(f"GAN loss kind must be one of {', '.join(GAN_KINDS)}, not {kind!r}")


def gradient_penalty(D: Critic, real: Sequence[Tensor], fake: Sequence[Tensor], norm_scale: float = 10000.0) -> Tensor:
    """E[(‖∇D(x̂)‖ − 1)²] on random interpolates x̂ of every scale (one α per sample, norm over all scales).

    The gradient is taken with respect to reflectance (the images ÷ ``norm_scale``, what D works on), so
    the 1-Lipschitz target does not depend on the units of the images.
    """
    n = real[-1].shape[0]
    alpha = torch.rand(n, 1, 1, 1, device=real[-1].device, dtype=real[-1].dtype)
    mixed = [(alpha * r.detach() + (1 - alpha) * f.detach()).requires_grad_(True) for r, f in zip(real, fake)]
    grads = torch.autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    squared = sum((g * norm_scale).reshape(n, -1).square().sum(dim=1) for g in grads)
    return (torch.sqrt(squared + 1e-12) - 1).square().mean()


def discriminator_loss(
    kind: str,
    D: Critic,
    real_pyr: Sequence[Tensor],
    fake_pyr: Sequence[Tensor],
    gp_weight: float = 10.0,
    drift: float = 1e-3,
    norm_scale: float = 10000.0,
) -> dict[str, Tensor]:
    """The discriminator's loss, ``{"d_loss", "d_real", "d_fake"[, "wasserstein", "gp", "drift"]}``.

    ``fake_pyr`` is detached here (the generator gets no gradient from this loss). ``d_real``/``d_fake`` are
    mean scores; for WGAN-GP, ``gp`` and ``drift`` are the unweighted E[(‖∇‖ − 1)²] and E[D(real)²], the
    gradient taken with respect to reflectance (images ÷ ``norm_scale``).
    """
    _check_kind(kind)
    fake_pyr = [f.detach() for f in fake_pyr]
    d_real, d_fake = D(real_pyr), D(fake_pyr)
    out = {"d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
    if kind == "wgan-gp":
        wasserstein = d_fake.mean() - d_real.mean()
        gp = gradient_penalty(D, real_pyr, fake_pyr, norm_scale) if gp_weight > 0 else d_real.new_zeros(())
        drift_term = d_real.square().mean()
        out.update(wasserstein=wasserstein, gp=gp, drift=drift_term)
        out["d_loss"] = wasserstein + gp_weight * gp + drift * drift_term
    elif kind == "lsgan":
        out["d_loss"] = 0.5 * (d_real - 1).square().mean() + 0.5 * d_fake.square().mean()
    else:  # ragan
        real_rel = d_real - d_fake.mean()
        fake_rel = d_fake - d_real.mean()
        out["d_loss"] = 0.5 * (
            F.binary_cross_entropy_with_logits(real_rel, torch.ones_like(real_rel))
            + F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel))
        )
    return out


def generator_adv_loss(kind: str, D: Critic, real_pyr: Sequence[Tensor] | None, fake_pyr: Sequence[Tensor]) -> Tensor:
    """The generator's adversarial loss (unweighted). ``real_pyr`` is only used by ``"ragan"``."""
    _check_kind(kind)
    d_fake = D(fake_pyr)
    if kind == "wgan-gp":
        return -d_fake.mean()
    if kind == "lsgan":
        return 0.5 * (d_fake - 1).square().mean()
    if real_pyr is None:
        raise ValueError("the relativistic GAN loss needs the real pyramid")
    with torch.no_grad():  # D(real) only shifts the logits; no gradient reaches the generator through it
        d_real = D(real_pyr)
    real_rel = d_real - d_fake.mean()
    fake_rel = d_fake - d_real.mean()
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real_rel, torch.zeros_like(real_rel))
        + F.binary_cross_entropy_with_logits(fake_rel, torch.ones_like(fake_rel))
    )
