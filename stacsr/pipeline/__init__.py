"""The item path: the functions the CLI, the demo, the batch runner and Ray jobs all call.

    catalog.search → plan (the item's grid and the AOI window on it, io.grid) → tiles over the window
    → engine: workers read their halo'd windows from storage (io.source), run the model, and hand the
      cores to a tile sink (io.sink: a tiled GeoTIFF on disk, then COGs) → catalog.items → catalog.publish

:func:`process_item` is that path for one source item and serves ``enhance`` and ``batch``; :func:`sr_file`
runs the same tiles and sink on one GeoTIFF. No process holds an array the size of the area: memory is
set by the tiles in flight. Everything that can be checked before pixels are read (bands, overlap, output
folder, free disk) is checked first (:mod:`stacsr.pipeline.checks`), so bad input fails fast and leaves nothing
behind.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from stacsr import tiles
from stacsr.catalog import publish, radiometry
from stacsr.catalog.items import ModelRef, build_item, output_names
from stacsr.catalog.presets import Preset
from stacsr.engine import Engine, LocalEngine, RayEngine, RunResult, RunStats
from stacsr.io.grid import GeoBox, GridError, Window, area_km2, crop, zoom_in
from stacsr.io.grid import item_window as grid_item_window
from stacsr.io.sink import CogTarget, SinkSpec
from stacsr.io.source import ArraySource, Band, RasterSource, Source, file_source
from stacsr.model.package import ModelPackage
from stacsr.pipeline.checks import (
    InputError,
    check_asset_hrefs,
    check_band_count,
    check_not_input,
    check_outputs_spare_sources,
    check_writable,
)
from stacsr.plumbing import storage

if TYPE_CHECKING:
    import pystac

# Input pixels per tile side. On a CPU, 512 runs the model 1.5–1.7× faster per output pixel than 256 (its 24-px
# halo is 20 % of the work instead of 41 %) for about 1 GB more memory per model call (README, Benchmarks).
DEFAULT_TILE_SIZE = 512


class Progress:
    """Receives progress events; the CLI renders them, the default ignores them. :meth:`item` may return the
    item's own receiver of :meth:`advance` (items in flight at once each advance their own bar)."""

    def item(self, item_id: str, tiles: int) -> "Progress | None": ...

    def advance(self, n: int = 1) -> None: ...


@dataclass
class Job:
    """One source item to super-resolve: the item, its asset keys, its native grid and the AOI's window on it."""

    item: dict[str, Any]
    assets: list[str]
    item_grid: GeoBox
    window: Window

    @property
    def grid(self) -> GeoBox:
        """The AOI window's grid (10 m)."""
        return crop(self.item_grid, self.window)


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
    use_ray: bool | None = None,
    address: str | None = None,
    gpus_per_item: float = 0,
    cpus_per_item: int | None = None,
    precision: str = "fp32",
    items_in_flight: int | None = None,
    batch: int = 1,
) -> Engine:
    """Where items run. In this process unless Ray is asked for: ``use_ray=True`` (a local Ray is started when
    there is no cluster to join), an ``address``, or ``$RAY_ADDRESS`` (as under ``ray job submit``) with
    ``use_ray`` left None. On Ray, each item runs on one node (:class:`stacsr.engine.RayEngine`).
    ``precision``: ``fp32`` (exact), ``fp16`` or ``bf16`` (README, "Half precision"); ``batch``: tiles per model
    call (4 with 1024-px tiles is what a whole tile on a GPU node was measured with)."""
    if use_ray is None:
        use_ray = bool(address or os.environ.get("RAY_ADDRESS"))
    if not use_ray:
        device = "cuda" if gpus_per_item else None
        return LocalEngine(package, batch, device, precision, threads=cpus_per_item)
    return RayEngine(
        package,
        address=address,
        gpus_per_item=gpus_per_item,
        cpus_per_item=cpus_per_item,
        items_in_flight=items_in_flight,
        batch=batch,
        precision=precision,
    )


def super_resolve(
    image: np.ndarray,
    package: ModelPackage,
    engine: Engine,
    tile_size: int = DEFAULT_TILE_SIZE,
    progress: Progress | None = None,
) -> np.ndarray:
    """Seam-free tiled super-resolution of an in-memory uint16 ``(bands, rows, cols)`` image (small images:
    evaluation, tests); nodata (0) propagated. Whole items go through :func:`run_item` instead."""
    check_band_count(image.shape[0], package)
    cores = tiles.plan(image.shape[1:], tile_size)
    progress = progress or Progress()

    def counted():
        for result in engine.map(ArraySource(image), cores, package.receptive_radius):
            progress.advance()
            yield result

    return tiles.stitch(counted(), image.shape[1:], image.shape[0], package.card.scale)


