"""The session fixtures in conftest.py start real services that do what the suite relies on."""

from __future__ import annotations

import os
import urllib.parse
import uuid

import httpx
import numpy as np
import pytest

from tests.fixtures.services import PostgresCluster, PostgresMissing, sample_collection, sample_item

# ------------------------------------------------------------------ pgstac


@pytest.mark.filterwarnings("ignore::UserWarning")  # pystac-client: DoesNotConformTo SORT (server says 1.1.0)
def test_pgstac_search_sorts_and_filters_by_cloud_cover(pgstac):
    cid = f"svc-{uuid.uuid4().hex[:8]}"
    pgstac.load_collection(sample_collection(cid))
    # newest first (the API's default order) differs from cloud-cover order
    pgstac.load_items(
        [
            sample_item("a", cid, cloud_cover=50.0, datetime="2024-06-03T10:00:00Z"),
            sample_item("b", cid, cloud_cover=5.5, datetime="2024-06-01T10:00:00Z"),
            sample_item("c", cid, cloud_cover=90.0, datetime="2024-06-02T10:00:00Z"),
        ]
    )
    try:
        client = pgstac.client()

        def ids(**kw):
            return [i["id"] for i in client.search(collections=[cid], **kw).items_as_dicts()]

        assert ids() == ["a", "c", "b"]  # datetime desc
        assert ids(sortby="+properties.eo:cloud_cover") == ["b", "a", "c"]
        assert ids(sortby="-properties.eo:cloud_cover") == ["c", "a", "b"]
        assert ids(sortby="+properties.eo:cloud_cover", query={"eo:cloud_cover": {"lte": 50}}) == ["b", "a"]

        # the filter really runs server-side
        r = httpx.post(
            f"{pgstac.url}/search",
            json={"collections": [cid], "query": {"eo:cloud_cover": {"lte": 10}}},
        )
        assert r.status_code == 200
        assert [f["id"] for f in r.json()["features"]] == ["b"]

        # upsert replaces, delete_items empties
        pgstac.load_items([sample_item("b", cid, cloud_cover=95.0, datetime="2024-06-01T10:00:00Z")])
        assert ids(query={"eo:cloud_cover": {"lte": 10}}) == []
        assert pgstac.delete_items(cid) == 3
        assert ids() == []
    finally:
        pgstac.delete_collection(cid)
    assert cid not in pgstac.collection_ids()


def test_transactions_extension_enabled(pgstac):
    r = httpx.get(f"{pgstac.url}/conformance")
    assert any("transaction" in c for c in r.json()["conformsTo"])


def test_missing_postgres_binaries_fail_clearly(tmp_path):
    with pytest.raises(PostgresMissing, match="make system-deps"):
        PostgresCluster(pg_bin=tmp_path / "no-such-bin").start()


# ------------------------------------------------------------------ blob server


def test_blob_server_range_requests(blob_server):
    data = os.urandom(5000)
    (blob_server.root / "range" / "data.bin").parent.mkdir(parents=True, exist_ok=True)
    (blob_server.root / "range" / "data.bin").write_bytes(data)
    url = blob_server.file_url("range/data.bin")

    r = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == data[100:200]
    assert r.headers["content-range"] == "bytes 100-199/5000"
    assert r.headers["accept-ranges"] == "bytes"

    r = httpx.get(url, headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]

    r = httpx.head(url)
    assert r.status_code == 200 and int(r.headers["content-length"]) == 5000 and r.content == b""

    assert httpx.get(blob_server.file_url("range/missing.bin")).status_code == 404
    log = blob_server.requests
    assert ("GET", "/files/range/data.bin", "bytes=100-199", 206) in log
    assert ("HEAD", "/files/range/data.bin", None, 200) in log


def test_blob_requires_sas_from_planetary_computer_sign(pc_stand_in):
    import planetary_computer

    server = pc_stand_in
    payload = os.urandom(300)
    server.blob_path("sentinel2l2a01", "sentinel2-l2", "T32/B04.bin").write_bytes(payload)
    href = server.pc_href("sentinel2l2a01", "sentinel2-l2", "T32/B04.bin")
    path = "/blob/sentinel2l2a01/sentinel2-l2/T32/B04.bin"

    # unsigned: refused
    assert httpx.get(server.rewrite_pc_href(href)).status_code == 403
    assert ("GET", path, None, 403) in server.requests

    # the real planetary_computer.sign, tokens from the stand-in
    item = sample_item("s2", assets={"B04": {"href": href, "type": "application/octet-stream"}})
    signed = planetary_computer.sign(item)
    signed_href = signed["assets"]["B04"]["href"]
    assert signed_href.startswith("https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/T32/B04.bin?")
    sig = urllib.parse.parse_qs(urllib.parse.urlsplit(signed_href).query)["sig"][0]
    assert sig in server.issued_sigs and server.secret in sig
    assert any(f"sig={sig}" in t for t in server.tokens_issued)
    assert item["assets"]["B04"]["href"] == href  # sign() copied

    server.rewrite_item(signed)
    local = signed["assets"]["B04"]["href"]
    assert local.startswith(f"{server.url}{path}?")
    r = httpx.get(local, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == payload[:10]

    # a token is valid only for its own account/container
    server.blob_path("sentinel2l2a01", "other", "x.bin").write_bytes(b"x")
    other = f"{server.url}/blob/sentinel2l2a01/other/x.bin?{urllib.parse.urlsplit(local).query}"
    assert httpx.get(other).status_code == 403


def _write_cog(path, size=512):
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 10000, size=(2, size, size), dtype=np.uint16)
    profile = dict(
        driver="COG",
        width=size,
        height=size,
        count=2,
        dtype="uint16",
        crs="EPSG:32632",
        transform=Affine(10, 0, 600000, 0, -10, 5100000),
        compress="DEFLATE",
        blocksize=256,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
    return arr


def test_rasterio_reads_cog_window_over_http(blob_server):
    import rasterio
    from rasterio.windows import Window

    arr = _write_cog(blob_server.root / "cogs" / "window.tif")
    size = (blob_server.root / "cogs" / "window.tif").stat().st_size
    assert size > 600_000  # far more than GDAL's first read: ranges are needed
    blob_server.clear_requests()

    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_MAX_RETRY="0"):
        with rasterio.open(f"/vsicurl/{blob_server.file_url('cogs/window.tif')}") as src:
            assert src.profile["blockxsize"] == 256 and src.crs.to_epsg() == 32632
            win = src.read(window=Window(300, 260, 50, 40))

    np.testing.assert_array_equal(win, arr[:, 260:300, 300:350])
    gets = [r for r in blob_server.requests if r.path == "/files/cogs/window.tif" and r.method == "GET"]
    assert gets and all(r.status == 206 and r.range.startswith("bytes=") for r in gets)
    fetched = sum(int(e) - int(s) + 1 for r in gets for s, e in [r.range[6:].split("-")])
    assert fetched < size  # only part of the file came over the wire


# ------------------------------------------------------------------ ray


def test_ray_local_runs_tasks(ray_local):
    @ray_local.remote
    def square(x):
        return x * x

    assert ray_local.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
    assert ray_local.cluster_resources()["CPU"] == 2
    assert os.environ["RAY_AUTH_MODE"] == "disabled"

    from ray.util.state import list_nodes  # the dashboard's state API (Ray Train needs it)

    assert len(list_nodes(address=ray_local.dashboard_url)) == 1  # this session's Ray, not any other on the machine
