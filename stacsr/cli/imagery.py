"""Commands on imagery: search, enhance, batch, sr, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stacsr.cli import tables
from stacsr.cli.common import (
    AddressOpt,
    BandsOpt,
    BatchOpt,
    BBoxOpt,
    CatalogOpt,
    CloudOpt,
    CollectionOpt,
    Compression,
    CompressOpt,
    CpusOpt,
    DatetimeOpt,
    GpusOpt,
    ModelOpt,
    NoRayOpt,
    Precision,
    PrecisionOpt,
    RayOpt,
    StacUrlOpt,
    TileOpt,
    app,
    console,
    engine_for,
    errors,
    fail,
    find_items,
    out,
    preset_from,
    print_summary,
    progress_bar,
)


@app.command()
def search(
    bbox: tuple[float, float, float, float] = BBoxOpt,
    datetime: Optional[str] = DatetimeOpt,
    max_cloud: Optional[float] = CloudOpt,
    catalog: str = CatalogOpt,
    collection: Optional[str] = CollectionOpt,
    bands: Optional[str] = BandsOpt,
    stac_url: Optional[str] = StacUrlOpt,
    limit: int = typer.Option(50, "--limit", min=1, help="Most items listed."),
    best_per_tile: bool = typer.Option(False, "--best-per-tile", help="Keep only the least cloudy item per MGRS tile."),
) -> None:
    """List the Sentinel-2 L2A items over an area, least cloudy first."""
    with errors():
        preset = preset_from(catalog, collection, bands, stac_url)
        items = find_items(preset, bbox, datetime, max_cloud, limit, best_per_tile)
        if not items:
            fail("no items found for this search (area, dates, cloud cover)")
        out.print(tables.search_table(items, preset))


@app.command()
def enhance(
    bbox: tuple[float, float, float, float] = BBoxOpt,
    out_dir: Path = typer.Option(..., "--out", help="Output folder (COGs + STAC)."),
    datetime: Optional[str] = DatetimeOpt,
    max_cloud: Optional[float] = CloudOpt,
    catalog: str = CatalogOpt,
    collection: Optional[str] = CollectionOpt,
    bands: Optional[str] = BandsOpt,
    stac_url: Optional[str] = StacUrlOpt,
    best_per_tile: bool = typer.Option(False, "--best-per-tile", help="Only the least cloudy item per MGRS tile."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Most items processed."),
    model: str = ModelOpt,
    tile_size: int = TileOpt,
    ray: bool = RayOpt,
    no_ray: bool = NoRayOpt,
    address: Optional[str] = AddressOpt,
    gpus_per_item: float = GpusOpt,
    cpus_per_item: Optional[int] = CpusOpt,
    batch_size: int = BatchOpt,
    compress: Compression = CompressOpt,
    precision: Precision = PrecisionOpt,
) -> None:
    """Search, super-resolve the area in every item found, write COGs and a static STAC catalogue."""
    from stacsr import pipeline
    from stacsr.model import package as model_package

    with errors():
        preset = preset_from(catalog, collection, bands, stac_url)
        items = find_items(preset, bbox, datetime, max_cloud, limit, best_per_tile)
        package = model_package.load(model)
        pipeline.plan_jobs(items, preset, package.card.bands, bbox)
        pipeline.check_writable(out_dir)
        with (
            engine_for(
                package, ray, no_ray, address, gpus_per_item, cpus_per_item, precision.value, batch=batch_size
            ) as engine,
            progress_bar() as progress,
        ):
            report = pipeline.enhance(
                items, preset, bbox, out_dir, package, engine, tile_size, compress.value, progress
            )
        print_summary(report, "items written", engine)


@app.command()
def batch(
    spec_path: Path = typer.Argument(..., help="Job spec (YAML, see jobs/examples/)."),
    ray: bool = RayOpt,
    address: Optional[str] = AddressOpt,
    no_ray: bool = NoRayOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and estimates; write nothing, run nothing."),
) -> None:
    """Run a batch job: search its areas, skip what is already published, super-resolve and publish the rest.

    Exit code 0 when every item succeeded, 1 otherwise; the run report is written to <output>/_runs/<name>/.
    --dry-run prints what a run would do (items, km², bytes, scratch, node-hours) and writes nothing."""
    from stacsr.batch import run as batch_run
    from stacsr.batch import spec as job_spec
    from stacsr.model import package as model_package
    from stacsr.pipeline import check_writable

    with errors():
        spec = job_spec.load(spec_path)
        preset = preset_from(spec.catalog, spec.collection, spec.bands, spec.stac_url)
        package = model_package.load(spec.model)
        if dry_run:  # no engine, no folder, no report: the search and the done-checks only
            from stacsr.batch import plan as batch_plan

            plan = batch_plan.dry_run(spec, preset, package)
            out.print(*tables.plan_tables(plan))
            for refused in plan.refused[:10]:
                out.print(f"refused {refused.item}: {refused.error}", highlight=False, soft_wrap=True)
            return
        if not spec.remote_output:
            check_writable(spec.output)
        res = spec.resources
        with engine_for(
            package,
            ray,
            no_ray,
            address,
            res.gpus_per_item,
            res.cpus_per_item,
            res.precision,
            res.items_in_flight,
            res.batch,
        ) as engine:
            report = batch_run.run(
                spec, preset, package, engine, log=lambda m: console.print(m, highlight=False, soft_wrap=True)
            )
        console.print(
            tables.pairs_table(tables.batch_summary_rows(report.to_dict(), engine, batch_run.report_url(spec)))
        )
        if not report.ok:
            raise typer.Exit(1)


@app.command()
def sr(
    src: str = typer.Argument(
        ..., help="Input GeoTIFF (path or URL): bands in the model's order, reflectance × 10000."
    ),
    dst: Path = typer.Argument(..., help="Output COG."),
    model: str = ModelOpt,
    tile_size: int = TileOpt,
    ray: bool = RayOpt,
    no_ray: bool = NoRayOpt,
    address: Optional[str] = AddressOpt,
    gpus_per_item: float = GpusOpt,
    cpus_per_item: Optional[int] = CpusOpt,
    batch_size: int = BatchOpt,
    compress: Compression = CompressOpt,
    precision: Precision = PrecisionOpt,
) -> None:
    """Super-resolve one GeoTIFF, no catalogue: same origin, pixel size ÷ scale, uint16 COG."""
    from stacsr import pipeline
    from stacsr.model import package as model_package

    with errors():
        package = model_package.load(model)
        with (
            engine_for(
                package, ray, no_ray, address, gpus_per_item, cpus_per_item, precision.value, batch=batch_size
            ) as engine,
            progress_bar() as progress,
        ):
            report = pipeline.sr_file(src, dst, package, engine, tile_size, compress.value, progress)
        print_summary(report, "files written", engine)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo"), "--out", help="Output folder."),
    model: str = ModelOpt,
    tile_size: int = TileOpt,
    ray: bool = RayOpt,
    no_ray: bool = NoRayOpt,
) -> None:
    """Run the whole enhance path offline on a real Sentinel-2 scene shipped with stacsr; writes side_by_side.png."""
    from stacsr import demo as offline_demo
    from stacsr.model import package as model_package

    with errors():
        package = model_package.load(model)
        with engine_for(package, ray, no_ray, None) as engine, progress_bar() as progress:
            report = offline_demo.run(out_dir, package, engine, tile_size, progress)
        print_summary(report, "items written", engine)
        folder = Path(out_dir)
        for what, where in (
            ("picture", f"{folder / 'side_by_side.png'} (10 m input | bicubic | stacsr)"),
            ("source", f"{folder / 'source'} (the 10 m item read, with its attribution)"),
        ):
            console.print(f"{what:<8} {where}", highlight=False, soft_wrap=True)
