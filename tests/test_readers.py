"""README's "Reading the outputs" recipes, run exactly as written, on what stacsr writes.

The recipes are the ``python`` blocks of README that start with ``# recipe:``; each test runs them with the
placeholders (``munich``, ``https://stac.example.org``, ``sentinel-2-l2a-sr``) replaced by the real output
folder, API and collection, then compares the pixels the recipe returned with the COG read by rasterio:
odc-stac and stackstac on static catalogues of ``enhance`` and ``batch``, and on a STAC API that a batch
published ``s3://`` outputs to. Every output item links to the model's STAC MLM item, published with the
outputs (``models/<id>/``), and the weights there are the ones that made the item.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio

from stacsr import demo, pipeline
from stacsr.batch import run as B
from stacsr.batch import spec as J
from stacsr.catalog.presets import resolve
from stacsr.engine import LocalEngine
from stacsr.model import package as M
from tests.fixtures import scenes as SC

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::RuntimeWarning")

README = Path(__file__).resolve().parent.parent / "README.md"
COLLECTION = "s2-readers-test"
AOI = SC.world_bbox(172, 172, 236, 236)


def recipes() -> dict[str, str]:
    """``{name: code}`` of README's recipe blocks."""
    blocks = re.findall(r"```python\n(# recipe: (.*?)\n.*?)```", README.read_text(), flags=re.S)
    return {re.split(r"[,(]", name)[0].strip(): code for code, name in blocks}


def run(names: list[str], replacements: dict[str, str]) -> dict:
    """Run recipes one after the other in one namespace (later ones use earlier ones' variables)."""
    namespace: dict = {}
    found = recipes()
    assert all(any(old in found[n] for n in names) for old in replacements), "a placeholder left README"
    for name in names:
        code = found[name]
        for old, new in replacements.items():
            code = code.replace(old, new)
        exec(compile(code, f"README recipe {name}", "exec"), namespace)
    return namespace


def cog(href: str) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(1)


def test_readme_has_the_recipes():
    assert set(recipes()) == {"odc-stac", "stackstac", "rasterio", "stac-geoparquet index", "STAC API"}


def check_model_link(item: dict, read) -> None:
    """``item`` links to an MLM item (read by ``read(href)``) whose weights are those of ``stacsr:model``."""
    [link] = [lk for lk in item["links"] if lk["rel"] == "derived_from" and "MLM" in lk.get("title", "")]
    model = json.loads(read(link["href"]))
    sha = item["properties"]["stacsr:model"]["sha256"]
    assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in model["stac_extensions"]
    assert model["properties"]["mlm:name"] == item["properties"]["stacsr:model"]["name"]
    assert model["assets"]["weights"]["file:checksum"] == "1220" + sha
    weights = link["href"].rsplit("/", 1)[0] + "/" + model["assets"]["weights"]["href"].removeprefix("./")
    assert weights.endswith(".weights.safetensors")
    assert hashlib.sha256(read(weights)).hexdigest() == sha  # the weights beside it are the ones that made the item


def check_static_model_links(out: Path) -> None:
    items = [(p, json.loads(p.read_text())) for p in out.glob("*/*/*.json")]  # <collection>/<item>/<item>.json
    items = [(p, d) for p, d in items if "stacsr:model" in d.get("properties", {})]
    assert items
    for path, item in items:
        link = next(lk["href"] for lk in item["links"] if "MLM" in lk.get("title", ""))
        assert not Path(link).is_absolute()  # self-contained: relative to the item
        assert (path.parent / link).resolve().is_relative_to(out.resolve() / "models")
        check_model_link(item, lambda href, folder=path.parent: (folder / href).resolve().read_bytes())


def check_static(out: Path) -> None:
    ns = run(["odc-stac"], {'"munich/catalog.json"': repr(f"{out}/catalog.json")})
    expected = cog(ns["items"][0].assets["B04"].get_absolute_href())
    assert ns["red"].shape == expected.shape and np.array_equal(ns["red"], expected)
    ns = run(["stackstac", "rasterio"], {'Path("munich")': f"Path({str(out)!r})"})
    expected = cog(ns["docs"][0]["assets"]["B04"]["href"])
    assert (expected > 0).any() and np.array_equal(ns["stack"].sel(band="B04").isel(time=0).values, expected)
    assert np.array_equal(ns["red"], expected)  # the rasterio recipe
    check_index_recipe(out)


def check_index_recipe(out: Path) -> None:
    """The index recipe: a row per item of the catalogue, and odc-stac reads the pixels from its hrefs."""
    import pystac

    ns = run(["stac-geoparquet index"], {'Path("munich")': f"Path({str(out)!r})"})
    catalogue = {i.id: i for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True)}
    assert sorted(ns["frame"].id) == sorted(catalogue)
    [item] = ns["items"]
    expected = cog(catalogue[item.id].assets["B04"].get_absolute_href())
    assert (expected > 0).any() and np.array_equal(ns["red"], expected)


def test_recipes_on_enhance_outputs(tmp_path):
    package = M.load("default")
    out = tmp_path / "munich"
    items = demo.build_catalog(tmp_path / "source")
    pipeline.enhance(items, demo.demo_preset(), demo.BBOX, out, package, LocalEngine(package), tile_size=128)
    check_static(out)
    check_static_model_links(out)


@pytest.fixture(scope="module")
def sources(pgstac, blob_server):
    yield from SC.loaded(pgstac, SC.make_scenes(blob_server, "earth-search", collection=COLLECTION))


def batch(pgstac, output: str, publish: dict) -> None:
    spec = J.from_dict(
        {
            "name": "readers",
            "areas": [{"name": "a", "bbox": list(AOI)}],
            "catalog": "earth-search",
            "stac_url": pgstac.url,
            "collection": COLLECTION,
            "best_per_tile": False,
            "output": output,
            "publish": publish,
            "resources": {"tile_size": 64},
        }
    )
    package = M.load("default")
    report = B.run(
        spec, resolve(spec.catalog, spec.collection, spec.bands, spec.stac_url), package, LocalEngine(package)
    )
    assert report.count("done") == 2, report.to_dict()["outcomes"]


def test_recipes_on_a_static_batch(sources, pgstac, tmp_path):
    out = tmp_path / "batch"
    batch(pgstac, str(out), {"catalog": str(out)})
    check_static(out)
    check_static_model_links(out)


def test_recipe_on_a_stac_api_with_s3_outputs(sources, pgstac, s3, monkeypatch):  # noqa: F811
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    collection = f"{COLLECTION}-sr"
    pgstac.delete_items(collection)
    output = f"s3://{s3.bucket()}/readers"
    batch(pgstac, output, {"api": pgstac.url})
    ns = run(["STAC API"], {'"https://stac.example.org"': repr(pgstac.url), '"sentinel-2-l2a-sr"': repr(collection)})
    [item] = list(ns["search"].items_as_dicts())
    href = item["assets"]["B04"]["href"]
    assert href.startswith(output + "/")  # absolute hrefs in object storage
    expected = cog(href)
    assert (expected > 0).any() and np.array_equal(ns["red"], expected)
    assert np.array_equal(ns["data"].B04.isel(time=0).values, expected)
    from stacsr.plumbing.storage import open_fs

    def read(href: str) -> bytes:
        assert href.startswith(output + "/models/")  # absolute, inside the output root
        fs_, path = open_fs(href)
        with fs_.open_input_stream(path) as f:
            return f.read()

    check_model_link(item, read)
