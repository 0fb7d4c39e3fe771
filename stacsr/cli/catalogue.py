"""``stacsr catalog …``: upkeep of a static catalogue that stacsr writes (the logic is in
:mod:`stacsr.catalog.static`)."""

from __future__ import annotations

from pathlib import Path

import typer

from stacsr.cli.common import app, errors, out

catalog_app = typer.Typer(no_args_is_help=True, help="Upkeep of a static catalogue written by stacsr.")
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("index")
def index(folder: Path = typer.Argument(..., help="The catalogue's folder (holding catalog.json).")) -> None:
    """Rebuild the stac-geoparquet index (FOLDER/items.parquet/) from the catalogue's JSON, after finishing
    any publication a killed writer left half done."""
    from stacsr.catalog.static import rebuild_index

    with errors():
        rows = rebuild_index(folder)
        out.print(f"{folder / 'items.parquet'}: {rows} items", highlight=False, soft_wrap=True)
