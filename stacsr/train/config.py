"""Training configuration: one :class:`TrainConfig`, read from YAML (``jobs/examples/train.yaml`` documents
every key). Unknown keys and values of the wrong type are refused with a :class:`ValueError` that names the
key (``losses.gan_kind``…); an absent key keeps its default (SR4RS-like: 16 residual blocks × 64 features,
×4, WGAN-GP, content-weighted losses).

Sections: ``generator`` (:class:`~stacsr.model.generator.GeneratorConfig`), ``discriminator`` (the
:class:`~stacsr.model.discriminator.DiscriminatorConfig` fields that are not the generator's: its bands, scale
and norm_scale always follow the generator), ``losses`` (:class:`~stacsr.model.losses.LossWeights` plus the
VGG weights file), ``optimiser`` (Adam), ``degradation`` (how LR is made from HR) and top-level schedule
keys. :meth:`TrainConfig.to_dict` / :func:`from_dict` round-trip (that dict travels to the Ray workers and
into the checkpoint's card).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from stacsr.model.discriminator import DiscriminatorConfig
from stacsr.model.generator import GeneratorConfig
from stacsr.model.losses import GAN_KINDS, VGG19_LAYERS, LossWeights
from stacsr.plumbing.config import parse_dataclass


@dataclass(frozen=True)
class DiscriminatorSection:
    """MSG-GAN discriminator width and regularisation (bands, scale, norm_scale come from the generator)."""

    features: int = 64
    max_features: int = 512
    mbstd_group: int = 4
    spectral_norm: bool = False

    def config(self, generator: GeneratorConfig) -> DiscriminatorConfig:
        return DiscriminatorConfig(
            bands=generator.bands,
            scale=generator.scale,
            features=self.features,
            max_features=self.max_features,
            mbstd_group=self.mbstd_group,
            spectral_norm=self.spectral_norm,
            norm_scale=generator.norm_scale,
        )


@dataclass(frozen=True)
class LossSection:
    """Loss weights (0 turns a term off), GAN kind and the VGG19 weights file for the perceptual loss."""

    l1: float = 0.0  # SR4RS: 0
    l2: float = 100.0  # SR4RS: 100 (on reflectance, summed over scales)
    vgg: float = 0.0  # SR4RS: 1, with a VGG file; off here unless vgg_weights is given
    gan: float = 1.0  # SR4RS: 1 (WGAN-GP)
    gp: float = 10.0
    drift: float = 1e-3
    gan_kind: str = "wgan-gp"
    vgg_weights: str | None = None  # local safetensors file (torchvision key names); needed when vgg > 0
    vgg_layer: str = "relu5_4"
    border: int = 0  # LR pixels at each patch edge left out of the content losses (see losses.interior)

    def weights(self) -> LossWeights:
        return LossWeights(
            l1=self.l1, l2=self.l2, vgg=self.vgg, gan=self.gan, gp=self.gp, drift=self.drift, gan_kind=self.gan_kind
        )


@dataclass(frozen=True)
class OptimiserSection:
    """Adam for both networks, with separate learning rates."""

    lr_g: float = 1e-3  # SR4RS: 0.001
    lr_d: float = 1e-3
    betas: tuple[float, float] = (0.0, 0.999)  # SR4RS: β1 = 0
    eps: float = 1e-8
    schedule: str = "constant"  # constant | cosine (from lr down to final_lr_ratio × lr at the last step)
    warmup_steps: int = 0  # linear warm-up from 0 over these first steps
    final_lr_ratio: float = 0.01  # cosine: the last step's learning rate / lr

    def factor(self, step: int, steps: int) -> float:
        """Learning-rate multiplier of optimiser step ``step`` (0-based) of ``steps``: a function of the step
        alone, so a resumed run continues on exactly the same curve."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            t = min(1.0, (step - self.warmup_steps) / max(1, steps - 1 - self.warmup_steps))
            return self.final_lr_ratio + (1 - self.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0


@dataclass(frozen=True)
class DegradationSection:
    """How the LR patch is made from the HR one (Wald protocol): see :mod:`stacsr.train.degrade`."""

    kind: str = "area"  # area | mtf | mixed (σ uniform in [sigma_min, 4/3 sigma], drawn per patch at every step)
    sigma: float = 1.5  # Gaussian blur (HR pixels) of the mtf kind
    sigma_min: float = 0.0  # the mixed kind's smallest σ (0: some inputs are sharp block means)
    noise_std: float = 0.0  # additive noise on LR (reflectance × 10000)


@dataclass(frozen=True)
class AugmentSection:
    """Random changes of each batch on the worker, applied alike to LR and HR."""

    dihedral: bool = True  # one of the 8 rotations/flips per batch
    gain: float = 0.0  # per-pair brightness gain drawn in [1 − gain, 1 + gain] (radiometric jitter)


@dataclass(frozen=True)
class TrainConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorSection = field(default_factory=DiscriminatorSection)
    losses: LossSection = field(default_factory=LossSection)
    optimiser: OptimiserSection = field(default_factory=OptimiserSection)
    degradation: DegradationSection = field(default_factory=DegradationSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    steps: int = 100_000
    pretrain_steps: int = 0
    batch_size: int = 4  # per worker
    ema: float = 0.999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    preview_every: int = 1000
    log_every: int = 50
    seed: int = 0
    cache_dir: str | None = None  # decoded-patch cache every worker can reach (None: read remotely each epoch)

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ValueError(f"config key {key}: {what}")

        for key in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "preview_every", "log_every"):
            need(getattr(self, key) >= 1, key, f"must be ≥ 1, not {getattr(self, key)}")
        need(self.pretrain_steps >= 0, "pretrain_steps", f"must be ≥ 0, not {self.pretrain_steps}")
        need(0.0 <= self.ema < 1.0, "ema", f"the EMA decay must lie in [0, 1), not {self.ema}")
        need(self.generator.scale in (2, 4, 8), "generator.scale", f"must be 2, 4 or 8, not {self.generator.scale}")
        for key in ("bands", "features", "blocks", "head_kernel", "tail_kernel"):
            need(
                getattr(self.generator, key) >= 1,
                f"generator.{key}",
                f"must be ≥ 1, not {getattr(self.generator, key)}",
            )
        need(self.generator.norm_scale > 0, "generator.norm_scale", "must be > 0")
        need(self.discriminator.features >= 1, "discriminator.features", "must be ≥ 1")
        need(self.discriminator.mbstd_group >= 0, "discriminator.mbstd_group", "must be ≥ 0")
        L = self.losses
        for key in ("l1", "l2", "vgg", "gan", "gp", "drift"):
            need(getattr(L, key) >= 0, f"losses.{key}", f"must be ≥ 0, not {getattr(L, key)}")
        need(L.gan_kind in GAN_KINDS, "losses.gan_kind", f"must be one of {', '.join(GAN_KINDS)}, not {L.gan_kind!r}")
        need(L.border >= 0, "losses.border", f"must be ≥ 0, not {L.border}")
        need(L.vgg_layer in VGG19_LAYERS, "losses.vgg_layer", f"unknown VGG19 layer {L.vgg_layer!r}")
        opt = self.optimiser
        need(opt.lr_g > 0 and opt.lr_d > 0, "optimiser.lr_g/lr_d", "learning rates must be > 0")
        need(all(0 <= b < 1 for b in opt.betas), "optimiser.betas", f"must lie in [0, 1), not {list(opt.betas)}")
        need(
            opt.schedule in ("constant", "cosine"),
            "optimiser.schedule",
            f"must be constant or cosine, not {opt.schedule!r}",
        )
        need(opt.warmup_steps >= 0, "optimiser.warmup_steps", "must be ≥ 0")
        need(0 <= opt.final_lr_ratio <= 1, "optimiser.final_lr_ratio", "must lie in [0, 1]")
        need(0 <= self.augment.gain < 1, "augment.gain", f"must lie in [0, 1), not {self.augment.gain}")
        Dg = self.degradation
        need(Dg.kind in ("area", "mtf", "mixed"), "degradation.kind", f"must be area, mtf or mixed, not {Dg.kind!r}")
        need(Dg.sigma > 0, "degradation.sigma", "must be > 0")
        need(
            0 <= Dg.sigma_min <= Dg.sigma * 4 / 3,
            "degradation.sigma_min",
            f"must be in [0, 4/3 × sigma = {Dg.sigma * 4 / 3:g}], not {Dg.sigma_min}",
        )
        need(Dg.noise_std >= 0, "degradation.noise_std", "must be ≥ 0")

    @property
    def discriminator_config(self) -> DiscriminatorConfig:
        return self.discriminator.config(self.generator)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optimiser"]["betas"] = list(self.optimiser.betas)
        return d


# ------------------------------------------------------------------ loading and checking


def from_dict(data: Mapping[str, Any] | None) -> TrainConfig:
    """A :class:`TrainConfig` from a (YAML-shaped) dict, checked key by key."""
    return parse_dataclass(TrainConfig, data)


def load_config(path: str | os.PathLike | None) -> TrainConfig:
    """Read a YAML training configuration (``None``: all defaults). ValueError on any problem."""
    if path is None:
        return TrainConfig()
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read training config {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"training config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return from_dict(data)
    except ValueError as e:
        raise ValueError(f"training config {path}: {e}") from None
