"""The embedded offline demo: a small Planetary-Computer-style catalogue built from generated imagery.

:func:`build_catalog` writes two overlapping Sentinel-2 L2A items of neighbouring MGRS tiles (UTM 32N,
uint16 COGs for B02, B03, B04, B08 at 10 m and SCL at 20 m); the newer one uses processing baseline
05.10, so its DN carry the +1000 offset. The ground is one synthetic landscape (parcels, roads, water,
town blocks) drawn at 2.5 m and averaged to 10 m, so both items see the same ground and the demo can
show what the model adds. :func:`run` then calls the same :func:`stacsr.pipeline.enhance` as the CLI.
Tests reuse :func:`build_catalog` (with ``style="earth-search"`` for Earth Search conventions).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from stacsr.catalog.presets import COMMON_NAMES, PRESETS, S2_BANDS, no_signing
from stacsr.io.grid import GeoBox, Window, crop, from_rasterio, zoom_out
from stacsr.io.write import write_cog
from stacsr.plumbing import figures
from stacsr.train.degrade import block_mean

EPSG = 32632
WORLD_ORIGIN = (680000.0, 5340000.0)  # upper-left corner of the synthetic ground, UTM 32N (near Munich)
WORLD_PIXELS = 480  # 10 m pixels per side of the synthetic ground
ITEM_PIXELS = 320  # 10 m pixels per side of each item
# Land covers: reflectance × 10000 for B02, B03, B04, B08.
COVERS = np.array(
    [
        [300, 600, 350, 3500],  # crop
        [450, 750, 500, 2800],  # meadow
        [900, 1200, 1500, 2300],  # bare soil
        [400, 500, 300, 150],  # water
        [1100, 1150, 1200, 1600],  # town
    ],
    dtype=np.float32,
)
ROAD = np.array([1300, 1300, 1300, 1500], dtype=np.float32)
ITEMS = [  # id, datetime, tile, baseline, cloud cover, offset of the item in 10 m pixels
    ("S2A_MSIL2A_20210715T103031_R108_T32UPU_DEMO", "2021-07-15T10:30:31Z", "32UPU", "03.01", 4.2, (0, 0)),
    ("S2B_MSIL2A_20240712T102559_R108_T32UQU_DEMO", "2024-07-12T10:25:59Z", "32UQU", "05.10", 1.5, (160, 160)),
]
# Demo AOI (lon/lat): about 2.8 × 2.6 km across the overlap of both items.
BBOX = (11.4337, 48.1515, 11.4723, 48.1740)


def ground(seed: int = 7, scale: int = 4) -> np.ndarray:
    """Synthetic reflectance × 10000 at 10/scale m: ``(4, N·scale, N·scale)`` float32."""
    rng = np.random.default_rng(seed)
    n = WORLD_PIXELS * scale
    cover = np.zeros((n, n), dtype=np.int64)
    bright = np.ones((n, n), dtype=np.float32)
    roads = np.zeros((n, n), dtype=bool)
    stack = [(0, 0, n, n)]
    while stack:  # split the land into parcels, leaving roads along some splits
        r0, c0, r1, c1 = stack.pop()
        h, w = r1 - r0, c1 - c0
        if max(h, w) < 40 * scale or (max(h, w) < 120 * scale and rng.random() < 0.3):
            cover[r0:r1, c0:c1] = rng.choice(len(COVERS), p=[0.35, 0.25, 0.2, 0.05, 0.15])
            bright[r0:r1, c0:c1] = rng.uniform(0.8, 1.2)
            continue
        axis = 0 if h > w else 1
        cut = int(rng.uniform(0.3, 0.7) * (h if axis == 0 else w))
        if rng.random() < 0.35:
            width = rng.integers(1, 3) * scale // 2 + 1
            if axis == 0:
                roads[r0 + cut : r0 + cut + width, c0:c1] = True
            else:
                roads[r0:r1, c0 + cut : c0 + cut + width] = True
        stack += (
            [(r0, c0, r0 + cut, c1), (r0 + cut, c0, r1, c1)]
            if axis == 0
            else [(r0, c0, r1, c0 + cut), (r0, c0 + cut, r1, c1)]
        )
    image = COVERS[cover].transpose(2, 0, 1) * bright
    image[:, roads] = ROAD[:, None]
    image *= 1 + 0.04 * rng.standard_normal((1, n, n)).astype(np.float32)
    return np.clip(image, 1, 10000)


def world_grid() -> GeoBox:
    """The 10 m grid of the synthetic ground."""
    transform = Affine(10, 0, WORLD_ORIGIN[0], 0, -10, WORLD_ORIGIN[1])
    return from_rasterio(transform, f"EPSG:{EPSG}", (WORLD_PIXELS, WORLD_PIXELS))


def build_catalog(
    folder: str | Path, style: str = "planetary-computer", href_base: str | None = None
) -> list[dict[str, Any]]:
    """Write the demo COGs under ``folder`` and return the item dicts (hrefs: paths, or ``href_base``/…)."""
    folder = Path(folder)
    world = block_mean(ground(), 4)
    items = []
    for item_id, when, tile, baseline, cloud, (dr, dc) in ITEMS:
        offset = 1000 if baseline >= "04.00" else 0
        dn = np.rint(world[:, dr : dr + ITEM_PIXELS, dc : dc + ITEM_PIXELS]).astype(np.uint16) + offset
        dn[:, -40:, :60] = 0  # a swath edge: nodata
        grid10 = crop(world_grid(), Window(dr, dc, ITEM_PIXELS, ITEM_PIXELS))
        grid20 = zoom_out(grid10, 2)
        scl = np.where(block_mean(dn.astype(np.float32), 2)[0] == 0, 0, 4).astype(np.uint8)
        files = {
            b: write_cog(folder / item_id / f"{b}.tif", dn[i], grid10, [b], scale=None) for i, b in enumerate(S2_BANDS)
        }
        files["SCL"] = write_cog(folder / item_id / "SCL.tif", scl, grid20, ["SCL"], scale=None)
        href = (
            (lambda p: f"{href_base}/{p.relative_to(folder).as_posix()}") if href_base else (lambda p: str(p.resolve()))
        )
        item = _pc_item(item_id, when, tile, baseline, cloud, grid10, grid20, {k: href(p) for k, p in files.items()})
        items.append(_earth_search_style(item) if style == "earth-search" else item)
    return items


def _pc_item(item_id, when, tile, baseline, cloud, grid10, grid20, hrefs) -> dict[str, Any]:
    geom = grid10.extent.to_crs("EPSG:4326")
    assets = {}
    for key, href in hrefs.items():
        grid = grid20 if key == "SCL" else grid10
        band = {"name": key, **({"common_name": COMMON_NAMES[key]} if key in COMMON_NAMES else {})}
        assets[key] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "gsd": abs(grid.affine.a),
            "eo:bands": [band],
            "proj:shape": list(grid.shape.yx),
            "proj:transform": list(grid.affine)[:6],
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
        ],
        "geometry": geom.json,
        "bbox": list(geom.boundingbox),
        "properties": {
            "datetime": when,
            "platform": f"Sentinel-2{item_id[2]}",
            "constellation": "Sentinel 2",
            "instruments": ["msi"],
            "eo:cloud_cover": cloud,
            "s2:mgrs_tile": tile,
            "s2:processing_baseline": baseline,
            "proj:epsg": EPSG,
        },
        "assets": assets,
        "links": [],
    }


def _earth_search_style(item: dict[str, Any]) -> dict[str, Any]:
    """The same item as Earth Search v1 describes it: common-name keys, proj:code, raster:bands offsets."""
    props = dict(item["properties"])
    tile, baseline = props.pop("s2:mgrs_tile"), props["s2:processing_baseline"]
    del props["proj:epsg"]
    props.update(
        {
            "proj:code": f"EPSG:{EPSG}",
            "grid:code": f"MGRS-{tile}",
            "earthsearch:boa_offset_applied": baseline >= "04.00",
        }
    )
    assets = {}
    for key, asset in item["assets"].items():
        new_key = COMMON_NAMES.get(key, key.lower())
        offset = -0.1 if (baseline >= "04.00" and key != "SCL") else 0.0
        scale = 0.0001 if key != "SCL" else 1.0
        assets[new_key] = {
            **asset,
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": scale, "offset": offset}],
        }
    return {
        **item,
        "properties": props,
        "assets": assets,
        "stac_version": "1.1.0",
        "stac_extensions": item["stac_extensions"] + ["https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
    }


def demo_preset():
    """Planetary Computer conventions, without signing (the demo's files are local)."""
    return replace(PRESETS["planetary-computer"], sign=no_signing, url="demo://", local_assets=True)


def side_by_side(path: str | Path, lr: np.ndarray, sr: np.ndarray, scale: int) -> Path:
    """PNG of input (nearest) | bicubic | stacsr, RGB stretched on the input."""
    import torch
    from torch.nn import functional as F

    bic = F.interpolate(torch.from_numpy(lr[None].astype(np.float32)), scale_factor=scale, mode="bicubic")[0].numpy()
    return figures.save_png(path, [figures.upsample_nearest(lr, scale), bic, sr], S2_BANDS, reference=0)


def run(out: str | Path, package, engine, tile_size: int, progress=None):
    """Build the demo catalogue under ``out/source`` and enhance the demo AOI into ``out``.

    Returns the pipeline's report; also writes ``out/side_by_side.png`` for the least cloudy item.
    """
    from stacsr import pipeline
    from stacsr.catalog.items import output_names
    from stacsr.catalog.publish import item_folder
    from stacsr.catalog.search import order

    out = pipeline.check_writable(out)
    items = order(build_catalog(out / "source"))
    preset = demo_preset()
    report = pipeline.enhance(items, preset, BBOX, out, package, engine, tile_size=tile_size, progress=progress)
    first = pipeline.plan_jobs(items[:1], preset, package.card.bands, BBOX)[0]
    collection_id, item_id = output_names(first.item)
    folder = item_folder(out, collection_id, item_id)
    sr = np.stack([_read_band(folder / f"{item_id}_{b}.tif") for b in package.card.bands])  # the COGs as written
    side_by_side(out / "side_by_side.png", pipeline.read_job(first, preset), sr, package.card.scale)
    return report


def _read_band(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)
