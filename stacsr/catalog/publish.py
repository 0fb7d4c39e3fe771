"""Publishing items: into a static, self-contained STAC catalogue (relative hrefs) next to the COGs
(:mod:`stacsr.catalog.static`, which has the layout), or into a STAC API (:class:`ApiPublisher`); and the
model that made them, published beside them (:func:`publish_model`).

Publishing into a folder that already holds a stacsr catalogue adds to it; an item with the same id
replaces the old one (a re-run never duplicates).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import pystac

from stacsr.catalog.items import ModelRef, build_collection, check_name
from stacsr.catalog.static import CATALOG_ID, item_folder, publish
from stacsr.plumbing import storage
from stacsr.plumbing.retry import retry

__all__ = [
    "CATALOG_ID",
    "item_folder",
    "publish_static",
    "publish_model",
    "ApiPublisher",
    "GroupPublisher",
    "PublishError",
]


def publish_static(
    root: str | Path,
    items: Sequence[pystac.Item],
    collection_id: str,
    model: ModelRef,
    source_collection: str | None = None,
) -> Path:
    """Add ``items`` to collection ``collection_id`` of the catalogue at ``root`` (created when absent), at a
    cost that does not grow with the catalogue, safely beside other writers; returns the catalog.json path."""
    return publish(root, items, build_collection(items, collection_id, model, source_collection))


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
    like), so a re-run never duplicates: many items in one request through the bulk items endpoint
    (``POST /collections/{c}/bulk_items``, method upsert; stac-fastapi-pgstac has it with transactions), or,
    where the server has none, ``PUT /collections/{c}/items/{id}`` falling back to ``POST`` for a new item.
    Transient failures (connection errors, 429, 5xx) are retried with back-off. Credentials, if the API needs
    them, come from the ``STACSR_STAC_API_TOKEN`` environment variable (a bearer token), never from a job
    spec, and are never logged."""

    def __init__(self, url: str, collection_id: str, retries: int = 5, timeout: float = 30.0) -> None:
        import os

        import requests

        self.url, self.collection_id, self.retries, self.timeout = url.rstrip("/"), collection_id, retries, timeout
        self.bulk: bool | None = None  # whether the server has the bulk items endpoint (None: not tried yet)
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

    def find_items(self, item_ids: Sequence[str], page: int = 500) -> dict[str, dict]:
        """The items of ``item_ids`` the collection holds (id, collection and ``stacsr:model`` at least), found
        by ``POST /search`` with an ``ids`` filter: a few pages instead of one request per item."""
        found: dict[str, dict] = {}
        for start in range(0, len(item_ids), page):
            chunk = list(item_ids[start : start + page])
            body: dict | None = {
                "collections": [self.collection_id],
                "ids": chunk,
                "limit": len(chunk),
                "fields": {"include": ["id", "collection", "properties.stacsr:model"], "exclude": []},
            }
            path = "/search"
            while body is not None:
                page_ = self._request("POST", path, (200,), json=body).json()
                found.update({f["id"]: f for f in page_.get("features", []) if f.get("id") in set(chunk)})
                body, path = _next_page(page_, body, self.url)
        return found

    def upsert(self, item: pystac.Item) -> None:
        self.upsert_many([item])

    def upsert_many(self, items: Sequence[pystac.Item]) -> None:
        """Upsert ``items``: one bulk request where the server has the endpoint, else one request per item."""
        bodies = {item.id: self._body(item) for item in items}
        path = f"/collections/{self.collection_id}/bulk_items"
        if bodies and self.bulk is not False:
            r = self._request("POST", path, (200, 201, 404, 405, 501), json={"items": bodies, "method": "upsert"})
            self.bulk = r.status_code in (200, 201)
            if self.bulk:
                answer = r.json() if "json" in r.headers.get("content-type", "") else None
                errors = answer.get("errors") if isinstance(answer, dict) else None
                if errors:
                    raise PublishError(f"POST {self.url}{path}: refused {len(errors)} item(s): {str(errors)[:200]}")
                return
        items_path = f"/collections/{self.collection_id}/items"
        for item_id, body in bodies.items():
            if self._request("PUT", f"{items_path}/{item_id}", (200, 201, 204, 404), json=body).status_code == 404:
                self._request("POST", items_path, (200, 201), json=body)

    def _body(self, item: pystac.Item) -> dict:
        body = item.to_dict(include_self_link=False, transform_hrefs=False)
        body["collection"] = self.collection_id
        body["links"] = [
            link for link in body.get("links", []) if link.get("rel") not in ("collection", "parent", "root")
        ]
        return body

    def delete_item(self, item_id: str) -> None:
        self._request("DELETE", f"/collections/{self.collection_id}/items/{item_id}", (200, 204, 404))


class GroupPublisher:
    """Items that several threads hand in at once go to the API together (a group commit): each caller waits
    until its own item is published, or raises the error of the request that carried it; whoever finds items
    waiting sends them all (up to ``most`` per request) while the others wait."""

    def __init__(self, api: ApiPublisher, most: int = 100) -> None:
        self.api, self.most = api, most
        self._waiting: list[dict] = []
        self._queue, self._send = threading.Lock(), threading.Lock()

    def publish(self, item: pystac.Item) -> None:
        mine = {"item": item, "done": False, "error": None}
        with self._queue:
            self._waiting.append(mine)
        while not mine["done"]:
            with self._send:
                if mine["done"]:
                    break
                with self._queue:
                    group, self._waiting = self._waiting[: self.most], self._waiting[self.most :]
                error = None
                try:
                    self.api.upsert_many([p["item"] for p in group])
                except Exception as e:  # noqa: BLE001 - each caller of the group raises it
                    error = e
                for p in group:
                    p["error"], p["done"] = error, True
        if mine["error"] is not None:
            raise mine["error"]


def _next_page(page: dict, body: dict, url: str) -> tuple[dict | None, str]:
    """The body and path of the next ``POST /search`` page (its ``next`` link), or ``(None, "")``."""
    link = next((lk for lk in page.get("links", []) if lk.get("rel") == "next"), None)
    if link is None or str(link.get("method", "GET")).upper() != "POST" or not link.get("body"):
        return None, ""  # a search answered in one page (limit = the ids asked for), or one stacsr cannot follow
    following = {**body, **link["body"]} if link.get("merge") else link["body"]
    href = link.get("href", f"{url}/search")
    return following, href.removeprefix(url) if href.startswith(url) else "/search"
