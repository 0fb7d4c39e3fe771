"""The ``stacsr`` command line: a thin typer layer over :mod:`stacsr.pipeline`. Imported by nobody."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Super-resolution of Sentinel-2 L2A (10 m → 2.5 m) from STAC catalogues to COGs and STAC items.",
)
console = Console(stderr=True)
out = Console()

# Options shared by several commands.
CatalogOpt = typer.Option("planetary-computer", "--catalog", help="planetary-computer, earth-search, or a STAC API URL.")
CollectionOpt = typer.Option(None, "--collection", help="Collection id (default: the preset's sentinel-2-l2a).")
BandsOpt = typer.Option(None, "--bands", help="Band → asset key mapping for custom catalogues: B02=blue,B03=green,…")
StacUrlOpt = typer.Option(None, "--stac-url", help="Override the preset's STAC API root (a mirror, a local pgstac).")
BBoxOpt = typer.Option(..., "--bbox", help="Area of interest: west south east north (lon/lat).")
DatetimeOpt = typer.Option(None, "--datetime", help="Date or interval, e.g. 2024-06-01/2024-08-31.")
CloudOpt = typer.Option(None, "--max-cloud", help="Maximum scene cloud cover, percent.")
ModelOpt = typer.Option("default", "--model", help="Model package folder, or 'default' (the one shipped).")
TileOpt = typer.Option(256, "--tile-size", min=16, max=4096, help="Input pixels per tile side (the halo comes on top).")
NoRayOpt = typer.Option(False, "--no-ray", help="Run the model in this process (debugging).")
AddressOpt = typer.Option(None, "--address", help="Ray cluster to join (default: start a local Ray).")
ActorsOpt = typer.Option(None, "--actors", min=1, help="Model actors (default: one per CPU, or per GPU).")
GpusOpt = typer.Option(0.0, "--gpus-per-actor", min=0.0, help="GPUs per model actor (0 = CPU).")
CompressOpt = typer.Option("deflate", "--compress", help="COG compression.")


class Compression(str, Enum):
    deflate = "deflate"
    zstd = "zstd"


class RichProgress:
    """Renders pipeline progress events as a rich progress bar over tiles."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.task = bar, None

    def item(self, item_id: str, tiles: int) -> None:
        self.task = self.bar.add_task(item_id, total=tiles)

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        try:
            yield RichProgress(bar)
        except BaseException:  # a failure is one line: the bar is not left above it
            for task in list(bar.task_ids):
                bar.remove_task(task)
            raise


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def errors() -> Iterator[None]:
    """Turn every expected failure into one line on stderr and exit code 1."""
    from pystac_client.exceptions import APIError

    from stacsr.catalog.publish import PublishError
    from stacsr.io.read import ReadError, first_line
    from stacsr.io.store import StoreError

    try:
        yield
    except (ValueError, ReadError, APIError, OSError, StoreError, PublishError) as e:
        fail(first_line(e))


def _preset(catalog: str, collection: Optional[str], bands: Optional[str], stac_url: Optional[str]):
    from stacsr.catalog.presets import resolve

    return resolve(catalog, collection, bands, stac_url)


@contextmanager
def _engine(package, no_ray: bool, address: Optional[str], actors: Optional[int], gpus: float):
    """The engine for a command, closed (Ray actors released) when the command ends."""
    from stacsr.pipeline import make_engine

    engine = make_engine(package, use_ray=not no_ray, address=address, actors=actors, gpus_per_actor=gpus)
    try:
        yield engine
    finally:
        engine.close()


def _find(preset, bbox, datetime, max_cloud, limit, best_per_tile: bool) -> list[dict]:
    from stacsr.catalog import search as S

    items = S.search(preset, bbox, datetime, max_cloud, limit=limit)
    return S.best_per_tile(items, preset) if best_per_tile else items


def _summary(report, what: str, engine) -> None:
    table = Table(show_header=False, box=None)
    table.add_row(what, str(len(report.items)))
    table.add_row("engine", str(engine))
    if report.skipped:
        table.add_row("skipped (all nodata)", ", ".join(report.skipped))
    table.add_row("area", f"{report.km2:.2f} km²")
    table.add_row("time", f"{report.seconds:.1f} s")
    table.add_row("output pixels/s", f"{report.pixels_per_second:,.0f}")
    if report.catalog:
        table.add_row("catalogue", str(report.catalog))
    console.print(table)


