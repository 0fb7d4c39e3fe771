"""The one figure renderer: RGB panels of multispectral images, side by side (README figures, evaluation
reports, the demo's picture, TensorBoard previews).

Panels are ``(bands, rows, cols)`` arrays in reflectance × 10000, 0 = nodata, all of one size. RGB is B04,
B03, B02 where the bands are named, else the first three reversed. The stretch maps the 2nd to the 98th
percentile of one reference panel's valid pixels to [0, 1], the same on every panel, so panels compare pixel
for pixel: one range for all three channels (natural colours: figures, the demo), or one per channel
(``per_channel``: the most contrast, TensorBoard previews).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

RGB_BANDS = ("B04", "B03", "B02")
GAP = 8  # white pixels between panels


def rgb_indices(bands: Sequence[str]) -> list[int]:
    """Indices of B04, B03, B02 (red, green, blue) in ``bands``; else the first three reversed, else band 0."""
    if all(b in bands for b in RGB_BANDS):
        return [list(bands).index(b) for b in RGB_BANDS]
    return [2, 1, 0] if len(bands) >= 3 else [0, 0, 0]


def upsample_nearest(image: np.ndarray, scale: int) -> np.ndarray:
    """``(bands, rows·scale, cols·scale)``: each pixel repeated ``scale × scale`` times."""
    return np.repeat(np.repeat(image, scale, axis=-2), scale, axis=-1)


def stretch(
    panels: Sequence[np.ndarray], bands: Sequence[str], reference: int = -1, per_channel: bool = False
) -> list[np.ndarray]:
    """Each panel as ``(3, rows, cols)`` float32 RGB in [0, 1], stretched 2–98 % on the valid pixels (no band 0)
    of ``panels[reference]``, over all three channels or ``per_channel``."""
    idx = rgb_indices(bands)
    rgb = [np.asarray(p, dtype=np.float32)[idx] for p in panels]
    ref = rgb[reference]
    valid = ref[:, (np.asarray(panels[reference]) > 0).all(axis=0)]
    if valid.shape[1] == 0:
        valid = ref.reshape(3, -1)
    axis = 1 if per_channel else None
    lo, hi = np.percentile(valid, 2, axis=axis), np.percentile(valid, 98, axis=axis)
    lo, span = np.reshape(lo, (-1, 1, 1)), np.reshape(np.where(hi > lo, hi - lo, 1.0), (-1, 1, 1))
    return [np.clip((p - lo) / span, 0, 1).astype(np.float32) for p in rgb]


def side_by_side(panels: Sequence[np.ndarray], bands: Sequence[str], reference: int = -1, gap: int = GAP) -> np.ndarray:
    """``(rows, width, 3)`` uint8: the stretched panels left to right with ``gap`` white columns between."""
    images = [(p.transpose(1, 2, 0) * 255).round().astype(np.uint8) for p in stretch(panels, bands, reference)]
    white = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
    row = [images[0]]
    for image in images[1:]:
        row += [white, image]
    return np.concatenate(row, axis=1)


def save_png(path: str | Path, panels: Sequence[np.ndarray], bands: Sequence[str], reference: int = -1) -> Path:
    """Write :func:`side_by_side` of ``panels`` as a PNG at ``path``."""
    from PIL import Image

    Image.fromarray(side_by_side(panels, bands, reference)).save(path)
    return Path(path)
