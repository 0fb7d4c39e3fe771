"""Degradations that make a low-resolution (LR) patch from a 10 m high-resolution (HR) patch (Wald protocol).

Arrays are ``(..., rows, cols)`` numpy arrays or torch tensors, usually ``(bands, rows, cols)``, in
reflectance × 10000 with 0 = nodata; rows and cols must be multiples of ``scale``. The result has the same
type (numpy → float32 numpy, torch → float tensor on the same device).

- :func:`area` — mean over ``scale × scale`` blocks (the LR pixel covers exactly its HR block);
- :func:`mtf` — Gaussian blur per band (``sigma`` in HR pixels, approximating the Sentinel-2 MTF at the
  LR sampling), then the block mean;
- :func:`noise` — additive Gaussian noise on valid pixels;
- ``mixed`` (training only, :data:`TRAIN_DEGRADATIONS`) — per patch, a blur σ drawn uniformly in
  [``sigma_min``, 4/3 × ``sigma``] (σ < :data:`MIN_SIGMA`: plain block mean), so one model learns sharp and
  blurred inputs.
  :func:`mixed_batch` does it for a whole torch batch on the training worker, with a fresh σ per sample at
  every step (what ``stacsr train`` uses for Wald pairs).

Nodata: an LR pixel is 0 (in every band) when any HR pixel of its block is 0 in any band, the convention of
:func:`stacsr.pipeline.super_resolve`. The blur of :func:`mtf` is normalised by the blurred validity mask, so
zeros next to a nodata area do not darken the valid pixels around it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEGRADATIONS = ("area", "mtf")
TRAIN_DEGRADATIONS = DEGRADATIONS + ("mixed",)
DEFAULT_SIGMA = 1.5
MIN_SIGMA = 0.25  # below this a blur changes block means by < 1 DN: use area


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _check(hr: Any, scale: int) -> None:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, not {scale!r}")
    if hr.ndim < 2:
        raise ValueError(f"expected an array (..., rows, cols), got shape {tuple(hr.shape)}")
    rows, cols = hr.shape[-2:]
    if rows % scale or cols % scale:
        raise ValueError(f"HR patch {rows}×{cols} is not a multiple of the scale {scale}")


def invalid_blocks(hr: Any, scale: int) -> Any:
    """``(..., rows/scale, cols/scale)`` bool: blocks holding a 0 in any band (band axis = -3 when present)."""
    zero = hr == 0
    if hr.ndim >= 3:
        zero = zero.any(-3, keepdims=True) if not _is_torch(hr) else zero.any(dim=-3, keepdim=True)
    *lead, rows, cols = zero.shape
    blocks = zero.reshape(*lead, rows // scale, scale, cols // scale, scale)
    if _is_torch(hr):
        return blocks.any(dim=-1).any(dim=-2)
    return blocks.any(axis=(-3, -1))


def block_mean(x: Any, scale: int) -> Any:
    """Mean over ``scale × scale`` blocks of the last two axes (no nodata handling: see :func:`area`)."""
    *lead, rows, cols = x.shape
    blocks = x.reshape(*lead, rows // scale, scale, cols // scale, scale)
    return blocks.mean(dim=(-3, -1)) if _is_torch(x) else blocks.mean(axis=(-3, -1))


def area(hr: Any, scale: int) -> Any:
    """Block mean over ``scale × scale`` HR pixels; blocks with any nodata become 0."""
    _check(hr, scale)
    x = hr.float() if _is_torch(hr) else np.asarray(hr, dtype=np.float32)
    lr = block_mean(x, scale)
    bad = invalid_blocks(x, scale)
    if _is_torch(x):
        return lr.masked_fill(bad.expand_as(lr), 0.0)
    return np.where(bad, np.float32(0), lr).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ⌈3σ⌉ (float64)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, not {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur_numpy(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable convolution over the last two axes, edges reflected."""
    r = len(kernel) // 2
    pad = [(0, 0)] * (x.ndim - 2)
    out = np.pad(x, pad + [(r, r), (0, 0)], mode="reflect")
    out = sum(k * out[..., i : i + x.shape[-2], :] for i, k in enumerate(kernel))
    out = np.pad(out, pad + [(0, 0), (r, r)], mode="reflect")
    return sum(k * out[..., :, i : i + x.shape[-1]] for i, k in enumerate(kernel))


