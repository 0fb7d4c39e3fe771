"""Each source byte read about once per item: rasters held open, whole blocks cached, tokens renewed.

Against the real range-capable HTTP server (``blob_server``, which logs every request and its ``Range``):
the HTTP requests and bytes of an item's reads are held to the blocks its halo'd windows touch, as counts
(bytes fetched ≤ 1.3 × the compressed bytes of those blocks plus the header; requests ≤ 2 × those blocks plus
a few per file), for ``sr`` of a 4-band COG and for a crop of an item of four single-band COGs with 1024²
blocks. Held reads give the pixels one-shot reads give (WarpedVRT path included), and a Planetary Computer
token that expires in the middle of an item is renewed before any read is refused.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from affine import Affine

from stacsr import pipeline
from stacsr.engine import LocalEngine
from stacsr.io.grid import GeoBox, Window, from_rasterio
from stacsr.io.read import ReadError
from stacsr.io.sink import CogTarget
from stacsr.io.source import ArraySource, Band, RasterSource, file_source, renewal_time, token_expiry
from stacsr.model import package as M
from tests.bench_reads import TRANSFORM, blocks_touched, engine_windows, fetched, make_cog, texture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PER_FILE = 3  # requests a file may cost beyond its blocks (header, size, a block split in two)


def served(server, paths) -> tuple[int, int]:
    return fetched(server.requests, {f"/files/{p.relative_to(server.root)}": p.stat().st_size for p in paths})


def assert_about_once(server, paths, windows) -> tuple[int, int]:
    """Requests and bytes served since the log was cleared, held to the blocks ``windows`` touch."""
    requests, got = served(server, paths)
    touched = [blocks_touched(p, windows) for p in paths]
    blocks, need = sum(t[0] for t in touched), sum(t[1] for t in touched)
    assert got <= 1.3 * need, f"{got / 1e6:.1f} MB fetched for {need / 1e6:.1f} MB of blocks touched"
    assert requests <= 2 * blocks + PER_FILE * len(paths), f"{requests} requests for {blocks} blocks"
    return requests, got


def test_sr_of_a_remote_cog_fetches_each_block_about_once(blob_server, tmp_path):
    """``sr`` of a 2048² 4-band COG (1024² deflate blocks) over HTTP. Its B08 is nodata but for a corner, so
    the model runs on a few tiles only; every tile is still read, the way the engine reads."""
    data = texture(4, 2048, 1)
    data[3, 300:, :] = 0
    data[3, :, 300:] = 0
    path = make_cog(blob_server.root / "reads" / "sr-2048.tif", data)
    package = M.load("default")
    blob_server.clear_requests()
    pipeline.sr_file(blob_server.file_url("reads/sr-2048.tif"), tmp_path / "out.tif", package, LocalEngine(package), tile_size=256)  # fmt: skip
    _, got = assert_about_once(blob_server, [path], engine_windows((2048, 2048)))
    assert got <= 1.05 * path.stat().st_size  # was 25 × (989 requests, 617.7 MB for a 24.5 MB file)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.shape == (8192, 8192) and out.read(1, window=((0, 1000), (0, 1000))).any()


def test_engine_reports_the_compressed_bytes_it_read(blob_server, tmp_path):
    data = texture(4, 512, 2)
    data[3, 100:, :] = 0
    path = make_cog(blob_server.root / "reads" / "stats-512.tif", data, block=256)
    source, _ = file_source(blob_server.file_url("reads/stats-512.tif"))
    package = M.load("default")
    target = CogTarget(str(tmp_path / "out.tif"), (0, 1, 2, 3), ("B02", "B03", "B04", "B08"))
    run = pipeline.run_item(source, Window(0, 0, 512, 512), [target], package, LocalEngine(package), 256)
    with rasterio.open(path) as src:
        blocks = sum(src.block_size(1, i, j) for i in range(2) for j in range(2))
    assert run.stats.bytes_read == blocks


@pytest.fixture(scope="module")
def item(blob_server):
    """An item laid out as Sentinel-2's 10 m bands: four single-band 4608² COGs with 1024² deflate blocks."""
    layers = [texture(1, 4608, 10 + i)[0] for i in range(4)]
    paths = [make_cog(blob_server.root / "reads" / "item" / f"B0{i}.tif", x[None]) for i, x in enumerate(layers)]
    bands = tuple(Band(blob_server.file_url(f"reads/item/{p.name}"), 1, None, p.stem) for p in paths)
    grid = from_rasterio(Affine(*TRANSFORM), rasterio.CRS.from_epsg(32632), (4608, 4608))
    return RasterSource(bands, grid, "item"), paths, np.stack(layers)


