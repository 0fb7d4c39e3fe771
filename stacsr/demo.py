"""The embedded offline demo: a small Planetary-Computer-style catalogue of a real Sentinel-2 scene.

:func:`build_scene_catalog` writes one Sentinel-2 L2A item (uint16 COGs of B02, B03, B04, B08 at 10 m) from
the crop shipped in ``stacsr/demo_data`` (256 × 256 px south-east of Turnhout, Belgium, MGRS 31UFS; see its README),
with the DN of processing baseline ≥ 04.00 (+1000), so the demo reads them as real items are read.
:func:`run` calls the same :func:`stacsr.pipeline.enhance` as the CLI, then draws ``side_by_side.png``.

:func:`build_catalog` writes the generated catalogue the tests use for exact, controlled pixels: two
overlapping items of neighbouring MGRS tiles (UTM 32N, bands at 10 m and SCL at 20 m), the newer one with
baseline 05.10 (+1000), both cut from one synthetic landscape (parcels, roads, water, town blocks) drawn at
2.5 m and averaged to 10 m (``style="earth-search"`` for Earth Search conventions).
"""

from __future__ import annotations

import json
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
# AOI (lon/lat) of the generated items: about 2.8 × 2.6 km across the overlap of both.
BBOX = (11.4337, 48.1515, 11.4723, 48.1740)

# The real scene: openeo-gfmap's test cube "temp" (Apache-2.0), reflectance × 10000 without offset.
SCENE = Path(__file__).parent / "demo_data" / "openeo_gfmap_temp_256.tif"
SCENE_YEAR = "2018"  # the cube's time label (2018-01-01): probably a composite, acquisition dates not recorded
ATTRIBUTION = f"Contains modified Copernicus Sentinel data {SCENE_YEAR}"
SCENE_ITEM = "S2_MSIL2A_20180101_T31UFS_OPENEO_GFMAP_DEMO"
SCENE_BBOX = (4.999, 51.278, 5.036, 51.302)  # lon/lat around the whole crop (the window is clipped to it)
PICTURE = Window(0, 128, 128, 128)  # the part of the crop the picture shows (10 m px): junction, town, fields


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


def build_scene_catalog(folder: str | Path) -> list[dict[str, Any]]:
    """Write the real scene's COGs (DN + 1000, baseline 05.10) and item JSON under ``folder``; return the item."""
    import rasterio

    folder = Path(folder)
    with rasterio.open(SCENE) as src:
        grid = from_rasterio(src.transform, src.crs, src.shape)
        dn = src.read()
    dn = dn + np.uint16(1000)  # what baseline 04.00 and later serve: reflectance × 10000 + 1000
    files = {
        b: write_cog(folder / SCENE_ITEM / f"{b}.tif", dn[i], grid, [b], scale=None) for i, b in enumerate(S2_BANDS)
    }
    props = {
        "datetime": f"{SCENE_YEAR}-01-01T00:00:00Z",
        "constellation": "Sentinel 2",
        "eo:cloud_cover": 0.0,
        "s2:mgrs_tile": "31UFS",
        "s2:processing_baseline": "05.10",
        "proj:epsg": grid.crs.epsg,
        "description": (
            f"{ATTRIBUTION}. Sentinel-2 L2A crop south-east of Turnhout, Belgium (MGRS 31UFS), 256 x 256 px at 10 m, from the "
            "openeo-gfmap test data (Apache-2.0), time label 2018-01-01 (probably a composite). Its values carry "
            "no BOA offset; the demo adds the +1000 of processing baseline 04.00 and later."
        ),
    }
    hrefs = {k: str(p.resolve()) for k, p in files.items()}
    item = _item(SCENE_ITEM, props, {k: grid for k in hrefs}, hrefs)
    (folder / SCENE_ITEM / f"{SCENE_ITEM}.json").write_text(json.dumps(item, indent=1))  # for people to read
    return [item]