def _blur_torch(x: Any, kernel: np.ndarray) -> Any:
    import torch
    from torch.nn import functional as F

    r = len(kernel) // 2
    lead, (rows, cols) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(-1, 1, rows, cols)
    k = torch.as_tensor(kernel, dtype=flat.dtype, device=flat.device)
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return flat.reshape(*lead, rows, cols)


def blur(hr: Any, sigma: float = DEFAULT_SIGMA) -> Any:
    """Gaussian blur of each band (``sigma`` in pixels), normalised over valid (non-zero) pixels."""
    kernel = gaussian_kernel(sigma)
    if min(hr.shape[-2:]) <= len(kernel) // 2:
        raise ValueError(f"patch {tuple(hr.shape[-2:])} too small for a blur of sigma {sigma}")
    if _is_torch(hr):
        x = hr.double()
        valid = (x != 0).to(x.dtype)
        num, den = _blur_torch(x * valid, kernel), _blur_torch(valid, kernel)
        return (num / den.clamp_min(1e-12)).masked_fill(valid == 0, 0.0).to(hr.float().dtype)
    x = np.asarray(hr, dtype=np.float64)
    valid = (x != 0).astype(np.float64)
    num, den = _blur_numpy(x * valid, kernel), _blur_numpy(valid, kernel)
    return np.where(valid > 0, num / np.maximum(den, 1e-12), 0).astype(np.float32)


def mtf(hr: Any, scale: int, sigma: float = DEFAULT_SIGMA) -> Any:
    """Gaussian blur per band approximating the sensor MTF, then :func:`area`; nodata as in :func:`area`."""
    _check(hr, scale)
    lr = area(blur(hr, sigma), scale)
    bad = invalid_blocks(hr, scale)  # the blur keeps zeros in place, but say it explicitly
    if _is_torch(lr):
        return lr.masked_fill(bad.expand_as(lr), 0.0)
    return np.where(bad, np.float32(0), lr).astype(np.float32)


def noise(lr: Any, std: float, rng: Any = None) -> Any:
    """``lr`` plus Gaussian noise of standard deviation ``std`` (reflectance × 10000) on valid pixels.

    Nodata stays 0 and valid pixels stay ≥ 1. ``rng``: a numpy ``Generator`` (numpy input) or a torch
    ``Generator`` (torch input), for reproducible noise.
    """
    if std < 0:
        raise ValueError(f"noise std must be ≥ 0, not {std}")
    if std == 0:
        return lr
    if _is_torch(lr):
        import torch

        x = lr.float()
        n = torch.randn(x.shape, generator=rng, device=x.device, dtype=x.dtype) * std
        return torch.where(x == 0, x, (x + n).clamp_min(1.0))
    x = np.asarray(lr, dtype=np.float32)
    rng = rng if rng is not None else np.random.default_rng()
    n = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std)
    return np.where(x == 0, np.float32(0), np.maximum(x + n, 1)).astype(np.float32)


def degrade(
    hr: Any,
    scale: int,
    kind: str = "area",
    sigma: float = DEFAULT_SIGMA,
    noise_std: float = 0.0,
    rng: Any = None,
    sigma_min: float = 0.0,
) -> Any:
    """LR from HR by ``kind`` (``"area"``, ``"mtf"`` or ``"mixed"``, whose σ is drawn in [``sigma_min``,
    4/3 × ``sigma``] with the numpy ``rng``), then optional noise."""
    if kind == "mixed":
        s = float((rng if rng is not None else np.random.default_rng()).uniform(sigma_min, sigma * 4 / 3))
        kind, sigma = ("mtf", s) if s >= MIN_SIGMA else ("area", sigma)
    if kind == "area":
        lr = area(hr, scale)
    elif kind == "mtf":
        lr = mtf(hr, scale, sigma)
    else:
        raise ValueError(f"unknown degradation {kind!r}: use {', '.join(TRAIN_DEGRADATIONS)}")
    return noise(lr, noise_std, rng) if noise_std else lr


