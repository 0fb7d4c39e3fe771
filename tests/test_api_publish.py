"""Publishing to a STAC API in bulk, "already published" by search, and provenance a reader can follow.

A real stac-fastapi-pgstac (Transactions and its bulk items endpoint on) sits behind a recording HTTP proxy
(:class:`Proxy`) that logs every request and, when told, answers 404 to ``bulk_items`` like a server
without the endpoint. Batches are real (:func:`stacsr.batch.run.run`, in-process engine) over the demo
scenes served from pgstac.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pystac
import pytest
import requests

from stacsr.batch import run as B
from stacsr.batch import spec as J
from stacsr.catalog.presets import resolve
from stacsr.catalog.publish import ApiPublisher, GroupPublisher
from stacsr.engine import LocalEngine
from stacsr.model import package as M
from tests.fixtures import catalogue as C
from tests.fixtures import scenes as SC

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::RuntimeWarning")

SOURCE = "s2-api-publish-test"
AOI = SC.world_bbox(172, 172, 236, 236)


class Proxy:
    """``http://127.0.0.1:PORT`` forwarding to ``upstream``; ``requests`` logs ``(method, path)``; with
    ``no_bulk`` set, ``POST …/bulk_items`` gets a 404 as from a server without the endpoint; with
    ``no_ids_search`` set, a ``POST /search`` by ``ids`` gets a 400 as from a server that refuses it."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.requests, self.no_bulk, self.no_ids_search = upstream.rstrip("/"), [], False, False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, self.path.split("?")[0]))
                if proxy.no_bulk and self.path.endswith("/bulk_items"):
                    return self._refuse(404)
                if proxy.no_ids_search and self.path.split("?")[0].endswith("/search") and b'"ids"' in body:
                    return self._refuse(400)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                r = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers, timeout=60)
                text = r.content.replace(proxy.upstream.encode(), proxy.url.encode())  # links point at the proxy
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def _refuse(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"detail": "refused by the test proxy"}')

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.endswith(suffix))


@pytest.fixture(scope="module")
def proxy(pgstac):
    p = Proxy(pgstac.url)
    yield p
    p.server.shutdown()


@pytest.fixture(scope="module")
def sources(pgstac, blob_server):
    yield from SC.loaded(pgstac, SC.make_scenes(blob_server, "earth-search", collection=SOURCE))


def batch(proxy, out_collection: str, output: str) -> B.RunReport:
    spec = J.from_dict(
        {
            "name": "api-publish",
            "areas": [{"name": "a", "bbox": list(AOI)}],
            "catalog": "earth-search",
            "stac_url": proxy.url,
            "collection": SOURCE,
            "best_per_tile": False,
            "output": output,
            "publish": {"api": proxy.url, "collection": out_collection},
            "resources": {"tile_size": 64},
        }
    )
    package = M.load("default")
    preset = resolve(spec.catalog, spec.collection, spec.bands, spec.stac_url)
    return B.run(spec, preset, package, LocalEngine(package))


def test_a_batch_publishes_in_bulk_and_a_re_run_checks_by_one_search(sources, proxy, pgstac, tmp_path):
    out = "s2-api-publish-bulk"
    pgstac.delete_items(out)
    proxy.requests.clear()
    first = batch(proxy, out, str(tmp_path / "out"))
    assert first.count("done") == 2, first.to_dict()["outcomes"]
    assert proxy.count("POST", f"/collections/{out}/bulk_items") == 2  # one request per finished group
    assert proxy.count("PUT", "") == 0 and proxy.count("POST", f"/collections/{out}/items") == 0
    proxy.requests.clear()
    again = batch(proxy, out, str(tmp_path / "out"))
    assert again.count("skipped") == 2, again.to_dict()["outcomes"]
    assert proxy.count("POST", "/search") == 2  # the source search, then one for "already published"
    assert [r for r in proxy.requests if r[0] == "GET" and f"/collections/{out}/items/" in r[1]] == []
    proxy.requests.clear()
    proxy.no_ids_search = True  # a server that refuses the search: "already published" asked item by item
    try:
        third = batch(proxy, out, str(tmp_path / "out"))
    finally:
        proxy.no_ids_search = False
    assert third.count("skipped") == 2, third.to_dict()["outcomes"]
    assert len([r for r in proxy.requests if r[0] == "GET" and f"/collections/{out}/items/" in r[1]]) == 2
    assert proxy.count("POST", "/bulk_items") == 0


def test_provenance_derived_from_resolves_to_the_source_item(sources, proxy, pgstac, tmp_path):
    out = "s2-api-publish-provenance"
    pgstac.delete_items(out)
    report = batch(proxy, out, str(tmp_path / "out"))
    assert report.count("done") == 2
    published = requests.get(f"{pgstac.url}/collections/{out}/items", timeout=30).json()["features"]
    assert len(published) == 2
    for item in published:
        derived = [lk for lk in item["links"] if lk["rel"] == "derived_from"]
        source_link = next(lk for lk in derived if "MLM" not in lk.get("title", ""))
        assert any("MLM" in lk.get("title", "") for lk in derived)  # the model's link stays beside it
        href = source_link["href"]
        assert "?" not in href and "token" not in href.lower() and "sig=" not in href
        source = requests.get(href, timeout=30).json()  # a reader follows it to the scene it came from
        assert source["type"] == "Feature" and source["collection"] == SOURCE
        assert item["id"].startswith(source["id"] + "_sr")
        assert source["id"] in item["properties"]["processing:lineage"]


def test_without_the_bulk_endpoint_items_go_one_by_one(pgstac, proxy):
    out = "s2-api-publish-fallback"
    pgstac.delete_items(out)
    proxy.no_bulk = True
    try:
        api = ApiPublisher(proxy.url, out)
        api.ensure_collection(
            pystac.Collection(out, "test", pystac.Extent.from_items([C.item("/x", 0)]), license="other")
        )
        proxy.requests.clear()
        api.upsert_many([C.item("/x", i) for i in range(3)])
        api.upsert_many([C.item("/x", i) for i in range(3, 5)])
    finally:
        proxy.no_bulk = False
    assert proxy.count("POST", "/bulk_items") == 1  # tried once, then never again
    assert proxy.count("PUT", "") == 5
    ids = [f"{C.source(i)['id']}_sr" for i in range(6)]
    assert sorted(api.find_items(ids)) == sorted(ids[:5])
    assert sorted(api.find_items(ids, page=2)) == sorted(ids[:5])  # several searches of a few ids each


def test_items_finished_together_go_in_one_request(pgstac, proxy):
    out = "s2-api-publish-group"
    pgstac.delete_items(out)
    api = ApiPublisher(proxy.url, out)
    api.ensure_collection(pystac.Collection(out, "test", pystac.Extent.from_items([C.item("/x", 0)]), license="other"))
    group = GroupPublisher(api)
    proxy.requests.clear()
    with group._send:  # a request in flight: the items finished meanwhile wait for the next one
        threads = [threading.Thread(target=group.publish, args=(C.item("/x", i),)) for i in range(5)]
        for t in threads:
            t.start()
        while len(group._waiting) < 5:
            time.sleep(0.01)
    for t in threads:
        t.join(30)
    assert proxy.count("POST", "/bulk_items") == 1
    assert len(api.find_items([f"{C.source(i)['id']}_sr" for i in range(5)])) == 5
