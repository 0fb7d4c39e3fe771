"""Outputs stay inside their root, whatever a catalogue says.

Item and collection ids come from remote catalogues and become folder names and object keys. Ids with path
separators, ``..``, control characters or over 200 bytes are refused with one line naming the item
(``enhance``: before any work; ``batch``: that item fails, the others are written). Each test lists
everything beside the output root before and after: nothing may appear outside it. Output folders with a
dot in their name hold their catalogue; assets pointing at local files are refused from a catalogue that is
not declared local.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stacsr import demo, pipeline
from stacsr.batch import run as B
from stacsr.batch import spec as J
from stacsr.catalog.presets import PRESETS, resolve
from stacsr.engine import LocalEngine
from stacsr.model import package as M
from tests.fixtures import scenes as SC

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pystac-client: DoesNotConformTo SORT

HOSTILE = ["../../x", "/abs/x", "a/b", "tab\there", "x" * 201, "..", "a\\b"]
COLLECTION = "s2-root-test"
AOI = SC.world_bbox(172, 172, 236, 236)


def listing(folder: Path, skip: Path | None = None) -> set[str]:
    """Every path under ``folder``, except those under ``skip`` (the output root)."""
    return {str(p) for p in folder.rglob("*") if skip is None or not (p == skip or skip in p.parents)}


@pytest.fixture(scope="module")
def package():
    return M.load("default")


@pytest.fixture(scope="module")
def demo_items(tmp_path_factory):
    return demo.build_catalog(tmp_path_factory.mktemp("demo-source"))


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("field", ["id", "collection"])
def test_enhance_refuses_hostile_ids_before_any_work(demo_items, package, tmp_path, field, hostile):
    items = copy.deepcopy(demo_items)
    items[1][field] = hostile
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=r"cannot name a file or object key safely") as e:
        pipeline.enhance(items, demo.demo_preset(), demo.BBOX, out, package, LocalEngine(package))
    assert len(str(e.value).splitlines()) == 1 and {"id": "item id", "collection": "collection id"}[field] in str(
        e.value
    )
    assert listing(tmp_path, skip=out) == before
    assert not out.exists() or not any(out.rglob("*.tif"))
    assert not Path("/abs").exists()


def test_a_dotted_output_folder_holds_its_catalogue(demo_items, package, tmp_path):
    out = tmp_path / "run.v2"
    (tmp_path / "catalog.json").write_text('{"mine": true}')  # the user's own file beside it
    before = listing(tmp_path)
    pipeline.enhance(demo_items, demo.demo_preset(), demo.BBOX, out, package, LocalEngine(package), tile_size=128)
    assert listing(tmp_path, skip=out) == before
    assert json.loads((tmp_path / "catalog.json").read_text()) == {"mine": True}
    catalog = json.loads((out / "catalog.json").read_text())
    collection = out / "sentinel-2-l2a-sr" / "collection.json"
    assert collection.is_file() and len(list(out.glob("sentinel-2-l2a-sr/*/*_sr.json"))) == 2
    assert any(link["href"] == "./sentinel-2-l2a-sr/collection.json" for link in catalog["links"])


def test_assets_on_local_files_are_refused_unless_the_catalogue_is_local(demo_items, package, tmp_path):
    remote_preset = replace(PRESETS["planetary-computer"], sign=lambda item: item)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"asset B02 is a local file .*reads only https://"):
        pipeline.enhance(demo_items, remote_preset, demo.BBOX, out, package, LocalEngine(package))
    items = copy.deepcopy(demo_items)
    for item in items:
        for asset in item["assets"].values():
            asset["href"] = "file://" + asset["href"]
    with pytest.raises(ValueError, match="is a local file"):
        pipeline.enhance(items, remote_preset, demo.BBOX, out, package, LocalEngine(package))
    items[0]["assets"]["B02"]["href"] = "ftp://example.org/B02.tif"
    with pytest.raises(ValueError, match=r"asset B02 is ftp://"):
        pipeline.enhance(items, remote_preset, demo.BBOX, out, package, LocalEngine(package))
    assert not out.exists() or not any(out.rglob("*"))


# ------------------------------------------------------------------ batch, local and s3://


@pytest.fixture(scope="module")
def hostile_sources(pgstac, blob_server):
    """Three searchable items: the demo's two, and one copy whose id climbs out of any folder."""
    first = SC.make_scenes(blob_server, "earth-search", collection=COLLECTION)

    def hostile(item):
        item["id"] = "../../../evil"

    second = SC.make_scenes(blob_server, "earth-search", collection=COLLECTION, edit=hostile)
    scenes = SC.Scenes("earth-search", COLLECTION, first.folder, first.items + second.items[:1])
    yield from SC.loaded(pgstac, scenes)


