"""Image-quality metrics for super-resolution, on reflectance. Pure numpy (torch only for bicubic); no I/O.

Conventions
-----------
- Images are ``(bands, rows, cols)`` arrays in reflectance × 10000 (uint16 DN or float), 0 = nodata, as
  everywhere in stacsr. Every metric divides by :data:`~stacsr.io.units.DN_PER_REFLECTANCE` first, so errors are in
  reflectance units and the **data range is 1.0** (reflectance 1.0 = 10000 DN): PSNR = 10·log10(1 / MSE).
- ``mask`` is an optional ``(rows, cols)`` bool array of the pixels to score (``None``: all of them);
  :func:`valid_mask` builds the usual one — no band is 0 in any of the images (nodata) and the pixels
  within ``border`` of the image edge are left out (one receptive field of the model: those pixels see
  mirrored context, not the real neighbourhood).
- Metrics over no pixel are ``nan``.

Metrics
-------
- :func:`psnr` — peak signal-to-noise ratio (dB) over all bands and masked pixels.
- :func:`ssim` — structural similarity (Wang et al. 2004): Gaussian window 11×11, σ = 1.5, K1 = 0.01,
  K2 = 0.03, data range 1.0, computed per band and averaged over bands, the SSIM map being averaged over
  the pixels whose whole window lies inside the mask.
- :func:`sam` — spectral angle mapper: per-pixel angle (degrees) between the two spectra, mean over pixels.
- :func:`consistency` — reflectance consistency: mean |block-mean(SR) − LR| (reflectance), the block mean
  being that of :func:`stacsr.train.degrade.area` (the ``scale × scale`` mean; blocks with nodata left out),
  computed in float64.
- :func:`correctness` — improvement / omission / hallucination fractions, in the spirit of opensr-test
  (Aybar et al. 2024, "A comprehensive benchmark for optical remote sensing image super-resolution",
  IEEE GRSL; https://github.com/ESAOpenSR/opensr-test). The definition here is ours (documented on the
  function), not a bit-for-bit port of opensr-test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stacsr.io.units import DN_PER_REFLECTANCE
from stacsr.train.degrade import block_mean, invalid_blocks

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
CORRECTNESS_EPS = 1e-3  # reflectance: pixels where bicubic is already this close to HR carry no information


def _refl(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected a (bands, rows, cols) image, got shape {x.shape}")
    return x / DN_PER_REFLECTANCE


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _refl(x), _refl(y)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    return a, b


def _mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask of shape {mask.shape} does not match the image's {tuple(shape)}")
    return mask


def valid_mask(*images: Any, border: int = 0) -> np.ndarray:
    """``(rows, cols)`` bool: pixels where no band of any image is 0 (nodata), more than ``border`` pixels
    from every edge. ``border`` is in the pixels of these images (LR border × scale for HR images)."""
    if not images:
        raise ValueError("valid_mask needs at least one image")
    shape = np.asarray(images[0]).shape[-2:]
    mask = np.ones(shape, dtype=bool)
    for image in images:
        image = np.asarray(image)
        if image.shape[-2:] != shape:
            raise ValueError(f"images differ in size: {tuple(shape)} and {tuple(image.shape[-2:])}")
        mask &= ~(image == 0).reshape(-1, *shape).any(axis=0)
    if border > 0:
        mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = False, False, False, False
    return mask


def psnr(x: Any, y: Any, mask: Any = None) -> float:
    """PSNR in dB of ``x`` against ``y`` on reflectance with data range 1.0: 10·log10(1 / MSE), the MSE
    taken over every band of the masked pixels. ``inf`` when identical, ``nan`` when the mask is empty."""
    a, b = _pair(x, y)
    m = _mask(mask, a.shape[1:])
    if not m.any():
        return math.nan
    mse = float(np.mean((a[:, m] - b[:, m]) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable correlation of the last two axes with ``k`` ('valid': no padding, output shrinks by len(k)−1)."""
    n = len(k)
    rows, cols = x.shape[-2] - n + 1, x.shape[-1] - n + 1
    out = sum(k[i] * x[..., i : i + rows, :] for i in range(n))
    return sum(k[i] * out[..., :, i : i + cols] for i in range(n))


