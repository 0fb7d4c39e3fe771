"""The STAC that stacsr writes: items from ``build_item``, static catalogues from ``publish_static``.

Outputs are built as the pipeline builds them: one real COG per band (``write_cog``) in the item's folder
on a 2.5 m UTM 32N grid, absolute band paths handed to ``build_item``, then ``publish_static``. Schema
checks run offline against tests/schemas/stac and with pystac's bundled schemas.
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

import stacsr
from stacsr import demo
from stacsr.catalog.items import build_item, output_collection_id, output_id
from stacsr.catalog.presets import COMMON_NAMES
from stacsr.catalog.publish import item_folder, publish_static
from stacsr.io.write import write_cog
from stacsr.model import package as model_package
from stacsr.pipeline import model_ref
from tests.fixtures.stac import (
    require_schemas,
    validate_core_with_pystac,
    validate_stac,
    validate_with_pystac,
)

COLLECTION = "sentinel-2-l2a-sr"
SECRET = f"SECRET{uuid.uuid4().hex}"  # a SAS signature that must never be written anywhere
SOURCE_HREF = (
    "https://planetarycomputer.microsoft.com/api/stac/v1/collections/sentinel-2-l2a/items/X"
    f"?st=2024-01-01T00%3A00%3A00Z&se=2030-01-01T00%3A00%3A00Z&sp=rl&sig={SECRET}"
)
GRID1 = GeoBox((64, 80), Affine(2.5, 0, 680400.0, 0, -2.5, 5339600.0), "EPSG:32632")
GRID2 = GeoBox((48, 56), Affine(2.5, 0, 682010.0, 0, -2.5, 5338020.0), "EPSG:32632")


@pytest.fixture(scope="module")
def package():
    return model_package.load("default")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two realistic Planetary-Computer-style source items (different tiles, dates, clouds)."""
    a, b = demo.build_catalog(tmp_path_factory.mktemp("src"))
    for item in (a, b):
        item["links"] = [{"rel": "self", "href": SOURCE_HREF.replace("/items/X", f"/items/{item['id']}")}]
    return a, b


def make_output(root: Path, source: dict, grid: GeoBox, package, seed: int, source_href=SOURCE_HREF):
    """COGs (one per band, nodata corner) in the item folder, and the item built from them."""
    rows, cols = grid.shape.yx
    rng = np.random.default_rng(seed)
    item_id = output_id(source["id"])
    folder = item_folder(root, output_collection_id(source.get("collection")), item_id)
    arrays, files = {}, {}
    for band in package.card.bands:
        data = rng.integers(1, 10000, (rows, cols)).astype(np.uint16)
        data[:5, :7] = 0
        arrays[band] = data
        files[band] = str(write_cog(folder / f"{item_id}_{band}.tif", data, grid, [band]).resolve())
    return build_item(source, grid, files, model_ref(package), source_href=source_href), arrays


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def item_path(root: Path, item_id: str) -> Path:
    return item_folder(root, COLLECTION, item_id) / f"{item_id}.json"


def hrefs(d) -> list[str]:
    """Every ``href`` anywhere in a JSON document."""
    out = []
    if isinstance(d, dict):
        out += [v for k, v in d.items() if k == "href" and isinstance(v, str)]
        for v in d.values():
            out += hrefs(v)
    elif isinstance(d, list):
        for v in d:
            out += hrefs(v)
    return out


def contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


@pytest.fixture(scope="module")
def published(tmp_path_factory, sources, package):
    """One item published into a fresh catalogue: (root, item, arrays, catalog.json path)."""
    root = tmp_path_factory.mktemp("out")
    item, arrays = make_output(root, sources[0], GRID1, package, seed=1)
    catalog_file = publish_static(
        root, [item], output_collection_id("sentinel-2-l2a"), model_ref(package), "sentinel-2-l2a"
    )
    return root, item, arrays, catalog_file


@pytest.fixture(scope="module")
def written(published):
    root, item, _, _ = published
    return read_json(item_path(root, item.id))


# ------------------------------------------------------------------ validation


