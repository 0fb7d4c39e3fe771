"""``stacsr demo``: the real Sentinel-2 scene shipped in ``stacsr/demo_data`` through the enhance path, the
picture it draws (the one README shows, ``docs/demo.png``), and the facts of its source item."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from typer.testing import CliRunner

from stacsr import demo, pipeline
from stacsr.catalog.presets import S2_BANDS
from stacsr.cli import app
from stacsr.plumbing import figures

ROOT = Path(__file__).resolve().parent.parent
STACSR = ROOT / ".venv" / "bin" / "stacsr"
COMMITTED = ROOT / "docs" / "demo.png"
OUT_COLLECTION = "sentinel-2-l2a-sr"
SCALE = 4


def check_demo_folder(folder: Path) -> None:
    """One output item with all its COGs, covering the whole scene, and the picture beside it."""
    assert (folder / "catalog.json").is_file()
    items = sorted((folder / OUT_COLLECTION).glob("*/*_sr.json"))
    assert [p.stem for p in items] == [f"{demo.SCENE_ITEM}_sr"]
    doc = json.loads(items[0].read_text())
    assert all((items[0].parent / a["href"]).is_file() for a in doc["assets"].values())
    with rasterio.open(items[0].parent / f"{items[0].stem}_B02.tif") as cog:
        assert cog.shape == (256 * SCALE, 256 * SCALE) and cog.res == (2.5, 2.5)
    with Image.open(folder / "side_by_side.png") as png:
        panel = demo.PICTURE.width * SCALE
        assert png.size[0] == 3 * panel + 2 * figures.GAP <= 2000
        assert png.size[1] > demo.PICTURE.height * SCALE  # the panels, then the caption


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> tuple[Path, str]:
    """``stacsr demo`` run once in this process (no cluster named: no Ray): its folder and its stderr."""
    folder = tmp_path_factory.mktemp("demo") / "demo"
    r = CliRunner().invoke(app, ["demo", "--out", str(folder)], env={"COLUMNS": "200", "RAY_ADDRESS": None})
    assert r.exit_code == 0, (r.stderr, r.exception)
    return folder, r.stderr


def test_demo_in_process(demo_out):
    folder, stderr = demo_out
    assert re.search(r"items written\s+1\b", stderr)
    assert re.search(r"engine\s+in-process", stderr)
    assert f"picture  {folder / 'side_by_side.png'}" in stderr  # says where to look
    assert re.search(rf"catalogue\s+{re.escape(str(folder.resolve() / 'catalog.json'))}", stderr)
    check_demo_folder(folder)


def test_committed_picture_is_what_the_demo_draws(demo_out):
    """README's picture cannot go stale silently: the demo's own output matches it, colour by colour."""
    with Image.open(demo_out[0] / "side_by_side.png") as new, Image.open(COMMITTED) as old:
        assert new.size == old.size, f"{COMMITTED} is stale: make demo && cp demo/side_by_side.png {COMMITTED}"
        diff = np.abs(np.asarray(new.convert("RGB"), np.int16) - np.asarray(old.convert("RGB"), np.int16))
    stale = f"{COMMITTED} is stale (mean difference {diff.mean():.2f}): make demo && cp demo/side_by_side.png docs/"
    assert diff.mean() <= 2.0 and (diff.max(axis=2) > 32).mean() <= 0.002, stale


def test_scene_item_is_real_radiometry(tmp_path):
    """The item serves the shipped scene as baseline ≥ 04.00 does (DN + 1000), says whose data it is, and the
    pipeline reads back exactly the reflectance × 10000 of the shipped file."""
    (item,) = demo.build_scene_catalog(tmp_path)
    with rasterio.open(demo.SCENE) as src:
        shipped = src.read()
        assert list(src.descriptions) == list(S2_BANDS) and src.crs.to_epsg() == 32631
    with rasterio.open(item["assets"]["B04"]["href"]) as cog:
        assert cog.dtypes[0] == "uint16"
        assert np.array_equal(cog.read(1), shipped[2] + 1000)
    props = item["properties"]
    assert props["s2:processing_baseline"] >= "04.00" and props["s2:mgrs_tile"] == "31UFS"
    assert "Contains modified Copernicus Sentinel data 2018" in props["description"]
    written = json.loads((tmp_path / demo.SCENE_ITEM / f"{demo.SCENE_ITEM}.json").read_text())
    assert written == json.loads(json.dumps(item))
    (job,) = pipeline.plan_jobs([item], demo.demo_preset(), S2_BANDS, demo.SCENE_BBOX)
    assert job.window.shape == (256, 256)
    assert np.array_equal(pipeline.read_job(job, demo.demo_preset()), shipped)


def test_comparison_labels_each_panel_and_zooms_the_same_area():
    rng = np.random.default_rng(3)
    panels = [rng.integers(500, 3000, (4, 160, 160)).astype(np.uint16) for _ in range(3)]
    inset, zoom = (20, 30, 16), 4
    image = figures.comparison(panels, S2_BANDS, ("a", "b", "c"), inset, zoom, caption="hello")
    shown = figures.stretch(panels, S2_BANDS, reference=0)
    assert image.shape == (160 + figures.LABEL_SIZE + 14, 3 * 160 + 2 * figures.GAP, 3)
    for i, rgb in enumerate(shown):
        x0 = i * (160 + figures.GAP)
        panel = image[:160, x0 : x0 + 160]
        zoomed = figures.upsample_nearest(rgb[:, 20:36, 30:46], zoom)
        expected = (zoomed.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        assert np.array_equal(panel[160 - 6 - 64 : 160 - 6, 160 - 6 - 64 : 160 - 6], expected)  # bottom right
        label = panel[4:30, 4:24]
        assert (label == 0).all(axis=2).any() and (label == 255).all(axis=2).any()  # white text on black
        assert (panel[18, 28:48] == figures.INSET_COLOUR).all(axis=1).any()  # the area outlined, top edge
    caption = image[160:]
    assert (caption < 128).any() and (caption == 255).mean() > 0.5


def test_busiest_finds_the_difference_and_avoids_the_inset():
    a = np.zeros((3, 100, 100))
    b = a.copy()
    b[:, 10:20, 60:70] = 1
    b[:, 80:100, 80:100] = 5  # larger, but under the inset
    assert figures.busiest(a, b, 10, avoid=(30, 30)) == (10, 60)


@pytest.mark.slow
def test_installed_console_script_runs_the_demo_with_ray(tmp_path):
    """The real `stacsr` command in a fresh process, starting its own local Ray (``--ray``)."""
    assert STACSR.is_file()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [str(STACSR), "demo", "--out", str(tmp_path / "demo"), "--ray"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"engine\s+Ray, one item per node \(2 CPU each\)", proc.stderr), proc.stderr
    assert "items written" in proc.stderr
    check_demo_folder(tmp_path / "demo")