def wald_lr(hr: np.ndarray, scale: int, kind: str = "area", sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """The LR image of Wald's protocol as a sensor would record it: :func:`degrade` (``"area"`` or ``"mtf"``),
    rounded to uint16 (what ``stacsr evaluate`` super-resolves and scores)."""
    return np.rint(degrade(hr, scale, kind, sigma=sigma)).clip(0, 65535).astype(np.uint16)


def mixed_sigmas(n: int, sigma: float = DEFAULT_SIGMA, generator: Any = None, sigma_min: float = 0.0) -> list[float]:
    """``n`` blur σ of the ``mixed`` degradation, uniform in [``sigma_min``, 4/3 × ``sigma``] (torch's generator)."""
    import torch

    return (sigma_min + torch.rand(n, generator=generator, dtype=torch.float64) * (sigma * 4 / 3 - sigma_min)).tolist()


def blur_each(hr: Any, sigmas: list[float]) -> Any:
    """:func:`blur` of each sample of a torch batch ``(n, bands, rows, cols)`` with its own σ, in one pass
    (σ < :data:`MIN_SIGMA`: unchanged). Each kernel is :func:`gaussian_kernel`, zero-padded to the largest."""
    import torch
    from torch.nn import functional as F

    n, b, rows, cols = hr.shape
    if len(sigmas) != n:
        raise ValueError(f"{len(sigmas)} sigmas for a batch of {n}")
    r = max(1, max(math.ceil(3 * s) for s in sigmas))
    if min(rows, cols) <= r:
        raise ValueError(f"patch {rows}×{cols} too small for a blur of sigma {max(sigmas)}")
    kernels = np.zeros((n, 2 * r + 1))
    for i, s in enumerate(sigmas):
        k = gaussian_kernel(s) if s >= MIN_SIGMA else np.ones(1)
        kernels[i, r - len(k) // 2 : r + len(k) // 2 + 1] = k
    k = torch.from_numpy(np.repeat(kernels, b, axis=0)).to(hr.device)
    x = hr.double()
    valid = (x != 0).double()

    def conv(z: Any) -> Any:
        z = z.reshape(1, n * b, rows, cols)
        z = F.conv2d(F.pad(z, (0, 0, r, r), mode="reflect"), k.view(n * b, 1, -1, 1), groups=n * b)
        z = F.conv2d(F.pad(z, (r, r, 0, 0), mode="reflect"), k.view(n * b, 1, 1, -1), groups=n * b)
        return z.reshape(n, b, rows, cols)

    out = conv(x * valid) / conv(valid).clamp_min(1e-12)
    return out.masked_fill(valid == 0, 0.0).to(hr.float().dtype)


def mixed_batch(
    hr: Any,
    scale: int,
    sigma: float = DEFAULT_SIGMA,
    noise_std: float = 0.0,
    generator: Any = None,
    sigma_min: float = 0.0,
) -> Any:
    """LR of a torch HR batch by the ``mixed`` degradation, a fresh σ per sample (:func:`mixed_sigmas`), then
    optional noise; nodata as in :func:`area`. Draws from ``generator`` (default torch's global one)."""
    _check(hr, scale)
    lr = area(blur_each(hr, mixed_sigmas(hr.shape[0], sigma, generator, sigma_min)), scale)
    lr = lr.masked_fill(invalid_blocks(hr, scale).expand_as(lr), 0.0)
    return noise(lr, noise_std, generator) if noise_std else lr
