"""What every command shares: the typer app, consoles, common options, progress bars, one-line errors,
the engine a command runs on."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import Progress

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Super-resolution of Sentinel-2 L2A (10 m → 2.5 m) from STAC catalogues to COGs and STAC items. "
    "Runs in this process, unless --ray, --address or $RAY_ADDRESS ask for Ray (then each item runs on one node).",
)
console = Console(stderr=True)
out = Console()

# Options shared by several commands.
CatalogOpt = typer.Option(
    "planetary-computer", "--catalog", help="planetary-computer, earth-search, or a STAC API URL."
)
CollectionOpt = typer.Option(None, "--collection", help="Collection id (default: the preset's sentinel-2-l2a).")
BandsOpt = typer.Option(None, "--bands", help="Band → asset key mapping for custom catalogues: B02=blue,B03=green,…")
StacUrlOpt = typer.Option(None, "--stac-url", help="Override the preset's STAC API root (a mirror, a local pgstac).")
BBoxOpt = typer.Option(..., "--bbox", help="Area of interest: west south east north (lon/lat).")
DatetimeOpt = typer.Option(None, "--datetime", help="Date or interval, e.g. 2024-06-01/2024-08-31.")
CloudOpt = typer.Option(None, "--max-cloud", help="Maximum scene cloud cover, percent.")
ModelOpt = typer.Option("default", "--model", help="Model package folder, or 'default' (the one shipped).")
TileOpt = typer.Option(512, "--tile-size", min=16, max=4096, help="Input pixels per tile side (the halo comes on top).")
RayOpt = typer.Option(
    False, "--ray", help="Run items on Ray: the cluster at --address or $RAY_ADDRESS, else a local Ray started here."
)
NoRayOpt = typer.Option(
    False, "--no-ray", help="Run in this process even when $RAY_ADDRESS is set (the default without it)."
)
AddressOpt = typer.Option(None, "--address", help="Ray cluster to join (implies --ray); default: $RAY_ADDRESS if set.")
GpusOpt = typer.Option(
    0.0,
    "--gpus-per-item",
    "--gpus-per-actor",
    min=0.0,
    help="GPUs per item (0 = CPU; on Ray 0.5 lets two items share one).",
)
CpusOpt = typer.Option(
    None, "--cpus-per-item", min=1, help="CPU cores per item (default: all here; on Ray, 1 with a GPU, else a node's)."
)
BatchOpt = typer.Option(1, "--batch", min=1, max=64, help="Tiles per model call (on a GPU: 4, with --tile-size 1024).")
PrecisionOpt = typer.Option(
    "fp32", "--precision", help="Model arithmetic: fp32 (exact), fp16 or bf16 (faster; see README, Half precision)."
)
CompressOpt = typer.Option("deflate", "--compress", help="COG compression.")


class Compression(str, Enum):
    deflate = "deflate"
    zstd = "zstd"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class RichProgress:
    """Renders pipeline progress events as a rich progress bar over tiles."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.task = bar, None

    def item(self, item_id: str, tiles: int) -> "ItemBar":
        self.task = self.bar.add_task(item_id, total=tiles)
        return ItemBar(self.bar, self.task)

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)


class ItemBar:
    """One item's bar (several items may be in flight)."""

    def __init__(self, bar: Progress, task) -> None:
        self.bar, self.task = bar, task

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    from stacsr.cli.tables import progress_columns

    with Progress(*progress_columns(), console=console, transient=False) as bar:
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
    from stacsr.io.read import ReadError
    from stacsr.plumbing.redaction import first_line
    from stacsr.plumbing.storage import StoreError

    try:
        yield
    except (ValueError, ReadError, APIError, OSError, StoreError, PublishError) as e:
        fail(first_line(e))


def preset_from(catalog: str, collection: Optional[str], bands: Optional[str], stac_url: Optional[str]):
    from stacsr.catalog.presets import resolve

    return resolve(catalog, collection, bands, stac_url)


@contextmanager
def engine_for(
    package,
    ray: bool,
    no_ray: bool,
    address: Optional[str],
    gpus: float = 0.0,
    cpus: Optional[int] = None,
    precision: str = "fp32",
    items_in_flight: Optional[int] = None,
    batch: int = 1,
):
    """The engine for a command: in this process, unless ``--ray``, ``--address`` or ``$RAY_ADDRESS`` ask for
    Ray (``--no-ray`` wins); closed when the command ends."""
    from stacsr.pipeline import make_engine

    if ray and no_ray:
        fail("--ray and --no-ray contradict each other: choose one")
    use_ray = False if no_ray else (True if ray or address else None)
    engine = make_engine(package, use_ray, address, gpus, cpus, precision, items_in_flight, batch)
    try:
        yield engine
    finally:
        engine.close()


def find_items(preset, bbox, datetime, max_cloud, limit, best_per_tile: bool) -> list[dict]:
    from stacsr.catalog import search as catalog_search

    items = catalog_search.search(preset, bbox, datetime, max_cloud, limit=limit)
    return catalog_search.best_per_tile(items, preset) if best_per_tile else items


def print_summary(report, what: str, engine) -> None:
    from stacsr.cli.tables import pairs_table, run_summary_rows

    console.print(pairs_table(run_summary_rows(report, what, engine)))


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, help="Print the stacsr version and exit."),
) -> None:
    """Super-resolution of Sentinel-2 L2A (10 m → 2.5 m) from STAC catalogues to COGs and STAC items."""
    if version:
        from stacsr import __version__

        out.print(f"stacsr {__version__}")
        raise typer.Exit()
