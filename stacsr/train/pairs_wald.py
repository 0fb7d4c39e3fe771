"""Wald pairs (``kind="wald"``): Sentinel-2 alone, the LR patch made from the HR one. Builder and reader.

A row is a ``size × size`` window on an item's 10 m grid. :func:`build_wald_manifest` samples the windows
inside the area of interest where the SCL says the ground is clear, spread over the items (round robin,
non-overlapping first: :mod:`stacsr.train.sampling`). :func:`read_wald_pair` reads the window (the HR patch,
cached if asked) and degrades it ×``scale`` into the LR patch (:mod:`stacsr.train.degrade`). Local GeoTIFFs
make ``wald`` rows too (:mod:`stacsr.train.pairs_images`), read by the same reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from stacsr.catalog.presets import Preset
from stacsr.io.grid import GeoBox, item_grid, window_grid, zoom_out
from stacsr.train.degrade import DEFAULT_SIGMA, degrade
from stacsr.train.manifest import (
    DEFAULT_MIN_VALID,
    KIND_WALD,
    PairsError,
    item_fields,
    make_row,
    manifest_table,
    model_bands,
    sampling_meta,
)
from stacsr.train.reading import read_s2, row_bands, row_window, save_cache, size_and_scale
from stacsr.train.sampling import WaldWindow, check_sampling, pick, sample_wald_windows

# ------------------------------------------------------------------ building


def build_wald_manifest(
    items: Sequence[Mapping[str, Any]],
    preset: Preset,
    bbox: Sequence[float],
    patches: int,
    patch_size: int,
    scale: int,
    seed: int = 0,
    min_valid: float = DEFAULT_MIN_VALID,
    bands: Sequence[str] | None = None,
    stride: int | None = None,
) -> pa.Table:
    """A ``wald`` manifest of ``patches`` windows spread over ``items`` (round robin; an item short of clear
    windows leaves its share to the others). Deterministic for a given ``seed``.

    Raises :class:`PairsError` when nothing can be sampled; warns when fewer than ``patches`` were found.
    """
    if not items:
        raise PairsError("no items to sample pairs from (area, dates, cloud cover)")
    check_sampling(patches, patch_size, scale)
    bands = model_bands(preset, bands)
    keys = preset.asset_keys(list(bands))
    per_item = []
    for item in items:  # a loop, not a comprehension: the warnings name the caller's line
        per_item.append(_sample(item, preset, bbox, patches, patch_size, seed, min_valid, bands, stride))
    picked = pick(
        per_item,
        patches,
        lambda w: w.window,
        f"no {patch_size}×{patch_size} window with ≥ {min_valid:.0%} clear pixels (SCL) in the area of "
        f"interest of any of the {len(items)} item(s): the manifest would be empty",
        f"patches found with ≥ {min_valid:.0%} clear pixels",
    )
    rows = []
    for i, ww in picked:
        item, w = items[i], ww.window
        grid = item_grid(item, keys[0])
        fields = item_fields(item, bands, keys)
        rows.append(make_row(item["id"], KIND_WALD, grid, w, w.height, scale, bands, ww.valid_fraction, **fields))
    meta = sampling_meta(KIND_WALD, patch_size, scale, bands, min_valid, seed, preset=preset.name)
    return manifest_table(rows, meta)


def _sample(
    item: Mapping[str, Any],
    preset: Preset,
    bbox: Sequence[float],
    patches: int,
    patch_size: int,
    seed: int,
    min_valid: float,
    bands: Sequence[str],
    stride: int | None,
) -> list[WaldWindow]:
    """The item's clear windows (its own random stream); none, with a warning, when the AOI misses it."""
    rng = np.random.default_rng([seed, zlib.crc32(str(item["id"]).encode())])
    try:
        return sample_wald_windows(item, preset, bbox, patches, patch_size, rng, min_valid, bands, stride)
    except PairsError as e:
        if "does not overlap" not in str(e):
            raise
        warnings.warn(str(e), stacklevel=3)
        return []


# ------------------------------------------------------------------ reading


def pair_grids(row: Mapping[str, Any]) -> tuple[GeoBox, GeoBox]:
    """``(lr_grid, hr_grid)``: the HR window on the item's 10 m grid, and the same footprint with pixels
    ``scale`` times larger."""
    size, scale = size_and_scale(row)
    hr = window_grid(row["transform"], f"EPSG:{int(row['epsg'])}", row_window(row, size))
    return zoom_out(hr, scale), hr


def cache_path(cache_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """``cache_dir/<row id>-<digest of the source>.npz``: a changed manifest row never hits a stale patch."""
    source = json.dumps([row["hrefs"], row["radiometry"], int(row["row"]), int(row["col"]), int(row["size"])])
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(row["id"]))
    return Path(cache_dir) / f"{safe}-{digest}.npz"


def read_hr(
    row: Mapping[str, Any],
    preset: Preset,
    cache_dir: str | os.PathLike | None = None,
    bands: Sequence[str] | None = None,
) -> np.ndarray:
    """The row's window as reflectance × 10000 uint16 ``(bands, size, size)``, 0 = nodata (cached if asked)."""
    listed, hrefs = row_bands(row, bands)
    path = cache_path(cache_dir, row) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as f:
                hr = f["hr"]
            if hr.shape == (len(listed), int(row["size"]), int(row["size"])):
                return hr
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is read again
    _, hr_grid = pair_grids(row)
    hr = read_s2(row, preset, listed, hrefs, hr_grid)
    if path is not None:
        save_cache(path, hr)
    return hr


def read_wald_pair(
    row: Mapping[str, Any],
    preset: Preset,
    degradation: str = "area",
    noise_std: float = 0.0,
    *,
    sigma: float = DEFAULT_SIGMA,
    rng: np.random.Generator | None = None,
    bands: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    sigma_min: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, hr)`` float32 of a Wald row: the HR window, and that window degraded ×``scale``."""
    hr = read_hr(row, preset, cache_dir, bands).astype(np.float32)
    lr = degrade(hr, int(row["scale"]), degradation, sigma=sigma, noise_std=noise_std, rng=rng, sigma_min=sigma_min)
    return lr, hr
