"""The GPU path's pieces that run on a CPU: half precision and the overlap of reads, model, writes and COGs.

- ``fp16``/``bf16`` run the network in half precision; the residual base and the consistency shift stay in
  float32, so every 4 × 4 block still averages to its input within 1 DN, and the deviation from ``fp32`` is
  bounded by the figures README gives (measured here on the demo's landscape).
- The in-process engine reads ahead and writes behind the model: its files equal the plain tile-by-tile
  pass's. ``enhance`` runs an item's tiles while the previous item's COGs are being made: a test that
  blocks the first item's COG building until the second item's tiles have started fails if it does not.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import rasterio

from stacsr import demo, pipeline, tiles
from stacsr.engine import LocalEngine
from stacsr.io.sink import TileSink
from stacsr.model.package import ModelError, Predictor, load
from stacsr.plumbing.timing import Timings
from tests.fixtures import rasters
from tests.test_consistency import block_mean, demo_ground, step_edges

SCALE = 4


@pytest.fixture(scope="module")
def package():
    return load("default")


@pytest.fixture(scope="module")
def fp32(package):
    image = demo_ground()
    return image, tiles.super_resolve(image, Predictor(package), 48, package.receptive_radius, SCALE)


@pytest.mark.parametrize(("precision", "mean_dn", "max_dn"), [("fp16", 0.5, 16), ("bf16", 3.0, 128)])
def test_half_precision_deviation_is_bounded_and_blocks_stay_consistent(package, fp32, precision, mean_dn, max_dn):
    image, reference = fp32
    half = tiles.super_resolve(image, Predictor(package, precision=precision), 48, package.receptive_radius, SCALE)
    deviation = np.abs(half.astype(np.int32) - reference.astype(np.int32))
    assert 0 < deviation.mean() <= mean_dn and deviation.max() <= max_dn, (deviation.mean(), deviation.max())
    assert np.abs(block_mean(half.astype(np.float64)) - image).max() <= 1.0
    edges = step_edges()
    out = tiles.super_resolve(edges, Predictor(package, precision=precision), 32, package.receptive_radius, SCALE)
    assert np.abs(block_mean(out.astype(np.float64)) - edges).max() <= 1.0


def test_unknown_precision_is_refused(package):
    with pytest.raises(ModelError, match="precision must be one of fp32, bf16, fp16"):
        Predictor(package, precision="fp8")


def write_input(path, image: np.ndarray) -> str:
    """``image`` as a 4-band 10 m GeoTIFF at ``path``."""
    return str(rasters.write_geotiff(path, image, rasterio.Affine(10, 0, 600000, 0, -10, 5300000), nodata=0))


def test_pipelined_engine_writes_what_the_plain_pass_computes(package, tmp_path):
    image = np.rint(demo.block_mean(demo.ground(seed=4), SCALE)).astype(np.uint16)[:, :200, :150]
    image[:, :40, :30] = 0  # tiles with no valid pixel are skipped and stay nodata
    src = write_input(tmp_path / "in.tif", image)
    timings = Timings()
    engine = LocalEngine(package, batch=2, timings=timings)
    pipeline.sr_file(str(src), tmp_path / "out.tif", package, engine, tile_size=32)
    with rasterio.open(tmp_path / "out.tif") as out:
        written = out.read()
    expected = tiles.super_resolve(image, Predictor(package), 32, package.receptive_radius, SCALE)
    assert np.array_equal(written, expected)
    assert set(timings.seconds) == {"read", "transfer", "model", "write", "cog"}


def test_ray_items_run_the_precision_asked_for(package, tmp_path, ray_local):
    from stacsr.engine import RayEngine

    image = np.rint(demo.block_mean(demo.ground(seed=6), SCALE)).astype(np.uint16)[:, :96, :96]
    src = write_input(tmp_path / "in.tif", image)
    outputs = {}
    for name, engine in (
        ("ray", RayEngine(package, precision="bf16")),
        ("local", LocalEngine(package, precision="bf16")),
        ("fp32", LocalEngine(package)),
    ):
        try:
            pipeline.sr_file(src, tmp_path / f"{name}.tif", package, engine, tile_size=48)
        finally:
            engine.close()
        with rasterio.open(tmp_path / f"{name}.tif") as out:
            outputs[name] = out.read()
    assert np.array_equal(outputs["ray"], outputs["local"]) and not np.array_equal(outputs["ray"], outputs["fp32"])


def test_enhance_runs_the_next_items_tiles_while_the_previous_items_cogs_are_made(package, tmp_path, monkeypatch):
    opened, second_started = [], threading.Event()
    open_, finish = TileSink.open, TileSink.finish

    def open_and_count(self):
        opened.append(self)
        if len(opened) == 2:
            second_started.set()
        return open_(self)

    def finish_after_the_next_item_started(self):
        if self is opened[0]:
            assert second_started.wait(60), "the second item's tiles did not start while the first one's COGs waited"
        return finish(self)

    monkeypatch.setattr(TileSink, "open", open_and_count)
    monkeypatch.setattr(TileSink, "finish", finish_after_the_next_item_started)
    items = demo.build_catalog(tmp_path / "source")
    report = pipeline.enhance(items, demo.demo_preset(), demo.BBOX, tmp_path / "out", package, LocalEngine(package), 64)
    assert len(report.items) == len(items) and second_started.is_set()


def test_cli_precision_option(tmp_path):
    from typer.testing import CliRunner

    from stacsr.cli import app

    image = np.rint(demo.block_mean(demo.ground(seed=4), SCALE)).astype(np.uint16)[:, :64, :64]
    src = write_input(tmp_path / "in.tif", image)
    bad = CliRunner().invoke(app, ["sr", str(src), str(tmp_path / "bad.tif"), "--no-ray", "--precision", "fp8"])
    assert bad.exit_code == 2 and "fp8" in bad.output and not (tmp_path / "bad.tif").exists()
    ok = CliRunner().invoke(app, ["sr", str(src), str(tmp_path / "half.tif"), "--no-ray", "--precision", "fp16"])
    assert ok.exit_code == 0, ok.output
    with rasterio.open(tmp_path / "half.tif") as out:
        assert np.abs(block_mean(out.read().astype(np.float64)) - image).max() <= 1.0


def test_model_workers_side_by_side_write_what_one_worker_writes(package, tmp_path):
    """Several model workers (a many-core CPU) finish tiles out of order; the COG is the same bit for bit."""
    image = np.rint(demo.block_mean(demo.ground(seed=7), SCALE)).astype(np.uint16)[:, :96, :80]
    src = write_input(tmp_path / "in.tif", image)
    one, three = LocalEngine(package, workers=1), LocalEngine(package, workers=3, threads=3)
    assert (one.workers, three.workers) == (1, 3)
    pipeline.sr_file(src, tmp_path / "one.tif", package, one, tile_size=16)
    pipeline.sr_file(src, tmp_path / "three.tif", package, three, tile_size=16)
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "three.tif") as b:
        assert np.array_equal(a.read(), b.read())
    assert LocalEngine(package, threads=16).workers == 4 and LocalEngine(package, threads=2).workers == 1