def model_ref(package: ModelPackage, root: str | Path | None = None) -> ModelRef:
    """The catalogue's reference to ``package``; with ``root``, it names the MLM item that
    :func:`stacsr.catalog.publish.publish_model` publishes there (when the package has one)."""
    card = package.card
    item_href = publish.model_item_href(package.folder, root) if root is not None else None
    return ModelRef(
        card.name,
        card.version,
        package.sha256,
        tuple(card.bands),
        tuple(card.common_names),
        card.scale,
        card.gsd_in,
        item_href,
    )


def plan_jobs(items: Sequence[dict[str, Any]], preset: Preset, bands: Sequence[str], bbox) -> list[Job]:
    """Check every item before reading any pixel: required bands present, AOI overlapping its grid."""
    if not items:
        raise InputError("no items found for this search (area, dates, cloud cover)")
    keys = preset.asset_keys(list(bands))
    jobs = [Job(item, keys, *item_window(item, keys, bbox)) for item in items]
    for job in jobs:
        output_names(job.item)  # ids the output root can hold, or a one-line refusal, before any work
        check_asset_hrefs(job.item, keys, preset)
    return jobs


def item_window(item: dict[str, Any], keys: Sequence[str], bbox) -> tuple[GeoBox, Window]:
    """The item's native grid (of ``keys[0]``) and the AOI's window on it (:func:`stacsr.io.grid.item_window`),
    refused with :class:`InputError`."""
    try:
        return grid_item_window(item, keys, bbox)
    except GridError as e:
        raise InputError(str(e)) from None


def item_source(job: Job, preset: Preset) -> RasterSource:
    """The job's item as a source: its model-band assets, made reflectance × 10000, signed at read time."""
    item = {**job.item, "assets": {k: job.item["assets"][k] for k in job.assets}}
    layers = tuple(Band(item["assets"][k]["href"], 1, radiometry.of_asset(item, k), key=k) for k in job.assets)
    return RasterSource(layers, job.item_grid, str(item.get("id")), item=item, sign=preset.sign)


def read_job(job: Job, preset: Preset) -> np.ndarray:
    """Reflectance × 10000 (uint16, 0 = nodata) of a job's AOI window, in memory (small areas: the demo)."""
    return item_source(job, preset).read([job.window])[0]


def submit_run(
    source: Source,
    window: Window,
    targets: Sequence[CogTarget],
    package: ModelPackage,
    engine: Engine,
    tile_size: int = DEFAULT_TILE_SIZE,
    compress: str = "deflate",
    progress: Progress | None = None,
    label: str = "",
) -> Future[RunResult]:
    """Super-resolve ``window`` of ``source`` into the COGs ``targets``, tile by tile through the engine's sink;
    returns as soon as the engine lets go (in-process: the tiles done, the COGs made in the background) a
    future of the :class:`RunResult` (hrefs None when the window holds no valid pixel: nothing is written)."""
    check_band_count(source.bands, package)
    scale = package.card.scale
    cores = [c.shift(window.row, window.col) for c in tiles.plan(window.shape, tile_size)]
    grid = zoom_in(crop(source.grid, window), scale)
    sink = SinkSpec(grid, (window.row, window.col), scale, tuple(targets), compress)
    progress = progress or Progress()
    progress = progress.item(label, len(cores)) or progress
    return engine.submit(source, cores, package.receptive_radius, sink, progress)


def run_item(*args: Any, **kwargs: Any) -> RunResult:
    """:func:`submit_run`, waiting for the COGs."""
    return submit_run(*args, **kwargs).result()


def band_targets(root: str | Path, collection_id: str, item_id: str, bands: Sequence[str]) -> list[CogTarget]:
    """One COG per band at ``<root>/<collection>/<item>/<item>_<band>.tif`` (a local path made absolute, or
    an object-storage URL)."""
    folder = (
        storage.join(str(root), collection_id, item_id)
        if storage.is_remote(str(root))
        else str(publish.item_folder(Path(root).absolute(), collection_id, item_id))
    )
    return [CogTarget(storage.join(folder, f"{item_id}_{band}.tif"), (i,), (band,)) for i, band in enumerate(bands)]


@dataclass
class ItemResult:
    """What :func:`process_item` made: the (unpublished) STAC item, or None when the AOI is all nodata."""

    item: "pystac.Item | None"
    tiles: int
    output_pixels: int
    km2: float
    stats: RunStats = field(default_factory=RunStats)  # where it ran, seconds per stage, bytes read and written