def test_an_item_crop_fetches_each_block_about_once(blob_server, item):
    """A 4096² AOI (not block-aligned) read as the engine reads it: row-major halo'd 256 px tiles, two reader
    threads; the pixels are the file's, reflected at the item's edge only."""
    source, paths, image = item
    windows = engine_windows((4608, 4608), (300, 212, 4096, 4096))
    blob_server.clear_requests()
    with source.open() as opened, ThreadPoolExecutor(2) as readers:
        got = list(readers.map(lambda w: opened.read([w])[0], windows))
        counted = opened.bytes_read, opened.blocks_read
    assert_about_once(blob_server, paths, windows)
    touched = [blocks_touched(p, windows) for p in paths]
    assert counted[1] == sum(t[0] for t in touched)  # every block once (headers are not blocks)
    assert 0.95 * sum(t[1] for t in touched) < counted[0] < sum(t[1] for t in touched)
    reference, every = ArraySource(image), len(windows) // 24
    assert all(np.array_equal(a, b) for a, b in zip(got[::every], reference.read(windows[::every])))
    assert np.array_equal(got[-1], reference.read(windows[-1:])[0])


def test_one_shot_reads_still_work_and_a_4_band_file_is_one_raster(tmp_path):
    image = np.random.default_rng(5).integers(1, 5000, (4, 300, 200)).astype(np.uint16)
    source, _ = file_source(str(make_cog(tmp_path / "four.tif", image, block=128)))
    windows = [Window(-20, -20, 100, 100), Window(250, 150, 80, 80)]
    assert all(np.array_equal(a, b) for a, b in zip(source.read(windows), ArraySource(image).read(windows)))
    with source.open() as opened:
        assert len(opened._rasters) == 1 and opened.read(windows)[1].shape == (4, 80, 80)
        assert opened.blocks_read == 6 and opened.open().__enter__() is opened  # the windows' union: all 3 × 2
    with ArraySource(image).open() as same:
        assert same.bytes_read == 0 and same.read(windows)[0].shape == (4, 100, 100)


def test_a_raster_off_the_declared_grid_is_warped_as_before(tmp_path):
    """A 20 m raster in another UTM zone declared on a 10 m grid: held reads equal one-shot WarpedVRT reads
    of the same windows (the warp depends on the window asked, so it is never read by blocks)."""
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window as RioWindow

    data = np.random.default_rng(1).integers(1, 5000, (1, 700, 650)).astype(np.uint16)
    path = tmp_path / "zone32.tif"
    profile = dict(driver="GTiff", width=650, height=700, count=1, dtype="uint16", crs="EPSG:32632", tiled=True)
    with rasterio.open(path, "w", transform=Affine(20, 0, 600003, 0, -20, 5300007), blockxsize=256, blockysize=256, **profile) as dst:  # fmt: skip
        dst.write(data)
    grid = GeoBox((1400, 1300), Affine(10, 0, 150000, 0, -10, 5309700), "EPSG:32633")
    source = RasterSource((Band(str(path), 1, None, "B05"),), grid, "warped")
    windows = [Window(10, 20, 300, 333), Window(500, 700, 296, 296), Window(1000, 1000, 400, 300)]

    def fresh(w: Window) -> np.ndarray:  # what every read did before rasters were held
        with rasterio.open(path) as src, WarpedVRT(src, crs=grid.crs.to_wkt(), transform=grid.affine, width=1300, height=1400, nodata=0) as vrt:  # fmt: skip
            return vrt.read(1, window=RioWindow(w.col, w.row, w.width, w.height))[None]

    with source.open() as opened:
        for w in windows:
            assert np.array_equal(opened.read([w])[0], fresh(w))
        assert 0 < opened.blocks_read <= 9 and opened.bytes_read > 0


