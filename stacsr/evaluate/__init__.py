"""Evaluation of super-resolution models: metrics (:mod:`.metrics`, pure numpy) and runs (:mod:`.report`).

``stacsr evaluate`` (:func:`stacsr.evaluate.report.evaluate_images`, :func:`stacsr.evaluate.report.evaluate_pairs`)
compares a model with bicubic interpolation, side by side, under Wald's protocol or on manifest pairs.
"""

from stacsr.evaluate.metrics import (
    bicubic,
    consistency,
    correctness,
    psnr,
    sam,
    ssim,
    valid_mask,
)

__all__ = ["bicubic", "consistency", "correctness", "psnr", "sam", "ssim", "valid_mask"]