def submit_item(
    job: Job,
    preset: Preset,
    root: str | Path,
    collection_id: str,
    item_id: str,
    package: ModelPackage,
    engine: Engine,
    tile_size: int = DEFAULT_TILE_SIZE,
    compress: str = "deflate",
    progress: Progress | None = None,
    model: ModelRef | None = None,
) -> Future[ItemResult]:
    """Super-resolve one item's AOI into one COG per band under ``root``; returns once its tiles are done, with
    a future of the result and its STAC item (which names ``model``, by default ``model_ref(package, root)``)."""
    targets = band_targets(root, collection_id, item_id, package.card.bands)
    check_outputs_spare_sources(job, targets)
    hrefs = submit_run(
        item_source(job, preset), job.window, targets, package, engine, tile_size, compress, progress, job.item["id"]
    )
    grid = zoom_in(job.grid, package.card.scale)
    model = model or model_ref(package, root)

    def result(run: RunResult) -> ItemResult:
        done = ItemResult(
            None,
            len(tiles.plan(job.window.shape, tile_size)),
            int(np.prod(grid.shape.yx)),
            area_km2(job.grid),
            run.stats,
        )
        if run.hrefs is not None:
            files = {t.descriptions[0]: run.hrefs[t.url] for t in targets}
            done.item = build_item(job.item, grid, files, model, item_id, source_href=self_href(job.item))
        return done

    return then(hrefs, result)


def process_item(*args: Any, **kwargs: Any) -> ItemResult:
    """:func:`submit_item`, waiting for its COGs and item."""
    return submit_item(*args, **kwargs).result()


def then(future: Future, fn: Callable[[Any], Any]) -> Future:
    """A future of ``fn(future.result())`` (or of its exception)."""
    chained: Future = Future()

    def done(f: Future) -> None:
        try:
            chained.set_result(fn(f.result()))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the chained future
            chained.set_exception(e)

    future.add_done_callback(done)
    return chained


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

    One output per source item, in the order given (least cloudy first from :func:`catalog.search.search`);
    an item's tiles run while the previous item's COGs are made (on Ray: as many items at once as the
    engine's ``items_at_once``, one per node). Each item is published, in order, as soon as
    its COGs are complete, so a failure part-way keeps the items already done (complete and valid) and
    writes nothing for the failing one. Items whose window is all nodata are
    skipped; if every item is, nothing is written and an error is raised.
    """
    jobs = plan_jobs(items, preset, package.card.bands, bbox)
    created = not Path(out).exists()
    out = check_writable(out)
    engine.check_output(str(out))
    report, start = Report(), time.perf_counter()
    model = model_ref(package, out)
    pending: deque[tuple[Job, str, Future[ItemResult]]] = deque()

    def publish_next() -> None:
        job, collection_id, future = pending.popleft()
        done = future.result()
        if done.item is None:
            report.skipped.append(job.item["id"])
            return
        if not report.items:
            publish.publish_model(package.folder, out)
        report.catalog = publish.publish_static(out, [done.item], collection_id, model, job.item.get("collection"))
        report.items.append(done.item.id)
        report.km2 += done.km2
        report.output_pixels += done.output_pixels

    try:
        for job in jobs:  # this item's tiles run while the previous item's COGs are made
            collection_id, item_id = output_names(job.item)
            future = submit_item(
                job, preset, out, collection_id, item_id, package, engine, tile_size, compress, progress, model
            )
            pending.append((job, collection_id, future))
            while len(pending) > engine.items_at_once:
                publish_next()
        while pending:
            publish_next()
    except BaseException:
        while pending:  # an item whose tiles were done is still completed and published; then the error
            try:
                publish_next()
            except Exception:  # noqa: BLE001 - the first error is the one reported
                pass
        raise
    report.seconds = time.perf_counter() - start
    if not report.items:
        if created:
            out.rmdir()
        raise InputError(f"the area of interest is all nodata in every item ({', '.join(report.skipped)})")
    return report


def self_href(item: dict[str, Any]) -> str | None:
    """The ``self`` link of a source item (its canonical URL), if any."""
    return next((link["href"] for link in item.get("links", []) if link.get("rel") == "self"), None)


def sr_file(
    src: str,
    dst: str | Path,
    package: ModelPackage,
    engine: Engine,
    tile_size: int = DEFAULT_TILE_SIZE,
    compress: str = "deflate",
    progress: Progress | None = None,
) -> Report:
    """Super-resolve one GeoTIFF (bands in the model's order, reflectance × 10000) into a multi-band COG."""
    start = time.perf_counter()
    dst = Path(dst)
    check_not_input(src, dst)
    check_writable(dst.parent if str(dst.parent) else ".")
    engine.check_output(str(dst.absolute().parent))
    source, descriptions = file_source(src)
    check_band_count(source.bands, package)  # before the progress bar starts
    names = tuple(d or b for d, b in zip(descriptions, package.card.bands))
    target = CogTarget(str(dst.absolute()), tuple(range(source.bands)), names)
    window = Window(0, 0, *source.shape)
    run = run_item(source, window, [target], package, engine, tile_size, compress, progress, os.path.basename(src))
    if run.hrefs is None:
        raise InputError(f"{src} is all nodata (0)")
    return Report(
        items=[str(dst)],
        km2=area_km2(source.grid),
        output_pixels=int(np.prod(source.shape)) * package.card.scale**2,
        seconds=time.perf_counter() - start,
    )
