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


LABEL_SIZE = 22  # px, the panel labels' font
INSET_COLOUR = (255, 214, 0)  # the inset's frame and the outline of its area


def busiest(a: np.ndarray, b: np.ndarray, size: int, avoid: tuple[int, int]) -> tuple[int, int]:
    """Upper-left ``(row, col)`` of the ``size`` × ``size`` square where ``a`` and ``b`` (bands, rows, cols) differ
    most (sum of absolute differences, on a ``size // 4`` step), outside the bottom-right ``avoid`` (rows, cols)."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum(axis=0)
    rows, cols = diff.shape
    integral = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step, best, where = max(size // 4, 1), -1.0, (0, 0)
    for r in range(0, rows - size + 1, step):
        for c in range(0, cols - size + 1, step):
            if r + size > rows - avoid[0] and c + size > cols - avoid[1]:
                continue  # under the inset
            s = integral[r + size, c + size] - integral[r, c + size] - integral[r + size, c] + integral[r, c]
            if s > best:
                best, where = s, (r, c)
    return where


def comparison(
    panels: Sequence[np.ndarray],
    bands: Sequence[str],
    labels: Sequence[str],
    inset: tuple[int, int, int],
    zoom: int,
    caption: str = "",
    reference: int = 0,
) -> np.ndarray:
    """``(rows, width, 3)`` uint8: the panels side by side in one stretch, each labelled on the image, the square
    ``inset`` ``(row, col, size)`` outlined in every panel and shown ``zoom`` × in its bottom-right corner, and
    ``caption`` on a strip below."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=LABEL_SIZE)
    row, col, size = inset
    images = []
    for label, rgb in zip(labels, stretch(panels, bands, reference)):
        image = Image.fromarray((rgb.transpose(1, 2, 0) * 255).round().astype(np.uint8))
        zoomed = image.crop((col, row, col + size, row + size)).resize((size * zoom,) * 2, Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(image)
        draw.rectangle((col - 2, row - 2, col + size + 1, row + size + 1), outline=INSET_COLOUR, width=2)
        x, y = image.width - zoomed.width - 6, image.height - zoomed.height - 6
        draw.rectangle((x - 3, y - 3, x + zoomed.width + 2, y + zoomed.height + 2), fill=INSET_COLOUR)
        image.paste(zoomed, (x, y))
        left, top, right, bottom = draw.textbbox((10, 8), label, font=font)
        draw.rectangle((left - 6, top - 5, right + 6, bottom + 5), fill=(0, 0, 0))
        draw.text((10, 8), label, font=font, fill=(255, 255, 255))
        images.append(np.asarray(image))
    white = np.full((images[0].shape[0], GAP, 3), 255, np.uint8)
    strip = [images[0]]
    for image in images[1:]:
        strip += [white, image]
    picture = np.concatenate(strip, axis=1)
    if not caption:
        return picture
    below = Image.new("RGB", (picture.shape[1], LABEL_SIZE + 14), (255, 255, 255))
    ImageDraw.Draw(below).text((4, 6), caption, font=ImageFont.load_default(size=LABEL_SIZE - 6), fill=(40, 40, 40))
    return np.concatenate([picture, np.asarray(below)], axis=0)