def batch_spec(pgstac, output: str, publish: dict) -> J.JobSpec:
    return J.from_dict(
        {
            "name": "root",
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


def run(spec: J.JobSpec, package) -> dict:
    return B.run(
        spec, resolve(spec.catalog, spec.collection, spec.bands, spec.stac_url), package, LocalEngine(package)
    ).to_dict()


def check_report(report: dict) -> None:
    assert report["items"]["found"] == 3 and report["items"]["done"] == 2 and report["items"]["failed"] == 1
    failed = next(o for o in report["outcomes"] if o["status"] == "failed")
    assert failed["item"] == "../../../evil" and "cannot name a file or object key safely" in failed["error"]


def test_batch_to_a_folder_writes_nothing_outside_it(hostile_sources, pgstac, package, tmp_path):
    out = tmp_path / "a" / "b" / "out"
    out.parent.mkdir(parents=True)
    before = listing(tmp_path)
    check_report(run(batch_spec(pgstac, str(out), {"catalog": str(out)}), package))
    assert listing(tmp_path, skip=out) == before
    assert len(list(out.glob(f"{COLLECTION}-sr/*/*_sr_*.json"))) == 2


def test_batch_to_s3_writes_no_key_outside_its_prefix(hostile_sources, pgstac, package, s3, monkeypatch):  # noqa: F811
    from pyarrow import fs

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3.bucket()
    pgstac.delete_items(f"{COLLECTION}-sr")
    report = run(batch_spec(pgstac, f"s3://{bucket}/deep/prefix", {"api": pgstac.url}), package)
    check_report(report)
    keys = [
        i.path
        for i in s3.filesystem.get_file_info(fs.FileSelector(bucket, recursive=True))
        if i.type == fs.FileType.File
    ]
    assert keys and all(k.startswith(f"{bucket}/deep/prefix/") for k in keys), keys
    assert not any(".." in k for k in keys)
    assert sum(k.endswith(".tif") for k in keys) == 8


@pytest.mark.parametrize("collection", ["../../c", "a/b", ".hidden", "x" * 300])
def test_a_spec_with_a_hostile_collection_is_refused(collection):
    with pytest.raises(J.SpecError, match=r"publish.collection .* cannot name a file or object key safely"):
        J.from_dict(
            {
                "name": "t",
                "areas": [{"name": "a", "bbox": [4.3, 50.8, 4.4, 50.9]}],
                "output": "out",
                "publish": {"catalog": "out", "collection": collection},
            }
        )


def test_names_are_checked_as_documented():
    from stacsr.catalog.items import check_name, output_names

    assert output_names({"id": "S2A_X", "collection": "sentinel-2-l2a"}, "alps") == (
        "sentinel-2-l2a-sr",
        "S2A_X_sr_alps",
    )
    assert check_name("item id", "a" * 200) == "a" * 200
    for bad in [*HOSTILE, "", None, 7, "a\x00b", ".x", "é" * 101]:
        with pytest.raises(ValueError):
            check_name("item id", bad)
    assert np.all([check_name("item id", ok) for ok in ("S2A_MSIL2A_20240712T102559_R108_T32UQU", "a.b", "a-b_c")])


# ------------------------------------------------------------------ nothing a user gives is destroyed by a slip


def one_line_failure(args: list[str]) -> str:
    from typer.testing import CliRunner

    from stacsr.cli import app

    r = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_sr_never_overwrites_its_input(tmp_path, monkeypatch):
    import os

    import rasterio
    from affine import Affine

    src = tmp_path / "a.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=20,
        height=20,
        count=4,
        dtype="uint16",
        crs="EPSG:32632",
        transform=Affine(10, 0, 600000, 0, -10, 5300000),
    ) as dst:
        dst.write(np.full((4, 20, 20), 900, np.uint16))
    original = src.read_bytes()
    (tmp_path / "link.tif").symlink_to(src)
    os.link(src, tmp_path / "hard.tif")
    monkeypatch.chdir(tmp_path)
    for out in ("a.tif", "./a.tif", str(src), "link.tif", "hard.tif", "sub/../a.tif"):
        line = one_line_failure(["sr", "a.tif", out, "--no-ray"])
        assert "is the input" in line, line
        assert src.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "hard.tif", "link.tif"]


def test_bad_options_are_refused_before_any_request(tmp_path):
    """The STAC API here is a closed port: a check that came after the request would fail differently."""
    base = ["--bbox", "11.4", "48.1", "11.5", "48.2", "--catalog", "http://127.0.0.1:9/stac", "--collection", "c"]
    for extra, message in (
        (["--max-cloud", "150"], "max cloud cover 150 is not a percentage"),
        (["--max-cloud", "-1"], "max cloud cover -1 is not a percentage"),
        (["--datetime", "2024-13-45"], "datetime"),
    ):
        assert message in one_line_failure(["search", *base, *extra])
        assert message in one_line_failure(["enhance", *base, *extra, "--out", str(tmp_path / "out"), "--no-ray"])
    assert not (tmp_path / "out").exists()


def test_an_output_cannot_replace_a_source_asset(demo_items, package, tmp_path):
    """A local catalogue whose asset sits exactly where an output COG would go is refused before any work."""
    from stacsr.catalog.items import output_names

    items = copy.deepcopy(demo_items[:1])
    collection, item_id = output_names(items[0])
    clash = tmp_path / "out" / collection / item_id / f"{item_id}_B02.tif"
    clash.parent.mkdir(parents=True)
    clash.write_bytes(Path(items[0]["assets"]["B02"]["href"]).read_bytes())
    items[0]["assets"]["B02"]["href"] = str(clash)
    before = clash.read_bytes()
    with pytest.raises(ValueError, match="would replace its source asset"):
        pipeline.enhance(items, demo.demo_preset(), demo.BBOX, tmp_path / "out", package, LocalEngine(package))
    assert clash.read_bytes() == before
