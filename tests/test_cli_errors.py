"""Bad input makes the CLI fail cleanly: exit code ≠ 0, one line on stderr starting with "error:" (no
traceback, nothing on stdout), and no output file left behind (no COG, no JSON, no partial/hidden file).

The catalogue is a real pgstac API with the demo scenes (tests/fixtures/scenes.py) under collection ids
of this module's own (``--collection``), so nothing here disturbs the other tests' ``sentinel-2-l2a``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from stacsr.catalog.presets import PRESETS
from stacsr.cli import app
from tests.fixtures import rasters
from tests.fixtures import scenes as SC

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pystac-client: DoesNotConformTo SORT

COLLECTION = "stacsr-errors"
NO_NIR = "stacsr-errors-no-nir"
PC_COLLECTION = "stacsr-errors-pc"
AOI_BOTH = SC.world_bbox(180, 180, 230, 230)  # both items, valid pixels only
AOI_NEW = SC.world_bbox(340, 300, 380, 340)  # S2B only, valid pixels only
AOI_NODATA = SC.world_bbox(447, 167, 473, 213)  # S2B only, inside its nodata corner (world rows 440–480, cols 160–220)


def cli(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def failed_cleanly(result, out: Path | None) -> str:
    """Assert the failure contract and return the error line."""
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout.strip() == ""
    if out is not None:
        assert files_under(out) == [], files_under(out)
    return lines[0]


def enhance(pgstac, out: Path, *args: Any, collection: str = COLLECTION, bbox=AOI_BOTH):
    return cli(
        "enhance",
        "--catalog",
        "earth-search",
        "--stac-url",
        pgstac.url,
        "--collection",
        collection,
        "--bbox",
        *bbox,
        "--out",
        out,
        "--no-ray",
        *args,
    )


@pytest.fixture(scope="module")
def catalog(pgstac, blob_server):
    """Earth-Search-style scenes as COLLECTION, and the same items without their nir asset as NO_NIR."""
    scenes = SC.make_scenes(blob_server, "earth-search", collection=COLLECTION, blocksize=None)
    no_nir = copy.deepcopy(scenes.items)
    for item in no_nir:
        del item["assets"]["nir"]
        item["collection"] = NO_NIR
    try:
        SC.load(pgstac, scenes)
        SC.load(pgstac, SC.Scenes("earth-search", NO_NIR, scenes.folder, no_nir))
        yield scenes
    finally:
        pgstac.reset()  # other test files use pgstac too


def test_the_good_case_works(catalog, pgstac, tmp_path):
    """The baseline every error test departs from: this exact command line succeeds."""
    result = enhance(pgstac, tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert len([p for p in files_under(tmp_path / "out") if p.suffix == ".tif"]) == 8


@pytest.mark.parametrize(
    "bbox, message",
    [
        ((11.47, 48.15, 11.44, 48.17), "west"),  # W > E
        ((11.44, 48.17, 11.47, 48.15), "south"),  # S > N
        ((-181.0, 48.15, 11.47, 48.17), "outside"),
        ((11.44, 48.15, 181.0, 48.17), "outside"),
        ((11.44, -91.0, 11.47, 48.17), "outside"),
        ((11.44, 48.15, 11.47, 90.5), "outside"),
    ],
)
def test_bad_bbox(catalog, pgstac, tmp_path, bbox, message):
    out = tmp_path / "out"
    line = failed_cleanly(enhance(pgstac, out, bbox=bbox), out)
    assert message in line
    line = failed_cleanly(cli("search", "--catalog", "earth-search", "--stac-url", pgstac.url, "--bbox", *bbox), None)
    assert message in line


def test_no_items_found(catalog, pgstac, tmp_path):
    out = tmp_path / "out"
    line = failed_cleanly(enhance(pgstac, out, "--datetime", "2019-01-01/2019-12-31"), out)
    assert "no items found" in line
    search = cli(
        "search",
        "--catalog",
        "earth-search",
        "--stac-url",
        pgstac.url,
        "--collection",
        COLLECTION,
        "--bbox",
        *AOI_BOTH,
        "--datetime",
        "2019-01-01/2019-12-31",
    )
    assert "no items found" in failed_cleanly(search, None)


def test_item_without_a_required_band(catalog, pgstac, tmp_path):
    out = tmp_path / "out"
    line = failed_cleanly(enhance(pgstac, out, collection=NO_NIR), out)
    assert "nir" in line and "has no asset" in line
    assert SC.NEW in line or SC.OLD in line


def test_corrupt_cog_names_the_asset_and_leaks_no_token(pgstac, blob_server, pc_stand_in, monkeypatch, tmp_path):
    """PC-style items, signed for real; one COG overwritten with garbage."""
    import planetary_computer

    scenes = SC.make_scenes(blob_server, "planetary-computer", collection=PC_COLLECTION, blocksize=None)
    broken = scenes.file(SC.NEW, "B08")
    broken.write_bytes(b"II*\x00 this is not a GeoTIFF " + bytes(range(256)) * 8)
    monkeypatch.setitem(
        PRESETS,
        "planetary-computer",
        replace(
            PRESETS["planetary-computer"], sign=lambda item: blob_server.rewrite_item(planetary_computer.sign(item))
        ),
    )
    out = tmp_path / "out"
    SC.load(pgstac, scenes)
    try:
        tokens_before = len(blob_server.tokens_issued)
        blob_server.clear_requests()
        result = cli(
            "enhance",
            "--catalog",
            "planetary-computer",
            "--stac-url",
            pgstac.url,
            "--collection",
            PC_COLLECTION,
            "--bbox",
            *AOI_NEW,
            "--out",
            out,
            "--no-ray",
        )
    finally:
        pgstac.delete_collection(PC_COLLECTION)  # not reset(): the module's `catalog` stays loaded
    line = failed_cleanly(result, out)
    assert line.startswith("error: cannot read asset B08 (") and SC.NEW in line, line
    assert "?" not in line
    # signing worked (tokens issued, reads of the good bands accepted): the garbage is what failed
    assert len(blob_server.tokens_issued) > tokens_before
    blob_reads = [r for r in blob_server.requests if r.path.startswith("/blob/")]
    assert blob_reads and not [r for r in blob_reads if r.status == 403]
    assert any(r.status == 206 and r.path.endswith("/B02.tif") for r in blob_reads)
    for secret in [blob_server.secret, *blob_server.issued_sigs, *blob_server.tokens_issued]:
        assert secret not in result.stderr and secret not in result.stdout
    assert "sig=" not in result.output and "skoid" not in result.output


@pytest.fixture(scope="module")
def three_band_model(tmp_path_factory) -> Path:
    """A valid package whose network takes 3 bands (B02, B03, B04)."""
    from stacsr.model import package as M
    from stacsr.model.generator import Generator, GeneratorConfig

    config = GeneratorConfig(bands=3, scale=4, features=8, blocks=1)
    card = M.ModelCard(
        name="three-band-test",
        version="0.0.1",
        bands=["B02", "B03", "B04"],
        common_names=["blue", "green", "red"],
        architecture=config.to_dict(),
    )
    folder = tmp_path_factory.mktemp("model") / "three-band"
    M.save(card, Generator(config), folder)
    return folder


def write_geotiff(path: Path, data: np.ndarray) -> Path:
    return rasters.write_geotiff(path, data, Affine(10, 0, 681000, 0, -10, 5338000), nodata=0)


def test_model_band_count_mismatch(three_band_model, tmp_path):
    src = write_geotiff(tmp_path / "four.tif", np.full((4, 20, 24), 1234, np.uint16))
    out = tmp_path / "out"
    line = failed_cleanly(cli("sr", src, out / "sr.tif", "--model", three_band_model, "--no-ray"), out)
    assert "4 bands" in line and "3" in line


def test_model_card_that_disagrees_with_its_network(three_band_model, catalog, pgstac, tmp_path):
    """A package whose card lists 4 bands while its network takes 3: refused, not a torch traceback."""
    import json
    import shutil

    bad = tmp_path / "bad-model"
    shutil.copytree(three_band_model, bad)
    card = json.loads((bad / "card.json").read_text())
    card.update(bands=["B02", "B03", "B04", "B08"], common_names=["blue", "green", "red", "nir"])
    (bad / "card.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    line = failed_cleanly(enhance(pgstac, out, "--model", bad), out)
    assert "lists 4 bands" in line and "takes 3" in line
    src = write_geotiff(tmp_path / "four.tif", np.full((4, 20, 24), 1234, np.uint16))
    line = failed_cleanly(cli("sr", src, out / "sr.tif", "--model", bad, "--no-ray"), out)
    assert "lists 4 bands" in line and "takes 3" in line


def test_aoi_all_nodata(catalog, pgstac, tmp_path):
    out = tmp_path / "out"
    line = failed_cleanly(enhance(pgstac, out, bbox=AOI_NODATA), out)
    assert "nodata" in line and SC.NEW in line


def test_output_folder_not_writable(catalog, pgstac, tmp_path):
    # Tests run as root, for whom chmod 0o500 does not stop writes. A path *under a regular file* cannot
    # be created by anyone, root included (ENOTDIR), so that is the unwritable output folder here.
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    out = blocker / "sub"
    line = failed_cleanly(enhance(pgstac, out), None)
    assert "not writable" in line and str(out) in line
    assert blocker.read_bytes() == b"not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    line = failed_cleanly(
        cli("sr", write_geotiff(tmp_path / "in.tif", np.ones((4, 8, 8), np.uint16)), out / "x.tif", "--no-ray"), None
    )
    assert "not writable" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "in.tif"]


def test_sr_float32_input(tmp_path):
    src = write_geotiff(tmp_path / "float.tif", np.full((4, 16, 16), 0.12, np.float32))
    out = tmp_path / "out"
    line = failed_cleanly(cli("sr", src, out / "sr.tif", "--no-ray"), out)
    assert "float32" in line and "uint16" in line


def test_sr_missing_file(tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "no-such-file.tif"
    line = failed_cleanly(cli("sr", missing, out / "sr.tif", "--no-ray"), out)
    assert "cannot read" in line and "no-such-file.tif" in line


def test_sr_missing_file_over_http(blob_server, tmp_path):
    out = tmp_path / "out"
    url = blob_server.file_url(f"nothing-here-{tmp_path.name}/x.tif")
    line = failed_cleanly(cli("sr", url, out / "sr.tif", "--no-ray"), out)
    assert "cannot read" in line


# ------------------------------------------------------------------ stacsr sr: inputs it refuses, inputs it takes


def _tif(path, data, crs="EPSG:32632", transform=None):
    from affine import Affine

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform or Affine(10, 0, 600000, 0, -10, 5300000),
    ) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize(
    "name, data, kwargs, message",
    [
        ("nocrs", np.full((4, 20, 20), 500, np.uint16), {"crs": None}, "has no CRS"),
        ("rotated", np.full((4, 20, 20), 500, np.uint16), {"rotated": True}, "not north-up"),
        ("int8", np.full((4, 20, 20), 5, np.int8), {}, "is int8; stacsr expects uint16"),
        ("nan", np.full((4, 20, 20), np.nan, np.float32), {}, "is float32; stacsr expects uint16"),
        ("bands", np.full((3, 20, 20), 500, np.uint16), {}, "has 3 bands but model"),
    ],
)
def test_sr_refuses_bad_geotiffs_in_one_line(tmp_path, name, data, kwargs, message):
    from affine import Affine

    transform = Affine(10, 1, 600000, 1, -10, 5300000) if kwargs.pop("rotated", False) else None
    src = _tif(tmp_path / f"{name}.tif", data, transform=transform, **kwargs)
    out = tmp_path / "out.tif"
    r = CliRunner().invoke(app, ["sr", str(src), str(out), "--no-ray"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and name in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("shape", [(1, 1), (7, 10)])  # 1×1, and smaller than the 24-pixel halo
def test_sr_takes_tiny_images(tmp_path, shape):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    data = np.stack([800 + 200 * b + 40 * rows + 25 * cols for b in range(4)]).astype(np.uint16)  # smooth field
    src = _tif(tmp_path / "tiny.tif", data)
    r = CliRunner().invoke(app, ["sr", str(src), str(tmp_path / "out.tif"), "--no-ray"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "out.tif") as out:
        sr = out.read().astype(np.float64)
    assert sr.shape == (4, shape[0] * 4, shape[1] * 4)
    means = sr.reshape(4, shape[0], 4, shape[1], 4).mean(axis=(2, 4))
    assert np.abs(means - data).max() <= 1  # the shipped model is reflectance-consistent (no clipping here)
