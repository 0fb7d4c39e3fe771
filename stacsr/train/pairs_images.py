"""Wald pairs from local GeoTIFFs instead of a STAC search: the builder (the rows are ``wald`` rows).

Every scene of every file (:func:`stacsr.io.read.scenes`: single dates, or ``<date>_<band>`` time stacks) is an
"item"; its bands are read through ``vrt://file?bands=k`` hrefs, so the rows are ordinary ``wald`` rows, read
by :func:`stacsr.train.pairs_wald.read_wald_pair`. A pixel is valid when every band is > 0.
"""

from __future__ import annotations

import os
import zlib
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
import pyarrow as pa
import rasterio

from stacsr.catalog import radiometry
from stacsr.io.grid import GeoBox, GridError, from_rasterio
from stacsr.io.read import GDAL_ENV, ReadError, Scene, scenes
from stacsr.train.manifest import DEFAULT_MIN_VALID, KIND_WALD, PairsError, make_row, manifest_table, sampling_meta
from stacsr.train.sampling import WaldWindow, check_sampling, lattice_windows, pick

DEFAULT_IMAGE_BANDS = ("B02", "B03", "B04", "B08")  # images without a preset: the model's RGBN


def _scene_datetime(scene: Scene) -> datetime | None:
    try:
        return datetime.fromisoformat(scene.date).replace(tzinfo=timezone.utc) if scene.date else None
    except ValueError:
        return None


def image_windows(
    scene: Scene, patch_size: int, rng: np.random.Generator, min_valid: float, stride: int | None
) -> tuple[GeoBox, list[WaldWindow]]:
    """The scene's grid and its candidate windows (valid = every band > 0), in sampling order."""
    with rasterio.Env(**GDAL_ENV), rasterio.open(scene.href) as src:
        if set(src.dtypes) != {"uint16"}:
            raise PairsError(f"{scene.path} is {src.dtypes[0]}; stacsr expects uint16 reflectance × 10000")
        try:
            grid = from_rasterio(src.transform, src.crs, (src.height, src.width))
        except GridError as e:  # no CRS, rotated
            raise PairsError(f"{scene.path}: {e}") from None
        mask = (src.read() > 0).all(axis=0)
    return grid, lattice_windows(mask, patch_size, stride, rng, min_valid)


def build_image_manifest(
    paths: Sequence[str | os.PathLike],
    patches: int,
    patch_size: int,
    scale: int,
    bands: Sequence[str] = DEFAULT_IMAGE_BANDS,
    seed: int = 0,
    min_valid: float = DEFAULT_MIN_VALID,
    stride: int | None = None,
) -> pa.Table:
    """A ``wald`` manifest from 10 m GeoTIFFs (uint16 reflectance × 10000, 0 = nodata).

    Windows lie on a lattice of step ``stride`` (default ``patch_size // 4``), non-overlapping ones first, then
    overlapping ones, spread over the scenes round robin. Deterministic for a given ``seed``.
    """
    check_sampling(patches, patch_size, scale)
    if not paths:
        raise PairsError("no images to sample pairs from")
    try:
        found = [s for p in paths for s in scenes(p, bands)]
    except ReadError as e:
        raise PairsError(str(e)) from None
    per_scene, grids = [], []
    for scene in found:
        rng = np.random.default_rng([seed, zlib.crc32(scene.name.encode())])
        grid, windows = image_windows(scene, patch_size, rng, min_valid, stride)
        grids.append(grid)
        per_scene.append(windows)
    picked = pick(
        per_scene,
        patches,
        lambda w: w.window,
        f"no {patch_size}×{patch_size} window with ≥ {min_valid:.0%} valid pixels in {len(found)} scene(s): "
        "the manifest would be empty",
        f"patches found in {len(found)} scene(s)",
    )
    rows = [_row(found[i], grids[i], ww, scale, bands) for i, ww in picked]
    meta = sampling_meta(KIND_WALD, patch_size, scale, bands, min_valid, seed, source="images")
    return manifest_table(rows, meta)


def _row(scene: Scene, grid: GeoBox, ww: WaldWindow, scale: int, bands: Sequence[str]) -> dict:
    """The manifest row of a window of a scene (radiometry: reflectance × 10000 already)."""
    return make_row(
        scene.name,
        KIND_WALD,
        grid,
        ww.window,
        ww.window.height,
        scale,
        bands,
        ww.valid_fraction,
        item_id=scene.name,
        datetime=_scene_datetime(scene),
        hrefs=dict(zip(bands, scene.band_hrefs)),
        radiometry={b: [radiometry.DEFAULT_SCALE, 0.0] for b in bands},
    )
