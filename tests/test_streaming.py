"""Streaming: tiles read their own windows from storage, outputs go through a tile sink on disk into COGs.

* windows reflect at the edge of the source exactly as ``numpy.pad`` does, so ``sr`` on a file is what a
  whole-image pass gives, and an output pixel depends on its source only: two overlapping AOIs of one item
  give identical pixels where they overlap, whatever the tile size;
* too little disk is one line saying how much is needed and where, before any compute, nothing left;
* the COGs are BigTIFF when they could pass 4 GB (``BIGTIFF=IF_SAFER``);
* the in-process and Ray engines write identical files through the sink.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox

from stacsr import demo, pipeline
from stacsr.engine import LocalEngine
from stacsr.io.grid import Window
from stacsr.io.sink import CogTarget, DiskSpaceError, SinkSpec, check_disk
from stacsr.io.source import ArraySource, file_source, reflect_index
from stacsr.io.write import cog_from_file
from stacsr.model import package as M
from tests.fixtures import rasters
from tests.fixtures import scenes as SC

GRID = Affine(10, 0, 600000, 0, -10, 5300000)


def write_tif(path: Path, data: np.ndarray, **extra) -> Path:
    return rasters.write_geotiff(path, data, GRID, tiled=True, blockxsize=16, blockysize=16, **extra)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("start, stop", [(-24, 10), (-3, 60), (0, 5), (40, 80), (-60, 90)])
def test_reflect_index_is_numpy_pads_reflect(length, start, stop):
    halo = 100
    padded = np.pad(np.arange(length), halo, mode="reflect")
    assert np.array_equal(reflect_index(length, start, stop), padded[start + halo : stop + halo])


def test_file_windows_reflect_at_the_file_edge_only(tmp_path):
    image = np.random.default_rng(3).integers(1, 5000, (4, 37, 53)).astype(np.uint16)
    source, _ = file_source(str(write_tif(tmp_path / "in.tif", image)))
    halo = 11
    padded = np.pad(image, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    windows = [Window(-halo, -halo, 30, 30), Window(20, 30, 28, 34), Window(5, -4, 10, 64)]
    for got, w in zip(source.read(windows), windows):
        assert np.array_equal(got, padded[(slice(None), *w.shift(halo, halo).slices)])
    assert all(np.array_equal(a, b) for a, b in zip(ArraySource(image).read(windows), source.read(windows)))


def enhance_aoi(items, bbox, out: Path, tile_size: int) -> dict[str, tuple[np.ndarray, Affine]]:
    package = M.load("default")
    pipeline.enhance(items, demo.demo_preset(), bbox, out, package, LocalEngine(package), tile_size=tile_size)
    outputs = {}
    for item in items:
        folder = next(out.glob(f"*/{item['id']}_sr"))
        layers = []
        for band in demo.S2_BANDS:
            with rasterio.open(folder / f"{item['id']}_sr_{band}.tif") as src:
                layers.append(src.read(1))
                transform = src.transform
        outputs[item["id"]] = (np.stack(layers), transform)
    return outputs


def overlap(a: tuple[np.ndarray, Affine], b: tuple[np.ndarray, Affine]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of two outputs on one lattice where they overlap."""
    (pa, ta), (pb, tb) = a, b
    dr, dc = round((ta.f - tb.f) / tb.e), round((ta.c - tb.c) / tb.a)  # a's origin in b's pixels
    r0, c0 = max(0, dr), max(0, dc)
    r1, c1 = min(pb.shape[1], dr + pa.shape[1]), min(pb.shape[2], dc + pa.shape[2])
    assert r1 - r0 > 100 and c1 - c0 > 100
    return pa[:, r0 - dr : r1 - dr, c0 - dc : c1 - dc], pb[:, r0:r1, c0:c1]


def test_overlapping_aois_of_one_item_give_identical_pixels(tmp_path):
    """Two AOIs that overlap, each edge of one inside the other, and a third tile size: one pixel, one value."""
    items = demo.build_catalog(tmp_path / "source")
    first = enhance_aoi(items, SC.world_bbox(100, 100, 200, 200), tmp_path / "a", 64)
    second = enhance_aoi(items, SC.world_bbox(150, 130, 260, 240), tmp_path / "b", 64)
    third = enhance_aoi(items, SC.world_bbox(150, 130, 260, 240), tmp_path / "c", 48)
    for item in items:
        a, b = overlap(first[item["id"]], second[item["id"]])
        assert (a > 0).all() and np.array_equal(a, b)
        assert np.array_equal(second[item["id"]][0], third[item["id"]][0])


