"""The default model's scripts: the sweep (written for a GPU machine) scores exactly as ``stacsr evaluate``
does and builds its variants' data as documented, the GPU check runs end to end in its CPU dry-run mode, and
``rgbn_from_rgb.py`` makes a 4-band training image from an RGB one."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch

from stacsr.evaluate.report import evaluate_images
from stacsr.model.package import load
from tests.test_evaluate import images, world10  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def script(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "jobs" / "default-model" / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def sweep_module():
    return script("gpu/sweep.py", "sweep")


def test_sweep_scores_like_stacsr_evaluate(images):  # noqa: F811
    sweep, package = sweep_module(), load("default")
    with rasterio.open(images / "a.tif") as src:
        hr = src.read()
    got = sweep.evaluate(copy.deepcopy(package.generator), [hr], torch.device("cpu"))
    want = evaluate_images(images / "a.tif", package, border=sweep.BORDER).averages()
    for kind in ("area", "mtf"):
        for method in ("model", "bicubic"):
            np.testing.assert_allclose(got[kind][f"{method}_psnr"], want[kind][method].psnr, atol=1e-5)
            np.testing.assert_allclose(got[kind][f"{method}_sam"], want[kind][method].sam, atol=1e-5)
    windows = sweep.Windows([hr], torch.device("cpu"))  # the lattice of `stacsr pairs --stride 4`
    assert len(windows.index) == ((hr.shape[1] - 48) // 4 + 1) * ((hr.shape[2] - 48) // 4 + 1)
    lr, batch = sweep.make_pairs(windows.sample(5, torch.Generator().manual_seed(0)), (0.0, 2.0), torch.Generator())
    assert lr.shape == (5, 4, 12, 12) and batch.shape == (5, 4, 48, 48)


def test_sweep_variants_build_the_documented_data():
    sweep = sweep_module()
    assert all(n in sweep.VARIANTS for names in sweep.SWEEPS.values() for n in names)
    rng = np.random.default_rng(0)
    files = {
        "train/000/a": rng.integers(1, 5000, (4, 96, 96)).astype(np.uint16),
        "train/001/b": rng.integers(1, 5000, (4, 64, 64)).astype(np.uint16),
        "urban/000/c": rng.integers(1, 5000, (4, 80, 56)).astype(np.uint16),
        "val/000/d": rng.integers(1, 5000, (4, 64, 64)).astype(np.uint16),
    }
    cpu = torch.device("cpu")
    lattice = lambda rows, cols, st=4: ((rows - 48) // st + 1) * ((cols - 48) // st + 1)  # noqa: E731
    base = lattice(96, 96) + lattice(64, 64)
    assert len(sweep.training_windows(files, sweep.VARIANTS["base-12k"], cpu).index) == base
    assert len(sweep.training_windows(files, sweep.VARIANTS["urban1"], cpu).index) == base + lattice(80, 56)
    assert len(sweep.training_windows(files, sweep.VARIANTS["urban1-st8"], cpu).index) == base + lattice(80, 56, 8)
    half = sweep.training_windows(files, sweep.VARIANTS["half-scale"], cpu)  # only a's half is ≥ 48 px
    assert len(half.index) == base + lattice(48, 48)
    np.testing.assert_allclose(
        half.images[2].numpy(), files["train/000/a"].reshape(4, 48, 2, 48, 2).mean((2, 4)), atol=0.5
    )


def test_check_sr_scores_the_cli_as_stacsr_evaluate_scores_the_model(images, tmp_path):  # noqa: F811
    """``check_sr.py`` runs ``stacsr sr`` itself: its figures are ``stacsr evaluate``'s, so the CLI's output
    is the evaluated one."""
    module = script("check_sr.py", "check_sr")
    got = module.check([str(images / "a.tif")], tmp_path)
    want = evaluate_images(images / "a.tif", load("default"), border=module.BORDER).averages()
    for kind in ("area", "mtf"):
        assert got[kind].shape == (1, 3)
        np.testing.assert_allclose(got[kind][0, 0], want[kind]["model"].psnr - want[kind]["bicubic"].psnr, atol=1e-6)
        np.testing.assert_allclose(got[kind][0, 1:], [want[kind]["model"].sam, want[kind]["bicubic"].sam], atol=1e-6)
    assert got["mtf"][0, 0] > 0.1  # and the default model beats bicubic there


def test_rgbn_from_rgb_synthesises_b08_as_the_visible_mean(tmp_path):
    module = script("rgbn_from_rgb.py", "rgbn_from_rgb")
    rgb = np.stack([np.full((8, 6), v, np.float32) for v in (300.0, 600.0, 1200.0)])
    rgb[0, 0, 0] = -150.0  # dark pixel below 0 after the BOA offset
    src = tmp_path / "rgb.tif"
    profile = {
        "driver": "GTiff",
        "width": 6,
        "height": 8,
        "count": 3,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": rasterio.Affine(10, 0, 400000, 0, -10, 5800000),
    }
    with rasterio.open(src, "w", **profile) as d:
        d.write(rgb)
        d.descriptions = ("B02", "B03", "B04")
    out = module.convert(src, tmp_path / "out" / "rgbn.tif")
    with rasterio.open(out) as d:
        data, names, crs, transform = d.read(), d.descriptions, d.crs, d.transform
    assert names == ("B02", "B03", "B04", "B08") and data.dtype == np.uint16 and crs.to_epsg() == 32633
    assert transform == profile["transform"]
    assert data[0, 0, 0] == 1 and data[3, 1, 1] == 700 and data[3, 0, 0] == round((1 + 600 + 1200) / 3)


def test_gpu_check_dry_run_on_cpu():
    env = dict(os.environ, STACSR_CHECK_DEVICE="cpu")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "device" / "gpu_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed, 0 failed" in done.stdout and "FAIL" not in done.stdout


def test_whole_tile_device_scripts_parse_and_name_what_exists():
    """The prepared GPU-machine run (fetch the wheels here, run the benchmarks there): valid bash, and every
    benchmark module and script it names is in the repository."""
    for name in ("fetch_wheels.sh", "tile_bench.sh", "tile_sizes.sh"):
        script = ROOT / "tests" / "device" / name
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    text = "".join((ROOT / "tests" / "device" / n).read_text() for n in ("tile_bench.sh", "tile_sizes.sh"))
    modules = re.findall(r"python3 -m (tests\.\w+)", text)
    assert set(modules) == {"tests.bench_tile", "tests.bench_sink"}
    assert all((ROOT / (m.replace(".", "/") + ".py")).is_file() for m in modules)
    assert (ROOT / "tests" / "device" / "gpu_check.py").is_file() and "tests/device/gpu_check.py" in text