def test_written_item_collection_and_catalog_validate_offline(published, written):
    require_schemas()
    root, _, _, catalog_file = published
    assert set(written["stac_extensions"]) == {
        "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    }
    validate_stac(written)
    validate_with_pystac(written)
    validate_stac(read_json(root / COLLECTION / "collection.json"))
    validate_stac(read_json(catalog_file))


def test_in_memory_item_validates_offline(published):
    require_schemas()
    validate_stac(published[1].to_dict(include_self_link=False))


def test_validator_catches_broken_extension_fields(written):
    """The offline check is not vacuous: each declared extension rejects a wrong field."""
    require_schemas()
    import jsonschema

    for path, value in [
        (("properties", "proj:epsg"), "32632"),  # projection: integer or null
        (("properties", "proj:shape"), [64]),  # projection: two integers
        (("assets", "B02", "raster:bands", 0, "data_type"), "uint17"),  # raster: enum
        (("assets", "B02", "eo:bands", 0, "common_name"), "ultraviolet"),  # eo: enum
        (("properties", "processing:software"), "stacsr 0.1"),  # processing: object
        (("properties", "datetime"), "yesterday"),  # core
    ]:
        bad = copy.deepcopy(written)
        holder = bad
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            validate_stac(bad)
    both = copy.deepcopy(written)  # projection v1.1.0 has no proj:code: an item cannot carry both
    both["properties"]["proj:code"] = "EPSG:32632"
    with pytest.raises(jsonschema.ValidationError, match="proj:code"):
        validate_stac(both)


def test_item_validates_with_pystac_bundled_core_schema(written, published):
    validate_core_with_pystac(written)
    validate_core_with_pystac(read_json(published[0] / COLLECTION / "collection.json"))
    bad = copy.deepcopy(written)
    del bad["geometry"]
    with pytest.raises(pystac.errors.STACValidationError):
        validate_core_with_pystac(bad)


# ------------------------------------------------------------------ content


def test_projection_fields_describe_the_grid_exactly(written):
    props = written["properties"]
    assert props["proj:epsg"] == 32632
    assert props["proj:transform"] == [2.5, 0.0, 680400.0, 0.0, -2.5, 5339600.0] == list(GRID1.affine)[:6]
    assert props["proj:shape"] == [64, 80]
    assert props["proj:bbox"] == [680400.0, 5339600.0 - 64 * 2.5, 680400.0 + 80 * 2.5, 5339600.0]
    assert props["gsd"] == 2.5
    assert "proj:code" not in props  # projection v1.1.0 (see stacsr.catalog.items)


def test_pystac_readers_get_proj_code(published):
    from pystac.extensions.projection import ProjectionExtension

    root, item, _, _ = published
    read = pystac.Item.from_file(str(item_path(root, item.id)))
    proj = ProjectionExtension.ext(read)
    assert proj.code == "EPSG:32632" and proj.epsg == 32632
    assert proj.transform == list(GRID1.affine)[:6] and proj.shape == [64, 80]


def test_footprint_matches_the_grid(written):
    geom = Geometry(written["geometry"], "EPSG:4326")
    in_utm = geom.to_crs("EPSG:32632")
    assert in_utm.area == pytest.approx(64 * 80 * 2.5 * 2.5, rel=1e-3)
    assert in_utm.intersection(GRID1.extent).area == pytest.approx(GRID1.extent.area, rel=1e-3)
    assert contains([v + d for v, d in zip(written["bbox"], (-1e-9, -1e-9, 1e-9, 1e-9))], list(geom.boundingbox))


def test_source_properties_are_kept(written, sources):
    src = sources[0]["properties"]
    props = written["properties"]
    assert written["id"] == sources[0]["id"] + "_sr"
    assert props["datetime"] == src["datetime"]
    for key in ("eo:cloud_cover", "s2:mgrs_tile", "platform", "constellation", "instruments"):
        assert props[key] == src[key], key
    assert "s2:processing_baseline" not in props  # the output no longer has the source's DN offset


def test_assets_eo_and_raster_bands_match_the_cogs(written, published, package):
    root, item, _, _ = published
    folder = item_path(root, item.id).parent
    assert sorted(written["assets"]) == sorted(package.card.bands)
    for band in package.card.bands:
        asset = written["assets"][band]
        assert asset["type"] == pystac.MediaType.COG and asset["roles"] == ["data"]
        assert asset["gsd"] == 2.5
        assert asset["eo:bands"] == [{"name": band, "common_name": COMMON_NAMES[band]}]
        rb = asset["raster:bands"]
        assert len(rb) == 1
        assert (rb[0]["nodata"], rb[0]["data_type"], rb[0]["scale"], rb[0]["offset"]) == (0, "uint16", 0.0001, 0)
        with rasterio.open(folder / asset["href"]) as src:  # what the JSON says is what the file is
            assert src.count == 1 and src.dtypes[0] == rb[0]["data_type"] and src.nodata == rb[0]["nodata"]
            assert src.scales[0] == pytest.approx(rb[0]["scale"]) and src.offsets[0] == rb[0]["offset"]
            assert list(src.transform)[:6] == written["properties"]["proj:transform"]
            assert [src.height, src.width] == written["properties"]["proj:shape"]
            assert src.crs.to_epsg() == written["properties"]["proj:epsg"]


def test_processing_names_stacsr_version_and_model_weights(written, package):
    weights = (model_package.default_path() / model_package.WEIGHTS).read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    assert package.sha256 == sha
    software = written["properties"]["processing:software"]
    assert software["stacsr"] == stacsr.__version__
    assert software[package.card.name] == f"{package.card.version}+sha256:{sha}"
    model = {"name": package.card.name, "version": package.card.version, "sha256": sha}
    assert written["properties"]["stacsr:model"] == model
    assert package.card.name in written["properties"]["processing:lineage"]


def test_derived_from_link_has_no_query_string(written, sources):
    derived = [link for link in written["links"] if link["rel"] == "derived_from"]
    assert len(derived) == 1
    assert derived[0]["href"] == SOURCE_HREF.split("?")[0]
    assert "?" not in derived[0]["href"] and "sig=" not in derived[0]["href"]


def test_no_secret_in_any_written_file(published):
    root = published[0]
    files = [p for p in root.rglob("*") if p.is_file()]
    # catalog, collection, tile and year sub-catalogues, item; and the index
    assert len([p for p in files if p.suffix == ".tif"]) == 4 and len([p for p in files if p.suffix == ".json"]) == 5
    assert [p for p in files if p.suffix == ".parquet"]
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_no_derived_from_link_without_source(sources, package, tmp_path):
    item, _ = make_output(tmp_path, sources[0], GRID1, package, seed=3, source_href=None)
    assert [link for link in item.links if link.rel == "derived_from"] == []


# ------------------------------------------------------------------ the catalogue


def test_catalogue_layout_and_collection(published, written):
    root, item, _, catalog_file = published
    assert catalog_file == root / "catalog.json"
    collection = read_json(root / COLLECTION / "collection.json")
    assert collection["id"] == "sentinel-2-l2a-sr" and collection["type"] == "Collection"
    assert written["collection"] == "sentinel-2-l2a-sr"
    (bbox,) = collection["extent"]["spatial"]["bbox"]
    assert contains(bbox, written["bbox"])
    ((start, end),) = collection["extent"]["temporal"]["interval"]
    assert start <= written["properties"]["datetime"] <= end
    assert [link["rel"] for link in read_json(catalog_file)["links"]].count("child") == 1


def test_all_hrefs_are_relative_and_resolve(published):
    root = published[0]
    documents = list(root.rglob("*.json"))
    assert len(documents) == 5
    for path in documents:
        text = path.read_text()
        assert str(root) not in text and str(root.resolve()) not in text, path
        for href in hrefs(json.loads(text)):
            if href.startswith("https://"):  # only the derived_from link points outside
                continue
            assert not href.startswith("/") and "://" not in href, (path, href)
            assert (path.parent / href).resolve().is_file(), (path, href)


def test_the_catalogue_reads_back_with_pystac(published):
    root, item, _, catalog_file = published
    catalog = pystac.Catalog.from_file(str(catalog_file))
    items = list(catalog.get_items(recursive=True))
    assert [i.id for i in items] == [item.id]
    assert Path(items[0].assets["B04"].get_absolute_href()).is_file()


def test_publishing_the_same_item_twice_keeps_one(tmp_path, sources, package):
    item, _ = make_output(tmp_path, sources[0], GRID1, package, seed=1)
    publish_static(tmp_path, [item], output_collection_id("sentinel-2-l2a"), model_ref(package), "sentinel-2-l2a")
    again, _ = make_output(tmp_path, sources[0], GRID1, package, seed=1)
    publish_static(tmp_path, [again], output_collection_id("sentinel-2-l2a"), model_ref(package), "sentinel-2-l2a")
    year = read_json(tmp_path / COLLECTION / "32UPU" / "2021" / "catalog.json")  # <tile>/<year> sub-catalogue
    assert [link["rel"] for link in year["links"]].count("item") == 1
    assert len(list(tmp_path.rglob("*_sr.json"))) == 1
    assert len(list(pystac.Catalog.from_file(str(tmp_path / "catalog.json")).get_items(recursive=True))) == 1


def test_publishing_another_item_adds_it_and_extends_the_extent(tmp_path, sources, package):
    first, _ = make_output(tmp_path, sources[0], GRID1, package, seed=1)
    publish_static(tmp_path, [first], output_collection_id("sentinel-2-l2a"), model_ref(package), "sentinel-2-l2a")
    first_json = item_path(tmp_path, first.id).read_text()
    before = read_json(tmp_path / COLLECTION / "collection.json")["extent"]

    second, _ = make_output(tmp_path, sources[1], GRID2, package, seed=2)
    publish_static(tmp_path, [second], output_collection_id("sentinel-2-l2a"), model_ref(package), "sentinel-2-l2a")
    collection = read_json(tmp_path / COLLECTION / "collection.json")
    tiles = {first.properties["s2:mgrs_tile"]: "2021", second.properties["s2:mgrs_tile"]: "2024"}
    assert len(tiles) == 2  # one sub-catalogue per tile, then one per year, which links the items
    assert sorted(link["href"] for link in collection["links"] if link["rel"] == "child") == sorted(
        f"./{t}/catalog.json" for t in tiles
    )
    for item, (tile, year) in zip((first, second), tiles.items()):
        leaf = read_json(tmp_path / COLLECTION / tile / year / "catalog.json")
        assert [link["href"] for link in leaf["links"] if link["rel"] == "item"] == [f"../../{item.id}/{item.id}.json"]
    assert [link["rel"] for link in read_json(tmp_path / "catalog.json")["links"]].count("child") == 1

    (bbox,) = collection["extent"]["spatial"]["bbox"]
    assert contains(bbox, first.bbox) and contains(bbox, second.bbox)
    assert bbox != before["spatial"]["bbox"][0] and contains(bbox, before["spatial"]["bbox"][0])
    ((start, end),) = collection["extent"]["temporal"]["interval"]
    assert start[:10] == "2021-07-15" and end[:10] == "2024-07-12"
    assert before["temporal"]["interval"][0][1][:10] == "2021-07-15"

    # The first item is left as written: re-reading it must not migrate proj:epsg away (stackstac needs it).
    assert item_path(tmp_path, first.id).read_text() == first_json
    for item_id in (first.id, second.id):
        assert read_json(item_path(tmp_path, item_id))["properties"]["proj:epsg"] == 32632
    require_schemas()
    for path in tmp_path.rglob("*.json"):
        validate_stac(read_json(path))


# ------------------------------------------------------------------ stackstac on the written JSON


def _raw_items(root: Path, *ids: str) -> list[dict]:
    """Item JSON as written, asset hrefs made absolute (as any reader of a static catalogue must)."""
    out = []
    for item_id in ids:
        path = item_path(root, item_id)
        d = read_json(path)
        for asset in d["assets"].values():
            asset["href"] = str((path.parent / asset["href"]).resolve())
        out.append(d)
    return out


def test_stackstac_builds_the_exact_grid_and_reads_the_pixels(published, package):
    import stackstac

    root, item, arrays, _ = published
    (raw,) = _raw_items(root, item.id)
    bands = list(package.card.bands)
    stack = stackstac.stack([raw], assets=bands, dtype="uint16", fill_value=np.uint16(0), rescale=False)
    assert stack.attrs["crs"].lower() == "epsg:32632"
    assert tuple(stack.attrs["transform"])[:6] == tuple(raw["properties"]["proj:transform"])
    assert list(stack.shape[-2:]) == raw["properties"]["proj:shape"]
    assert list(stack.band.values) == bands
    values = stack.compute().values[0]
    for i, band in enumerate(bands):
        assert np.array_equal(values[i], arrays[band]), band


def test_stackstac_rescales_with_raster_bands(published, package):
    import stackstac

    root, item, arrays, _ = published
    stack = stackstac.stack(_raw_items(root, item.id), assets=["B08"], dtype="float64", rescale=True)
    values = stack.compute().values[0, 0]
    valid = arrays["B08"] != 0
    assert np.isnan(values[~valid]).all()  # nodata 0 read as missing
    np.testing.assert_allclose(values[valid], arrays["B08"][valid] * 1e-4)


def test_stackstac_reads_a_catalogue_of_two_items(tmp_path, sources, package):
    import stackstac

    first, a1 = make_output(tmp_path, sources[0], GRID1, package, seed=1)
    publish_static(tmp_path, [first], output_collection_id("sentinel-2-l2a"), model_ref(package), "sentinel-2-l2a")
    second, a2 = make_output(tmp_path, sources[1], GRID2, package, seed=2)
    publish_static(tmp_path, [second], output_collection_id("sentinel-2-l2a"), model_ref(package), "sentinel-2-l2a")
    raws = _raw_items(tmp_path, first.id, second.id)
    stack = stackstac.stack(raws, assets=["B02"], dtype="uint16", fill_value=np.uint16(0), rescale=False)
    transform = stack.attrs["transform"]
    assert (transform.a, transform.e) == (2.5, -2.5)
    # the union grid starts at GRID1's upper-left corner and ends at GRID2's lower-right one
    assert (transform.c, transform.f) == (GRID1.affine.c, GRID1.affine.f)
    right, bottom = GRID2.boundingbox.right, GRID2.boundingbox.bottom
    assert stack.shape[-2:] == (round((transform.f - bottom) / 2.5), round((right - transform.c) / 2.5))
    values = stack.compute().values[:, 0]
    by_time = {str(t)[:10]: v for t, v in zip(stack.time.values, values)}
    assert np.array_equal(by_time["2021-07-15"][:64, :80], a1["B02"])
    r0, c0 = round((transform.f - GRID2.affine.f) / 2.5), round((GRID2.affine.c - transform.c) / 2.5)
    assert np.array_equal(by_time["2024-07-12"][r0 : r0 + 48, c0 : c0 + 56], a2["B02"])
