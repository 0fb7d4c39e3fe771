"""The enhance pipeline: the functions the CLI, the demo and Ray jobs all call.

    catalog.search → io.read (AOI window on the item's 10 m grid) → tiles + engine (model per tile)
    → io.write (COG per band on the grid zoomed by the scale) → catalog.items → catalog.publish

:func:`enhance` works on item dicts that a search (or the demo) produced; :func:`sr_file` on one GeoTIFF.
Everything that can be checked before pixels are read (bands, overlap, output folder) is checked first,
so bad input fails fast and leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from stacsr import tiles
from stacsr.catalog import publish, radiometry
from stacsr.catalog.items import build_item, output_collection_id, output_id
from stacsr.catalog.presets import Preset
from stacsr.engine import Engine, LocalEngine, RayEngine
from stacsr.io import grid as G
from stacsr.io import store
from stacsr.io.read import read_item_window, read_raster
from stacsr.io.write import write_cog
from stacsr.model.package import ModelPackage

if TYPE_CHECKING:
    import pystac

DEFAULT_TILE_SIZE = 256


class InputError(ValueError):
    """Input that stacsr refuses, with a one-line reason."""


class Progress:
    """Receives progress events; the CLI renders them, the default ignores them."""

    def item(self, item_id: str, tiles: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


@dataclass
class Job:
    """One source item to super-resolve: the item, its asset keys and the AOI window's grid."""

    item: dict[str, Any]
    assets: list[str]
    grid: G.GeoBox


@dataclass
class Report:
    """What a run did (printed by the CLI as its summary)."""

    items: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    km2: float = 0.0
    output_pixels: int = 0
    seconds: float = 0.0
    catalog: Path | None = None

    @property
    def pixels_per_second(self) -> float:
        return self.output_pixels / self.seconds if self.seconds else 0.0


def make_engine(
    package: ModelPackage,
    use_ray: bool = True,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0,
) -> Engine:
    """A Ray actor pool (local Ray started when ``address`` is None) or, with ``use_ray=False``, in-process."""
    if not use_ray:
        return LocalEngine(package)
    return RayEngine(package, address=address, actors=actors, gpus_per_actor=gpus_per_actor)


def super_resolve(
    image: np.ndarray, package: ModelPackage, engine: Engine, tile_size: int = DEFAULT_TILE_SIZE,
    progress: Progress | None = None,
) -> np.ndarray:  # fmt: skip
    """Seam-free tiled super-resolution of a uint16 ``(bands, rows, cols)`` image; nodata (0) propagated."""
    check_band_count(image.shape[0], package)
    halo, scale = package.receptive_radius, package.card.scale
    cores = tiles.plan(image.shape[1:], tile_size)
    progress = progress or Progress()

    def counted():
        for result in engine.map(tiles.pad(image, halo), cores, halo):
            progress.advance()
            yield result

    out = tiles.stitch(counted(), image.shape[1:], image.shape[0], scale)
    nodata = np.repeat(np.repeat((image == 0).any(axis=0), scale, axis=0), scale, axis=1)
    out[:, nodata] = 0
    return out


def check_band_count(bands: int, package: ModelPackage) -> None:
    if bands != len(package.card.bands):
        raise InputError(
            f"the image has {bands} bands but model {package.card.name} expects "
            f"{len(package.card.bands)} ({', '.join(package.card.bands)})"
        )


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it is writable, or raise a one-line error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stacsr-write-test"):
            pass
    except OSError as e:
        raise InputError(f"output folder {folder} is not writable ({e.strerror or e})") from None
    return folder


def plan_jobs(items: Sequence[dict[str, Any]], preset: Preset, bands: Sequence[str], bbox) -> list[Job]:
    """Check every item before reading any pixel: required bands present, AOI overlapping its grid."""
    if not items:
        raise InputError("no items found for this search (area, dates, cloud cover)")
    keys = preset.asset_keys(list(bands))
    return [Job(item, keys, G.crop(*item_window(item, keys, bbox))) for item in items]


def item_window(item: dict[str, Any], keys: Sequence[str], bbox) -> tuple[G.GeoBox, G.Window]:
    """The item's native grid (of ``keys[0]``) and the AOI's window on it, once the assets are known present."""
    missing = [k for k in keys if k not in item.get("assets", {})]
    if missing:
        raise InputError(f"item {item.get('id')} has no asset {', '.join(missing)} (needed for the model's bands)")
    try:
        grid = G.item_grid(item, keys[0])
        return grid, G.aoi_window(grid, bbox)
    except G.GridError as e:
        raise InputError(f"item {item.get('id')}: {e}") from None


def read_job(job: Job, preset: Preset) -> np.ndarray:
    """Reflectance × 10000 (uint16, 0 = nodata) of a job's window, one layer per model band."""
    dn = read_item_window(preset.sign(job.item), job.assets, job.grid)
    return np.stack([radiometry.of_asset(job.item, k).to_uint16(dn[i]) for i, k in enumerate(job.assets)])