@app.command()
def search(
    bbox: tuple[float, float, float, float] = BBoxOpt, datetime: Optional[str] = DatetimeOpt, max_cloud: Optional[float] = CloudOpt,
    catalog: str = CatalogOpt, collection: Optional[str] = CollectionOpt, bands: Optional[str] = BandsOpt,
    stac_url: Optional[str] = StacUrlOpt, limit: int = typer.Option(50, "--limit", min=1, help="Most items listed."),
    best_per_tile: bool = typer.Option(False, "--best-per-tile", help="Keep only the least cloudy item per MGRS tile."),
) -> None:  # fmt: skip
    """List the Sentinel-2 L2A items over an area, least cloudy first."""
    from stacsr.catalog import search as S

    with errors():
        preset = _preset(catalog, collection, bands, stac_url)
        items = _find(preset, bbox, datetime, max_cloud, limit, best_per_tile)
        if not items:
            fail("no items found for this search (area, dates, cloud cover)")
        table = Table("id", "datetime", "cloud %", "tile")
        for item in items:
            p = item["properties"]
            table.add_row(item["id"], str(p.get("datetime")), f"{S.cloud(item):.1f}", S.tile_of(item, preset))
        out.print(table)


@app.command()
def enhance(
    bbox: tuple[float, float, float, float] = BBoxOpt, out_dir: Path = typer.Option(..., "--out", help="Output folder (COGs + STAC)."),
    datetime: Optional[str] = DatetimeOpt, max_cloud: Optional[float] = CloudOpt, catalog: str = CatalogOpt,
    collection: Optional[str] = CollectionOpt, bands: Optional[str] = BandsOpt, stac_url: Optional[str] = StacUrlOpt,
    best_per_tile: bool = typer.Option(False, "--best-per-tile", help="Only the least cloudy item per MGRS tile."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Most items processed."),
    model: str = ModelOpt, tile_size: int = TileOpt, no_ray: bool = NoRayOpt, address: Optional[str] = AddressOpt,
    actors: Optional[int] = ActorsOpt, gpus_per_actor: float = GpusOpt, compress: Compression = CompressOpt,
) -> None:  # fmt: skip
    """Search, super-resolve the area in every item found, write COGs and a static STAC catalogue."""
    from stacsr import pipeline
    from stacsr.model import package as M

    with errors():
        preset = _preset(catalog, collection, bands, stac_url)
        items = _find(preset, bbox, datetime, max_cloud, limit, best_per_tile)
        package = M.load(model)
        pipeline.plan_jobs(items, preset, package.card.bands, bbox)
        pipeline.check_writable(out_dir)
        with _engine(package, no_ray, address, actors, gpus_per_actor) as engine, progress_bar() as progress:
            report = pipeline.enhance(items, preset, bbox, out_dir, package, engine, tile_size, compress.value, progress)
        _summary(report, "items written", engine)


@app.command()
def batch(
    spec_path: Path = typer.Argument(..., help="Job spec (YAML, see jobs/examples/)."),
    address: Optional[str] = AddressOpt, no_ray: bool = NoRayOpt,
) -> None:  # fmt: skip
    """Run a batch job: search its areas, skip what is already published, super-resolve and publish the rest.

    Exit code 0 when every item succeeded, 1 otherwise; the run report is written to <output>/_runs/<name>/."""
    from stacsr.batch import run as B
    from stacsr.batch import spec as J
    from stacsr.model import package as M
    from stacsr.pipeline import check_writable

    with errors():
        spec = J.load(spec_path)
        preset = _preset(spec.catalog, spec.collection, spec.bands, spec.stac_url)
        package = M.load(spec.model)
        if not spec.remote_output:
            check_writable(spec.output)
        res = spec.resources
        with _engine(package, no_ray, address, res.actors, res.gpus_per_actor) as engine:
            report = B.run(spec, preset, package, engine, log=lambda m: console.print(m, highlight=False, soft_wrap=True))
        d = report.to_dict()
        table = Table(show_header=False, box=None)
        for key in ("found", "skipped", "done", "failed", "nodata"):
            table.add_row(f"items {key}", str(d["items"][key]))
        table.add_row("engine", str(engine))
        table.add_row("area", f"{d['km2']:.2f} km²")
        table.add_row("time", f"{d['seconds']:.1f} s ({d['tiles_per_second']:.2f} tiles/s)")
        table.add_row("report", B.report_url(spec))
        console.print(table)
        if not report.ok:
            raise typer.Exit(1)


@app.command()
def sr(
    src: str = typer.Argument(..., help="Input GeoTIFF (path or URL): bands in the model's order, reflectance × 10000."),
    dst: Path = typer.Argument(..., help="Output COG."),
    model: str = ModelOpt, tile_size: int = TileOpt, no_ray: bool = NoRayOpt, address: Optional[str] = AddressOpt,
    actors: Optional[int] = ActorsOpt, gpus_per_actor: float = GpusOpt, compress: Compression = CompressOpt,
) -> None:  # fmt: skip
    """Super-resolve one GeoTIFF, no catalogue: same origin, pixel size ÷ scale, uint16 COG."""
    from stacsr import pipeline
    from stacsr.model import package as M

    with errors():
        package = M.load(model)
        with _engine(package, no_ray, address, actors, gpus_per_actor) as engine, progress_bar() as progress:
            report = pipeline.sr_file(src, dst, package, engine, tile_size, compress.value, progress)
        _summary(report, "files written", engine)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo"), "--out", help="Output folder."),
    model: str = ModelOpt, tile_size: int = TileOpt, no_ray: bool = NoRayOpt,
) -> None:  # fmt: skip
    """Run the whole enhance path offline on embedded sample data; writes side_by_side.png too."""
    from stacsr import demo as D
    from stacsr.model import package as M

    with errors():
        package = M.load(model)
        with _engine(package, no_ray, None, None, 0) as engine, progress_bar() as progress:
            report = D.run(out_dir, package, engine, tile_size, progress)
        _summary(report, "items written", engine)
        console.print(f"side by side (input | bicubic | stacsr): {Path(out_dir) / 'side_by_side.png'}")


