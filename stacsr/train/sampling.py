"""Sampling patch windows: where the ground is clear, spread over the items.

A Sentinel-2 window is clear where the Scene Classification Layer (SCL, 20 m, read remotely for the area of
interest only) says so (:func:`valid_mask`). Candidate windows lie on a lattice over the valid mask
(:func:`lattice_windows`): a random non-overlapping set first, then overlapping ones. Builders then take the
candidates of every item round robin (:func:`pick`), so that an item short of clear windows leaves its share
to the others.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from stacsr.catalog.presets import Preset
from stacsr.io.grid import GeoBox, GridError, Window, crop, item_grid, item_window, nearest_window
from stacsr.io.window import read_window
from stacsr.train.manifest import DEFAULT_MIN_VALID, PairsError, model_bands

T = TypeVar("T")
SCL_KEYS = ("SCL", "scl")
# SCL classes that make a pixel unusable: 0 nodata, 1 saturated/defective, 3 cloud shadow,
# 8/9 cloud medium/high probability, 10 thin cirrus.
INVALID_SCL = frozenset({0, 1, 3, 8, 9, 10})


@dataclass(frozen=True)
class WaldWindow:
    """A sampled window on an item's 10 m grid and the fraction of its pixels that are clear."""

    window: Window
    valid_fraction: float


def check_sampling(patches: int, patch_size: int, scale: int) -> None:
    """Refuse a patch size that is not a positive multiple of the scale, or fewer than one patch."""
    if scale < 1 or patch_size < scale or patch_size % scale:
        raise PairsError(f"patch size {patch_size} must be a positive multiple of the scale {scale}")
    if patches < 1:
        raise PairsError(f"patches must be ≥ 1, not {patches}")


# ------------------------------------------------------------------ clear pixels


def scl_key(item: Mapping[str, Any]) -> str:
    """The item's Scene Classification asset key (``SCL`` on Planetary Computer, ``scl`` on Earth Search)."""
    for key in SCL_KEYS:
        if key in item.get("assets", {}):
            return key
    raise PairsError(f"item {item.get('id')} has no SCL asset ({' or '.join(SCL_KEYS)}): cannot tell clear pixels")


def _aoi(item: Mapping[str, Any], preset: Preset, bbox: Sequence[float], bands: Sequence[str]) -> tuple[GeoBox, Window]:
    try:
        return item_window(item, preset.asset_keys(list(bands)), bbox)
    except GridError as e:
        raise PairsError(str(e)) from None


def valid_mask(item: Mapping[str, Any], preset: Preset, grid10: GeoBox, window: Window) -> np.ndarray:
    """Clear-ground mask of ``window`` of the 10 m grid ``grid10``, from the item's SCL (nearest neighbour).

    SCL is read remotely (signed at read time) for the window only; pixels outside the SCL raster are invalid.
    """
    key = scl_key(item)
    try:
        grid20 = item_grid(item, key)
    except GridError as e:
        raise PairsError(f"item {item.get('id')}: {e}") from None
    if grid20.crs != grid10.crs:
        raise PairsError(f"item {item.get('id')}: SCL is in {grid20.crs}, the bands in {grid10.crs}")
    try:
        scl_window, rows, cols = nearest_window(crop(grid10, window), grid20)
    except GridError as e:
        raise PairsError(f"item {item.get('id')}: SCL and bands: {e}") from None
    signed = preset.sign(dict(item))
    scl = read_window(signed["assets"][key]["href"], scl_window, asset=f"{key} of item {item.get('id')}")
    return ~np.isin(scl[np.ix_(rows, cols)], list(INVALID_SCL))


# ------------------------------------------------------------------ candidate windows