def enhance(
    items: Sequence[dict[str, Any]],
    preset: Preset,
    bbox: Sequence[float],
    out: str | Path,
    package: ModelPackage,
    engine: Engine,
    tile_size: int = DEFAULT_TILE_SIZE,
    compress: str = "deflate",
    progress: Progress | None = None,
) -> Report:
    """Super-resolve the AOI of each item and publish the outputs as a static STAC catalogue in ``out``.

    One output per source item, in the order given (least cloudy first from :func:`catalog.search.search`).
    Each item is published as soon as its COGs are complete, so a failure part-way keeps the items already
    done (complete and valid) and writes nothing for the failing one. Items whose window is all nodata are
    skipped; if every item is, nothing is written and an error is raised.
    """
    jobs = plan_jobs(items, preset, package.card.bands, bbox)
    created = not Path(out).exists()
    out = check_writable(out)
    progress = progress or Progress()
    report, start = Report(), time.perf_counter()
    for job in jobs:
        image = read_job(job, preset)
        if not image.any():
            report.skipped.append(job.item["id"])
            continue
        progress.item(job.item["id"], len(tiles.plan(image.shape[1:], tile_size)))
        sr = super_resolve(image, package, engine, tile_size, progress)
        item = write_output(job, sr, out, package, compress)
        report.catalog = publish.publish_static(out, [item], job.item.get("collection"), package)
        report.items.append(item.id)
        report.km2 += G.area_km2(job.grid)
        report.output_pixels += int(np.prod(sr.shape[1:]))
    report.seconds = time.perf_counter() - start
    if not report.items:
        if created:
            out.rmdir()
        raise InputError(f"the area of interest is all nodata in every item ({', '.join(report.skipped)})")
    return report


def write_output(job: Job, sr: np.ndarray, out: Path, package: ModelPackage, compress: str) -> "pystac.Item":
    """Write one COG per band of ``sr`` in the item's folder and return its (unpublished) STAC item."""
    grid = G.zoom_in(job.grid, package.card.scale)
    item_id = output_id(job.item["id"])
    files = write_bands(sr, grid, out, output_collection_id(job.item.get("collection")), item_id,
                        package.card.bands, compress)  # fmt: skip
    return build_item(job.item, grid, files, package, source_href=self_href(job.item))


def write_bands(sr: np.ndarray, grid: G.GeoBox, root: str | Path, collection_id: str, item_id: str,
                bands: Sequence[str], compress: str) -> dict[str, str]:  # fmt: skip
    """One COG per band at ``<root>/<collection>/<item>/<item>_<band>.tif``; returns band → href.

    A local ``root`` is written in place (each COG atomically, :func:`stacsr.io.write.write_cog`); an object
    storage one (``s3://``…) through a local temporary file put under a temporary key and moved
    (:func:`stacsr.io.store.put`). Either way no partial COG ever sits under its final name.
    """
    if not store.is_remote(str(root)):
        folder = publish.item_folder(root, collection_id, item_id)
        return {band: str(write_cog(folder / f"{item_id}_{band}.tif", layer, grid, [band], compress=compress).resolve())
                for band, layer in zip(bands, sr)}  # fmt: skip
    hrefs = {}
    with tempfile.TemporaryDirectory(prefix="stacsr-cog-") as tmp:
        for band, layer in zip(bands, sr):
            name = f"{item_id}_{band}.tif"
            local = write_cog(Path(tmp) / name, layer, grid, [band], compress=compress)
            hrefs[band] = store.put(local, store.join(str(root), collection_id, item_id, name))
    return hrefs


def self_href(item: dict[str, Any]) -> str | None:
    """The ``self`` link of a source item (its canonical URL), if any."""
    return next((link["href"] for link in item.get("links", []) if link.get("rel") == "self"), None)


def sr_file(
    src: str, dst: str | Path, package: ModelPackage, engine: Engine, tile_size: int = DEFAULT_TILE_SIZE,
    compress: str = "deflate", progress: Progress | None = None,
) -> Report:  # fmt: skip
    """Super-resolve one GeoTIFF (bands in the model's order, reflectance × 10000) into a multi-band COG."""
    start = time.perf_counter()
    dst = Path(dst)
    check_writable(dst.parent if str(dst.parent) else ".")
    raster = read_raster(src)
    if raster.data.dtype != np.uint16:
        raise InputError(f"{src} is {raster.data.dtype}; stacsr expects uint16 reflectance x 10000")
    if not raster.data.any():
        raise InputError(f"{src} is all nodata (0)")
    check_band_count(raster.data.shape[0], package)  # before the progress bar starts
    (progress or Progress()).item(os.path.basename(src), len(tiles.plan(raster.data.shape[1:], tile_size)))
    sr = super_resolve(raster.data, package, engine, tile_size, progress)
    names = [d or b for d, b in zip(raster.descriptions, package.card.bands)]
    write_cog(dst, sr, G.zoom_in(raster.grid, package.card.scale), names, compress=compress)
    return Report(
        items=[str(dst)], km2=G.area_km2(raster.grid), output_pixels=int(np.prod(sr.shape[1:])),
        seconds=time.perf_counter() - start,
    )  # fmt: skip