@app.command()
def pairs(
    bbox: Optional[tuple[float, float, float, float]] = typer.Option(None, "--bbox", help="Area of interest: west south east north (lon/lat); not with --images."),
    images: Optional[list[str]] = typer.Option(None, "--images", help="wald from local 10 m GeoTIFFs (files or folders, repeatable) instead of a STAC search."),
    stride: Optional[int] = typer.Option(None, "--stride", min=1, help="Step of the window lattice (default patch size / 4)."),
    out_path: str = typer.Option(..., "--out", help="Manifest to write: a .parquet path or s3://bucket/key."),
    kind: str = typer.Option("wald", "--kind", help="wald (Sentinel-2 alone) or cross-sensor (S2 as LR, --hr-collection as HR)."),
    patches: int = typer.Option(1000, "--patches", min=1, help="Patches to sample, spread over the items."),
    patch_size: int = typer.Option(128, "--patch-size", min=4, help="HR patch side on the 10 m grid (pixels)."),
    scale: int = typer.Option(4, "--scale", help="Super-resolution factor the LR patches are degraded by."),
    min_valid: float = typer.Option(0.99, "--min-valid", min=0.0, max=1.0, help="Least clear fraction (SCL) per patch."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same manifest)."),
    datetime: Optional[str] = DatetimeOpt, max_cloud: Optional[float] = CloudOpt, catalog: str = CatalogOpt,
    collection: Optional[str] = CollectionOpt, bands: Optional[str] = BandsOpt, stac_url: Optional[str] = StacUrlOpt,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Most items sampled from."),
    hr_collection: str = typer.Option("naip", "--hr-collection", help="cross-sensor: the HR collection (NAIP-like: asset 'image', bands R,G,B,NIR)."),
    hr_stac_url: Optional[str] = typer.Option(None, "--hr-stac-url", help="cross-sensor: STAC API of the HR collection (default: the same API)."),
    max_days: float = typer.Option(30, "--max-days", min=0, help="cross-sensor: most days between the S2 and HR acquisitions."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="cross-sensor: fit HR to S2 per patch and band (gain, offset)."),
) -> None:  # fmt: skip
    """Build a training manifest of patch windows (GeoParquet) from a STAC search or local GeoTIFFs."""
    from stacsr.io.read import ReadError, list_images
    from stacsr.train import pairs as P

    with errors():
        if kind not in ("wald", "cross-sensor"):
            fail(f"pair kind {kind!r} is not available yet; use --kind wald or cross-sensor")
        if images:
            if kind != "wald" or bbox is not None:
                fail("--images builds wald pairs from the images themselves: leave out --bbox and --kind cross-sensor")
            try:
                paths = list_images(images)
            except ReadError as e:
                fail(str(e))
            table = P.build_image_manifest(paths, patches, patch_size, scale, P.model_bands(_preset(catalog, collection, bands, stac_url), None),
                                           seed, min_valid, stride)  # fmt: skip
            P.write_manifest(table, out_path)
            console.print(f"{table.num_rows} patches from {len(set(table.column('item_id').to_pylist()))} scenes → {out_path}")
            return
        if bbox is None:
            fail("give --bbox (a STAC search) or --images (local GeoTIFFs)")
        preset = _preset(catalog, collection, bands, stac_url)
        items = _find(preset, bbox, datetime, max_cloud, limit, False)
        if kind == "wald":
            table = P.build_wald_manifest(items, preset, bbox, patches, patch_size, scale, seed, min_valid, stride=stride)
        else:
            hr_items = P.search_hr_items(hr_stac_url or preset.url, hr_collection, bbox, items, max_days)
            table = P.build_cross_sensor_manifest(items, hr_items, preset, None, bbox, patches, patch_size, scale,
                                                  max_days, seed, min_valid, calibrate=calibrate)  # fmt: skip
        P.write_manifest(table, out_path)
        console.print(f"{table.num_rows} patches from {len(set(table.column('item_id').to_pylist()))} items → {out_path}")


