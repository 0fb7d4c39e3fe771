"""Local GeoTIFFs as training and evaluation data: scenes of single dates and time stacks, wald manifests from
images (read back pixel for pixel), the mixed degradation, the learning-rate schedule and augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from typer.testing import CliRunner

from stacsr.catalog.presets import PRESETS
from stacsr.cli import app
from stacsr.io.read import ReadError, scenes
from stacsr.train import degrade as D
from stacsr.train.config import OptimiserSection, from_dict
from stacsr.train.data import read_pair
from stacsr.train.loop import augment
from stacsr.train.manifest import PairsError, read_manifest
from stacsr.train.pairs_images import build_image_manifest
from tests.fixtures import rasters

BANDS = ("B02", "B03", "B04", "B08")
ORIGIN = Affine(10, 0, 600000, 0, -10, 5700000)


def write(path: Path, data: np.ndarray, names: list[str] | None) -> Path:
    return rasters.write_geotiff(path, data, ORIGIN, "EPSG:32631", names)


def field(seed: int, bands: int, n: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 5000, (bands, n, n)).astype(np.uint16)


@pytest.fixture()
def stack(tmp_path) -> tuple[Path, np.ndarray]:
    data = field(1, 8)
    names = [f"{d}_{b}" for d in ("2024-05-01", "2024-06-01") for b in ("B04", "B03", "B02", "B08")]
    return write(tmp_path / "stack.tif", data, names), data


def test_scenes_of_single_dates_stacks_and_unnamed_files(tmp_path, stack):
    path, data = stack
    found = scenes(path, BANDS)
    assert [s.name for s in found] == ["stack_2024-05-01", "stack_2024-06-01"]
    assert found[1].indexes == (7, 6, 5, 8) and found[1].date == "2024-06-01"  # model order, not file order
    with rasterio.open(found[1].href) as src:
        assert np.array_equal(src.read(), data[[6, 5, 4, 7]])
    single = write(tmp_path / "one.tif", field(2, 4), ["B08", "B02", "B03", "B04"])
    assert scenes(single, BANDS)[0].indexes == (2, 3, 4, 1)
    assert scenes(write(tmp_path / "plain.tif", field(3, 4), None), BANDS)[0].indexes == (1, 2, 3, 4)
    with pytest.raises(ReadError, match="no scene with bands B02, B03, B04, B08"):
        scenes(write(tmp_path / "rgb.tif", field(4, 3), ["B02", "B03", "B04"]), BANDS)
    with pytest.raises(ReadError, match="3 unnamed bands"):
        scenes(write(tmp_path / "rgb0.tif", field(4, 3), None), BANDS)


def test_image_manifest_rows_read_back_the_file_pixels(tmp_path, stack):
    path, data = stack
    data[:, :8, :8] = 0  # nodata corner: no window may touch it (min_valid 1.0)
    write(path, data, [f"{d}_{b}" for d in ("2024-05-01", "2024-06-01") for b in ("B04", "B03", "B02", "B08")])
    table = build_image_manifest([path], patches=50, patch_size=16, scale=4, seed=3, min_valid=1.0, stride=4)
    rows = table.to_pylist()
    assert {r["item_id"] for r in rows} == {"stack_2024-05-01", "stack_2024-06-01"}
    assert all(r["row"] >= 8 or r["col"] >= 8 for r in rows)
    assert build_image_manifest([path], 50, 16, 4, seed=3, min_valid=1.0, stride=4).equals(table)  # deterministic
    row = next(r for r in rows if r["item_id"] == "stack_2024-06-01")
    assert row["datetime"].isoformat().startswith("2024-06-01")
    assert tuple(row["transform"]) == tuple(ORIGIN)[:6] and row["epsg"] == 32631
    lr, hr = read_pair(row, PRESETS["planetary-computer"], "area")  # hrefs are local: nothing to sign
    r0, c0 = row["row"], row["col"]
    assert np.array_equal(hr, data[[6, 5, 4, 7], r0 : r0 + 16, c0 : c0 + 16].astype(np.float32))
    assert np.allclose(lr, D.area(hr, 4))
    with pytest.raises(PairsError, match="manifest would be empty"):
        build_image_manifest([path], patches=5, patch_size=48, scale=4)
    with pytest.raises(PairsError, match="no scene with bands"):
        build_image_manifest([write(tmp_path / "rgb.tif", field(4, 3), ["B02", "B03", "B04"])], 5, 16, 4)


def test_cli_pairs_from_images(tmp_path, stack):
    path, _ = stack
    out = tmp_path / "pairs.parquet"
    result = CliRunner().invoke(
        app,
        [
            "pairs",
            "--images",
            str(path.parent),
            "--patch-size",
            "16",
            "--stride",
            "8",
            "--patches",
            "6",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_manifest(out).num_rows == 6
    bad = CliRunner().invoke(app, ["pairs", "--images", str(path), "--bbox", "0", "0", "1", "1", "--out", str(out)])
    assert bad.exit_code == 1 and "leave out --bbox" in bad.output


def test_mixed_degradation_draws_sharp_and_blurred_inputs():
    hr = field(5, 4, 32).astype(np.float32)
    rng = np.random.default_rng(0)
    outs = [D.degrade(hr, 4, "mixed", rng=rng) for _ in range(40)]
    area, blurred = D.area(hr, 4), D.mtf(hr, 4, 1.0)
    n_area = sum(np.array_equal(o, area) for o in outs)
    assert 0 < n_area < 40  # σ < 0.25 of [0, 2]: about one draw in eight
    assert any(not np.array_equal(o, area) for o in outs)
    again = [D.degrade(hr, 4, "mixed", rng=np.random.default_rng(0)) for _ in range(2)]
    assert np.array_equal(again[0], again[1]) and np.array_equal(again[0], outs[0])
    assert not np.array_equal(blurred, area)
    with pytest.raises(ValueError, match="mixed"):
        D.degrade(hr, 4, "gauss")


def test_learning_rate_schedule():
    cosine = OptimiserSection(schedule="cosine", warmup_steps=10, final_lr_ratio=0.1)
    assert cosine.factor(0, 110) == pytest.approx(0.1) and cosine.factor(9, 110) == pytest.approx(1.0)
    assert cosine.factor(10, 110) == pytest.approx(1.0)
    assert cosine.factor(109, 110) == pytest.approx(0.1)
    assert cosine.factor(60, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert OptimiserSection().factor(5000, 10) == 1.0
    with pytest.raises(ValueError, match="optimiser.schedule"):
        from_dict({"optimiser": {"schedule": "step"}})
    with pytest.raises(ValueError, match="augment.gain"):
        from_dict({"augment": {"gain": 1.5}})
    with pytest.raises(ValueError, match=r"degradation.sigma_min: must be in \[0, 4/3 × sigma = 2\]"):
        from_dict({"degradation": {"kind": "mixed", "sigma_min": 2.5}})


def test_augmentation_keeps_pairs_aligned():
    torch.manual_seed(0)
    hr = torch.from_numpy(field(6, 4, 16).astype(np.float32))[None].repeat(8, 1, 1, 1)
    hr[:, :, :4, :4] = 0
    lr = D.area(hr, 4)
    seen = set()
    for _ in range(30):
        a_lr, a_hr = augment(lr, hr, dihedral=True, gain=0.2)
        assert torch.allclose(D.area(a_hr, 4), a_lr, rtol=1e-5, atol=1e-2)  # still LR = degrade(HR)
        assert int((a_hr == 0).sum()) == int((hr == 0).sum())  # nodata stays nodata
        seen.add(tuple(a_hr[0, 0, :, 0].tolist()[:3]))
    assert len(seen) > 4  # several of the 8 transforms (and gains) were drawn
    same_lr, same_hr = augment(lr, hr, dihedral=False, gain=0.0)
    assert same_lr is lr and same_hr is hr


def test_evaluate_scores_every_date_of_a_time_stack(tmp_path):
    from stacsr.demo import block_mean, ground
    from stacsr.evaluate.report import evaluate_images
    from stacsr.model.package import load

    world = np.rint(block_mean(ground(), 4)).astype(np.uint16)[:, :128, :128]
    names = [f"{d}_{b}" for d in ("2024-05-01", "2024-06-01") for b in BANDS]
    path = write(tmp_path / "stack.tif", np.concatenate([world, world[:, ::-1].copy()]), names)
    result = evaluate_images([path], load("default"), degradations=("area",), border=2)
    assert [r.image for r in result.results] == ["stack_2024-05-01", "stack_2024-06-01"]
    assert all(r.pixels == (128 - 16) ** 2 for r in result.results)  # border 2 LR = 8 HR pixels per side
