"""End to end: STAC search → remote AOI read → ×4 super-resolution → COGs + static STAC catalogue.

Real local services only (tests/fixtures/services.py): a pgstac STAC API, a range-capable blob server that
stands in for Azure Blob Storage (refusing unsigned requests) and for the Planetary Computer SAS token
endpoint, and the session's local Ray. The scenes are the demo's two Sentinel-2 items
(tests/fixtures/scenes.py), so the ground truth behind every pixel is known.

* Planetary Computer path (in-process ``pipeline.enhance``, real ``planetary_computer.sign``): signing,
  range reads, no secret in any output, exact output grid, radiometry (the +1000 offset of baseline
  05.10 removed), COG validity, STAC items.
* Earth Search path through the CLI (typer's CliRunner, joining the session's Ray): nodata propagation,
  Ray and --no-ray identical, ``stacsr search`` order.
* ``stacsr sr`` on local and HTTP GeoTIFFs, ``stacsr demo`` in-process and as the installed command.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window as RioWindow
from typer.testing import CliRunner

from stacsr import demo, pipeline
from stacsr.catalog import search as S
from stacsr.catalog.presets import PRESETS, S2_BANDS
from stacsr.cli import app
from stacsr.io.grid import epsg_of
from stacsr.model import package as M
from tests.fixtures import rasters
from tests.fixtures import scenes as SC
from tests.fixtures.services import planetary_computer_stand_in

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pystac-client: DoesNotConformTo SORT

SCALE = 4
OUT_COLLECTION = "sentinel-2-l2a-sr"
# AOIs as world pixel rectangles (row0, col0, row1, col1) of the demo ground (10 m pixels).
AOI_OVERLAP = SC.world_bbox(172, 172, 308, 308)  # ~1.4 km square where both items overlap; > 128 px for overviews
AOI_CORNER = SC.world_bbox(
    410, 170, 470, 250
)  # S2B only, over the edge of its nodata corner (rows 440–480, cols 160–220)


def cli(*args: str, **kwargs: Any):
    """Run the CLI in-process; stderr is kept apart from stdout."""
    runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"}, **kwargs)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def source_dn(scenes: SC.Scenes, item_id: str, rows: slice, cols: slice) -> np.ndarray:
    """DN of the four model bands in a window, read straight from the scene files."""
    window = RioWindow.from_slices(rows, cols)
    return np.stack([read_window(scenes.file(item_id, b), window) for b in S2_BANDS])


def read_window(path: Path, window: RioWindow) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1, window=window)


def output_stack(folder: Path, item_id: str) -> np.ndarray:
    return np.stack([read(folder / f"{item_id}_{b}.tif")[0] for b in S2_BANDS])


def written_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ Planetary Computer path, real signing


@dataclass
class PcRun:
    scenes: SC.Scenes
    items: list[dict[str, Any]]  # as the search returned them (unsigned)
    out: Path
    report: pipeline.Report
    package: M.ModelPackage
    requests: list  # blob server requests during enhance
    new_tokens: list[str]  # tokens the SAS endpoint issued during the run
    all_tokens: list[str]
    all_sigs: list[str]


@pytest.fixture(scope="module")
def pc_run(pgstac, blob_server, tmp_path_factory) -> PcRun:
    """One in-process enhance of AOI_OVERLAP on PC-style items, signed by planetary_computer itself."""
    import planetary_computer

    scenes = SC.make_scenes(blob_server, "planetary-computer")
    out = tmp_path_factory.mktemp("pc") / "out"
    SC.load(pgstac, scenes)
    try:
        with planetary_computer_stand_in(blob_server.sas_url):  # what the pc_stand_in fixture does
            preset = replace(
                PRESETS["planetary-computer"],
                url=pgstac.url,
                sign=lambda item: blob_server.rewrite_item(planetary_computer.sign(item)),
            )
            items = S.search(preset, AOI_OVERLAP)
            package = M.load("default")
            tokens_before = len(blob_server.tokens_issued)
            blob_server.clear_requests()
            report = pipeline.enhance(
                items, preset, AOI_OVERLAP, out, package, pipeline.make_engine(package, use_ray=False)
            )
            requests = blob_server.requests
            tokens = blob_server.tokens_issued
    finally:
        pgstac.reset()
    return PcRun(scenes, items, out, report, package, requests, tokens[tokens_before:], tokens, blob_server.issued_sigs)


def test_pc_search_finds_both_items_least_cloudy_first(pc_run):
    assert [i["id"] for i in pc_run.items] == [SC.NEW, SC.OLD]  # cloud 1.5 before 4.2
    assert pc_run.report.items == [f"{SC.NEW}_sr", f"{SC.OLD}_sr"]
    assert not pc_run.report.skipped
    # hrefs stay unsigned PC hrefs in the search results: signing happens only when pixels are read
    assert all(
        a["href"].startswith("https://sentinel2l2a01.blob.core.windows.net/") and "?" not in a["href"]
        for i in pc_run.items
        for a in i["assets"].values()
    )


def test_pc_reads_are_signed(pc_run, blob_server):
    import httpx

    href = pc_run.items[0]["assets"]["B02"]["href"]
    unsigned = blob_server.rewrite_pc_href(href)
    assert httpx.get(unsigned).status_code == 403  # the server really refuses unsigned requests
    assert httpx.get(unsigned + "?sig=forged").status_code == 403
    # ... so the reads that succeeded were signed with a token issued during the run
    assert len(pc_run.new_tokens) >= 1
    assert all("sig=" in t for t in pc_run.new_tokens)
    blob_reads = [r for r in pc_run.requests if r.path.startswith("/blob/")]
    assert blob_reads and all(r.status in (200, 206) for r in blob_reads), [r for r in blob_reads if r.status >= 300]
    token_calls = [r for r in pc_run.requests if r.path.startswith("/sas/token/")]
    assert token_calls and all(r.path == "/sas/token/sentinel2l2a01/sentinel2-l2" for r in token_calls)


def _range_bytes(header: str, size: int) -> int:
    total = 0
    for part in header.removeprefix("bytes=").split(","):
        start, _, end = part.strip().partition("-")
        total += min(int(end) if end else size - 1, size - 1) - int(start) + 1
    return total


def test_pc_reads_are_range_requests_of_part_of_each_file(pc_run):
    gets = [r for r in pc_run.requests if r.path.startswith("/blob/") and r.method == "GET"]
    assert gets
    assert all(r.range is not None and r.status == 206 for r in gets), [r for r in gets if r.status != 206]
    prefix = f"/blob/{SC.PC_ACCOUNT}/{SC.PC_CONTAINER}/"
    fetched: dict[str, int] = {}
    for r in gets:
        rel = r.path.removeprefix(prefix)
        size = (pc_run.scenes.folder.parent / rel).stat().st_size
        fetched[rel] = fetched.get(rel, 0) + _range_bytes(r.range, size)
    prefix_dir = pc_run.scenes.folder.name
    wanted = {f"{prefix_dir}/{i}/{b}.tif" for i in (SC.NEW, SC.OLD) for b in S2_BANDS}
    assert set(fetched) == wanted  # every model band of both items, and nothing else (no SCL)
    for rel, n in fetched.items():
        size = (pc_run.scenes.folder.parent / rel).stat().st_size
        # the AOI covers ~20 % of each item: 3 × 3 of its 5 × 5 blocks of 64 px, plus the header
        assert n < 0.7 * size, f"{rel}: fetched {n} of {size} bytes"


def test_no_token_or_secret_in_any_output_file(pc_run, blob_server):
    files = written_files(pc_run.out)
    assert len(files) >= 2 * 4 + 2 + 1  # 8 COGs, 2 item JSONs, collection, catalog
    secrets = [blob_server.secret, *pc_run.all_sigs, *pc_run.all_tokens]
    assert blob_server.secret and pc_run.all_sigs
    for path in files:
        data = path.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"{path} contains an issued token/sig"
        if path.suffix == ".json":
            assert b"sig=" not in data and b"skoid=" not in data, path
            doc = json.loads(data)
            hrefs = [a["href"] for a in doc.get("assets", {}).values()] + [
                lnk["href"] for lnk in doc.get("links", [])
            ]  # card.json has none
            assert not [h for h in hrefs if "?" in h], path


def test_output_grid_is_the_aoi_window_snapped_outward_and_zoomed(pc_run):
    rng = np.random.default_rng(0)
    for item in pc_run.items:
        rows, cols = SC.expected_window(item, "B02", AOI_OVERLAP)
        src = Affine(*item["assets"]["B02"]["proj:transform"][:6])
        window_affine = src @ Affine.translation(cols.start, rows.start)
        # the window is the AOI, not the item: strictly inside the 320 × 320 grid here
        assert 0 < rows.start and rows.stop < 320 and 0 < cols.start and cols.stop < 320
        folder = pc_run.out / OUT_COLLECTION / f"{item['id']}_sr"
        for band in S2_BANDS:
            with rasterio.open(folder / f"{item['id']}_sr_{band}.tif") as cog:
                t, shape, crs = cog.transform, cog.shape, cog.crs
            assert crs.to_epsg() == demo.EPSG
            assert (t.c, t.f) == (window_affine.c, window_affine.f)  # same origin, exactly
            assert (t.a, t.b, t.d, t.e) == (2.5, 0.0, 0.0, -2.5)
            assert shape == ((rows.stop - rows.start) * SCALE, (cols.stop - cols.start) * SCALE)
        # every output pixel centre lies in input pixel (r // 4, c // 4) of the window grid
        r = rng.integers(0, shape[0], 500)
        c = rng.integers(0, shape[1], 500)
        x, y = t @ (c + 0.5, r + 0.5)
        in_col, in_row = ~window_affine @ (x, y)
        assert np.array_equal(np.floor(in_row).astype(int), r // SCALE)
        assert np.array_equal(np.floor(in_col).astype(int), c // SCALE)
        # the STAC item says the same grid
        props = json.loads((folder / f"{item['id']}_sr.json").read_text())["properties"]
        assert props["proj:transform"] == list(t)[:6] and props["proj:shape"] == list(shape)
        assert epsg_of(props) == demo.EPSG and props["gsd"] == 2.5  # proj:epsg or proj:code


def _bicubic(reflectance: np.ndarray, package: M.ModelPackage) -> np.ndarray:
    """What the placeholder model computes, independently: bicubic ×4 of the reflect-padded input."""
    import torch
    from torch.nn import functional as F

    pad = 2  # bicubic support; reflect padding at the edge, as stacsr.io.source does
    x = np.pad(reflectance.astype(np.float32), ((0, 0), (pad, pad), (pad, pad)), mode="reflect") / 10000.0
    y = F.interpolate(torch.from_numpy(x)[None], scale_factor=SCALE, mode="bicubic", align_corners=False)[0]
    y = (y * 10000.0).round().clamp(1, 65535).numpy()
    m = pad * SCALE
    return y[:, m:-m, m:-m]


def test_radiometry_end_to_end(pc_run):
    outputs = {}
    for item in pc_run.items:
        rows, cols = SC.expected_window(item, "B02", AOI_OVERLAP)
        truth = SC.truth(item["id"], rows, cols)  # reflectance × 10000 the demo drew, before any offset
        dn = source_dn(pc_run.scenes, item["id"], rows, cols)
        shift = SC.BASELINE_SHIFT[item["id"]]
        assert (dn > 0).all()  # no nodata in this AOI
        assert np.array_equal(dn.astype(np.int64) - shift, truth)  # the files hold what we think they hold
        out = output_stack(pc_run.out / OUT_COLLECTION / f"{item['id']}_sr", f"{item['id']}_sr").astype(np.float64)
        outputs[item["id"]] = out
        assert (out > 0).all()
        diff = demo.block_mean(out, SCALE) - truth
        # smooth areas: the 5 × 5 neighbourhood at 10 m (bicubic's reach) varies by < 5 % in every band
        padded = np.pad(truth, ((0, 0), (2, 2), (2, 2)), mode="edge")
        hood = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2))
        smooth = (hood.max(axis=(-2, -1)) - hood.min(axis=(-2, -1)) < 0.05 * truth).all(axis=0)
        assert smooth.mean() > 0.2
        assert np.median(np.abs(diff[:, smooth])) <= 2
        assert np.percentile(np.abs(diff[:, smooth]), 99) <= 30
        # over the whole AOI (edges included) the block means stay unbiased: the +1000 of 05.10 is gone
        assert abs(np.median(diff)) <= 1
        assert np.percentile(np.abs(diff), 95) <= 40
        if not pc_run.package.card.provenance.get("trained", True):  # the shipped placeholder is bicubic
            assert np.abs(out - _bicubic(truth, pc_run.package)).max() <= 1
    # both items see the same ground on the same 10 m lattice (offset 160 px): once the 05.10 DN lost
    # their +1000, the two outputs agree pixel for pixel wherever both read the same ground. Within the
    # model's reach of the AOI's edge they may differ: the AOI lies 12 px inside each item's edge, and halos
    # read each item's own pixels there (real ground in one, mirrored at the item's edge in the other).
    assert outputs[SC.NEW].shape == outputs[SC.OLD].shape
    m = pc_run.package.receptive_radius * SCALE
    inner = (slice(None), slice(m, -m), slice(m, -m))
    assert np.abs(outputs[SC.NEW][inner] - outputs[SC.OLD][inner]).max() <= 1


def test_cogs_are_valid_uint16_with_nodata_descriptions_and_overviews(pc_run):
    from rio_cogeo.cogeo import cog_validate

    cogs = sorted(pc_run.out.rglob("*.tif"))
    assert len(cogs) == 8
    for path in cogs:
        valid, errors, _warnings = cog_validate(str(path), quiet=True)
        assert valid and not errors, (path, errors)
        with rasterio.open(path) as src:
            band = path.stem.rsplit("_", 1)[1]
            assert src.count == 1 and src.dtypes == ("uint16",) and src.nodata == 0
            assert src.descriptions == (band,)
            assert src.overviews(1), path  # > 512 px: rio-cogeo adds overviews
            assert src.scales == (1e-4,)
    assert not [p for p in written_files(pc_run.out) if p.name.startswith(".") or p.suffix == ".part"]


def test_stac_items_link_their_sources(pc_run):
    import pystac

    catalog = pystac.Catalog.from_file(str(pc_run.out / "catalog.json"))
    collections = list(catalog.get_children())
    assert [c.id for c in collections] == [OUT_COLLECTION]
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    assert set(items) == {f"{SC.NEW}_sr", f"{SC.OLD}_sr"}
    for source in pc_run.items:
        item = items[f"{source['id']}_sr"]
        self_href = next(lnk["href"] for lnk in source["links"] if lnk["rel"] == "self")
        derived = [lnk.href for lnk in item.links if lnk.rel == "derived_from"]
        assert derived == [self_href, "../../models/stacsr-s2-rgbn-x4-1.2.0.json"]  # the source, the model
        assert list(item.assets) == list(S2_BANDS)
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_file()
            assert asset.extra_fields["raster:bands"][0]["nodata"] == 0
        assert item.properties["s2:mgrs_tile"] == source["properties"]["s2:mgrs_tile"]
        assert item.collection_id == OUT_COLLECTION
    # relative hrefs in the written JSON: the catalogue is self-contained (movable)
    for path in pc_run.out.rglob("*.json"):
        doc = json.loads(path.read_text())
        for asset in doc.get("assets", {}).values():
            assert not asset["href"].startswith(("/", "http")), asset["href"]


def test_stac_documents_validate_against_schemas(pc_run):
    stac = pytest.importorskip("tests.fixtures.stac")
    stac.require_schemas()
    docs = [json.loads(p.read_text()) for p in sorted(pc_run.out.rglob("*.json")) if not p.name.endswith(".card.json")]
    assert {d["type"] for d in docs} == {"Catalog", "Collection", "Feature"}
    for doc in docs:
        stac.validate_stac(doc)


# ------------------------------------------------------------------ Earth Search path through the CLI


@pytest.fixture(scope="module")
def es_files(blob_server) -> SC.Scenes:
    return SC.make_scenes(blob_server, "earth-search")


@pytest.fixture
def es_catalog(pgstac, es_files):
    """The Earth-Search-style scenes in pgstac as collection sentinel-2-l2a, for one test."""
    yield from SC.loaded(pgstac, es_files)


@dataclass
class EsRun:
    scenes: SC.Scenes
    ray: Any
    no_ray: Any
    out_ray: Path
    out_local: Path


@pytest.fixture(scope="module")
def es_cli_run(pgstac, es_files, ray_local, tmp_path_factory) -> EsRun:
    """``stacsr enhance --catalog earth-search`` over the S2B nodata corner, with Ray and with --no-ray."""
    assert ray_local.is_initialized()  # the CLI joins this Ray instead of starting one
    base = tmp_path_factory.mktemp("es")
    args = ["enhance", "--catalog", "earth-search", "--stac-url", pgstac.url, "--bbox", *AOI_CORNER, "--tile-size", 32]
    SC.load(pgstac, es_files)
    try:
        ray_result = cli(*args, "--out", base / "ray", "--ray")
        local_result = cli(*args, "--out", base / "local")  # in-process: the default without a cluster
    finally:
        pgstac.reset()
    return EsRun(es_files, ray_result, local_result, base / "ray", base / "local")


def test_cli_enhance_earth_search_with_ray(es_cli_run, ray_local):
    r = es_cli_run.ray
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert re.search(r"items written\s+1\b", r.stderr), r.stderr
    km2 = float(re.search(r"area\s+([\d.]+) km²", r.stderr).group(1))
    rows, cols = SC.expected_window(es_cli_run.scenes.item(SC.NEW), "blue", AOI_CORNER)
    assert km2 == pytest.approx((rows.stop - rows.start) * (cols.stop - cols.start) / 1e4, abs=0.006)  # 2 decimals
    item_dir = es_cli_run.out_ray / OUT_COLLECTION / f"{SC.NEW}_sr"
    files = [p.relative_to(es_cli_run.out_ray) for p in written_files(es_cli_run.out_ray)]
    assert sorted(str(p) for p in files if p.parts[0] != "items.parquet") == sorted(
        ["catalog.json", "catalog.lock", f"{OUT_COLLECTION}/collection.json"]
        + [
            f"{OUT_COLLECTION}/{SC.NEW}_sr/{name}"
            for name in (f"{SC.NEW}_sr.json", *(f"{SC.NEW}_sr_{b}.tif" for b in S2_BANDS))
        ]
        + [f"{OUT_COLLECTION}/{tile}/catalog.json" for tile in ("32UQU", "32UQU/2024")]
        + [f"models/stacsr-s2-rgbn-x4-1.2.0.{name}" for name in ("json", "card.json", "weights.safetensors")]
    )  # items.parquet/: the index, a folder of parquet files
    assert {p.suffix for p in files if p.parts[0] == "items.parquet"} == {".parquet"}
    assert item_dir.is_dir()
    # Earth Search declares offset −0.1 for baseline 05.10: the output is reflectance × 10000 again
    out = output_stack(item_dir, f"{SC.NEW}_sr").astype(np.float64)
    truth = SC.truth(SC.NEW, rows, cols)
    valid = (truth > 0).all(axis=0) & (source_dn(es_cli_run.scenes, SC.NEW, rows, cols) > 0).all(axis=0)
    assert abs(np.median((demo.block_mean(out, SCALE) - truth)[:, valid])) <= 2
    # the item ran as one task in the session's Ray, which the CLI joined
    from ray.util.state import list_tasks

    deadline = time.monotonic() + 15
    while True:
        done = list_tasks(address=ray_local.dashboard_url, filters=[("name", "=", "run_item")])
        if any(t.state == "FINISHED" for t in done) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert any(t.state == "FINISHED" for t in done), [t.state for t in done]
    assert "Ray, one item per node" in r.stderr


def test_cli_enhance_ray_and_no_ray_give_identical_pixels(es_cli_run):
    assert es_cli_run.no_ray.exit_code == 0, es_cli_run.no_ray.stderr
    name = f"{SC.NEW}_sr"
    a = output_stack(es_cli_run.out_ray / OUT_COLLECTION / name, name)
    b = output_stack(es_cli_run.out_local / OUT_COLLECTION / name, name)
    assert a.shape == b.shape and a.any()
    assert np.array_equal(a, b)


def test_nodata_propagates_to_the_whole_output_footprint(es_cli_run):
    item = es_cli_run.scenes.item(SC.NEW)
    rows, cols = SC.expected_window(item, "blue", AOI_CORNER)
    dn = source_dn(es_cli_run.scenes, SC.NEW, rows, cols)
    nodata = (dn == 0).any(axis=0)
    assert 0.05 < nodata.mean() < 0.7  # the AOI really includes part of the corner, and valid ground
    name = f"{SC.NEW}_sr"
    out = output_stack(es_cli_run.out_ray / OUT_COLLECTION / name, name)
    footprint = np.repeat(np.repeat(nodata, SCALE, axis=0), SCALE, axis=1)
    assert out.shape[1:] == footprint.shape
    assert (out[:, footprint] == 0).all()
    assert (out[:, ~footprint] > 0).all()


def test_cli_search_lists_least_cloudy_first(es_catalog, pgstac):
    r = cli("search", "--catalog", "earth-search", "--stac-url", pgstac.url, "--bbox", *AOI_OVERLAP)
    assert r.exit_code == 0, r.stderr
    assert SC.NEW in r.stdout and SC.OLD in r.stdout
    assert r.stdout.index(SC.NEW) < r.stdout.index(SC.OLD)
    lines = [ln for ln in r.stdout.splitlines() if SC.NEW in ln or SC.OLD in ln]
    assert "1.5" in lines[0] and "32UQU" in lines[0] and "4.2" in lines[1] and "32UPU" in lines[1]
    # --max-cloud filters server-side
    r = cli("search", "--catalog", "earth-search", "--stac-url", pgstac.url, "--bbox", *AOI_OVERLAP, "--max-cloud", 2)
    assert r.exit_code == 0 and SC.NEW in r.stdout and SC.OLD not in r.stdout


# ------------------------------------------------------------------ stacsr sr on one GeoTIFF


def write_geotiff(path: Path, data: np.ndarray, transform: Affine, crs: str = f"EPSG:{demo.EPSG}") -> Path:
    return rasters.write_geotiff(path, data, transform, crs, nodata=0)


@pytest.fixture(scope="module")
def sr_input(tmp_path_factory) -> tuple[Path, np.ndarray, Affine]:
    """A 4-band uint16 GeoTIFF (57 × 70 px, origin not on the demo grid) of demo reflectance."""
    data = SC.truth(SC.OLD, slice(40, 97), slice(100, 170)).astype(np.uint16)
    transform = Affine(10, 0, 681234.0, 0, -10, 5338765.0)
    path = write_geotiff(tmp_path_factory.mktemp("sr") / "input.tif", data, transform)
    return path, data, transform


def check_sr_output(path: Path, data: np.ndarray, transform: Affine) -> np.ndarray:
    with rasterio.open(path) as src:
        assert src.count == 4 and src.dtypes == ("uint16",) * 4 and src.nodata == 0
        assert src.crs.to_epsg() == demo.EPSG
        assert (src.transform.c, src.transform.f) == (transform.c, transform.f)
        assert (src.transform.a, src.transform.e) == (transform.a / SCALE, transform.e / SCALE)
        assert src.shape == (data.shape[1] * SCALE, data.shape[2] * SCALE)
        out = src.read()
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(path), quiet=True)[0]
    assert np.abs(np.median(demo.block_mean(out.astype(np.float64), SCALE) - data)) <= 2
    return out


def test_sr_local_geotiff_tile_sizes_agree(sr_input, tmp_path):
    src, data, transform = sr_input
    outs = {}
    for tile in (16, 256):
        dst = tmp_path / f"out_{tile}.tif"
        r = cli("sr", src, dst, "--no-ray", "--tile-size", tile)
        assert r.exit_code == 0, r.stderr
        assert "files written" in r.stderr
        outs[tile] = check_sr_output(dst, data, transform).astype(np.int32)
    assert np.abs(outs[16] - outs[256]).max() <= 1


def test_sr_geotiff_over_http(sr_input, blob_server, tmp_path):
    src, data, transform = sr_input
    rel = f"sr-{tmp_path.name}/input.tif"
    (blob_server.root / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, blob_server.root / rel)
    blob_server.clear_requests()
    r = cli("sr", blob_server.file_url(rel), tmp_path / "http.tif", "--no-ray")
    assert r.exit_code == 0, r.stderr
    assert any(q.path == f"/files/{rel}" and q.status == 206 for q in blob_server.requests)
    out = check_sr_output(tmp_path / "http.tif", data, transform)
    r = cli("sr", src, tmp_path / "local.tif", "--no-ray")
    assert r.exit_code == 0, r.stderr
    assert np.array_equal(out, read(tmp_path / "local.tif"))