@app.command()
def export(
    run_or_checkpoint: str = typer.Argument(..., help="Checkpoint folder, or run folder <storage>/<name> (its latest checkpoint); local or s3://."),
    out_dir: Path = typer.Option(..., "--out", help="Model package folder to write (card.json, weights.safetensors, item.json)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the card (default: the run name)."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version in the card (default: 0.1.0)."),
    description: Optional[str] = typer.Option(None, "--description", help="What the model was trained on and its limits (stored in the card)."),
) -> None:  # fmt: skip
    """Export a training checkpoint's EMA generator as a model package with a STAC MLM item."""
    from stacsr.train import export as X

    with errors():
        package = X.export(run_or_checkpoint, out_dir, name=name, version=version, description=description)
        step = package.card.provenance.get("step")
        console.print(
            f"{package.ref}{f' (step {step})' if step is not None else ''} from {package.card.provenance.get('checkpoint')} "
            f"→ {out_dir} ({X.ITEM}, use with --model {out_dir})",
            highlight=False, soft_wrap=True,
        )


@app.command()
def train(
    pairs_path: str = typer.Option(..., "--pairs", help="Pairs manifest (stacsr pairs): a .parquet path or s3://bucket/key."),
    storage: str = typer.Option(..., "--storage", help="Where runs live: a local folder or s3://bucket/prefix."),
    name: str = typer.Option(..., "--name", help="Run name: <storage>/<name>; the same name and storage resume."),
    workers: int = typer.Option(1, "--workers", min=1, help="Ray Train workers (data-parallel)."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker (bf16 mixed precision)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training configuration (YAML, see jobs/examples/train.yaml)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start G from a model package folder or 'default'."),
    catalog: str = CatalogOpt, stac_url: Optional[str] = StacUrlOpt,
    address: Optional[str] = AddressOpt,
) -> None:  # fmt: skip
    """Train the SRGAN on Ray Train from a pairs manifest; re-running the same line resumes."""
    from stacsr.io.read import first_line
    from stacsr.train import trainer as T

    with errors():
        preset = _preset(catalog, None, None, stac_url)
        T.prepare(pairs_path, name, config, workers, init_from)  # every check before Ray starts
        import ray

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        try:
            result = T.train(pairs_path, storage, name, config, workers, gpu, preset, init_from)
        except T.TrainError as e:
            fail(first_line(e))
        step = (result.metrics or {}).get("step")
        where = getattr(result.checkpoint, "path", None)
        console.print(f"run {name}: step {step if step is not None else '(already done)'}; checkpoint {where}")


@app.command()
def evaluate(
    images: Optional[list[str]] = typer.Option(None, "--images", help="Real 10 m GeoTIFF or folder of them (repeatable; uint16; bands named by their descriptions, time stacks as <date>_<band>)."),
    pairs_path: Optional[str] = typer.Option(None, "--pairs", help="Instead of --images: a pairs manifest (stacsr pairs), .parquet or s3://."),
    out_dir: Path = typer.Option(Path("report"), "--out", help="Report folder: metrics.json and one PNG per image."),
    model: str = ModelOpt,
    protocol: str = typer.Option("wald", "--protocol", help="Evaluation protocol for --images (wald: degrade ×scale, compare with the original)."),
    degradation: str = typer.Option("area,mtf", "--degradation", help="Comma-separated degradations: area (block mean), mtf (Gaussian blur then block mean)."),
    border: Optional[int] = typer.Option(None, "--border", min=0, help="LR pixels left out at each edge (default: the model's receptive radius)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="--pairs: evaluate the first pairs only."),
    catalog: str = CatalogOpt, stac_url: Optional[str] = StacUrlOpt,
    tile_size: int = TileOpt, no_ray: bool = NoRayOpt, address: Optional[str] = AddressOpt,
) -> None:  # fmt: skip
    """Compare a model with bicubic (PSNR, SSIM, SAM, consistency) on real images (Wald) or manifest pairs."""
    from stacsr.evaluate import report as R
    from stacsr.model import package as M

    with errors():
        images = images or None
        if (images is None) == (pairs_path is None):
            fail("give either --images (GeoTIFF or folder) or --pairs (manifest)")
        kinds = tuple(d.strip() for d in degradation.split(",") if d.strip())
        package = M.load(model)
        if images is not None:  # check every input before starting an engine
            R._check_args(protocol, kinds, border, package)
            R.image_scenes(images, package)
        else:
            preset = _preset(catalog, None, None, stac_url)
        with _engine(package, no_ray, address, None, 0) as engine:
            if images is not None:
                result = R.evaluate_images(images, package, protocol, kinds, engine, out_dir, border, tile_size=tile_size)
            else:
                result = R.evaluate_pairs(pairs_path, package, preset, kinds, engine, out_dir, border, limit=limit,
                                          tile_size=tile_size)  # fmt: skip
        _evaluation_table(result)


def _evaluation_table(result) -> None:
    def f(v: float, digits: int) -> str:
        return "—" if v is None or v != v else f"{v:.{digits}f}"

    table = Table("image", "degradation", "PSNR model", "PSNR bicubic", "Δ PSNR", "SSIM model", "SSIM bicubic",
                  "SAM° model", "SAM° bicubic", "consist. model", "consist. bicubic", "improv./omis./halluc.",
                  title=f"{result.model}: model vs bicubic ({result.protocol}, border {result.border} LR px)")  # fmt: skip

    def row(name: str, d: str, m, b, style: str | None = None) -> None:
        table.add_row(name, d, f(m.psnr, 2), f(b.psnr, 2), f(m.psnr - b.psnr, 2), f(m.ssim, 4), f(b.ssim, 4),
                      f(m.sam, 3), f(b.sam, 3), f(m.consistency, 5), f(b.consistency, 5),
                      f"{f(m.improvement, 2)}/{f(m.omission, 2)}/{f(m.hallucination, 2)}", style=style)  # fmt: skip

    for r in result.results:
        row(r.image, r.degradation, r.model, r.bicubic)
    for d, avg in result.averages().items():
        row("average", d, avg["model"], avg["bicubic"], style="bold")
    out.print(table)
    console.print(f"metrics: {result.metrics_path}", highlight=False, soft_wrap=True)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, help="Print the stacsr version and exit."),
) -> None:
    """Super-resolution of Sentinel-2 L2A (10 m → 2.5 m) from STAC catalogues to COGs and STAC items."""
    if version:
        from stacsr import __version__

        out.print(f"stacsr {__version__}")
        raise typer.Exit()


if __name__ == "__main__":  # pragma: no cover
    app()
