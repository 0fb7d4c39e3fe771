"""``stacsr sr`` itself on Wald-degraded scenes: its output against the real 10 m image, beside bicubic.

``stacsr evaluate`` runs the model's tiles in-process; this script runs the user's command instead. Each scene
of each image (one per date of a time stack) is degraded ×4 (MTF-like and 4 × 4 mean, as ``stacsr evaluate``
does), written as a 40 m GeoTIFF, super-resolved by ``stacsr sr`` with the default model, and scored with
the metrics of ``stacsr evaluate`` (2 LR pixels of border)::

    python jobs/default-model/check_sr.py ../shared/data/real-s2/worldcereal_0000280849BAC91C_clear8_timestack.tif \\
        ../shared/data/real-s2/openeo_gfmap_test_optical_cube_5dates_B02B03B04B08.tif
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from stacsr.evaluate import metrics as M
from stacsr.io.read import read_raster, scenes
from stacsr.train import degrade as D

BANDS = ("B02", "B03", "B04", "B08")
SCALE, BORDER = 4, 2


def write_lr(hr_path: str, lr: np.ndarray, out: Path) -> Path:
    """``lr`` on the grid of ``hr_path`` coarsened ×4 (same origin)."""
    with rasterio.open(hr_path) as src:
        crs, transform = src.crs, src.transform * Affine.scale(SCALE)
    with rasterio.open(
        out,
        "w",
        driver="GTiff",
        width=lr.shape[2],
        height=lr.shape[1],
        count=len(BANDS),
        dtype="uint16",
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(lr)
        dst.descriptions = BANDS
    return out


def check(images: list[str], work: Path) -> dict[str, np.ndarray]:
    """Per degradation, rows of (Δ PSNR vs bicubic, SAM of ``stacsr sr``, SAM of bicubic) per scene."""
    rows: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in D.DEGRADATIONS}
    for image in images:
        for scene in scenes(image, BANDS):
            hr = read_raster(scene.href).data
            hr = hr[:, : hr.shape[1] // SCALE * SCALE, : hr.shape[2] // SCALE * SCALE]
            for kind in D.DEGRADATIONS:
                lr = D.wald_lr(hr, SCALE, kind)
                src = write_lr(image, lr, work / f"{scene.name}_{kind}.tif")
                out = work / f"{scene.name}_{kind}_sr.tif"
                subprocess.run(
                    [sys.executable, "-m", "stacsr.cli", "sr", str(src), str(out), "--no-ray"],
                    check=True,
                    capture_output=True,
                )
                with rasterio.open(out) as f:
                    sr = f.read()
                base = M.bicubic(lr, SCALE)
                mask = M.valid_mask(sr, hr, base, border=BORDER * SCALE)
                rows[kind].append(
                    (M.psnr(sr, hr, mask) - M.psnr(base, hr, mask), M.sam(sr, hr, mask), M.sam(base, hr, mask))
                )
    return {kind: np.array(v) for kind, v in rows.items()}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for kind, v in check(sys.argv[1:], Path(tmp)).items():
            print(
                f"stacsr sr, {kind}: {len(v)} scenes, Δ PSNR vs bicubic {v[:, 0].mean():+.3f} dB, "
                f"SAM {v[:, 1].mean():.2f} vs bicubic {v[:, 2].mean():.2f}"
            )