def _window_sums(mask: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid-pixel counts of every ``size`` window on a lattice of step ``stride`` (summed-area table)."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    r = np.arange(0, mask.shape[0] - size + 1, stride)
    c = np.arange(0, mask.shape[1] - size + 1, stride)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    counts = sat[rr + size, cc + size] - sat[rr, cc + size] - sat[rr + size, cc] + sat[rr, cc]
    return r, c, counts


def _order(eligible: np.ndarray, blocked_radius: int, rng: np.random.Generator, overlap: bool) -> list[tuple[int, int]]:
    """Lattice cells of ``eligible`` in sampling order: a random non-overlapping set first, then the rest."""
    cells = np.argwhere(eligible)
    cells = cells[rng.permutation(len(cells))]
    blocked = np.zeros(eligible.shape, dtype=bool)
    first, rest = [], []
    k = blocked_radius
    for i, j in cells:
        if blocked[i, j]:
            rest.append((int(i), int(j)))
            continue
        first.append((int(i), int(j)))
        blocked[max(i - k, 0) : i + k + 1, max(j - k, 0) : j + k + 1] = True
    return first + (rest if overlap else [])


def lattice_windows(
    mask: np.ndarray,
    patch_size: int,
    stride: int | None,
    rng: np.random.Generator,
    min_valid: float,
    overlap: bool = True,
    origin: tuple[int, int] = (0, 0),
) -> list[WaldWindow]:
    """Windows of ``patch_size`` on a lattice of step ``stride`` (default ``patch_size // 4``) over ``mask``
    (True = valid) whose valid fraction is ≥ ``min_valid``, in sampling order (:func:`_order`); ``origin``
    (row, col) places the mask on its grid."""
    if min(mask.shape) < patch_size:
        return []
    stride = stride or max(1, patch_size // 4)
    r, c, counts = _window_sums(mask, patch_size, stride)
    fraction = counts / float(patch_size * patch_size)
    order = _order((fraction >= min_valid) & (counts > 0), math.ceil(patch_size / stride) - 1, rng, overlap)
    return [
        WaldWindow(Window(origin[0] + int(r[i]), origin[1] + int(c[j]), patch_size, patch_size), float(fraction[i, j]))
        for i, j in order
    ]


def candidates(
    item: Mapping[str, Any],
    preset: Preset,
    bbox: Sequence[float],
    patch_size: int,
    rng: np.random.Generator,
    min_valid: float,
    bands: Sequence[str],
    stride: int | None,
    overlap: bool,
) -> list[WaldWindow]:
    """Clear windows of ``patch_size`` in the item's AOI window, in sampling order (:func:`lattice_windows`)."""
    grid, aoi = _aoi(item, preset, bbox, bands)
    if min(aoi.shape) < patch_size:
        return []
    mask = valid_mask(item, preset, grid, aoi)
    return lattice_windows(mask, patch_size, stride, rng, min_valid, overlap, (aoi.row, aoi.col))


def sample_wald_windows(
    item: Mapping[str, Any],
    preset: Preset,
    bbox: Sequence[float],
    patches: int,
    patch_size: int,
    rng: np.random.Generator,
    min_valid: float = DEFAULT_MIN_VALID,
    bands: Sequence[str] | None = None,
    stride: int | None = None,
    overlap: bool = True,
) -> list[WaldWindow]:
    """Up to ``patches`` windows of ``patch_size`` on the item's 10 m grid, inside the AOI ``bbox`` (lon/lat),
    each with an SCL-clear fraction ≥ ``min_valid``.

    Candidates lie on a lattice of step ``stride`` (default ``patch_size // 4``) over the AOI window; a random
    non-overlapping set is taken first, then (``overlap=True``) overlapping ones. Fewer windows come back when
    the AOI has fewer clear candidates.
    """
    if patches < 1 or patch_size < 1:
        raise PairsError(f"patches ({patches}) and patch size ({patch_size}) must be ≥ 1")
    if not 0 <= min_valid <= 1:
        raise PairsError(f"min_valid must lie in [0, 1], not {min_valid}")
    found = candidates(item, preset, bbox, patch_size, rng, min_valid, model_bands(preset, bands), stride, overlap)
    return found[:patches]


# ------------------------------------------------------------------ picking over the items


def _spread(per_item: Sequence[Sequence[T]], patches: int) -> list[tuple[int, T]]:
    """Round robin over the items' candidate lists until ``patches`` are picked."""
    picked: list[tuple[int, T]] = []
    depth = 0
    while len(picked) < patches and any(depth < len(f) for f in per_item):
        for i, found in enumerate(per_item):
            if depth < len(found) and len(picked) < patches:
                picked.append((i, found[depth]))
        depth += 1
    return picked


def pick(
    per_item: Sequence[Sequence[T]], patches: int, window: Callable[[T], Window], empty: str, short: str
) -> list[tuple[int, T]]:
    """``[(item index, candidate)]``: up to ``patches`` candidates taken round robin over the items, sorted by item,
    then by row and column of their ``window``. :class:`PairsError` ``empty`` when there is none; a warning
    ``only N of <patches> <short>`` when there are fewer than ``patches``."""
    picked = _spread(per_item, patches)
    if not picked:
        raise PairsError(empty)
    if len(picked) < patches:
        warnings.warn(f"only {len(picked)} of {patches} {short}", stacklevel=3)
    return sorted(picked, key=lambda p: (p[0], window(p[1]).row, window(p[1]).col))
