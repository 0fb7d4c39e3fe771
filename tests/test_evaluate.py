"""stacsr evaluate: metrics on hand-computed inputs, Wald's protocol end to end, the CLI command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from typer.testing import CliRunner

from stacsr.cli import app
from stacsr.demo import block_mean, ground
from stacsr.evaluate import metrics as M
from stacsr.evaluate.report import Evaluation, evaluate_images
from stacsr.model.generator import Generator
from stacsr.model.package import load, save
from stacsr.pipeline import InputError
from tests.fixtures import rasters

SIZE = 256  # 10 m pixels per test image: 64 LR pixels, 92 HR pixels of border each side at radius 23


# ------------------------------------------------------------------ metrics


def flat(value: float, bands: int = 4, n: int = 16) -> np.ndarray:
    return np.full((bands, n, n), value, dtype=np.float64)


def test_psnr_of_a_known_mse():
    # 100 DN = 0.01 reflectance everywhere: MSE 1e-4, data range 1.0 → 40 dB
    assert M.psnr(flat(1100), flat(1000)) == pytest.approx(40.0)
    x = flat(1000)
    y = x.copy()
    y[0] += 200  # one band of four off by 0.02: MSE 1e-4 → 40 dB
    assert M.psnr(y, x) == pytest.approx(40.0)
    assert M.psnr(x, x) == math.inf
    assert math.isnan(M.psnr(x, y, np.zeros((16, 16), bool)))


def test_ssim_identical_and_constant_images():
    rng = np.random.default_rng(0)
    x = rng.uniform(100, 5000, (4, 32, 32))
    assert M.ssim(x, x) == pytest.approx(1.0)
    a, b, c1 = 0.1, 0.2, 0.01**2  # constant images: (2ab + C1) / (a² + b² + C1)
    assert M.ssim(flat(1000, n=20), flat(2000, n=20)) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    assert M.ssim(x, x + rng.normal(0, 2000, x.shape)) < 0.6
    with pytest.raises(ValueError):
        M.ssim(flat(1, n=8), flat(1, n=8))


def test_sam_orthogonal_and_parallel_spectra():
    x = np.zeros((2, 4, 4))
    y = np.zeros((2, 4, 4))
    x[0], y[1] = 1000, 3000
    assert M.sam(x, y) == pytest.approx(90.0)
    z = np.random.default_rng(1).uniform(100, 5000, (4, 8, 8))
    assert M.sam(z, 2 * z) == pytest.approx(0.0, abs=1e-4)
    # a 45° spectrum
    w = x.copy()
    w[1] = 1000
    assert M.sam(x, w) == pytest.approx(45.0)


def test_consistency():
    lr = np.random.default_rng(2).uniform(100, 5000, (4, 8, 8))
    sr = np.repeat(np.repeat(lr, 4, axis=1), 4, axis=2)
    assert M.consistency(sr, lr, 4) == pytest.approx(0.0, abs=1e-9)
    sr2 = sr.copy()
    sr2[:, ::4, ::4] += 160  # one pixel of each 4×4 block +160 DN → block mean +10 DN = 0.001
    assert M.consistency(sr2, lr, 4) == pytest.approx(0.001)


def test_border_and_nodata_are_left_out():
    rng = np.random.default_rng(3)
    hr = rng.uniform(500, 3000, (4, 40, 40))
    sr = hr + rng.normal(0, 30, hr.shape)
    bad = sr.copy()
    bad[:, :5] = 60000  # garbage inside the border
    bad[:, :, -5:] = 1
    hr_nd = hr.copy()
    hr_nd[2, 20, 20] = 0  # nodata in one band of the reference
    bad[:, 20, 20] = 9999
    mask = M.valid_mask(bad, hr_nd, border=5)
    assert mask.sum() == 30 * 30 - 1 and not mask[20, 20] and not mask[4].any() and mask[5, 5]
    inner = M.valid_mask(sr, hr, border=5)
    inner[20, 20] = False
    assert M.psnr(bad, hr_nd, mask) == pytest.approx(M.psnr(sr, hr, inner))
    assert M.sam(bad, hr_nd, mask) == pytest.approx(M.sam(sr, hr, inner))
    # SSIM: only windows wholly inside the mask
    assert M.ssim(bad, hr_nd, mask) == pytest.approx(M.ssim(sr, hr, mask))


def test_correctness_scores_and_bicubic():
    rng = np.random.default_rng(4)
    lr = rng.uniform(500, 3000, (4, 16, 16)).astype(np.float32)
    base = M.bicubic(lr, 4).astype(np.float64)
    hr = base + rng.normal(0, 300, base.shape)
    assert M.correctness(base, hr, base)["omission"] == 1.0
    assert M.correctness(hr, hr, base)["improvement"] == 1.0
    noisy = M.correctness(base + rng.normal(0, 3000, base.shape), hr, base)
    assert noisy["hallucination"] > 0.8
    s = M.correctness(0.5 * (base + hr), hr, base)
    assert s["improvement"] + s["omission"] + s["hallucination"] == pytest.approx(1.0)
    lr[:, 3, 5] = 0
    up = M.bicubic(lr, 4)
    assert up.dtype == np.uint16 and (up[:, 12:16, 20:24] == 0).all() and (up[:, :12] > 0).all()


# ------------------------------------------------------------------ Wald's protocol


@pytest.fixture(scope="module")
def world10() -> np.ndarray:
    return np.rint(block_mean(ground(), 4)).astype(np.uint16)  # 480 × 480 at 10 m


def write_tif(path: Path, data: np.ndarray) -> Path:
    return rasters.write_geotiff(path, data, Affine(10, 0, 680000, 0, -10, 5340000), nodata=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory, world10) -> Path:
    folder = tmp_path_factory.mktemp("s2")
    write_tif(folder / "a.tif", world10[:, :SIZE, :SIZE])
    b = world10[:, 200 : 200 + SIZE + 2, 180 : 180 + SIZE + 3].copy()  # not a multiple of 4: cropped
    b[:, :30, :30] = 0  # nodata corner
    write_tif(folder / "b.tif", b)
    return folder


@pytest.fixture(scope="module")
def bicubic_model(tmp_path_factory):
    """A model whose output is bicubic: the default architecture with its output convolution and x1/x2 heads
    zeroed (what the shipped model was before it was trained). Scores must then equal bicubic's."""
    from stacsr.model.generator import GeneratorConfig
    from stacsr.model.package import ModelCard

    config = GeneratorConfig(features=32, blocks=8, residual_bicubic=True)
    torch.manual_seed(0)
    g = Generator(config).eval()
    with torch.no_grad():
        for conv in [g.tail, *g.to_images]:
            conv.weight.zero_()
            conv.bias.zero_()
    card = ModelCard(
        "bicubic-equivalent", "0", ["B02", "B03", "B04", "B08"], ["blue", "green", "red", "nir"], config.to_dict()
    )
    return save(card, g, tmp_path_factory.mktemp("bicubic"))


