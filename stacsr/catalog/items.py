"""STAC output: one item per super-resolved source item, with exact grids and no secrets.

Items declare the projection (v1.1.0), eo (v1.1.0), raster (v1.1.0) and processing (v1.2.0)
extensions, carry one COG asset per band and link back to their source with ``derived_from``.

The CRS is ``proj:epsg`` (projection v1.1.0), not ``proj:code`` (v2.0.0): stackstac 0.5 reads only
``proj:epsg``, and each schema version forbids the other's field, so an item cannot carry both and stay
valid. pystac migrates ``proj:epsg`` to ``proj:code`` when it reads the item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pystac
from odc.geo.geom import Geometry

from stacsr import __version__
from stacsr.io.grid import GeoBox
from stacsr.io.units import REFLECTANCE_SCALE
from stacsr.plumbing.redaction import redact

SUFFIX = "_sr"
COG_TYPE = pystac.MediaType.COG
EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
]
# Source properties worth keeping on the output (the acquisition they describe is the same).
KEPT = (
    "datetime",
    "start_datetime",
    "end_datetime",
    "platform",
    "constellation",
    "instruments",
    "mission",
    "eo:cloud_cover",
    "s2:mgrs_tile",
    "grid:code",
    "sat:orbit_state",
    "sat:relative_orbit",
)


@dataclass(frozen=True)
class ModelRef:
    """What an output item says about the model that made it; the catalogue never loads the model itself.

    ``item_href`` is the model's STAC MLM item where it is published with the outputs (see
    :func:`stacsr.catalog.publish.publish_model`); output items link to it."""

    name: str
    version: str
    sha256: str
    bands: tuple[str, ...]
    common_names: tuple[str, ...]
    scale: int
    gsd_in: float
    item_href: str | None = None

    @property
    def gsd_out(self) -> float:
        return self.gsd_in / self.scale

    @property
    def ref(self) -> str:
        """Short identity used in STAC items: ``name@version+sha256[:12]``."""
        return f"{self.name}@{self.version}+{self.sha256[:12]}"


def output_id(source_id: str) -> str:
    return f"{source_id}{SUFFIX}"


def output_collection_id(source_collection: str | None) -> str:
    return f"{source_collection or 'sentinel-2-l2a'}-sr"


MAX_NAME_BYTES = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeNameError(ValueError):
    """An id that cannot name a folder, file or object key inside the output root."""


def check_name(what: str, name: Any) -> str:
    """``name`` if it can be one folder, file or object-key part inside the output root, else
    :class:`UnsafeNameError` (one line naming it). Unsafe: not a non-empty string, a path separator (``/``,
    ``\\``), ``..``, a NUL or control character, a leading ``.`` that hides it, or over 200 bytes (UTF-8)."""
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    problem = (
        "it is not a non-empty string"
        if not isinstance(name, str) or not name
        else "it holds a path separator"
        if "/" in name or "\\" in name
        else "it holds '..'"
        if ".." in name
        else "it holds a control character"
        if _CONTROL.search(name)
        else "it starts with '.'"
        if name.startswith(".")
        else f"it is over {MAX_NAME_BYTES} bytes"
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
        else None
    )
    if problem:
        raise UnsafeNameError(f"{what} {shown} cannot name a file or object key safely ({problem}): refused")
    return name  # type: ignore[return-value]


def output_names(source: Mapping[str, Any], area: str | None = None, collection: str | None = None) -> tuple[str, str]:
    """``(collection id, item id)`` of the output of ``source``: the one place they are decided.

    The item is ``<source id>_sr`` (``_<area>`` appended for a batch area, so one source over two areas
    gives two outputs); the collection is ``collection`` when given (a batch's ``publish.collection``), else
    ``<source collection>-sr``. COG folders, item JSON and the done-check of a re-run all use these. Ids a
    catalogue returns are not trusted: an id that cannot name a folder or key inside the output root
    (:func:`check_name`) is refused, so nothing is ever written outside it."""
    item_id = output_id(check_name("item id", source.get("id"))) + (f"_{area}" if area else "")
    source_collection = source.get("collection")
    if collection is None and source_collection is not None:
        check_name("collection id", source_collection)
    return check_name("collection id", collection or output_collection_id(source_collection)), check_name(
        "item id", item_id
    )


def footprint(grid: GeoBox) -> Geometry:
    """The grid's outline in lon/lat, densified every 1 km so that the UTM edges are followed."""
    return grid.extent.to_crs("EPSG:4326", resolution=1000.0)


def build_item(
    source: Mapping[str, Any],
    grid: GeoBox,
    band_files: Mapping[str, str],
    model: ModelRef,
    item_id: str | None = None,
    source_href: str | None = None,
) -> pystac.Item:
    """Item ``item_id`` (default ``<source id>_sr``) for the output on ``grid`` whose COGs (one per band, in
    model order) are ``band_files``. It links to its source item and to the model's MLM item when known."""
    geom = footprint(grid)
    props = {k: source["properties"][k] for k in KEPT if k in source.get("properties", {})}
    rows, cols = grid.shape.yx
    epsg = grid.crs.epsg
    props.update(
        {
            "gsd": abs(grid.affine.a),
            "proj:epsg": epsg,
            "proj:shape": [rows, cols],
            "proj:transform": list(grid.affine)[:6],
            "proj:bbox": list(grid.boundingbox),
            "processing:software": {"stacsr": __version__, model.name: f"{model.version}+sha256:{model.sha256}"},
            "processing:lineage": (
                f"Super-resolved x{model.scale} from {source['id']} with model {model.ref} "
                f"(input {model.gsd_in} m, output {model.gsd_out} m)"
            ),
            "stacsr:model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        }
    )
    item = pystac.Item(
        id=item_id or output_id(source["id"]),
        geometry=geom.json,
        bbox=list(geom.boundingbox),
        datetime=pystac.utils.str_to_datetime(props.pop("datetime")) if props.get("datetime") else None,
        properties=props,
        stac_extensions=list(EXTENSIONS),
    )
    for band, href in band_files.items():
        item.add_asset(band, _asset(href, band, model))
    if source_href:
        item.add_link(pystac.Link("derived_from", redact(source_href), media_type=pystac.MediaType.GEOJSON))
    if model.item_href:
        title = f"model {model.ref} (STAC MLM item)"
        item.add_link(pystac.Link("derived_from", model.item_href, media_type=pystac.MediaType.GEOJSON, title=title))
    return item


def _asset(href: str, band: str, model: ModelRef) -> pystac.Asset:
    common = dict(zip(model.bands, model.common_names)).get(band)
    return pystac.Asset(
        href=href,
        media_type=COG_TYPE,
        roles=["data"],
        title=f"{band} ({common}), {model.gsd_out} m, super-resolved",
        extra_fields={
            "gsd": model.gsd_out,
            "eo:bands": [{"name": band, **({"common_name": common} if common else {})}],
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "scale": REFLECTANCE_SCALE,
                    "offset": 0,
                    "spatial_resolution": model.gsd_out,
                    "unit": "1",
                }
            ],
        },
    )


def build_collection(
    items: Sequence[pystac.Item], collection_id: str, model: ModelRef, source_collection: str | None = None
) -> pystac.Collection:
    """The output collection ``collection_id`` (see :func:`output_names`), its extents computed from ``items``."""
    return pystac.Collection(
        id=collection_id,
        description=(
            f"Sentinel-2 L2A super-resolved to {model.gsd_out} m by stacsr with model {model.ref}. "
            "Reflectance x 10000 (uint16, 0 = nodata)."
        ),
        extent=pystac.Extent.from_items(items),
        license="other",
        title=f"{source_collection or 'Sentinel-2 L2A'} super-resolved ({model.gsd_out} m)",
        keywords=["sentinel-2", "super-resolution", "stacsr"],
        providers=[pystac.Provider("stacsr", roles=[pystac.ProviderRole.PROCESSOR])],
    )
