"""Cross-sensor pairs (Sentinel-2 LR, a NAIP-like HR collection): manifest, reading, calibration, CLI.

A synthetic HR collection ``naip`` is made from the demo ground (:func:`stacsr.demo.ground`, 2.5 m, the same
land the demo S2 items were averaged from): uint8 R, G, B, NIR COGs at 2 m in UTM 33N (EPSG:32633, not the
S2 items' 32632, so reading reprojects), with a known per-band linear DN scale. Two HR items:

* ``NEAR`` (8 days after the S2B item) over world rows/cols 170–310 (10 m pixels);
* ``FAR`` (60 days after it) over world rows/cols 330–450 — excluded with ``max_days=30``.

The S2A item (2021) has no HR within any small ``max_days``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from typer.testing import CliRunner

from stacsr import demo
from stacsr.catalog.presets import PRESETS
from stacsr.cli import app
from stacsr.io import grid as G
from stacsr.train import data as T
from stacsr.train import degrade as D
from stacsr.train import manifest as P
from stacsr.train import pairs_cross_sensor as CS
from tests.fixtures import scenes as SC
from tests.fixtures.services import planetary_computer_stand_in, sample_collection
from tests.test_train_data import make_sign

HR_EPSG, HR_RES = 32633, 2.0
HR_ACCOUNT, HR_CONTAINER = "naipeuwest", "naip"
NEAR, FAR = "NAIP_DEMO_NEAR", "NAIP_DEMO_FAR"
HR_SPECS = {  # id, datetime, world 10 m rectangle (row0, col0, row1, col1)
    NEAR: ("2024-07-20T10:25:59Z", (170, 170, 310, 310)),
    FAR: ("2024-09-10T10:25:59Z", (330, 330, 450, 450)),
}
# DN = gain · reflectance×10000 + offset, per model band (B02, B03, B04, B08); stored as R, G, B, NIR.
GAIN = np.array([0.05, 0.06, 0.055, 0.045], dtype=np.float32)
OFFSET = np.array([8.0, 5.0, 10.0, 3.0], dtype=np.float32)
AOI = SC.world_bbox(160, 160, 470, 470)  # the S2B item, nodata corner aside
PATCH, SCALE = 32, 4


def _hr_grid(rect) -> GeoBox:
    from pyproj import Transformer

    r0, c0, r1, c1 = rect
    x0, y0 = demo.WORLD_ORIGIN
    xs = np.array([x0 + c0 * 10, x0 + c1 * 10, x0 + c0 * 10, x0 + c1 * 10])
    ys = np.array([y0 - r0 * 10, y0 - r0 * 10, y0 - r1 * 10, y0 - r1 * 10])
    x, y = Transformer.from_crs(f"EPSG:{demo.EPSG}", f"EPSG:{HR_EPSG}", always_xy=True).transform(xs, ys)
    left, top = np.floor(x.min() / HR_RES) * HR_RES, np.ceil(y.max() / HR_RES) * HR_RES
    width, height = int(np.ceil((x.max() - left) / HR_RES)), int(np.ceil((top - y.min()) / HR_RES))
    return GeoBox((height, width), Affine(HR_RES, 0, left, 0, -HR_RES, top), f"EPSG:{HR_EPSG}")


def _write_hr(path, grid: GeoBox) -> None:
    """NAIP-like COG: the 2.5 m ground reprojected onto ``grid`` (bilinear), DN scaled, R,G,B,NIR uint8."""
    from rasterio.warp import Resampling, reproject

    ground = demo.ground()
    src_t = Affine(2.5, 0, demo.WORLD_ORIGIN[0], 0, -2.5, demo.WORLD_ORIGIN[1])
    refl = np.zeros((4, *grid.shape.yx), dtype=np.float32)
    reproject(
        ground,
        refl,
        src_transform=src_t,
        src_crs=f"EPSG:{demo.EPSG}",
        dst_transform=grid.affine,
        dst_crs=str(grid.crs),
        resampling=Resampling.bilinear,
    )
    dn = np.clip(np.rint(refl * GAIN[:, None, None] + OFFSET[:, None, None]), 1, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        dtype="uint8",
        count=4,
        height=grid.shape.y,
        width=grid.shape.x,
        crs=str(grid.crs),
        transform=grid.affine,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        photometric="RGB",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn[[2, 1, 0, 3]])  # R, G, B, NIR


def _hr_item(item_id, when, grid: GeoBox, href) -> dict:
    geom = grid.extent.to_crs("EPSG:4326")
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "naip",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
        "geometry": geom.json,
        "bbox": list(geom.boundingbox),
        "properties": {
            "datetime": when,
            "gsd": HR_RES,
            "proj:epsg": HR_EPSG,
            "proj:shape": list(grid.shape.yx),
            "proj:transform": list(grid.affine)[:6],
            "naip:state": "zz",
        },
        "assets": {
            "image": {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "eo:bands": [{"name": n} for n in ("Red", "Green", "Blue", "NIR")],
            }
        },
        "links": [],
    }


@pytest.fixture(scope="module")
def hr(blob_server):
    """The HR COGs on the blob server; ``hr["pc"]`` / ``hr["files"]``: items with PC-style / plain hrefs."""
    out = {"pc": [], "files": [], "grids": {}}
    for item_id, (when, rect) in HR_SPECS.items():
        grid = _hr_grid(rect)
        rel = f"demo/{item_id}/image.tif"
        _write_hr(blob_server.blob_path(HR_ACCOUNT, HR_CONTAINER, rel), grid)
        out["grids"][item_id] = grid
        out["pc"].append(_hr_item(item_id, when, grid, blob_server.pc_href(HR_ACCOUNT, HR_CONTAINER, rel)))
        out["files"].append(_hr_item(item_id, when, grid, blob_server.file_url(f"{HR_ACCOUNT}/{HR_CONTAINER}/{rel}")))
    return out


@pytest.fixture(scope="module")
def setup(blob_server, hr):
    """PC-style S2 scenes, a signing preset and a cross-sensor manifest (max_days 30)."""
    scenes = SC.make_scenes(blob_server, "planetary-computer")
    preset = replace(PRESETS["planetary-computer"], sign=make_sign(blob_server.sas_url, blob_server.url))
    with planetary_computer_stand_in(blob_server.sas_url):
        table = CS.build_cross_sensor_manifest(
            scenes.items, hr["pc"], preset, None, AOI, 10, PATCH, SCALE, max_days=30, seed=1, min_valid=1.0
        )
    return scenes, preset, table


def _world_rc(row) -> tuple[int, int]:
    dr, dc = SC.OFFSETS[row["item_id"]]
    return dr + row["row"], dc + row["col"]


def test_rows_only_where_hr_covers_and_within_max_days(setup, hr, pc_stand_in):
    scenes, preset, table = setup
    rows = table.to_pylist()
    assert len(rows) == 10
    assert {r["kind"] for r in rows} == {"cross-sensor"}
    assert {r["item_id"] for r in rows} == {SC.NEW}  # S2A (2021) has no HR within 30 days
    assert {r["hr_item_id"] for r in rows} == {NEAR}  # FAR is 60 days away
    assert all(r["date_gap_days"] == pytest.approx(8.0) for r in rows)
    assert {r["size"] for r in rows} == {PATCH} and {r["scale"] for r in rows} == {SCALE}
    near_foot = shapely.geometry.shape(next(i for i in hr["pc"] if i["id"] == NEAR)["geometry"])
    for r in rows:
        assert near_foot.buffer(1e-6).covers(shapely.from_wkb(r["geometry"]))
        assert "?" not in r["hr_hrefs"] and "sig=" not in r["hrefs"]
        assert json.loads(r["hr_bands"]) == {
            "B02": ["image", 3],
            "B03": ["image", 2],
            "B04": ["image", 1],
            "B08": ["image", 4],
        }
        assert r["calibrate"] is True and r["hr_epsg"] == HR_EPSG
    # a wider date gap lets FAR in, nearest first where both would do
    wide = CS.build_cross_sensor_manifest(
        scenes.items, hr["pc"], preset, None, AOI, 40, PATCH, SCALE, max_days=90, seed=1, min_valid=1.0
    )
    by_hr = {r["hr_item_id"]: r for r in wide.to_pylist()}
    assert set(by_hr) == {NEAR, FAR}
    assert by_hr[FAR]["date_gap_days"] == pytest.approx(60.0)
    # no HR in time at all: a clear error
    with pytest.raises(P.PairsError, match="covered by an HR item within 5 days"):
        CS.build_cross_sensor_manifest(scenes.items, hr["pc"], preset, None, AOI, 4, PATCH, SCALE, max_days=5)


def test_hr_footprint_equals_lr_footprint(setup):
    scenes, _, table = setup
    for row in table.to_pylist():
        lr_grid, hr_grid = T.pair_grids(row)
        item_grid = G.item_grid(scenes.item(row["item_id"]), "B02")
        assert lr_grid.shape.yx == (PATCH // SCALE, PATCH // SCALE) and hr_grid.shape.yx == (PATCH, PATCH)
        assert lr_grid.affine == item_grid.affine * Affine.translation(row["col"], row["row"])
        assert hr_grid == G.zoom_in(lr_grid, SCALE)
        assert tuple(hr_grid.boundingbox) == tuple(lr_grid.boundingbox)
        foot = shapely.from_wkb(row["geometry"])
        assert np.allclose(foot.bounds, lr_grid.extent.to_crs("EPSG:4326").geom.bounds, atol=1e-12)


def test_read_pairs_alignment_and_calibration(setup, pc_stand_in, tmp_path):
    _, preset, table = setup
    ground = demo.ground()
    maes_raw, maes_cal, pooled = [], [], []
    for row in table.to_pylist()[:6]:
        lr, hr_cal = T.read_pair(row, preset, bands=("B02", "B03", "B04", "B08"))
        _, hr_raw = T.read_pair(dict(row, calibrate=False), preset)
        assert lr.shape == (4, PATCH // SCALE, PATCH // SCALE) and hr_cal.shape == (4, PATCH, PATCH)
        wr, wc = _world_rc(row)
        n = PATCH // SCALE
        truth = SC.truth(row["item_id"], slice(row["row"], row["row"] + n), slice(row["col"], row["col"] + n))
        np.testing.assert_array_equal(lr, truth)  # LR: the S2 window, radiometry applied
        assert (hr_raw > 0).all()
        # uncalibrated: DN/255 — correlated with S2 but off in level
        mean_raw = D.area(hr_raw, SCALE)
        pooled.append((mean_raw, lr))
        maes_raw.append(np.abs(mean_raw - lr).mean() / lr.mean())
        maes_cal.append(np.abs(D.area(hr_cal, SCALE) - lr).mean() / lr.mean())
        # aligned at 2.5 m: the HR correlates with the ground under it better than with a shifted ground
        g = ground[:, wr * SCALE : wr * SCALE + PATCH, wc * SCALE : wc * SCALE + PATCH]
        shifted = ground[:, wr * SCALE + 2 : wr * SCALE + 2 + PATCH, wc * SCALE + 2 : wc * SCALE + 2 + PATCH]
        c_here = np.corrcoef(hr_cal.ravel(), g.ravel())[0, 1]
        assert c_here > 0.9 and c_here > np.corrcoef(hr_cal.ravel(), shifted.ravel())[0, 1]
    for b in range(4):  # pooled over the patches (one 8×8 patch may hold a single field)
        x = np.concatenate([m[b].ravel() for m, _ in pooled])
        y = np.concatenate([lr_[b].ravel() for _, lr_ in pooled])
        assert np.corrcoef(x, y)[0, 1] > 0.95, b
    print("relative MAE raw", np.round(maes_raw, 4), "calibrated", np.round(maes_cal, 4))
    assert max(maes_cal) < 0.03 < min(maes_raw)
    # the cache keeps both LR and HR and gives the same arrays back
    lr0, hr0 = T.read_pair(table.to_pylist()[0], preset, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    lr1, hr1 = T.read_pair(table.to_pylist()[0], preset, cache_dir=tmp_path)
    np.testing.assert_array_equal(lr0, lr1)
    np.testing.assert_array_equal(hr0, hr1)


def test_calibrate_recovers_gain_and_offset():
    rng = np.random.default_rng(0)
    hr = rng.uniform(100, 3000, (2, 16, 16)).astype(np.float32)
    lr = D.area(hr, 4) * np.array([1.5, 0.8], dtype=np.float32)[:, None, None] + np.float32(200)
    lr[0, 0, 0] = 0  # nodata: ignored in the fit
    out, gains, offsets = CS.calibrate(lr, hr, 4)
    np.testing.assert_allclose(gains, [1.5, 0.8], rtol=1e-4)
    np.testing.assert_allclose(offsets, [200, 200], atol=0.5)
    np.testing.assert_allclose(D.area(out, 4)[:, 1:, 1:], lr[:, 1:, 1:], rtol=1e-4)


def test_manifest_round_trip_and_schema(setup, tmp_path):
    _, _, table = setup
    path = P.write_manifest(table, tmp_path / "x.parquet")
    back = P.read_manifest(path)
    assert back.equals(table)
    assert set(P.HR_COLUMNS) <= set(back.column_names)
    assert not set(P.HR_COLUMNS) & set(P.COLUMNS)  # wald manifests need none of them
    meta = P.manifest_metadata(back)
    assert meta["kind"] == "cross-sensor" and meta["max_days"] == 30 and meta["calibrate"] is True
    assert json.loads(back.schema.metadata[b"geo"])["primary_column"] == "geometry"
    assert back.column("hr_datetime")[0].as_py() == datetime(2024, 7, 20, 10, 25, 59, tzinfo=timezone.utc)


def test_bad_inputs(setup, hr):
    scenes, preset, table = setup
    with pytest.raises(P.PairsError, match="no entry for band"):
        CS.build_cross_sensor_manifest(scenes.items, hr["pc"], preset, {"B02": ("image", 1)}, AOI, 4, PATCH, SCALE)
    with pytest.raises(P.PairsError, match="no HR item with asset"):
        CS.build_cross_sensor_manifest(scenes.items, [], preset, None, AOI, 4, PATCH, SCALE)
    assert CS.hr_band_map_of("B02=image:3,B08=image:4") == {"B02": ("image", 3), "B08": ("image", 4)}
    with pytest.raises(P.PairsError, match="not of the form"):
        CS.hr_band_map_of("B02=image")
    row = table.to_pylist()[0]
    with pytest.raises(P.PairsError, match="without HR source column"):
        T.read_pair(dict(row, hr_hrefs=None), preset)
    with pytest.raises(P.PairsError, match="LR footprint|do not match the grids"):
        T.check_pair(np.zeros((4, 8, 8)), np.zeros((4, 40, 40)), row)


def test_cli_pairs_cross_sensor(pgstac, blob_server, hr, tmp_path):
    es = SC.make_scenes(blob_server, "earth-search")
    out = tmp_path / "pairs-naip.parquet"
    with_catalog = SC.loaded(pgstac, es)
    next(with_catalog)
    try:
        pgstac.delete_collection("naip")
        pgstac.load_collection(sample_collection("naip", "synthetic NAIP-like HR"))
        pgstac.load_items([json.loads(json.dumps(i)) for i in hr["files"]])
        found = CS.search_hr_items(pgstac.url, "naip", AOI, es.items, 30)
        assert [i["id"] for i in found] == [NEAR]  # FAR lies 60 days out: not even searched
        r = CliRunner().invoke(
            app,
            [
                str(a)
                for a in (
                    "pairs",
                    "--kind",
                    "cross-sensor",
                    "--catalog",
                    "earth-search",
                    "--stac-url",
                    pgstac.url,
                    "--bbox",
                    *AOI,
                    "--patches",
                    6,
                    "--patch-size",
                    PATCH,
                    "--scale",
                    SCALE,
                    "--min-valid",
                    1.0,
                    "--max-days",
                    30,
                    "--no-calibrate",
                    "--out",
                    out,
                )
            ],
            env={"COLUMNS": "200"},
        )
    finally:
        pgstac.delete_collection("naip")
        next(with_catalog, None)
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "6 patches from 1 items" in r.stderr
    table = P.read_manifest(out)
    assert set(table.column("kind").to_pylist()) == {"cross-sensor"}
    assert set(table.column("hr_item_id").to_pylist()) == {NEAR}
    assert set(table.column("calibrate").to_pylist()) == {False}
    lr, hr_ = T.read_pair(table.to_pylist()[0], replace(PRESETS["earth-search"], url=pgstac.url))
    assert lr.shape == (4, PATCH // SCALE, PATCH // SCALE) and hr_.shape == (4, PATCH, PATCH) and (hr_ > 0).all()


def test_cli_refuses_other_kinds(tmp_path):
    out = tmp_path / "pairs.parquet"
    r = CliRunner().invoke(
        app, ["pairs", "--kind", "spot", "--bbox", *map(str, AOI), "--out", str(out)], env={"COLUMNS": "200"}
    )
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "error: pair kind 'spot' is not available yet; use --kind wald or cross-sensor"
    ]
    assert not out.exists()