def test_too_little_disk_is_one_line_before_any_compute(tmp_path):
    """A sparse 120000² input (a few kB on disk) whose 2.5 m output would need terabytes."""
    big = tmp_path / "big.tif"
    with rasterio.open(
        big,
        "w",
        driver="GTiff",
        width=120_000,
        height=120_000,
        count=4,
        dtype="uint16",
        crs="EPSG:32632",
        transform=GRID,
        tiled=True,
        sparse_ok=True,
        bigtiff="YES",
    ) as dst:
        dst.write(np.full((4, 16, 16), 500, np.uint16), window=rasterio.windows.Window(0, 0, 16, 16))
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("stacsr")), "sr", str(big), str(out / "sr.tif"), "--no-ray"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not enough free disk space in" in lines[0] and " GB" in lines[0], r.stderr
    assert str(out) in lines[0] or str(tmp_path) in lines[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_check_disk_counts_scratch_and_cogs(tmp_path):
    """Block path (deflate): compressed blocks in scratch (0.5 × raw) and the COG (0.5 × raw); GDAL's path (lzw):
    uncompressed intermediates and their levels (4/3 × raw) and the COG."""
    grid = GeoBox((1000, 1000), Affine(2.5, 0, 600000, 0, -2.5, 5300000), "EPSG:32632")
    spec = SinkSpec(grid, (0, 0), 4, (CogTarget(str(tmp_path / "x.tif"), (0, 1, 2, 3), ("a", "b", "c", "d")),))
    assert spec.raw_bytes == 8_000_000
    check_disk(spec)  # 8 MB + a COG: fits
    for compress, needed in (("deflate", "800,000.0"), ("lzw", "1,466,666.7")):
        huge = SinkSpec(GeoBox((10**7, 10**7), grid.affine, grid.crs), (0, 0), 4, spec.targets, compress=compress)
        with pytest.raises(
            DiskSpaceError,
            match=rf"not enough free disk space in .*: this item needs about {needed} GB, [0-9,.]+ GB are free",
        ):
            check_disk(huge)


def test_cogs_that_could_pass_4_gb_are_bigtiff(tmp_path):
    """BIGTIFF=IF_SAFER: a 3.2 GB (raw) band that compresses to almost nothing is still written as BigTIFF;
    GDAL's default (IF_NEEDED) would make a classic TIFF, which fails when real data passes 4 GB."""
    src = tmp_path / "sparse.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=40_000,
        height=40_000,
        count=1,
        dtype="uint16",
        nodata=0,
        crs="EPSG:32632",
        transform=GRID,
        tiled=True,
        sparse_ok=True,
        bigtiff="YES",
    ) as dst:
        dst.write(np.full((1, 512, 512), 700, np.uint16), window=rasterio.windows.Window(0, 0, 512, 512))
    small = write_tif(tmp_path / "small.tif", np.full((1, 64, 64), 700, np.uint16))
    for path, bigtiff in (
        (cog_from_file(src, tmp_path / "big-cog.tif"), True),
        (cog_from_file(small, tmp_path / "s.tif"), False),
    ):
        assert (path.read_bytes()[2:4] == b"\x2b\x00") is bigtiff  # TIFF version 43 = BigTIFF (little-endian)
        from rio_cogeo.cogeo import cog_validate

        assert cog_validate(str(path), quiet=True)[0]


def test_sr_engines_write_identical_files(ray_local, tmp_path):
    from stacsr.engine import RayEngine

    image = np.random.default_rng(5).integers(1, 4000, (4, 90, 70)).astype(np.uint16)
    image[:, :20, :30] = 0
    src = write_tif(tmp_path / "in.tif", image)
    package = M.load("default")
    pipeline.sr_file(str(src), tmp_path / "local.tif", package, LocalEngine(package), tile_size=32)
    blank = write_tif(tmp_path / "blank.tif", np.zeros((4, 40, 40), np.uint16))
    engine = RayEngine(package)
    try:
        pipeline.sr_file(str(src), tmp_path / "ray.tif", package, engine, tile_size=32)
        with pytest.raises(pipeline.InputError, match="all nodata"):  # the item's node says so; nothing is written
            pipeline.sr_file(str(blank), tmp_path / "blank-sr.tif", package, engine, tile_size=32)
    finally:
        engine.close()
    assert not (tmp_path / "blank-sr.tif").exists()
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "ray.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
        assert (a.read()[:, : 20 * 4, : 30 * 4] == 0).all() and (a.read()[:, 100:, 200:] > 0).all()
    whole = pipeline.super_resolve(image, package, LocalEngine(package), tile_size=10**6)
    with rasterio.open(tmp_path / "local.tif") as a:
        assert np.array_equal(a.read(), whole)
    assert not list(tmp_path.glob(".stacsr-*"))  # the scratch folders are gone


def test_scratch_goes_where_the_operator_says_and_is_removed(tmp_path, monkeypatch):
    from stacsr.io.sink import SCRATCH_ENV, TileSink, scratch_folder

    grid = GeoBox((64, 64), Affine(2.5, 0, 600000, 0, -2.5, 5300000), "EPSG:32632")
    target = CogTarget(str(tmp_path / "out" / "x.tif"), (0,), ("B02",))
    spec = SinkSpec(grid, (0, 0), 4, (target,))
    assert scratch_folder(spec) == tmp_path  # beside a local output (its nearest existing folder)
    remote = SinkSpec(grid, (0, 0), 4, (CogTarget("s3://bucket/x.tif", (0,), ("B02",)),))
    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "scratch"))
    assert scratch_folder(remote) == scratch_folder(spec) == tmp_path / "scratch"
    sink = TileSink(spec).open()
    folders = [p for p in (tmp_path / "scratch").glob(".stacsr-*") if p.is_dir()]
    assert len(folders) == 1  # the item's scratch folder (its blocks beyond the RAM budget)
    sink.write([(Window(0, 0, 16, 16), np.full((1, 64, 64), 7, np.uint16))])
    assert sink.finish() == {target.url: target.url}
    assert not list((tmp_path / "scratch").iterdir())  # the scratch folder is gone
    with rasterio.open(target.url) as cog:
        assert (cog.read(1) == 7).all() and cog.transform == grid.affine