def _pc_item(item_id, when, tile, baseline, cloud, grid10, grid20, hrefs) -> dict[str, Any]:
    props = {
        "datetime": when,
        "platform": f"Sentinel-2{item_id[2]}",
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        "eo:cloud_cover": cloud,
        "s2:mgrs_tile": tile,
        "s2:processing_baseline": baseline,
        "proj:epsg": EPSG,
    }
    return _item(item_id, props, {k: grid20 if k == "SCL" else grid10 for k in hrefs}, hrefs)


def _item(item_id, props, grids, hrefs) -> dict[str, Any]:
    """A Planetary-Computer-style item: one single-band asset per key, with its grid."""
    geom = next(iter(grids.values())).extent.to_crs("EPSG:4326")
    assets = {}
    for key, href in hrefs.items():
        grid = grids[key]
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
        "properties": {"instruments": ["msi"], **props},
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


LABELS = ("Sentinel-2 10 m (input)", "bicubic 2.5 m", "stacsr 2.5 m")
INSET, ZOOM = 56, 4  # the inset: a square of 56 output px (140 m), shown 4 × (224 px)


def side_by_side(path: str | Path, lr: np.ndarray, sr: np.ndarray, scale: int, window: Window = PICTURE) -> Path:
    """PNG of ``window`` of the scene: input (nearest) | bicubic | stacsr, labelled, in one stretch (the input's),
    with the same small area zoomed in each panel: where stacsr differs most from bicubic."""
    import torch
    from PIL import Image
    from torch.nn import functional as F

    bic = F.interpolate(torch.from_numpy(lr[None].astype(np.float32)), scale_factor=scale, mode="bicubic")[0].numpy()
    r0, c0, r1, c1 = window.row, window.col, window.row + window.height, window.col + window.width
    fine = (slice(None), slice(r0 * scale, r1 * scale), slice(c0 * scale, c1 * scale))
    panels = [figures.upsample_nearest(lr[:, r0:r1, c0:c1], scale), bic[fine], sr[fine]]
    avoid = (INSET * ZOOM + 12,) * 2
    shown = figures.stretch(panels, S2_BANDS, reference=0)  # differences as seen: saturated roofs count little
    row, col = figures.busiest(shown[2], shown[1], INSET, avoid)
    km = window.width * abs(float(world_grid().affine.a)) / 1000
    caption = (
        f"{ATTRIBUTION} · MGRS 31UFS, Belgium · {km:.2f} km across · inset zoomed {ZOOM}x · one stretch (the input's)"
    )
    image = figures.comparison(panels, S2_BANDS, LABELS, (row, col, INSET), ZOOM, caption, reference=0)
    Image.fromarray(image).quantize(256).save(path, optimize=True)  # 256 colours: a third of the bytes
    return Path(path)


def run(out: str | Path, package, engine, tile_size: int, progress=None):
    """Build the demo catalogue (the real scene) under ``out/source`` and enhance it into ``out``.

    Returns the pipeline's report; also writes ``out/side_by_side.png``.
    """
    from stacsr import pipeline
    from stacsr.catalog.items import output_names
    from stacsr.catalog.publish import item_folder

    out = pipeline.check_writable(out)
    items = build_scene_catalog(out / "source")
    preset = demo_preset()
    report = pipeline.enhance(items, preset, SCENE_BBOX, out, package, engine, tile_size=tile_size, progress=progress)
    job = pipeline.plan_jobs(items, preset, package.card.bands, SCENE_BBOX)[0]
    collection_id, item_id = output_names(job.item)
    folder = item_folder(out, collection_id, item_id)
    sr = np.stack([_read_band(folder / f"{item_id}_{b}.tif") for b in package.card.bands])  # the COGs as written
    side_by_side(out / "side_by_side.png", pipeline.read_job(job, preset), sr, package.card.scale)
    return report


def _read_band(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)
