"""The MSG-GAN multi-scale discriminator (Karnewar & Wang 2020), as SR4RS used, for any number of bands.

It judges the generator's whole output pyramid at once (:meth:`Generator.forward_pyramid`): images
``[y×1, y×2, …, y×scale]``, coarse to fine, each twice the size of the one before. Working from the finest
down, every scale's image is concatenated to the feature map that reaches its resolution:

    y×4 ─ 1×1 conv ─ block ─ ↓2 ─(cat y×2)─ block ─ ↓2 ─(cat y×1)─ minibatch stddev ─ conv ─ pool 4×4 ─ linear ─ score
    (block = conv 3×3 → LeakyReLU → conv 3×3 → LeakyReLU; ↓2 = 2×2 average pooling)

so the gradients reach every scale of the generator directly. Images are in input units (reflectance ×
``norm_scale``) and are divided by ``norm_scale``, like the generator. The output is one unbounded score per
sample, ``(N,)``: a critic for WGAN-GP, logits for the relativistic loss, raw values for LSGAN.

Spectral norm is off by default: with WGAN-GP (the default loss, SR4RS's) the gradient penalty already keeps
the critic near 1-Lipschitz, and spectral norm on top over-constrains it (and MSG-GAN/SR4RS did not use it).
Minibatch standard deviation (ProGAN's, as MSG-GAN has) is kept: it lets the critic see the variety of a
batch, against mode collapse. ``spectral_norm=True`` is offered for the LSGAN and relativistic losses.
Pure tensors: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Hyper-parameters of :class:`Discriminator`."""

    bands: int = 4
    scale: int = 4  # the generator's: the pyramid has log2(scale) + 1 images
    features: int = 64  # channels at the finest scale, doubled at each coarser one …
    max_features: int = 512  # … up to this
    mbstd_group: int = 4  # minibatch-stddev group size (0 = off)
    spectral_norm: bool = False
    norm_scale: float = 10000.0

    @property
    def levels(self) -> int:
        return int(math.log2(self.scale)) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiscriminatorConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class MinibatchStdDev(nn.Module):
    """Appends one channel: the standard deviation of each feature over a group of samples, averaged.

    Groups of ``group`` samples (or the largest divisor of the batch size not above it); a batch of one
    gets zeros. Population standard deviation (+1e-8 under the root, so its gradient stays finite).
    """

    def __init__(self, group: int = 4) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group, n) + 1) if n % d == 0)
        y = x.reshape(g, n // g, c, h, w)  # sample i is in group i % (n // g), as ProGAN
        std = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # (n // g,)
        std = std.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, std], dim=1)


class DiscriminatorBlock(nn.Module):
    """conv 3×3 → LeakyReLU → conv 3×3 → LeakyReLU → 2×2 average pooling."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.conv2 = nn.Conv2d(out_features, out_features, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.down = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.conv2(self.act(self.conv1(x)))))


class Discriminator(nn.Module):
    """MSG-GAN discriminator: pyramid ``[(N, bands, h, w), (N, bands, 2h, 2w), …]`` → scores ``(N,)``."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        if config.scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8, not {config.scale}")
        self.config = config
        b = config.bands
        widths = [min(config.features * 2**i, config.max_features) for i in range(config.levels)]
        self.from_image = nn.Sequential(nn.Conv2d(b, widths[0], 1), nn.LeakyReLU(0.2))
        # block i takes the finest-but-i scale down one octave; the image of the next scale is then appended
        self.blocks = nn.ModuleList(
            [DiscriminatorBlock(widths[i] + (b if i else 0), widths[i + 1]) for i in range(config.levels - 1)]
        )
        self.mbstd = MinibatchStdDev(config.mbstd_group) if config.mbstd_group else nn.Identity()
        final_in = widths[-1] + b + (1 if config.mbstd_group else 0)
        self.final = nn.Sequential(
            nn.Conv2d(final_in, widths[-1], 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(widths[-1] * 16, widths[-1]),
            nn.LeakyReLU(0.2),
            nn.Linear(widths[-1], 1),
        )
        if config.spectral_norm:
            for module in list(self.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(module)

    def forward(self, images: Sequence[Tensor]) -> Tensor:
        """Score a pyramid (coarse to fine, input units) of ``levels`` images: ``(N,)``."""
        c = self.config
        if len(images) != c.levels:
            raise ValueError(f"the discriminator takes {c.levels} images (scale {c.scale}), not {len(images)}")
        sizes_ok = all(f.shape[-2:] == (2 * co.shape[-2], 2 * co.shape[-1]) for co, f in zip(images, images[1:]))
        if not sizes_ok or any(im.ndim != 4 or im.shape[1] != c.bands for im in images):
            raise ValueError(
                f"pyramid images must be (N, {c.bands}, h, w), doubling in size at each scale, "
                f"not {[tuple(t.shape) for t in images]}"
            )
        finest_first = [im / c.norm_scale for im in reversed(images)]
        x = self.from_image(finest_first[0])
        for block, image in zip(self.blocks, finest_first[1:]):
            x = torch.cat([block(x), image], dim=1)
        return self.final(self.mbstd(x)).squeeze(1)


def pyramid_shapes(n: int, bands: int, h: int, w: int, scale: int) -> list[tuple[int, int, int, int]]:
    """Shapes of a pyramid for an ``(n, bands, h, w)`` input at ``scale``: coarse to fine."""
    return [(n, bands, h * 2**k, w * 2**k) for k in range(int(math.log2(scale)) + 1)]