def test_wald_bicubic_equivalent_model_scores_as_bicubic(images, tmp_path, bicubic_model):
    package = bicubic_model
    result = evaluate_images(images, package, out=tmp_path / "report")
    assert isinstance(result, Evaluation) and result.border == package.receptive_radius
    pairs = [(r.image, r.degradation) for r in result.results]
    assert pairs == [("a", "area"), ("a", "mtf"), ("b", "area"), ("b", "mtf")]
    for r in result.results:
        assert abs(r.delta_psnr) < 0.05, r
        assert abs(r.model.ssim - r.bicubic.ssim) < 1e-3 and abs(r.model.sam - r.bicubic.sam) < 0.01
        assert r.model.psnr > 30 and 0 < r.model.ssim <= 1 and r.model.consistency < 0.002
        assert r.bicubic.omission == 1.0 and r.pixels > 0
        assert Path(r.figure).is_file()
    avg = result.averages()
    assert set(avg) == {"area", "mtf"} and abs(avg["mtf"]["model"].psnr - avg["mtf"]["bicubic"].psnr) < 0.05
    # the MTF-like blur loses more than the block mean
    assert avg["mtf"]["bicubic"].psnr < avg["area"]["bicubic"].psnr
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert data["model"] == package.ref and len(data["results"]) == 4
    assert set(data["averages"]["area"]) >= {"model", "bicubic", "delta_psnr", "images"}
    assert set(data["results"][0]["model"]) == {
        "psnr",
        "ssim",
        "sam",
        "consistency",
        "improvement",
        "omission",
        "hallucination",
    }
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["a_area.png", "a_mtf.png", "b_area.png", "b_mtf.png"]
    from PIL import Image

    with Image.open(tmp_path / "report" / "a_area.png") as im:
        assert im.size == (4 * SIZE + 3 * 8, SIZE)