def ssim(x: Any, y: Any, mask: Any = None) -> float:
    """Mean SSIM of ``x`` against ``y``: Gaussian window 11 (σ 1.5), K1 0.01, K2 0.03, data range 1.0
    (reflectance), computed per band, averaged over the pixels whose whole 11×11 window is inside ``mask``,
    then over bands. For constant images a and b it is (2ab + C1) / (a² + b² + C1), C1 = (0.01)²."""
    a, b = _pair(x, y)
    if min(a.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, not {a.shape[1:]}")
    m = _mask(mask, a.shape[1:])
    k = _gaussian()
    inside = _filter_valid((~m).astype(np.float64), np.ones(SSIM_WINDOW)) < 0.5  # window wholly in the mask
    if not inside.any():
        return math.nan
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = _filter_valid(a, k), _filter_valid(b, k)
    var_a = _filter_valid(a * a, k) - mu_a**2
    var_b = _filter_valid(b * b, k) - mu_b**2
    cov = _filter_valid(a * b, k) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(np.mean(smap[:, inside].mean(axis=1)))


def sam(x: Any, y: Any, mask: Any = None) -> float:
    """Spectral angle mapper: mean over masked pixels of the angle (degrees) between the spectra of ``x``
    and ``y`` (arccos of the normalised dot product over bands). Pixels where either spectrum is all zero
    have no angle and are left out."""
    a, b = _pair(x, y)
    m = _mask(mask, a.shape[1:])
    va, vb = a[:, m], b[:, m]
    na, nb = np.linalg.norm(va, axis=0), np.linalg.norm(vb, axis=0)
    ok = (na > 0) & (nb > 0)
    if not ok.any():
        return math.nan
    cos = np.clip((va[:, ok] * vb[:, ok]).sum(axis=0) / (na[ok] * nb[ok]), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean())


def consistency(sr: Any, lr: Any, scale: int, mask: Any = None) -> float:
    """Reflectance consistency: mean over bands and masked LR pixels of |block-mean(SR) − LR| (reflectance),
    the block mean over ``scale × scale`` SR pixels (as :func:`stacsr.train.degrade.area`, in float64).
    0 for an SR whose block means reproduce its input exactly. ``mask`` is on the LR grid; by default every LR pixel whose
    block holds no nodata (in SR nor LR)."""
    s, low = _refl(sr), _refl(lr)
    if s.shape[0] != low.shape[0] or s.shape[1:] != tuple(scale * n for n in low.shape[1:]):
        raise ValueError(f"SR {s.shape} is not LR {low.shape} × {scale}")
    means = block_mean(s, scale)  # float64 (area() rounds to float32); nodata blocks as in area()
    m = _mask(mask, low.shape[1:]) & ~invalid_blocks(s, scale)[0] & valid_mask(low)
    if not m.any():
        return math.nan
    return float(np.mean(np.abs(means[:, m] - low[:, m])))


def correctness(sr: Any, hr: Any, base: Any, mask: Any = None, eps: float = CORRECTNESS_EPS) -> dict[str, float]:
    """Improvement / omission / hallucination fractions of ``sr`` against ``hr``, relative to ``base`` (the
    LR upsampled by bicubic interpolation), after opensr-test's *correctness* (Aybar et al. 2024).

    Per pixel, with distances the mean absolute difference over bands (reflectance):

    - d_ref = d(base, HR): what bicubic leaves to restore; pixels with d_ref ≤ ``eps`` are left out
      (nothing to restore there);
    - a = d(SR, HR) / d_ref: the SR's error relative to bicubic's (< 1: better than bicubic);
    - b = d(SR, base) / d_ref: how far the SR moved from bicubic, relative to what there was to restore.

    A pixel is a **hallucination** when a > 1 and b > 1 (the SR moved more than there was to restore and
    ended farther from HR than bicubic: invented detail); otherwise an **improvement** when a < b (it is
    closer to HR than to bicubic: it added true detail) and an **omission** when a ≥ b (it stayed closer to
    bicubic than to HR: detail left out). The three fractions sum to 1. Bicubic itself scores omission 1;
    a perfect SR improvement 1; an SR adding strong noise mostly hallucination.

    Returns ``{"improvement", "omission", "hallucination", "pixels"}`` (fractions of the ``pixels`` scored;
    ``nan`` fractions when none).
    """
    s, h = _pair(sr, hr)
    _, ref = _pair(sr, base)
    m = _mask(mask, s.shape[1:])
    d_ref = np.abs(ref[:, m] - h[:, m]).mean(axis=0)
    keep = d_ref > eps
    n = int(keep.sum())
    if not n:
        return {"improvement": math.nan, "omission": math.nan, "hallucination": math.nan, "pixels": 0}
    d_ref = d_ref[keep]
    a = np.abs(s[:, m][:, keep] - h[:, m][:, keep]).mean(axis=0) / d_ref
    b = np.abs(s[:, m][:, keep] - ref[:, m][:, keep]).mean(axis=0) / d_ref
    hallucination = (a > 1) & (b > 1)
    improvement = ~hallucination & (a < b)
    omission = ~hallucination & ~improvement
    return {
        "improvement": float(improvement.mean()),
        "omission": float(omission.mean()),
        "hallucination": float(hallucination.mean()),
        "pixels": n,
    }


def bicubic(lr: Any, scale: int) -> np.ndarray:
    """Bicubic upsampling (torch ``F.interpolate``, ``align_corners=False``) of a ``(bands, rows, cols)`` DN
    image, rounded and clipped to uint16 [1, 65535] like a model's output; LR nodata blocks stay 0."""
    import torch
    from torch.nn import functional as F

    x = np.asarray(lr)
    t = torch.from_numpy(x.astype(np.float32)[None])
    up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)[0]
    out = up.round_().clamp_(1, 65535).numpy().astype(np.uint16)
    nodata = (x == 0).any(axis=0)
    out[:, np.repeat(np.repeat(nodata, scale, axis=0), scale, axis=1)] = 0
    return out
