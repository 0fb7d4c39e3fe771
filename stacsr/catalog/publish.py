"""Publishing items as a static, self-contained STAC catalogue (relative hrefs) next to the COGs.

Layout under the output folder::

    catalog.json
    <collection>/collection.json
    <collection>/<item>/<item>.json        (+ the item's COGs beside it)

Publishing into a folder that already holds a stacsr catalogue adds to it; an item with the same id
replaces the old one (a re-run never duplicates).
"""

from __future__ import annotations

import os
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

    def write_text_to_href(self, href: str, txt: str) -> None:  # type: ignore[override]
        """Each JSON file atomically (a temporary file renamed into place): never half a document."""
        from stacsr.io.write import atomic_file

        with atomic_file(href) as tmp:
            tmp.write_text(txt, encoding="utf-8")


def item_folder(root: str | Path, collection_id: str, item_id: str) -> Path:
    """Where an item's JSON and COGs live (pystac's best-practice layout)."""
    return Path(root) / collection_id / item_id


def publish_static(
    root: str | Path, items: Sequence[pystac.Item], collection_id: str, package: ModelPackage,
    source_collection: str | None = None,
) -> Path:
    """Add ``items`` to collection ``collection_id`` of the catalogue at ``root`` (created when absent);
    returns the catalog.json path."""
    root = Path(root)
    catalog_file = root / "catalog.json"
    if catalog_file.exists():
        catalog = pystac.Catalog.from_file(str(catalog_file), stac_io=_AsWrittenStacIO())
    else:
        catalog = pystac.Catalog(CATALOG_ID, "Super-resolved Sentinel-2 imagery written by stacsr.", title="stacsr")
    new = build_collection(items, collection_id, package, source_collection)
    collection = catalog.get_child(new.id)
    if collection is None:
        collection = new
        catalog.add_child(collection)
    for item in items:
        if collection.get_item(item.id) is not None:
            collection.remove_item(item.id)
        collection.add_item(item)
    collection.update_extent_from_items()
    catalog.normalize_hrefs(str(root.absolute()) + os.sep)  # a folder, even when its name has a dot (run.v2)
    catalog.make_all_asset_hrefs_relative()
    stac_io = _AsWrittenStacIO()
    for item in items:  # the new items first: a catalogue or collection never links to an item not yet written
        item.save_object(include_self_link=False, stac_io=stac_io)
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=stac_io)
    return catalog_file


# ------------------------------------------------------------------ STAC API (Transactions extension)


class PublishError(RuntimeError):
    """The STAC API refused or failed a request after the retries."""


class ApiPublisher:
    """Upserts items into a collection of a STAC API with the Transactions extension (stac-fastapi and the
    like): ``PUT /collections/{c}/items/{id}``, falling back to ``POST`` for a new item, so a re-run never
    duplicates. Transient failures (connection errors, 429, 5xx) are retried with back-off. Credentials, if the
    API needs them, come from the ``STACSR_STAC_API_TOKEN`` environment variable (a bearer token), never
    from a job spec, and are never logged."""

    def __init__(self, url: str, collection_id: str, retries: int = 5, timeout: float = 30.0) -> None:
        import os

        import requests

        self.url, self.collection_id, self.retries, self.timeout = url.rstrip("/"), collection_id, retries, timeout
        self.session = requests.Session()
        token = os.environ.get("STACSR_STAC_API_TOKEN")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, ok: tuple[int, ...], **kwargs):
        import time

        import requests

        what = f"{method} {self.url}{path}"
        for attempt in range(self.retries + 1):
            try:
                r = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
            except requests.RequestException as e:
                error = f"{type(e).__name__}"
            else:
                if r.status_code in ok:
                    return r
                if r.status_code != 429 and r.status_code < 500:
                    raise PublishError(f"{what}: HTTP {r.status_code} {r.text[:200].strip()}")
                error = f"HTTP {r.status_code}"
            if attempt < self.retries:
                time.sleep(0.2 * 2**attempt)
        raise PublishError(f"{what} failed after {self.retries + 1} tries: {error}")

    def ensure_collection(self, collection: pystac.Collection) -> None:
        """Create the output collection when the API does not have it yet."""
        if self._request("GET", f"/collections/{self.collection_id}", (200, 404)).status_code == 404:
            body = collection.to_dict(include_self_link=False, transform_hrefs=False)
            body["id"] = self.collection_id
            body["links"] = []
            self._request("POST", "/collections", (200, 201, 409), json=body)

    def get_item(self, item_id: str) -> dict | None:
        r = self._request("GET", f"/collections/{self.collection_id}/items/{item_id}", (200, 404))
        return r.json() if r.status_code == 200 else None

    def upsert(self, item: pystac.Item) -> None:
        body = item.to_dict(include_self_link=False, transform_hrefs=False)
        body["collection"] = self.collection_id
        body["links"] = [link for link in body.get("links", []) if link.get("rel") not in ("collection", "parent", "root")]
        path = f"/collections/{self.collection_id}/items"
        if self._request("PUT", f"{path}/{item.id}", (200, 201, 204, 404), json=body).status_code == 404:
            self._request("POST", path, (200, 201), json=body)

    def delete_item(self, item_id: str) -> None:
        self._request("DELETE", f"/collections/{self.collection_id}/items/{item_id}", (200, 204, 404))
