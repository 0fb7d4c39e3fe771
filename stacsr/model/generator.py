"""The SRGAN generator (SRResNet family, Ledig et al. 2017), for any number of bands.

    input ─ head conv ─┬─ residual blocks (no batch norm) ─ conv ─(+)─ ×2 upsample … ─ output conv ─(+)─ output
                       └──────────────── global skip ───────────┘                                  │
    input ─────────────────────────── bicubic ×scale (optional residual base) ─────────────────────┘

For training (MSG-GAN), :meth:`Generator.forward_pyramid` also returns the ×1 and each intermediate ×2
output: a 1×1 "to image" conv on the feature map before each ×2 stage, plus the bicubic base at that scale.

The network works on reflectance (input ÷ ``norm_scale``) and returns the same units as its input.
It is a pure function of tensors: no I/O, STAC or Ray here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of :class:`Generator`; stored in the model card."""

    bands: int = 4
    scale: int = 4
    features: int = 64
    blocks: int = 16
    head_kernel: int = 9
    tail_kernel: int = 3
    residual_bicubic: bool = True  # output = bicubic(input) + learned correction
    norm_scale: float = 10000.0  # input DN ÷ norm_scale = network units (reflectance)
    consistent: bool = False  # each output block's mean equals its input pixel (reflectance consistency)
    zero_init_residual: bool = False  # start of training: residual branches and output convs at zero

    @property
    def n_upsample(self) -> int:
        return int(math.log2(self.scale))

    @property
    def receptive_radius(self) -> int:
        """Input pixels on each side that influence one output pixel (rounded up).

        A tile cut with at least this halo gives the same output as the whole image.
        """
        radius = self.head_kernel // 2 + 2 * self.blocks + 1  # head, two 3×3 per block, body tail
        radius += sum(1 / 2**i for i in range(self.n_upsample))  # 3×3 conv before each shuffle
        radius += (self.tail_kernel // 2) / self.scale  # tail conv on the fine grid
        if self.residual_bicubic:
            radius = max(radius, 2)  # bicubic support
        return math.ceil(radius) + int(self.consistent)  # the block-mean correction reaches one pixel further

    def to_dict(self) -> dict:
        return asdict(self)

    def architecture(self) -> dict:
        """The options that define the network and its weights: :meth:`to_dict` less those that only set how
        training starts (two configs with equal architectures load each other's weights)."""
        return {k: v for k, v in self.to_dict().items() if k != "zero_init_residual"}

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class ResidualBlock(nn.Module):
    """conv → PReLU → conv, plus identity (SRGAN's block without batch norm, as in EDSR)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.act = nn.PReLU(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class Upsample2x(nn.Module):
    """conv to 4× channels → pixel shuffle (×2) → PReLU."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(features, features * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shuffle(self.conv(x)))


class Generator(nn.Module):
    """SRResNet generator: ``(N, bands, H, W)`` → ``(N, bands, H·scale, W·scale)``.

    Besides its final output, the generator has one 1×1 "to image" head per intermediate scale
    (×1, and each ×2 stage but the last: ×1 and ×2 at scale 4) for MSG-GAN training
    (:meth:`forward_pyramid`). :meth:`forward` does not compute them: inference costs the same.
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        if config.scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8, not {config.scale}")
        self.config = config
        f = config.features
        self.head = nn.Sequential(
            nn.Conv2d(config.bands, f, config.head_kernel, padding=config.head_kernel // 2), nn.PReLU(f)
        )
        self.body = nn.Sequential(*[ResidualBlock(f) for _ in range(config.blocks)])
        self.body_tail = nn.Conv2d(f, f, 3, padding=1)
        self.upsample = nn.Sequential(*[Upsample2x(f) for _ in range(config.n_upsample)])
        self.tail = nn.Conv2d(f, config.bands, config.tail_kernel, padding=config.tail_kernel // 2)
        # intermediate heads, created last so that a given seed initialises the layers above as before
        self.to_images = nn.ModuleList([nn.Conv2d(f, config.bands, 1) for _ in range(config.n_upsample)])
        if config.zero_init_residual:
            self._zero_init_residual()

    def _zero_init_residual(self) -> None:
        """Zero the last conv of each residual block and every output conv (as torchvision's ResNet does with
        ``zero_init_residual``): each block starts as the identity and, with ``residual_bicubic``, the
        untrained generator is its residual base (bicubic, made consistent when ``consistent``)."""
        for conv in [b.conv2 for b in self.body] + [self.tail, *self.to_images]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @property
    def n_upsample(self) -> int:
        return self.config.n_upsample

    @property
    def receptive_radius(self) -> int:
        """Input pixels on each side that influence one output pixel (see GeneratorConfig)."""
        return self.config.receptive_radius

    def _features(self, x: Tensor) -> Tensor:
        """Head and residual body on ``x`` in network units: the ×1 feature map."""
        features = self.head(x)
        return features + self.body_tail(self.body(features))

    def _output(self, y: Tensor, x: Tensor, factor: int) -> Tensor:
        """Network output ``y`` at ``factor`` plus its residual base (the input resampled), in input units.

        With ``consistent``, each ``factor`` × ``factor`` block is then shifted so that its mean equals the
        input pixel it comes from: the output degrades back to the input exactly (up to rounding).
        """
        if self.config.residual_bicubic:
            y = y + (x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False))
        if self.config.consistent and factor > 1:
            y = y + F.interpolate(x - F.avg_pool2d(y, factor), scale_factor=factor, mode="nearest")
        return y * self.config.norm_scale

    def forward(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Super-resolve ``x`` (input units, e.g. reflectance × 10000) into the same units.

        With ``dtype`` (``torch.bfloat16`` or ``torch.float16``) the network runs in that precision under
        autocast; its residual base and the consistency shift stay in float32, so block means are as exact as
        in float32 and only the detail the network adds is rounded (README, "Half precision").
        """
        x = x / self.config.norm_scale
        if dtype is None:  # no autocast context of ours: an outer one (training in bf16) stays in force
            return self._output(self.tail(self.upsample(self._features(x))), x, self.config.scale)
        with torch.autocast(x.device.type, dtype=dtype):
            y = self.tail(self.upsample(self._features(x)))
        return self._output(y.float(), x, self.config.scale)

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Outputs at every scale, coarse to fine: ``[y×1, y×2, …, y×scale]``, in input units.

        The last one is exactly :meth:`forward`'s output. Each intermediate is its 1×1 head's output plus
        the input resampled to that scale when ``residual_bicubic`` (so zeroed heads give bicubic).
        """
        x = x / self.config.norm_scale
        features = self._features(x)
        outputs = []
        for k, (to_image, stage) in enumerate(zip(self.to_images, self.upsample)):
            outputs.append(self._output(to_image(features), x, 2**k))
            features = stage(features)
        outputs.append(self._output(self.tail(features), x, self.config.scale))
        return outputs


def clamp_consistent(
    y: Tensor, x: Tensor, factor: int, low: float = 1.0, high: float = 65535.0, tolerance: float = 0.01
) -> Tensor:
    """``y`` clipped to ``[low, high]`` with the mean of each ``factor`` × ``factor`` block kept at its input
    pixel ``x`` (clamped to the same range, so always reachable).

    Clipping a consistent output (ringing below 1 DN beside a bright edge) changes its block means; what it
    takes from a block is given back, in equal shares, to the block's pixels that are not at the bound in
    that direction, and again until the block is within ``tolerance`` (water-filling: at most factor²
    rounds). Only the blocks that hold a pixel out of range are gathered and changed (a few percent of them
    on real scenes); the others are left exactly as they are. Each block is corrected on its own, so tiles
    stay seam-free. ``y`` is changed in place and returned.
    """
    out_of_range = (F.max_pool2d(y, factor) > high) | (F.max_pool2d(-y, factor) > -low)
    if not bool(out_of_range.any()):
        return y
    n, c, i, j = out_of_range.nonzero(as_tuple=True)
    offsets = torch.arange(factor, device=y.device)
    index = (
        n[:, None, None],
        c[:, None, None],
        (i[:, None] * factor + offsets)[:, :, None],
        (j[:, None] * factor + offsets)[:, None, :],
    )
    blocks = y[index].reshape(len(n), factor * factor).clamp(low, high)
    target = x[n, c, i, j].to(y.dtype).clamp(low, high)
    for _ in range(factor * factor):
        deficit = target - blocks.mean(dim=1)
        deficit = torch.where(deficit.abs() > tolerance, deficit, 0.0)
        if not bool(deficit.any()):
            break
        free = torch.where(deficit[:, None] > 0, blocks < high, blocks > low).to(y.dtype)
        share = deficit * (factor * factor) / free.sum(dim=1).clamp(min=1.0)
        blocks = (blocks + share[:, None] * free).clamp(low, high)
    y[index] = blocks.reshape(len(n), factor, factor)
    return y
