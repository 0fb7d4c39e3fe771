"""Make a 4-band training image (B02, B03, B04, B08) from a Sentinel-2 image that has only B02, B03, B04.

The default model's only urban training data (Berlin, ``../shared/data/real-s2/openeo_gfmap_job_UTM33N_*``)
has no B08. Its B08 is *synthesised* here as the mean of the three visible bands: a band that the Wald
protocol degrades and super-resolves like any other (its LR is the degraded synthetic HR, so the pair is
consistent), carrying urban texture to the NIR output; its NIR spectrum is not real, so these images teach
shapes, not NIR radiometry. Values are reflectance × 10000 with the BOA offset already removed (so dark
pixels can be negative): they are rounded and clipped to [1, 65535] (0 is nodata in stacsr)::

    python jobs/default-model/rgbn_from_rgb.py ../shared/data/real-s2/openeo_gfmap_job_UTM33N_2021-10-10_B02B03B04_float32.tif \\
        build/default-model/urban/berlin-2021-10-10.tif
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio

from stacsr.io.read import read_raster, scenes

VISIBLE = ["B02", "B03", "B04"]
BANDS = VISIBLE + ["B08"]


def rgbn_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """``(3, rows, cols)`` B02, B03, B04 reflectance × 10000 → ``(4, rows, cols)`` uint16, B08 = their mean."""
    visible = np.clip(np.rint(rgb), 1, 65535)
    nir = np.clip(np.rint(visible.mean(axis=0, keepdims=True)), 1, 65535)
    return np.concatenate([visible, nir]).astype(np.uint16)


def convert(src: Path, dst: Path) -> Path:
    (scene,) = scenes(src, VISIBLE)
    data = rgbn_from_rgb(read_raster(scene.href).data.astype(np.float64))
    with rasterio.open(src) as s:
        profile = {
            "driver": "GTiff",
            "width": s.width,
            "height": s.height,
            "count": 4,
            "dtype": "uint16",
            "crs": s.crs,
            "transform": s.transform,
            "compress": "deflate",
        }
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
        d.descriptions = tuple(BANDS)
    return dst


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
