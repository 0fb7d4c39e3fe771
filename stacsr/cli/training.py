"""Commands on models: pairs, train, export, evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stacsr.cli import tables
from stacsr.cli.common import (
    AddressOpt,
    BandsOpt,
    CatalogOpt,
    CloudOpt,
    CollectionOpt,
    DatetimeOpt,
    ModelOpt,
    NoRayOpt,
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
)


@app.command()
def pairs(
    bbox: Optional[tuple[float, float, float, float]] = typer.Option(
        None, "--bbox", help="Area of interest: west south east north (lon/lat); not with --images."
    ),
    images: Optional[list[str]] = typer.Option(
        None, "--images", help="wald from local 10 m GeoTIFFs (files or folders, repeatable) instead of a STAC search."
    ),
    stride: Optional[int] = typer.Option(
        None, "--stride", min=1, help="Step of the window lattice (default patch size / 4)."
    ),
    out_path: str = typer.Option(..., "--out", help="Manifest to write: a .parquet path or s3://bucket/key."),
    kind: str = typer.Option(
        "wald", "--kind", help="wald (Sentinel-2 alone) or cross-sensor (S2 as LR, --hr-collection as HR)."
    ),
    patches: int = typer.Option(1000, "--patches", min=1, help="Patches to sample, spread over the items."),
    patch_size: int = typer.Option(128, "--patch-size", min=4, help="HR patch side on the 10 m grid (pixels)."),
    scale: int = typer.Option(4, "--scale", help="Super-resolution factor the LR patches are degraded by."),
    min_valid: float = typer.Option(
        0.99, "--min-valid", min=0.0, max=1.0, help="Least clear fraction (SCL) per patch."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same manifest)."),
    datetime: Optional[str] = DatetimeOpt,
    max_cloud: Optional[float] = CloudOpt,
    catalog: str = CatalogOpt,
    collection: Optional[str] = CollectionOpt,
    bands: Optional[str] = BandsOpt,
    stac_url: Optional[str] = StacUrlOpt,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Most items sampled from."),
    hr_collection: str = typer.Option(
        "naip", "--hr-collection", help="cross-sensor: the HR collection (NAIP-like: asset 'image', bands R,G,B,NIR)."
    ),
    hr_stac_url: Optional[str] = typer.Option(
        None, "--hr-stac-url", help="cross-sensor: STAC API of the HR collection (default: the same API)."
    ),
    max_days: float = typer.Option(
        30, "--max-days", min=0, help="cross-sensor: most days between the S2 and HR acquisitions."
    ),
    calibrate: bool = typer.Option(
        True, "--calibrate/--no-calibrate", help="cross-sensor: fit HR to S2 per patch and band (gain, offset)."
    ),
) -> None:
    """Build a training manifest of patch windows (GeoParquet) from a STAC search or local GeoTIFFs."""
    from stacsr.io.read import ReadError, list_images
    from stacsr.train.manifest import model_bands, write_manifest
    from stacsr.train.pairs_cross_sensor import build_cross_sensor_manifest, search_hr_items
    from stacsr.train.pairs_images import build_image_manifest
    from stacsr.train.pairs_wald import build_wald_manifest

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
            table = build_image_manifest(
                paths,
                patches,
                patch_size,
                scale,
                model_bands(preset_from(catalog, collection, bands, stac_url), None),
                seed,
                min_valid,
                stride,
            )
            write_manifest(table, out_path)
            console.print(
                f"{table.num_rows} patches from {len(set(table.column('item_id').to_pylist()))} scenes → {out_path}"
            )
            return
        if bbox is None:
            fail("give --bbox (a STAC search) or --images (local GeoTIFFs)")
        preset = preset_from(catalog, collection, bands, stac_url)
        items = find_items(preset, bbox, datetime, max_cloud, limit, False)
        if kind == "wald":
            table = build_wald_manifest(items, preset, bbox, patches, patch_size, scale, seed, min_valid, stride=stride)
        else:
            hr_items = search_hr_items(hr_stac_url or preset.url, hr_collection, bbox, items, max_days)
            table = build_cross_sensor_manifest(
                items,
                hr_items,
                preset,
                None,
                bbox,
                patches,
                patch_size,
                scale,
                max_days,
                seed,
                min_valid,
                calibrate=calibrate,
            )
        write_manifest(table, out_path)
        console.print(
            f"{table.num_rows} patches from {len(set(table.column('item_id').to_pylist()))} items → {out_path}"
        )


@app.command()
def export(
    run_or_checkpoint: str = typer.Argument(
        ..., help="Checkpoint folder, or run folder <storage>/<name> (its latest checkpoint); local or s3://."
    ),
    out_dir: Path = typer.Option(
        ..., "--out", help="Model package folder to write (card.json, weights.safetensors, item.json)."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the card (default: the run name)."),
    version: Optional[str] = typer.Option(None, "--version", help="Model version in the card (default: 0.1.0)."),
    description: Optional[str] = typer.Option(
        None, "--description", help="What the model was trained on and its limits (stored in the card)."
    ),
) -> None:
    """Export a training checkpoint's EMA generator as a model package with a STAC MLM item."""
    from stacsr.train import export as model_export

    with errors():
        package = model_export.export(run_or_checkpoint, out_dir, name=name, version=version, description=description)
        step = package.card.provenance.get("step")
        console.print(
            f"{package.ref}{f' (step {step})' if step is not None else ''} from {package.card.provenance.get('checkpoint')} "
            f"→ {out_dir} ({model_export.ITEM}, use with --model {out_dir})",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def train(
    pairs_path: str = typer.Option(
        ..., "--pairs", help="Pairs manifest (stacsr pairs): a .parquet path or s3://bucket/key."
    ),
    storage: str = typer.Option(..., "--storage", help="Where runs live: a local folder or s3://bucket/prefix."),
    name: str = typer.Option(..., "--name", help="Run name: <storage>/<name>; the same name and storage resume."),
    workers: int = typer.Option(1, "--workers", min=1, help="Ray Train workers (data-parallel)."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker (bf16 mixed precision)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Training configuration (YAML, see jobs/examples/train.yaml)."
    ),
    init_from: Optional[str] = typer.Option(
        None, "--init-from", help="Start G from a model package folder or 'default'."
    ),
    catalog: str = CatalogOpt,
    stac_url: Optional[str] = StacUrlOpt,
    address: Optional[str] = AddressOpt,
) -> None:
    """Train the SRGAN on Ray Train from a pairs manifest; re-running the same line resumes."""
    from stacsr.plumbing.redaction import first_line
    from stacsr.train import trainer

    with errors():
        preset = preset_from(catalog, None, None, stac_url)
        trainer.prepare(pairs_path, name, config, workers, init_from)  # every check before Ray starts
        import ray

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        try:
            result = trainer.train(pairs_path, storage, name, config, workers, gpu, preset, init_from)
        except trainer.TrainError as e:
            fail(first_line(e))
        step = (result.metrics or {}).get("step")
        where = getattr(result.checkpoint, "path", None)
        console.print(f"run {name}: step {step if step is not None else '(already done)'}; checkpoint {where}")


@app.command()
def evaluate(
    images: Optional[list[str]] = typer.Option(
        None,
        "--images",
        help="Real 10 m GeoTIFF or folder of them (repeatable; uint16; bands named by their descriptions, time stacks as <date>_<band>).",
    ),
    pairs_path: Optional[str] = typer.Option(
        None, "--pairs", help="Instead of --images: a pairs manifest (stacsr pairs), .parquet or s3://."
    ),
    out_dir: Path = typer.Option(Path("report"), "--out", help="Report folder: metrics.json and one PNG per image."),
    model: str = ModelOpt,
    protocol: str = typer.Option(
        "wald", "--protocol", help="Evaluation protocol for --images (wald: degrade ×scale, compare with the original)."
    ),
    degradation: str = typer.Option(
        "area,mtf",
        "--degradation",
        help="Comma-separated degradations: area (block mean), mtf (Gaussian blur then block mean).",
    ),
    border: Optional[int] = typer.Option(
        None, "--border", min=0, help="LR pixels left out at each edge (default: the model's receptive radius)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="--pairs: evaluate the first pairs only."),
    catalog: str = CatalogOpt,
    stac_url: Optional[str] = StacUrlOpt,
    tile_size: int = TileOpt,
    ray: bool = RayOpt,
    no_ray: bool = NoRayOpt,
    address: Optional[str] = AddressOpt,
) -> None:
    """Compare a model with bicubic (PSNR, SSIM, SAM, consistency) on real images (Wald) or manifest pairs."""
    from stacsr.evaluate import report
    from stacsr.model import package as model_package

    with errors():
        images = images or None
        if (images is None) == (pairs_path is None):
            fail("give either --images (GeoTIFF or folder) or --pairs (manifest)")
        kinds = tuple(d.strip() for d in degradation.split(",") if d.strip())
        package = model_package.load(model)
        if images is not None:  # check every input before starting an engine
            report.check_args(protocol, kinds, border, package)
            report.image_scenes(images, package)
        else:
            preset = preset_from(catalog, None, None, stac_url)
        with engine_for(package, ray, no_ray, address) as engine:
            if images is not None:
                result = report.evaluate_images(
                    images, package, protocol, kinds, engine, out_dir, border, tile_size=tile_size
                )
            else:
                result = report.evaluate_pairs(
                    pairs_path, package, preset, kinds, engine, out_dir, border, limit=limit, tile_size=tile_size
                )
        out.print(tables.evaluation_report(result))
        console.print(f"metrics: {result.metrics_path}", highlight=False, soft_wrap=True)
