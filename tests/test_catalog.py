"""Catalogue search against a real pgstac STAC API, presets, and Sentinel-2 radiometry.

Items come from :func:`stacsr.demo.build_catalog` (Planetary Computer and Earth Search conventions, real
COGs) plus items derived from them (new id, cloud cover, date, tile, or moved far away), loaded into the
session ``pgstac`` service. The PC / Earth Search presets are pointed at that API with ``url=``.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import rasterio

from stacsr import demo
from stacsr.catalog import presets, radiometry, search
from stacsr.catalog.presets import PRESETS
from stacsr.catalog.search import SearchError
from stacsr.io import grid as G

pytestmark = pytest.mark.filterwarnings("ignore::pystac_client.warnings.DoesNotConformTo")

S2 = "sentinel-2-l2a"
FAR = (60.0, -30.0)  # lon/lat shift of the far-away item (from Bavaria to the Arabian Sea)
# Items loaded per style: demo items A (2021, 32UPU, 4.2 %, baseline 03.01) and B (2024, 32UQU, 1.5 %,
# baseline 05.10), plus derived ones: (suffix, base, cloud, datetime, tile, shift)
DERIVED = [
    ("C", 0, 30.0, "2023-06-01T10:30:00Z", "32UPU", None),
    ("D", 1, 75.0, "2022-08-20T10:30:00Z", "32UQU", None),
    ("E", 0, 12.0, "2023-09-01T10:30:00Z", "32UPU", None),
    ("F", 0, 0.5, "2023-07-01T10:30:00Z", "42QXX", FAR),  # least cloudy of all, but far away
    ("G", 1, 60.0, "2025-01-10T10:30:00Z", "32UQU", None),  # the newest (the API's default order)
]


def s2_collection(collection_id: str = S2) -> dict:
    """A minimal valid STAC 1.1 collection."""
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection_id,
        "description": "Sentinel-2 L2A (stacsr test stand-in)",
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [["2015-06-27T00:00:00Z", None]]},
        },
    }


def _shift(geometry: dict, dlon: float, dlat: float) -> dict:
    ring = [[x + dlon, y + dlat] for x, y in geometry["coordinates"][0]]
    return {"type": "Polygon", "coordinates": [ring]}


def derive(base: dict, key: str, cloud: float, when: str, tile: str, shift=None, style="planetary-computer") -> dict:
    """A copy of ``base`` with a new id, cloud cover, datetime, tile and (optionally) moved footprint."""
    item = copy.deepcopy(base)
    item["id"] = base["id"].replace("_DEMO", f"_DERIVED{key}")
    props = item["properties"]
    props.update({"eo:cloud_cover": cloud, "datetime": when})
    if style == "earth-search":
        props["grid:code"] = f"MGRS-{tile}"
    else:
        props["s2:mgrs_tile"] = tile
    if shift:
        item["geometry"] = _shift(item["geometry"], *shift)
        w, s, e, n = item["bbox"]
        item["bbox"] = [w + shift[0], s + shift[1], e + shift[0], n + shift[1]]
    return item


def build_items(folder, style: str) -> dict[str, dict]:
    """Items A, B (demo) and C…G (derived), keyed by letter."""
    a, b = demo.build_catalog(folder, style=style)
    for item in (a, b):  # a valid `collection` field needs a collection link
        item["links"] = [{"rel": "collection", "href": f"./collections/{S2}", "type": "application/json"}]
        if style == "earth-search":  # Earth Search also puts proj:code on the assets
            for asset in item["assets"].values():
                asset["proj:code"] = item["properties"]["proj:code"]
    items = {"A": a, "B": b}
    for key, base, cloud, when, tile, shift in DERIVED:
        items[key] = derive((a, b)[base], key, cloud, when, tile, shift, style)
    return items


def _loaded(pgstac, tmp_path_factory, style):
    """Load the collection and items of one style; remove them afterwards (other files use pgstac too)."""
    pgstac.delete_collection(S2)  # no leftovers from other test files
    items = build_items(tmp_path_factory.mktemp(style), style)
    pgstac.load_collection(s2_collection())
    pgstac.load_items(list(items.values()))
    try:
        yield items
    finally:
        pgstac.delete_collection(S2)


@pytest.fixture(scope="class")
def pc_items(pgstac, tmp_path_factory):
    yield from _loaded(pgstac, tmp_path_factory, "planetary-computer")


@pytest.fixture(scope="class")
def es_items(pgstac, tmp_path_factory):
    yield from _loaded(pgstac, tmp_path_factory, "earth-search")


def letters(found: list[dict], items: dict) -> list[str]:
    by_id = {v["id"]: k for k, v in items.items()}
    return [by_id[i["id"]] for i in found]


@pytest.fixture
def wire(monkeypatch):
    """Every request body pystac-client sends, as sent."""
    from pystac_client.stac_api_io import StacApiIO

    sent: list[dict] = []
    original = StacApiIO.request

    def spy(self, href, method=None, headers=None, parameters=None):
        sent.append({"href": href, "method": method, "parameters": copy.deepcopy(parameters)})
        return original(self, href, method=method, headers=headers, parameters=parameters)

    monkeypatch.setattr(StacApiIO, "request", spy)
    return sent


# ------------------------------------------------------------------ search, Planetary Computer conventions


class TestSearchPlanetaryComputer:
    @pytest.fixture(autouse=True)
    def _setup(self, pgstac, pc_items):
        self.items = pc_items
        self.preset = dataclasses.replace(PRESETS["planetary-computer"], url=pgstac.url)

    def test_fixture_shape(self):
        assert sorted(self.items) == list("ABCDEFG")
        assert len({i["properties"]["eo:cloud_cover"] for i in self.items.values()}) == 7

    def test_cloud_filter_is_sent_to_the_server_and_results_are_least_cloudy_first(self, wire):
        found = search.search(self.preset, demo.BBOX, max_cloud=50)
        assert letters(found, self.items) == ["B", "A", "E", "C"]  # D (75 %), G (60 %) filtered, F far away
        assert all(i["properties"]["eo:cloud_cover"] <= 50 for i in found)
        bodies = [r["parameters"] for r in wire if r["parameters"] and "query" in r["parameters"]]
        assert bodies and bodies[0]["query"] == {"eo:cloud_cover": {"lte": 50}}
        assert list(bodies[0]["collections"]) == [S2]

    def test_no_cloud_limit_returns_everything_in_the_bbox(self):
        found = search.search(self.preset, demo.BBOX)
        assert letters(found, self.items) == ["B", "A", "E", "C", "G", "D"]

    def test_max_cloud_boundary_is_inclusive(self):
        assert letters(search.search(self.preset, demo.BBOX, max_cloud=4.2), self.items) == ["B", "A"]
        assert search.search(self.preset, demo.BBOX, max_cloud=0) == []

    def test_sorting_happens_server_side_before_the_limit(self):
        # The API's default order is newest first (G, 60 %); only a server-side sortby yields B.
        assert letters(search.search(self.preset, demo.BBOX, limit=1), self.items) == ["B"]
        assert letters(search.search(self.preset, demo.BBOX, limit=3), self.items) == ["B", "A", "E"]

    def test_datetime_ranges(self):
        assert letters(search.search(self.preset, demo.BBOX, "2023-01-01/2023-12-31"), self.items) == ["E", "C"]
        assert letters(search.search(self.preset, demo.BBOX, "2024-01-01T00:00:00Z/.."), self.items) == ["B", "G"]
        assert letters(search.search(self.preset, demo.BBOX, "../2021-12-31"), self.items) == ["A"]
        assert letters(search.search(self.preset, demo.BBOX, "2022-08-20T10:30:00Z"), self.items) == ["D"]
        assert search.search(self.preset, demo.BBOX, "2019-01-01/2019-12-31") == []

    def test_bbox_far_away_item_only_where_it_is(self):
        w, s, e, n = demo.BBOX
        far_bbox = (w + FAR[0], s + FAR[1], e + FAR[0], n + FAR[1])
        assert "F" not in letters(search.search(self.preset, demo.BBOX), self.items)
        assert letters(search.search(self.preset, far_bbox), self.items) == ["F"]
        assert search.search(self.preset, (0.0, 0.0, 1.0, 1.0)) == []

    def test_bad_parameters_fail_before_any_request(self, wire):
        with pytest.raises(SearchError):
            search.search(self.preset, (12.0, 48.0, 11.0, 49.0))
        with pytest.raises(SearchError):
            search.search(self.preset, demo.BBOX, "2024-08-31/2024-06-01")
        assert wire == []

    def test_other_collection_is_not_searched(self, pgstac):
        other = dataclasses.replace(self.preset, collection="no-such-collection")
        found = search.search(other, demo.BBOX)
        assert found == []

    def test_best_per_tile_keeps_the_least_cloudy_of_each_tile(self):
        found = search.search(self.preset, demo.BBOX)
        best = search.best_per_tile(found, self.preset)
        assert letters(best, self.items) == ["B", "A"]
        assert [search.tile_of(i, self.preset) for i in best] == ["32UQU", "32UPU"]

    def test_results_are_unsigned_with_usable_grids(self):
        found = search.search(self.preset, demo.BBOX, max_cloud=5)
        for item in found:
            assert item["properties"]["proj:epsg"] == demo.EPSG
            grid = G.item_grid(item, "B02")
            assert grid.shape.yx == (demo.ITEM_PIXELS, demo.ITEM_PIXELS) and grid.crs.epsg == demo.EPSG
            assert all("?" not in a["href"] for a in item["assets"].values())

    def test_radiometry_of_both_baselines_agrees_on_the_same_ground(self):
        # A (03.01, no offset) and B (05.10, DN = reflectance x 10000 + 1000) see the same ground where they
        # overlap: A's rows/cols 160..320 are B's 0..160. After radiometry they must be identical.
        b, a = search.search(self.preset, demo.BBOX, max_cloud=5)
        assert [i["properties"]["s2:processing_baseline"] for i in (a, b)] == ["03.01", "05.10"]
        assert radiometry.of_asset(a, "B04") == radiometry.Radiometry(1e-4, 0.0)
        assert radiometry.of_asset(b, "B04") == radiometry.Radiometry(1e-4, -0.1)
        half = demo.ITEM_PIXELS // 2
        with rasterio.open(a["assets"]["B04"]["href"]) as ra, rasterio.open(b["assets"]["B04"]["href"]) as rb:
            dn_a, dn_b = ra.read(1)[half:, half:], rb.read(1)[:half, :half]
        assert (dn_b.astype(int) - dn_a.astype(int) == 1000).all()  # raw DNs differ by the offset
        ra_, rb_ = radiometry.of_asset(a, "B04").to_uint16(dn_a), radiometry.of_asset(b, "B04").to_uint16(dn_b)
        assert ra_.dtype == np.uint16 and np.array_equal(ra_, rb_)


# ------------------------------------------------------------------ search, Earth Search conventions


class TestSearchEarthSearch:
    @pytest.fixture(autouse=True)
    def _setup(self, pgstac, es_items):
        self.items = es_items
        self.preset = dataclasses.replace(PRESETS["earth-search"], url=pgstac.url)

    def test_stored_items_have_proj_code_only(self):
        for item in self.items.values():
            assert "proj:epsg" not in item["properties"] and item["properties"]["proj:code"] == "EPSG:32632"
            assert all("proj:epsg" not in a for a in item["assets"].values())

    def test_cloud_filter_order_datetime_and_bbox(self):
        assert letters(search.search(self.preset, demo.BBOX, max_cloud=50), self.items) == ["B", "A", "E", "C"]
        assert letters(search.search(self.preset, demo.BBOX, "2023-01-01/2023-12-31"), self.items) == ["E", "C"]
        assert letters(search.search(self.preset, demo.BBOX, limit=1), self.items) == ["B"]
        w, s, e, n = demo.BBOX
        far_bbox = (w + FAR[0], s + FAR[1], e + FAR[0], n + FAR[1])
        assert letters(search.search(self.preset, far_bbox), self.items) == ["F"]

    def test_normalise_adds_proj_epsg_to_item_and_assets(self):
        found = search.search(self.preset, demo.BBOX)
        assert found
        for item in found:
            assert item["properties"]["proj:epsg"] == 32632
            assert item["properties"]["proj:code"] == "EPSG:32632"
            for key, asset in item["assets"].items():
                assert asset["proj:epsg"] == 32632, key
            assert G.item_grid(item, "blue").crs.epsg == 32632

    def test_normalise_does_not_touch_its_input_or_invent_codes(self):
        raw = copy.deepcopy(self.items["A"])
        raw["assets"]["scl"]["proj:code"] = "EPSG:32633"  # an asset in another CRS keeps it
        raw["assets"]["nir"].pop("proj:code")  # an asset without a code gets none
        out = search.normalise(raw)
        assert "proj:epsg" not in raw["properties"] and "proj:epsg" not in raw["assets"]["blue"]
        assert out["assets"]["scl"]["proj:epsg"] == 32633
        assert "proj:epsg" not in out["assets"]["nir"]
        wkt_only = copy.deepcopy(raw)
        wkt_only["properties"]["proj:code"] = "IAU_2015:30100"
        assert "proj:epsg" not in search.normalise(wkt_only)["properties"]

    def test_best_per_tile_uses_grid_code(self):
        best = search.best_per_tile(search.search(self.preset, demo.BBOX), self.preset)
        assert letters(best, self.items) == ["B", "A"]
        assert [search.tile_of(i, self.preset) for i in best] == ["32UQU", "32UPU"]

    def test_radiometry_from_raster_bands_agrees_on_the_same_ground(self):
        a, b = self.items["A"], self.items["B"]
        assert radiometry.of_asset(a, "red") == radiometry.Radiometry(1e-4, 0.0)
        assert radiometry.of_asset(b, "red") == radiometry.Radiometry(1e-4, -0.1)
        half = demo.ITEM_PIXELS // 2
        with rasterio.open(a["assets"]["red"]["href"]) as ra, rasterio.open(b["assets"]["red"]["href"]) as rb:
            dn_a, dn_b = ra.read(1)[half:, half:], rb.read(1)[:half, :half]
        ra_, rb_ = radiometry.of_asset(a, "red").to_uint16(dn_a), radiometry.of_asset(b, "red").to_uint16(dn_b)
        assert np.array_equal(ra_, rb_)


# ------------------------------------------------------------------ best_per_tile / order (no server)


def _mini(item_id, cloud, when="2024-01-01T00:00:00Z", **props):
    return {"id": item_id, "properties": {"eo:cloud_cover": cloud, "datetime": when, **props}, "assets": {}}


def test_order_ties_broken_by_newest_then_id_and_missing_cloud_last():
    items = [
        _mini("b", 5, "2024-01-01T00:00:00Z"),
        _mini("a", 5, "2024-01-01T00:00:00Z"),
        _mini("c", 5, "2024-06-01T00:00:00Z"),
        _mini("d", None),
        _mini("e", 0.1),
    ]
    assert [i["id"] for i in search.order(items)] == ["e", "c", "a", "b", "d"]


def test_best_per_tile_key_precedence_and_crs_fallback():
    preset = PRESETS["planetary-computer"]
    items = search.order(
        [
            _mini("x1", 3, **{"s2:mgrs_tile": "32UPU"}),
            _mini("x2", 1, **{"grid:code": "MGRS-32UPU"}),  # same tile, other key
            _mini("x3", 2, **{"mgrs:grid_square": "QU", "grid:code": "MGRS-32UQU"}),
            _mini("x4", 4, **{"proj:epsg": 32633}),  # no tile: the CRS is the tile
            _mini("x5", 5, **{"proj:code": "EPSG:32633"}),
            _mini("x6", 6, **{"proj:epsg": 32632}),
        ]
    )
    assert [i["id"] for i in search.best_per_tile(items, preset)] == ["x2", "x3", "x4", "x6"]
    assert search.tile_of(items[0], preset) == "32UPU"
    assert search.tile_of(_mini("y", 1, **{"proj:code": "EPSG:32633"}), preset) == "EPSG:32633"


# ------------------------------------------------------------------ check_bbox / check_datetime


@pytest.mark.parametrize(
    "bbox, message",
    [
        ((12.0, 48.0, 11.0, 49.0), "west"),  # W > E
        ((11.0, 48.0, 11.0, 49.0), "west"),  # W == E
        ((11.0, 48.0, 12.0, 91.0), "latitude"),  # lat > 90
        ((11.0, -90.5, 12.0, 48.0), "latitude"),
        ((179.0, 0.0, 181.0, 1.0), "longitude"),  # lon > 180
        ((-181.0, 0.0, -179.0, 1.0), "longitude"),
        ((11.0, 49.0, 12.0, 48.0), "south"),  # S > N
        ((float("nan"), 48.0, 12.0, 49.0), "longitude"),
    ],
)
def test_check_bbox_errors(bbox, message):
    with pytest.raises(SearchError, match=message):
        search.check_bbox(bbox)


def test_check_bbox_accepts_and_normalises():
    assert search.check_bbox(["11", "48", "12", "49.5"]) == (11.0, 48.0, 12.0, 49.5)
    assert search.check_bbox((-180, -90, 180, 90)) == (-180.0, -90.0, 180.0, 90.0)


@pytest.mark.parametrize(
    "text",
    [
        "2024-08-31/2024-06-01",  # reversed
        "2024-06-01T12:00:00Z/2024-06-01T11:00:00Z",  # reversed by an hour
        "2024-06-01T00:30:00Z/2024-06-01T01:00:00+02:00",  # reversed once the offsets are counted
        "yesterday",
        "2024-13-01",
        "2024-06-01/garbage",
        "2024-06-01/2024-07-01/2024-08-01",
    ],
)
def test_check_datetime_errors(text):
    with pytest.raises(SearchError):
        search.check_datetime(text)


@pytest.mark.parametrize(
    "text",
    [
        "2024-06-01/2024-08-31",
        "2024-06-01T10:00:00Z",
        "../2024-08-31",
        "2024-06-01/..",
        "2024-06-01/",
        "2024-06-01/2024-06-01",
        "2024-06-01T01:00:00+02:00/2024-06-01T00:30:00Z",  # 23:00Z to 00:30Z: in order
    ],
)
def test_check_datetime_accepts(text):
    assert search.check_datetime(text) == text


def test_check_datetime_empty_is_none():
    assert search.check_datetime(None) is None and search.check_datetime("") is None


# ------------------------------------------------------------------ presets


def test_resolve_named_presets():
    pc, es = presets.resolve("planetary-computer"), presets.resolve("earth-search")
    assert pc is PRESETS["planetary-computer"] and pc.collection == S2
    assert pc.asset_keys(["B02", "B03", "B04", "B08"]) == ["B02", "B03", "B04", "B08"]
    assert es.asset_keys(["B02", "B03", "B04", "B08"]) == ["blue", "green", "red", "nir"]
    assert pc.sign is presets.sign_planetary_computer and es.sign is presets.no_signing


def test_resolve_overrides():
    p = presets.resolve("earth-search", collection="sentinel-2-c1-l2a", stac_url="http://127.0.0.1:9/stac")
    assert (p.name, p.collection, p.url) == ("earth-search", "sentinel-2-c1-l2a", "http://127.0.0.1:9/stac")
    assert p.assets == PRESETS["earth-search"].assets
    assert PRESETS["earth-search"].url.startswith("https://earth-search")  # the built-in is not mutated


def test_resolve_custom_url_with_band_mapping():
    p = presets.resolve("https://stac.example.org/v1", collection="s2", bands="B02=b2, B03=b3,B04=b4 ,B08 = b8")
    assert (p.name, p.url, p.collection) == ("custom", "https://stac.example.org/v1", "s2")
    assert dict(p.assets) == {"B02": "b2", "B03": "b3", "B04": "b4", "B08": "b8"}
    assert p.asset_keys(["B08", "B02"]) == ["b8", "b2"]
    assert presets.resolve("http://x/stac", collection="c").assets == {b: b for b in presets.S2_BANDS}


def test_resolve_errors():
    with pytest.raises(ValueError, match="--collection"):
        presets.resolve("https://stac.example.org/v1")
    with pytest.raises(ValueError, match="unknown catalogue"):
        presets.resolve("planetary")
    with pytest.raises(ValueError, match="B02=blue"):
        presets.resolve("earth-search", bands="B02")


@pytest.mark.parametrize("text", ["", " , ", "B02", "B02=blue=x", "B02:blue", "B02=blue,B03", "B02=", "=blue"])
def test_parse_band_map_errors(text):
    with pytest.raises(ValueError, match="not of the form"):
        presets.parse_band_map(text)


def test_asset_keys_names_missing_bands():
    p = presets.resolve("earth-search", bands="B02=blue,B03=green")
    with pytest.raises(ValueError, match="B04, B08"):
        p.asset_keys(["B02", "B03", "B04", "B08"])


# ------------------------------------------------------------------ radiometry (unit)


def pc_item(baseline=None, **props):
    p = {"s2:processing_baseline": baseline} if baseline is not None else {}
    return {"properties": {**p, **props}, "assets": {"B04": {"href": "x"}}}


def es_item(scale=1e-4, offset=-0.1, flag=None, baseline=None):
    props = {}
    if flag is not None:
        props["earthsearch:boa_offset_applied"] = flag
    if baseline is not None:
        props["s2:processing_baseline"] = baseline
    return {"properties": props, "assets": {"red": {"raster:bands": [{"scale": scale, "offset": offset, "nodata": 0}]}}}


DN = np.array([[0, 1, 500, 999, 1000], [1001, 1500, 2000, 11000, 65535]], dtype=np.uint16)


def test_pc_old_baseline_leaves_dn_unchanged():
    r = radiometry.of_asset(pc_item("03.01"), "B04")
    assert r == radiometry.Radiometry(1e-4, 0.0)
    out = r.to_uint16(DN)
    assert out.dtype == np.uint16 and np.array_equal(out, DN)


@pytest.mark.parametrize("baseline", ["04.00", "05.10", "05.11"])
def test_pc_new_baseline_subtracts_1000_keeping_valid_pixels_nonzero(baseline):
    r = radiometry.of_asset(pc_item(baseline), "B04")
    assert r.offset == pytest.approx(-0.1)
    out = r.to_uint16(DN)
    assert out.dtype == np.uint16
    assert out[0, 0] == 0  # nodata stays nodata
    assert (out[0, 1:] == 1).all()  # DN <= 1000 is dark, not nodata
    assert out[1].tolist() == [1, 500, 1000, 10000, 64535]


def test_pc_no_baseline_no_raster_bands_is_taken_as_declared():
    assert radiometry.of_asset(pc_item(), "B04") == radiometry.Radiometry(1e-4, 0.0)


def test_es_raster_bands_honoured():
    assert radiometry.of_asset(es_item(offset=-0.1), "red").to_uint16(DN)[1].tolist() == [1, 500, 1000, 10000, 64535]
    assert np.array_equal(radiometry.of_asset(es_item(offset=0.0), "red").to_uint16(DN), DN)


def test_es_flag_true_without_baseline_means_offset_even_if_not_declared():
    r = radiometry.of_asset(es_item(offset=0.0, flag=True), "red")
    assert r.offset == pytest.approx(-0.1)
    assert r.to_uint16(np.array([0, 1200], np.uint16)).tolist() == [0, 200]


def test_es_wrong_flag_overridden_by_baseline():
    assert radiometry.of_asset(es_item(offset=0.0, flag=False, baseline="05.10"), "red").offset == pytest.approx(-0.1)
    # flag False with an old baseline: no offset whatever raster:bands declares
    assert radiometry.of_asset(es_item(offset=-0.1, flag=False, baseline="02.14"), "red").offset == 0.0


def test_custom_scale_is_applied():
    r = radiometry.of_asset(es_item(scale=0.0002, offset=0.0), "red")
    assert r.scale == pytest.approx(0.0002)
    out = r.to_uint16(np.array([0, 1, 1000, 5000, 40000], np.uint16))
    assert out.tolist() == [0, 2, 2000, 10000, 65535]  # doubled, clipped at the uint16 top
    with_offset = radiometry.of_asset(es_item(scale=0.0002, offset=-0.1, baseline="05.10"), "red")
    assert with_offset.to_uint16(np.array([0, 400, 1000], np.uint16)).tolist() == [0, 1, 1000]


def test_to_uint16_never_returns_zero_for_valid_pixels_on_the_float_path():
    r = radiometry.Radiometry(scale=1e-5, offset=0.0)  # tiny scale: rounds to 0 -> must become 1
    assert r.to_uint16(np.array([0, 1, 4, 100], np.uint16)).tolist() == [0, 1, 1, 10]