def test_a_bad_model_scores_worse_than_bicubic(images, tmp_path, bicubic_model):
    default = bicubic_model  # its architecture without the consistency step, random weights below
    torch.manual_seed(1)
    bad = save(default.card, Generator(default.card.config), tmp_path / "bad")  # random weights, non-zero tail
    assert bad.generator.tail.weight.abs().sum() > 0
    result = evaluate_images(images / "a.tif", bad, degradations=("area",))
    (r,) = result.results
    assert r.delta_psnr < -3 and r.model.ssim < r.bicubic.ssim and r.model.sam > r.bicubic.sam
    assert r.model.consistency > r.bicubic.consistency
    assert r.model.improvement < 0.5 and result.metrics_path is None


def test_bad_inputs(images, tmp_path):
    package = load("default")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no GeoTIFF"):
        evaluate_images(tmp_path / "empty", package)
    with pytest.raises(InputError, match="3 bands"):
        evaluate_images(write_tif(tmp_path / "rgb.tif", np.ones((3, 64, 64), np.uint16)), package)
    with pytest.raises(InputError, match="uint16"):
        evaluate_images(write_tif(tmp_path / "f.tif", np.ones((4, 64, 64), np.float32)), package)
    with pytest.raises(InputError, match="degradation"):
        evaluate_images(images, package, degradations=("gauss",))
    with pytest.raises(InputError, match="protocol"):
        evaluate_images(images, package, protocol="cross")
    with pytest.raises(InputError, match="no pixel left"):
        evaluate_images(write_tif(tmp_path / "small.tif", np.full((4, 64, 64), 500, np.uint16)), package)


# ------------------------------------------------------------------ CLI


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_cli_evaluate(images, tmp_path):
    out = tmp_path / "report"
    result = cli(
        "evaluate", "--model", "default", "--images", images / "a.tif", "--degradation", "mtf", "--out", out, "--no-ray"
    )
    assert result.exit_code == 0, result.output
    assert "average" in result.stdout and "mtf" in result.stdout and "PSNR" in result.stdout
    assert (out / "metrics.json").is_file() and (out / "a_mtf.png").is_file()


@pytest.mark.parametrize("case", ["empty", "bands", "dtype", "both"])
def test_cli_evaluate_fails_cleanly(case, tmp_path, images):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {
        "empty": ["--images", empty],
        "bands": ["--images", write_tif(tmp_path / "rgb.tif", np.ones((3, 64, 64), np.uint16))],
        "dtype": ["--images", write_tif(tmp_path / "f.tif", np.ones((4, 64, 64), np.float32))],
        "both": ["--images", images, "--pairs", tmp_path / "p.parquet"],
    }[case]
    result = cli("evaluate", *args, "--out", tmp_path / "report", "--no-ray")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------ pairs


def test_evaluate_pairs_of_a_wald_manifest(tmp_path, bicubic_model):
    from stacsr import demo
    from stacsr.evaluate.report import evaluate_pairs
    from stacsr.train import pairs_wald as P

    items = demo.build_catalog(tmp_path / "source")[:1]  # local COGs, no signing
    preset = demo.demo_preset()
    table = P.build_wald_manifest(items, preset, items[0]["bbox"], 2, 128, 4, min_valid=1.0)
    package = bicubic_model
    with pytest.raises(InputError, match="no pixel left"):  # 32 LR pixels < two receptive radii
        evaluate_pairs(table, package, preset)
    result = evaluate_pairs(table, package, preset, degradations=("mtf",), out=tmp_path / "rep", border=8)
    assert result.protocol == "pairs:wald" and len(result.results) == 2
    for r in result.results:
        assert r.degradation == "mtf" and abs(r.delta_psnr) < 0.05 and r.pixels == (128 - 2 * 32) ** 2
        assert Path(r.figure).is_file()
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["border_lr_pixels"] == 8


def test_shipped_default_model_is_trained_consistent_small_and_beats_bicubic(images):
    """The shipped model (README: how it was trained, its real-data scores): trained, exact reflectance
    consistency, a few MB, and sharper than bicubic on the demo's synthetic ground it never saw."""
    package = load("default")
    card = package.card
    assert card.provenance["trained"] is True and card.config.consistent and card.scale == 4
    assert card.bands == ["B02", "B03", "B04", "B08"] and "Validated on" in card.provenance["description"]
    weights = Path(__file__).resolve().parent.parent / "stacsr" / "model" / "default" / "weights.safetensors"
    assert weights.stat().st_size < 5 * 2**20
    avg = evaluate_images(images / "a.tif", package).averages()
    for kind in ("area", "mtf"):
        assert avg[kind]["model"].psnr > avg[kind]["bicubic"].psnr + 0.1, kind
        assert avg[kind]["model"].consistency <= min(0.0005, avg[kind]["bicubic"].consistency / 10), kind
