"""The scripts written for a GPU machine (no GPU here): the default-model sweep scores exactly as
``stacsr evaluate`` does, and the GPU check runs end to end in its CPU dry-run mode."""

from __future__ import annotations

import copy
import importlib.util
import os
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


def sweep_module():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "jobs" / "default-model" / "gpu" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_gpu_check_dry_run_on_cpu():
    env = dict(os.environ, STACSR_CHECK_DEVICE="cpu")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "device" / "gpu_check.py")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed, 0 failed" in done.stdout and "FAIL" not in done.stdout
