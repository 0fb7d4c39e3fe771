"""Publishing items as a static, self-contained STAC catalogue (relative hrefs) next to the COGs.

Layout under the output folder::

    catalog.json
    <collection>/collection.json
    <collection>/<item>/<item>.json        (+ the item's COGs beside it)

Publishing into a folder that already holds a stacsr catalogue adds to it; an item with the same id
replaces the old one (a re-run never duplicates).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import pystac

from stacsr.catalog.items import ModelRef, build_collection, check_name
from stacsr.plumbing import storage
from stacsr.plumbing.retry import retry

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
        with storage.atomic_file(href) as tmp:
            tmp.write_text(txt, encoding="utf-8")


def item_folder(root: str | Path, collection_id: str, item_id: str) -> Path:
    """Where an item's JSON and COGs live (pystac's best-practice layout)."""
    return Path(root) / collection_id / item_id


def publish_static(
    root: str | Path,
    items: Sequence[pystac.Item],
    collection_id: str,
    model: ModelRef,
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
    new = build_collection(items, collection_id, model, source_collection)
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
    for item in items:
        _relative_links(item, root.absolute())
    stac_io = _AsWrittenStacIO()
    for item in items:  # the new items first: a catalogue or collection never links to an item not yet written
        item.save_object(include_self_link=False, stac_io=stac_io)
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=stac_io)
    return catalog_file


def _relative_links(item: pystac.Item, root: Path) -> None:
    """Links of ``item`` to local files inside ``root`` (the model's MLM item) made relative to the item, as
    a self-contained catalogue needs; pystac does this for hierarchical links only."""
    folder = Path(item.get_self_href()).parent
    for link in item.links:
        if link.is_hierarchical() or link.rel == "self" or link.is_resolved():
            continue
        href = link.get_href(transform_href=False)
        if href and "://" not in href and os.path.isabs(href) and Path(href).is_relative_to(root):
            link.target = os.path.relpath(href, folder)


# ------------------------------------------------------------------ the model, published with its outputs

MODELS = "models"
MLM_ITEM, MODEL_FILES = "item.json", {"card.json": "card.json", "weights.safetensors": "weights.safetensors"}


def model_item_href(package_folder: str | None, root: str | Path) -> str | None:
    """Where :func:`publish_model` puts the STAC MLM item of the package in ``package_folder`` under ``root``
    (``<root>/models/<MLM item id>.json``); None when the package has no MLM item."""
    if package_folder is None or not (Path(package_folder) / MLM_ITEM).is_file():
        return None
    item_id = check_name("model item id", json.loads((Path(package_folder) / MLM_ITEM).read_text()).get("id"))
    if storage.is_remote(str(root)):
        return storage.join(str(root), MODELS, f"{item_id}.json")
    return str(Path(root).absolute() / MODELS / f"{item_id}.json")


def publish_model(package_folder: str | None, root: str | Path) -> str | None:
    """Publish the model package with the outputs, flat in ``<root>/models/``: its MLM item ``<id>.json``, its
    card ``<id>.card.json`` and weights ``<id>.weights.safetensors``, so that the outputs' links to the model
    resolve and the weights that made them can be fetched beside them (and ``<root>/<collection>/<item>/``
    stays the only place of item JSON). Returns the MLM item's href, or None when the package has none. The
    item's asset hrefs are re-pointed at the copies; relative links into the package's source tree are dropped.
    """
    href = model_item_href(package_folder, root)
    if href is None:
        return None
    folder = Path(package_folder)  # type: ignore[arg-type]
    item = json.loads((folder / MLM_ITEM).read_text())
    base = href.removesuffix(".json")
    for asset in item.get("assets", {}).values():
        name = asset["href"].removeprefix("./")
        if name in MODEL_FILES and (folder / name).is_file():
            storage.put(folder / name, f"{base}.{name}")
            asset["href"] = f"./{item['id']}.{name}"
    item["links"] = [link for link in item.get("links", []) if "://" in link.get("href", "")]
    storage.write_text(href, json.dumps(item, indent=2) + "\n")  # last: a present item means a whole package
    return href


# ------------------------------------------------------------------ STAC API (Transactions extension)


class PublishError(RuntimeError):
    """The STAC API refused or failed a request after the retries."""


class _Busy(Exception):
    """A response worth retrying (429 or 5xx)."""


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
        import requests

        what = f"{method} {self.url}{path}"

        def attempt():
            r = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
            if r.status_code in ok:
                return r
            if r.status_code == 429 or r.status_code >= 500:
                raise _Busy(f"HTTP {r.status_code}")
            raise PublishError(f"{what}: HTTP {r.status_code} {r.text[:200].strip()}")

        try:
            return retry(attempt, lambda e: isinstance(e, (requests.RequestException, _Busy)), self.retries)
        except (requests.RequestException, _Busy) as e:
            error = str(e) if isinstance(e, _Busy) else type(e).__name__
            raise PublishError(f"{what} failed after {self.retries + 1} tries: {error}") from None

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
        body["links"] = [
            link for link in body.get("links", []) if link.get("rel") not in ("collection", "parent", "root")
        ]
        path = f"/collections/{self.collection_id}/items"
        if self._request("PUT", f"{path}/{item.id}", (200, 201, 204, 404), json=body).status_code == 404:
            self._request("POST", path, (200, 201), json=body)

    def delete_item(self, item_id: str) -> None:
        self._request("DELETE", f"/collections/{self.collection_id}/items/{item_id}", (200, 204, 404))