def test_token_expiry_and_renewal_time():
    href = "https://a.blob.core.windows.net/c/B02.tif?st=2026-01-01T00%3A00%3A00Z&se=2026-01-01T01%3A00%3A00Z&sig=x"
    assert token_expiry(href) == 1767229200.0 and token_expiry("https://x/B02.tif?sig=1") is None
    assert renewal_time(0.0, [3600.0, None]) == 3600.0 - 180.0  # a few minutes before the first expiry
    assert renewal_time(0.0, [4.0]) == 3.0  # a short token: a quarter of its life before
    assert renewal_time(0.0, [None]) == 1800.0  # no expiry known: after 30 min


def pc_item(blob_server, name: str, data: np.ndarray) -> tuple[dict, GeoBox]:
    from tests.fixtures.scenes import PC_CONTAINER

    account = "sentinel2l2a01"
    make_cog(blob_server.blob_path(account, PC_CONTAINER, f"reads/{name}"), data, block=256)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": name, "geometry": None, "links": [],
            "properties": {"datetime": "2026-01-01T00:00:00Z"},
            "assets": {"B02": {"href": blob_server.pc_href(account, PC_CONTAINER, f"reads/{name}")}}}  # fmt: skip
    grid = from_rasterio(Affine(*TRANSFORM), rasterio.CRS.from_epsg(32632), data.shape[1:])
    return item, grid


def test_a_token_expiring_mid_item_is_renewed_before_any_read_is_refused(pc_stand_in):
    import planetary_computer

    blob_server = pc_stand_in
    data = texture(1, 1024, 7)
    item, grid = pc_item(blob_server, "renewed.tif", data)
    sign = lambda i: blob_server.rewrite_item(planetary_computer.sign(i))  # noqa: E731
    source = RasterSource((Band(item["assets"]["B02"]["href"], 1, None, "B02"),), grid, "renewed", item, sign)
    windows = engine_windows((1024, 1024))
    try:
        blob_server.set_token_lifetime(3)  # shorter than planetary_computer's 60 s: each signing is a new token
        before = len(blob_server.tokens_issued)
        blob_server.clear_requests()
        with source.open() as opened:
            first = [opened.read([w])[0] for w in windows[:4]]  # the first row of blocks
            time.sleep(3.5)  # the token has expired
            rest = [opened.read([w])[0] for w in windows[4:]]
        assert len(blob_server.tokens_issued) - before >= 2  # signed again mid-item
        assert all(r.status in (200, 206) for r in blob_server.requests)  # no read with an expired token
        assert sum(r.method == "GET" for r in blob_server.requests) >= 4  # later rows really were fetched
        assert all(np.array_equal(a, b) for a, b in zip(first + rest, ArraySource(data).read(windows)))
    finally:
        blob_server.set_token_lifetime(3600)


def test_a_token_that_cannot_be_renewed_is_a_one_line_error_without_it(pc_stand_in, monkeypatch):
    import planetary_computer

    from stacsr.io import read as R

    monkeypatch.setattr(R, "READ_RETRIES", 1)
    blob_server = pc_stand_in
    item, grid = pc_item(blob_server, "stale.tif", texture(1, 1024, 8))
    try:
        blob_server.set_token_lifetime(2)
        stale = blob_server.rewrite_item(planetary_computer.sign(item))
        source = RasterSource((Band(item["assets"]["B02"]["href"], 1, None, "B02"),), grid, "stale", item, lambda i: stale)  # fmt: skip
        windows = engine_windows((1024, 1024))
        with source.open() as opened:
            opened.read(windows[:1])
            time.sleep(2.5)
            with pytest.raises(ReadError) as e:
                for w in windows[1:]:
                    opened.read([w])
    finally:
        blob_server.set_token_lifetime(3600)
    message = str(e.value)
    assert "\n" not in message and "B02" in message and "stale.tif" in message and "item stale" in message
    assert blob_server.secret not in message and "sig=" not in message and "se=" not in message
