"""Pack the default model's training and validation scenes into one ``.npz`` for a GPU machine.

Run here (it needs rasterio and ../shared/data/real-s2); the GPU machine has PyTorch but not the geospatial
stack, so ``sweep.py`` reads this file instead of GeoTIFFs. Scenes are read exactly as ``stacsr pairs
--images`` and ``stacsr evaluate --images`` read them (:func:`stacsr.io.read.scenes`, one scene per date of a
time stack, uint16 reflectance × 10000 in the model's band order B02, B03, B04, B08). Further files after the
output (the urban images made by ``rgbn_from_rgb.py``) are packed as ``urban/`` scenes::

    python jobs/default-model/gpu/pack.py ../shared/data/real-s2 build/device/real-s2.npz build/default-model/urban/*.tif
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from stacsr.io.read import read_raster, scenes

BANDS = ["B02", "B03", "B04", "B08"]
TRAIN = ["openeo_gfmap_temp_256.tif", "worldcereal_00002806639B424A_clear8_timestack.tif"]
VALIDATION = [
    "worldcereal_0000280849BAC91C_clear8_timestack.tif",
    "openeo_gfmap_test_optical_cube_5dates_B02B03B04B08.tif",
]


def pack(folder: Path, out: Path, urban: list[Path]) -> dict[str, int]:
    arrays: dict[str, np.ndarray] = {}
    roles = {"train": [folder / f for f in TRAIN], "val": [folder / f for f in VALIDATION], "urban": urban}
    for role, files in roles.items():
        n = 0
        for f in files:
            for scene in scenes(f, BANDS):
                arrays[f"{role}/{n:03d}/{scene.name}"] = read_raster(scene.href).data.astype(np.uint16)
                n += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {role: sum(k.startswith(role + "/") for k in arrays) for role in roles}


if __name__ == "__main__":
    print(pack(Path(sys.argv[1]), Path(sys.argv[2]), [Path(f) for f in sys.argv[3:]]))
