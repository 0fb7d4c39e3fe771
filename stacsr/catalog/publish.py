"""Publishing items as a static, self-contained STAC catalogue (relative hrefs) next to the COGs.

Layout under the output folder::

    catalog.json
    <collection>/collection.json
    <collection>/<item>/<item>.json        (+ the item's COGs beside it)

Publishing into a folder that already holds a stacsr catalogue adds to it; an item with the same id
replaces the old one (a re-run never duplicates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pystac

from stacsr.catalog.items import build_collection
from stacsr.model.package import ModelPackage

CATALOG_ID = "stacsr"


class _AsWrittenStacIO(pystac.stac_io.DefaultStacIO):
    """Reads the existing catalogue as written, without pystac's migration, which would rewrite the
    items already there (``proj:epsg`` -> ``proj:code``, projection v2.0.0) and lose stackstac 0.5."""

    def stac_object_from_dict(self, d, href=None, root=None, preserve_dict=True):  # type: ignore[override]
        kind = pystac.serialization.identify_stac_object_type(d)
        cls = {pystac.STACObjectType.ITEM: pystac.Item, pystac.STACObjectType.COLLECTION: pystac.Collection}
        obj = cls.get(kind, pystac.Catalog).from_dict(
            d, href=href, root=root, migrate=False, preserve_dict=preserve_dict
        )
        obj._stac_io = self
        return obj


def item_folder(root: str | Path, collection_id: str, item_id: str) -> Path:
    """Where an item's JSON and COGs live (pystac's best-practice layout)."""
    return Path(root) / collection_id / item_id


def publish_static(
    root: str | Path, items: Sequence[pystac.Item], source_collection: str | None, package: ModelPackage
) -> Path:
    """Add ``items`` to the catalogue at ``root`` (created when absent); returns the catalog.json path."""
    root = Path(root)
    catalog_file = root / "catalog.json"
    if catalog_file.exists():
        catalog = pystac.Catalog.from_file(str(catalog_file), stac_io=_AsWrittenStacIO())
    else:
        catalog = pystac.Catalog(CATALOG_ID, "Super-resolved Sentinel-2 imagery written by stacsr.", title="stacsr")
    new = build_collection(items, source_collection, package)
    collection = catalog.get_child(new.id)
    if collection is None:
        collection = new
        catalog.add_child(collection)
    for item in items:
        if collection.get_item(item.id) is not None:
            collection.remove_item(item.id)
        collection.add_item(item)
    collection.update_extent_from_items()
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return catalog_file
