"""Wald pair manifests (stacsr.train.pairs_wald, stacsr.train.manifest) against the real local services.

The demo's two Planetary-Computer-style items are searched in pgstac and their SCL read from the blob server
(which refuses unsigned requests), signed through the SAS stand-in. One SCL gets a cloud patch and the other
a shadow patch (make_scenes' ``edit`` hook), so that sampling must avoid them. Manifests go to local files and
to a moto S3 server.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from pyproj import Transformer

from stacsr.catalog import search as S
from stacsr.catalog.presets import PRESETS
from stacsr.io import grid as G
from stacsr.io.write import write_cog
from stacsr.train import manifest as P
from stacsr.train import pairs_wald as W
from stacsr.train import sampling as SA
from tests.fixtures import scenes as SC
from tests.fixtures.services import planetary_computer_stand_in

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pystac-client: DoesNotConformTo SORT

AOI = SC.world_bbox(172, 172, 308, 308)  # where both items overlap
PATCH, SCALE = 32, 4
# Invalid SCL rectangles in item pixels of the 20 m grid (rows, cols): a cloud in NEW, a shadow in OLD.
CLOUD = {SC.NEW: (slice(20, 50), slice(20, 50), 9), SC.OLD: (slice(115, 145), slice(90, 120), 3)}


def _add_clouds(blob_server):
    def edit(item):
        rows, cols, cls = CLOUD[item["id"]]
        href = item["assets"]["SCL"]["href"]
        path = blob_server.root / SC.PC_ACCOUNT / SC.PC_CONTAINER / href.split(f"/{SC.PC_CONTAINER}/", 1)[1]
        with rasterio.open(path) as src:
            scl = src.read(1)
        scl[rows, cols] = cls
        write_cog(path, scl, G.item_grid(item, "SCL"), ["SCL"], scale=None)

    return edit


def pc_preset(pgstac, blob_server):
    import planetary_computer

    return replace(
        PRESETS["planetary-computer"],
        url=pgstac.url,
        sign=lambda item: blob_server.rewrite_item(planetary_computer.sign(item)),
    )


@pytest.fixture(scope="module")
def built(pgstac, blob_server):
    """Scenes with clouds, searched in pgstac; a manifest of 12 patches built with real signing."""
    scenes = SC.make_scenes(blob_server, "planetary-computer", edit=_add_clouds(blob_server))
    SC.load(pgstac, scenes)
    try:
        with planetary_computer_stand_in(blob_server.sas_url):
            preset = pc_preset(pgstac, blob_server)
            items = S.search(preset, AOI)
            blob_server.clear_requests()
            table = W.build_wald_manifest(items, preset, AOI, 12, PATCH, SCALE, seed=3, min_valid=1.0)
            requests = blob_server.requests
    finally:
        pgstac.reset()
    return scenes, items, preset, table, requests


def scl_valid_10m(scenes, item_id: str) -> np.ndarray:
    """Clear mask on the 10 m grid, straight from the SCL file (each 20 m pixel covers 2×2)."""
    with rasterio.open(scenes.file(item_id, "SCL")) as src:
        scl = src.read(1)
    return np.repeat(np.repeat(~np.isin(scl, list(SA.INVALID_SCL)), 2, axis=0), 2, axis=1)


def test_manifest_rows_and_spread(built):
    scenes, items, _, table, _ = built
    assert table.num_rows == 12 and table.column_names == list(P.COLUMNS)
    rows = table.to_pylist()
    assert {r["kind"] for r in rows} == {"wald"} and len({r["id"] for r in rows}) == 12
    assert sorted(r["item_id"] for r in rows).count(SC.NEW) == 6  # spread evenly over the two items
    for r in rows:
        item = scenes.item(r["item_id"])
        assert (r["size"], r["scale"], r["epsg"], r["collection"]) == (PATCH, SCALE, 32632, SC.COLLECTION)
        assert r["cloud_cover"] == item["properties"]["eo:cloud_cover"]
        assert r["datetime"].isoformat().replace("+00:00", "Z") == item["properties"]["datetime"]
        assert r["transform"] == item["assets"]["B02"]["proj:transform"]
        assert r["bands"] == ["B02", "B03", "B04", "B08"] and r["date_gap_days"] == 0.0
        scale_offset = json.loads(r["radiometry"])["B02"]
        assert scale_offset == ([1e-4, -0.1] if r["item_id"] == SC.NEW else [1e-4, 0.0])


def test_windows_inside_aoi_and_item_and_clear(built):
    scenes, items, _, table, _ = built
    for r in table.to_pylist():
        item = scenes.item(r["item_id"])
        rows, cols = SC.expected_window(item, "B02", AOI)
        assert rows.start <= r["row"] and r["row"] + r["size"] <= rows.stop
        assert cols.start <= r["col"] and r["col"] + r["size"] <= cols.stop
        assert r["row"] + r["size"] <= SC.demo.ITEM_PIXELS and r["col"] + r["size"] <= SC.demo.ITEM_PIXELS
        valid = scl_valid_10m(scenes, r["item_id"])[r["row"] : r["row"] + PATCH, r["col"] : r["col"] + PATCH]
        assert r["valid_fraction"] == valid.mean() == 1.0  # min_valid=1: no cloud, shadow or nodata pixel


def test_valid_fraction_matches_scl_and_threshold_is_applied(built, blob_server):
    scenes, items, preset, _, _ = built
    new = next(i for i in items if i["id"] == SC.NEW)
    with planetary_computer_stand_in(blob_server.sas_url):
        found = SA.sample_wald_windows(new, preset, AOI, 400, PATCH, np.random.default_rng(0), min_valid=0.5)
    valid = scl_valid_10m(scenes, SC.NEW)
    fractions = [valid[w.window.slices].mean() for w in found]
    assert [w.valid_fraction for w in found] == pytest.approx(fractions, abs=1e-12)
    assert min(fractions) >= 0.5 and min(fractions) < 1.0  # partly cloudy windows are allowed at 0.5 …
    cloudy = [w for w in found if w.valid_fraction < 1]
    assert cloudy and all(w.valid_fraction >= 0.5 for w in cloudy)
    assert len({(w.window.row, w.window.col) for w in found}) == len(found)


def test_non_overlapping_windows_first(built, blob_server):
    _, items, preset, _, _ = built
    with planetary_computer_stand_in(blob_server.sas_url):
        found = SA.sample_wald_windows(items[0], preset, AOI, 4, PATCH, np.random.default_rng(1), min_valid=1.0)
    boxes = [shapely.box(w.window.col, w.window.row, w.window.col + PATCH, w.window.row + PATCH) for w in found]
    assert len(found) == 4
    assert all(a.intersection(b).area == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_scl_read_signed_with_range_requests_and_no_token_in_manifest(built, blob_server):
    _, _, _, table, requests = built
    scl = [r for r in requests if r.path.startswith("/blob/") and r.path.endswith("/SCL.tif")]
    assert scl and all(r.status in (200, 206) for r in scl)  # 403 would mean unsigned
    assert not [r for r in requests if r.path.startswith("/blob/") and r.path.endswith("/B02.tif")]  # SCL only
    text = json.dumps(table.to_pylist(), default=str) + str(table.schema.metadata)
    for secret in [blob_server.secret, *blob_server.issued_sigs, "sig=", "se="]:
        assert secret not in text
    for r in table.to_pylist():
        assert all(
            h.startswith("https://sentinel2l2a01.blob.core.windows.net/") and "?" not in h
            for h in json.loads(r["hrefs"]).values()
        )


def test_geometry_is_the_window_footprint_in_crs84(built):
    _, _, _, table, _ = built
    geo = json.loads(table.schema.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["primary_column"] == "geometry" and column["encoding"] == "WKB"
    assert column["crs"]["id"] == {"authority": "OGC", "code": "CRS84"}
    to_ll = Transformer.from_crs("EPSG:32632", "OGC:CRS84", always_xy=True)
    for r in table.to_pylist():
        a, _, c, _, e, f = r["transform"]
        x0, y0 = c + r["col"] * a, f + r["row"] * e
        x1, y1 = x0 + PATCH * a, y0 + PATCH * e
        lon, lat = to_ll.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
        expected = shapely.Polygon(zip(lon, lat))
        geom = shapely.from_wkb(r["geometry"])
        assert geom.geom_type == "Polygon" and geom.symmetric_difference(expected).area < 1e-14
        w, s, e_, n = geom.bounds
        assert column["bbox"][0] <= w and column["bbox"][2] >= e_


def test_deterministic_for_a_seed(built, blob_server):
    _, items, preset, table, _ = built
    with planetary_computer_stand_in(blob_server.sas_url):
        again = W.build_wald_manifest(items, preset, AOI, 12, PATCH, SCALE, seed=3, min_valid=1.0)
        other = W.build_wald_manifest(items, preset, AOI, 12, PATCH, SCALE, seed=4, min_valid=1.0)
    assert again.equals(table)
    assert other.column("id").to_pylist() != table.column("id").to_pylist()


def test_local_round_trip(built, tmp_path):
    table = built[3]
    path = P.write_manifest(table, tmp_path / "sub" / "pairs.parquet")
    back = P.read_manifest(path)
    assert back.equals(table) and back.schema.metadata == table.schema.metadata
    assert P.manifest_metadata(back)["scale"] == SCALE
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["pairs.parquet"]  # no temporary left behind
    assert json.loads(pq.read_metadata(path).metadata[b"geo"])["version"] == "1.1.0"


def test_s3_round_trip(built, s3, monkeypatch):  # noqa: F811
    table = built[3]
    bucket = s3.bucket()
    P.write_manifest(table, f"s3://{bucket}/pairs/a.parquet", filesystem=s3.filesystem)
    assert P.read_manifest(f"s3://{bucket}/pairs/a.parquet", filesystem=s3.filesystem).equals(table)
    for key, value in s3.env.items():  # a plain s3:// URI, endpoint and credentials from the environment
        monkeypatch.setenv(key, value)
    P.write_manifest(table, f"s3://{bucket}/pairs/b.parquet")
    assert P.read_manifest(f"s3://{bucket}/pairs/b.parquet").equals(table)
    with pytest.raises(P.PairsError, match=r"cannot read pairs manifest s3://.*/missing.parquet"):
        P.read_manifest(f"s3://{bucket}/missing.parquet")


def test_empty_and_unreadable_manifests(built, tmp_path):
    empty = built[3].slice(0, 0)
    with pytest.raises(P.PairsError, match="empty"):
        P.write_manifest(empty, tmp_path / "empty.parquet")
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(P.PairsError, match="is empty: it lists no pairs"):
        P.read_manifest(tmp_path / "empty.parquet")
    with pytest.raises(P.PairsError, match="cannot read pairs manifest .*nowhere.parquet"):
        P.read_manifest(tmp_path / "nowhere.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(P.PairsError, match="cannot read pairs manifest"):
        P.read_manifest(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "other.parquet")
    with pytest.raises(P.PairsError, match="not a stacsr pairs manifest: column"):
        P.read_manifest(tmp_path / "other.parquet")
    with pytest.raises(P.PairsError, match="cannot write"):
        P.write_manifest(built[3], tmp_path / "junk.parquet" / "under-a-file.parquet")


def test_bad_sampling_inputs(built, blob_server):
    _, items, preset, _, _ = built
    no_scl = {**items[0], "assets": {k: v for k, v in items[0]["assets"].items() if k != "SCL"}}
    with planetary_computer_stand_in(blob_server.sas_url):
        with pytest.raises(P.PairsError, match="no SCL asset"):
            W.build_wald_manifest([no_scl], preset, AOI, 4, PATCH, SCALE)
        with pytest.raises(P.PairsError, match="multiple of the scale"):
            W.build_wald_manifest(items, preset, AOI, 4, 30, SCALE)
        with pytest.raises(P.PairsError, match="no items"):
            W.build_wald_manifest([], preset, AOI, 4, PATCH, SCALE)
        cloudy = SC.world_bbox(200, 200, 260, 260)  # inside NEW's cloud: no clear 32-px window
        with pytest.raises(P.PairsError, match="manifest would be empty"):
            W.build_wald_manifest([i for i in items if i["id"] == SC.NEW], preset, cloudy, 4, PATCH, SCALE)
        with pytest.warns(UserWarning, match="only .* of 500 patches"):
            few = W.build_wald_manifest(items, preset, AOI, 500, PATCH, SCALE, min_valid=1.0, stride=16)
    assert 0 < few.num_rows < 500
