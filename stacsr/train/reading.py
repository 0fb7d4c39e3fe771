"""What every pair reader shares: a row's bands and hrefs checked, its Sentinel-2 window read (hrefs signed at
read time, radiometry made uniform: reflectance × 10000 uint16, 0 = nodata), and the patch cache.

Hrefs are stored unsigned; they are signed with ``preset.sign`` when the pixels are read (so a long run renews
tokens that expire), and only the window is fetched (GDAL range reads on COGs). The optional cache keeps each
decoded patch as an ``.npz`` written atomically, so workers sharing a cache folder never see half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stacsr.catalog.presets import Preset
from stacsr.catalog.radiometry import Radiometry
from stacsr.io.grid import GeoBox, GridError, Window
from stacsr.io.window import read_window
from stacsr.plumbing.storage import atomic_file
from stacsr.train.manifest import PairsError


def size_and_scale(row: Mapping[str, Any]) -> tuple[int, int]:
    """``(size, scale)`` of a row; :class:`PairsError` when the size is not a multiple of the scale."""
    size, scale = int(row["size"]), int(row["scale"])
    if scale < 1 or size % scale:
        raise PairsError(f"pair {row['id']}: size {size} is not a multiple of the scale {scale}")
    return size, scale


def row_window(row: Mapping[str, Any], side: int) -> Window:
    """The ``side × side`` window at the row's (``row``, ``col``)."""
    return Window(int(row["row"]), int(row["col"]), side, side)


def row_bands(row: Mapping[str, Any], bands: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The row's bands and hrefs, checked against each other and against the model's ``bands``."""
    hrefs = json.loads(row["hrefs"])
    listed = list(row["bands"])
    if list(hrefs) != listed:
        raise PairsError(
            f"pair {row['id']}: band mismatch between its bands ({', '.join(listed)}) and its hrefs "
            f"({', '.join(hrefs)})"
        )
    if bands is not None and list(bands) != listed:
        raise PairsError(
            f"pair {row['id']}: band mismatch: the manifest has {', '.join(listed)} but the model "
            f"expects {', '.join(bands)}"
        )
    return listed, hrefs


def signed_hrefs(preset: Preset, item_id: str, collection: str | None, hrefs: Mapping[str, str]) -> dict[str, str]:
    """``{asset: href}`` signed now by ``preset`` (as a STAC item of ``collection`` holding those assets)."""
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "geometry": None,
        "properties": {},
        "links": [],
        "assets": {a: {"href": h} for a, h in hrefs.items()},
    }
    return {a: asset["href"] for a, asset in preset.sign(item)["assets"].items()}


def read_s2(
    row: Mapping[str, Any], preset: Preset, listed: Sequence[str], hrefs: Mapping[str, str], grid: GeoBox
) -> np.ndarray:
    """Bands ``listed`` of the row's Sentinel-2 item on ``grid`` (a window at the row's ``row``/``col``), as
    reflectance × 10000 uint16. Hrefs are signed now, not when the manifest was made: tokens are always fresh."""
    signed = signed_hrefs(preset, row["item_id"], row.get("collection"), hrefs)
    radio = json.loads(row["radiometry"])
    window = Window(int(row["row"]), int(row["col"]), *grid.shape.yx)

    def band(b: str) -> np.ndarray:
        dn = read_window(signed[b], window, f"{b} of item {row['item_id']}", grid.affine, int(row["epsg"]))
        return Radiometry(*radio[b]).to_uint16(dn)

    try:
        return np.stack([band(b) for b in listed])
    except GridError as e:  # the raster is not where the manifest says
        raise PairsError(str(e)) from None


def save_cache(path: Path, hr: np.ndarray, **more: np.ndarray) -> None:
    """Write ``hr`` (and ``more`` arrays) to the cache file ``path`` atomically."""
    with atomic_file(path, suffix=".npz") as tmp, open(tmp, "wb") as f:  # workers sharing it never see half a file
        np.savez(f, hr=hr, **more)
