"""Reading Wald pairs (stacsr.train.data) and the degradations (stacsr.train.degrade).

Pixels come from the demo's Planetary-Computer-style items on the blob server, which refuses unsigned
requests; hrefs are signed at read time through the SAS stand-in. The ground truth behind every pixel is
known (tests/fixtures/scenes.py: ``truth``), so radiometry and alignment are checked exactly.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from stacsr.catalog.presets import PRESETS
from stacsr.io.read import ReadError
from stacsr.train import data as T
from stacsr.train import degrade as D
from stacsr.train import manifest as P
from stacsr.train import pairs_wald as W
from tests.fixtures import scenes as SC
from tests.fixtures.services import planetary_computer_stand_in

AOI = SC.world_bbox(172, 172, 308, 308)
PATCH, SCALE = 32, 4


def make_sign(sas_url: str, blob_url: str):
    """A picklable signer for Ray workers too: it carries the SAS endpoint, signs, and points hrefs at the
    blob server (what a real run does with ``planetary_computer.sign`` alone)."""

    def sign(item):
        import os
        import re

        import planetary_computer
        from planetary_computer.settings import Settings

        if os.environ.get("PC_SDK_SAS_URL") != sas_url:  # a Ray worker: point it at the stand-in once
            os.environ["PC_SDK_SAS_URL"] = sas_url
            Settings.get.cache_clear()
        signed = planetary_computer.sign(item)
        for asset in signed["assets"].values():
            asset["href"] = re.sub(
                r"^https://([^./]+)\.blob\.core\.windows\.net/", rf"{blob_url}/blob/\1/", asset["href"]
            )
        return signed

    return sign


@pytest.fixture(scope="module")
def setup(blob_server):
    """Scenes on the blob server and a manifest of 6 patches (3 per item), built with real signing."""
    scenes = SC.make_scenes(blob_server, "planetary-computer")
    preset = replace(PRESETS["planetary-computer"], sign=make_sign(blob_server.sas_url, blob_server.url))
    with planetary_computer_stand_in(blob_server.sas_url):
        table = W.build_wald_manifest(scenes.items, preset, AOI, 6, PATCH, SCALE, seed=5, min_valid=1.0)
    return scenes, preset, table


@pytest.fixture
def rows(setup, pc_stand_in):
    return setup[2].to_pylist()


def truth(row) -> np.ndarray:
    r, c = row["row"], row["col"]
    return SC.truth(row["item_id"], slice(r, r + PATCH), slice(c, c + PATCH)).astype(np.float32)


def hf_energy(x: np.ndarray) -> float:
    """Mean squared difference of neighbouring pixels: high-frequency energy."""
    return float((np.diff(x, axis=-1) ** 2).mean() + (np.diff(x, axis=-2) ** 2).mean())


# ------------------------------------------------------------------ degradations


def test_area_is_the_block_mean_and_propagates_nodata():
    rng = np.random.default_rng(0)
    hr = rng.integers(1, 5000, (3, 8, 8)).astype(np.float32)
    hr[1, 0, 1] = 0  # nodata in one band of the first block
    lr = D.area(hr, 4)
    expected = hr.reshape(3, 2, 4, 2, 4).mean(axis=(2, 4))
    assert lr.dtype == np.float32 and lr.shape == (3, 2, 2)
    assert (lr[:, 0, 0] == 0).all()  # every band of that block
    np.testing.assert_allclose(lr[:, 1:, :].ravel(), expected[:, 1:, :].ravel(), rtol=1e-6)
    torch_lr = D.area(torch.from_numpy(hr), 4)
    np.testing.assert_allclose(torch_lr.numpy(), lr, rtol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of the scale"):
        D.area(hr[:, :6], 4)


def test_mixed_batch_blurs_each_sample_with_a_fresh_sigma():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(6, 4, 48, 48, generator=g) * 3000 + 100
    hr[0, :, :5, :5] = 0  # nodata
    sigmas = [0.0, 0.2, D.MIN_SIGMA, 1.0, 1.5, 2.0]
    each = D.blur_each(hr, sigmas)
    for i, s in enumerate(sigmas):  # batched = one sample at a time; σ < MIN_SIGMA = no blur
        ref = D.blur(hr[i], s) if s >= D.MIN_SIGMA else hr[i]
        torch.testing.assert_close(each[i], ref, rtol=0, atol=1e-3)
    lr = D.mixed_batch(hr, 4, 1.5, generator=torch.Generator().manual_seed(1))
    drawn = D.mixed_sigmas(6, 1.5, generator=torch.Generator().manual_seed(1))
    assert all(0 <= s <= 2.0 for s in drawn) and len(set(drawn)) == 6
    for i, s in enumerate(drawn):
        ref = D.degrade(hr[i].numpy(), 4, "mtf" if s >= D.MIN_SIGMA else "area", sigma=s)
        np.testing.assert_allclose(lr[i].numpy(), ref, rtol=1e-5, atol=1e-3)
    assert (lr[0, :, 0, 0] == 0).all() and (lr[0, :, 2, 2] > 0).all()
    again = D.mixed_batch(hr, 4, 1.5, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(again, lr)  # another step, other blurs for the same patches
    with pytest.raises(ValueError, match="3 sigmas for a batch of 6"):
        D.blur_each(hr, [1.0, 1.0, 1.0])


def test_mixed_sigma_min_leaves_out_the_sharpest_inputs():
    g = torch.Generator().manual_seed(0)
    drawn = D.mixed_sigmas(2000, 1.5, generator=g, sigma_min=0.5)
    assert min(drawn) >= 0.5 and max(drawn) <= 2.0 and min(drawn) < 0.55 and max(drawn) > 1.95
    everything = D.mixed_sigmas(2000, 1.5, generator=torch.Generator().manual_seed(0))
    assert min(everything) < 0.01  # the default still reaches sharp block means
    hr = torch.rand(4, 4, 48, 48, generator=g) * 3000 + 100
    lr = D.mixed_batch(hr, 4, 1.5, generator=torch.Generator().manual_seed(3), sigma_min=0.5)
    want = D.mixed_sigmas(4, 1.5, generator=torch.Generator().manual_seed(3), sigma_min=0.5)
    for i, s in enumerate(want):
        np.testing.assert_allclose(lr[i].numpy(), D.mtf(hr[i].numpy(), 4, s), rtol=1e-5, atol=1e-3)
    rng = np.random.default_rng(0)  # the dataset-side (numpy) draw honours it too
    area = D.area(hr[0].numpy(), 4)
    assert not any(
        np.array_equal(D.degrade(hr[0].numpy(), 4, "mixed", rng=rng, sigma_min=1.0), area) for _ in range(30)
    )


def test_mtf_keeps_flat_ground_blurs_edges_and_handles_nodata():
    flat = np.full((2, 16, 16), 1234.0, dtype=np.float32)
    np.testing.assert_allclose(D.mtf(flat, 4), np.full((2, 4, 4), 1234.0), rtol=1e-5)
    edge = np.ones((1, 16, 16), np.float32) * 100
    edge[:, :, 8:] = 3000
    assert D.mtf(edge, 4)[0, 0, 1] > D.area(edge, 4)[0, 0, 1]  # light spills across the edge
    holed = flat.copy()
    holed[:, 5, 5] = 0
    lr = D.mtf(holed, 4)
    assert (lr[:, 1, 1] == 0).all() and (lr[:, 0, 0] > 0).all()
    np.testing.assert_allclose(lr[:, 0, 0], 1234.0, rtol=1e-5)  # normalised: zeros do not darken neighbours
    np.testing.assert_allclose(D.mtf(torch.from_numpy(holed), 4).numpy(), lr, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown degradation"):
        D.degrade(flat, 4, "bicubic")


def test_noise_keeps_nodata_and_is_reproducible():
    lr = np.full((2, 64, 64), 500.0, np.float32)
    lr[:, 0, 0] = 0
    a = D.noise(lr, 20, np.random.default_rng(1))
    b = D.noise(lr, 20, np.random.default_rng(1))
    assert (a == b).all() and (a[:, 0, 0] == 0).all() and (a[:, 1:, :] >= 1).all()
    assert 18 < float((a[:, 1:, :] - 500).std()) < 22
    assert D.noise(lr, 0) is lr


# ------------------------------------------------------------------ read_pair


def test_read_pair_alignment_radiometry_and_area(setup, rows):
    scenes, preset, _ = setup
    for row in rows:
        lr, hr = T.read_pair(row, preset)
        assert lr.dtype == hr.dtype == np.float32
        assert hr.shape == (4, PATCH, PATCH) and lr.shape == (4, PATCH // SCALE, PATCH // SCALE)
        np.testing.assert_array_equal(hr, truth(row))  # radiometry: baseline 05.10's +1000 removed
        np.testing.assert_array_equal(lr, D.area(hr, SCALE))
        np.testing.assert_allclose(lr, truth(row).reshape(4, 8, 4, 8, 4).mean(axis=(2, 4)), rtol=1e-6)
        lr_grid, hr_grid = T.pair_grids(row)
        assert tuple(lr_grid.boundingbox) == tuple(hr_grid.boundingbox)  # same footprint, exactly
        assert lr_grid.affine.a == SCALE * hr_grid.affine.a == 40.0
        a = scenes.item(row["item_id"])["assets"]["B02"]["proj:transform"]
        assert (hr_grid.affine.c, hr_grid.affine.f) == (a[2] + 10 * row["col"], a[5] - 10 * row["row"])
    assert {r["item_id"] for r in rows} == {SC.NEW, SC.OLD}


def test_mtf_lowers_high_frequencies(setup, rows):
    preset = setup[1]
    for row in rows[:2]:
        lr_area, hr = T.read_pair(row, preset, "area")
        lr_mtf, hr2 = T.read_pair(row, preset, "mtf", sigma=1.5)
        np.testing.assert_array_equal(hr, hr2)
        assert hf_energy(lr_mtf) < 0.9 * hf_energy(lr_area)
        assert abs(lr_mtf.mean() - lr_area.mean()) < 0.02 * lr_area.mean()  # radiometry preserved
        lr_noisy, _ = T.read_pair(row, preset, "area", noise_std=30, rng=np.random.default_rng(0))
        assert 20 < float((lr_noisy - lr_area).std()) < 40


def test_reads_are_signed_at_read_time_and_errors_are_redacted(setup, rows, blob_server):
    scenes, preset, table = setup
    blob_server.clear_requests()
    T.read_pair(rows[0], preset)
    reqs = blob_server.requests
    assert any(r.path.startswith("/sas/token/") for r in reqs)  # fresh token: caches were cleared
    assert all(r.status in (200, 206) for r in reqs if r.path.startswith("/blob/"))
    assert any(r.status == 206 and r.range for r in reqs if r.path.startswith("/blob/"))
    unsigned = replace(preset, sign=lambda item: blob_server.rewrite_item(dict(item)))
    with pytest.raises(ReadError, match="cannot read B02 of item") as e:
        T.read_pair(rows[0], unsigned)
    missing = dict(rows[0], hrefs=rows[0]["hrefs"].replace("/B02.tif", "/B02-missing.tif"))
    with pytest.raises(ReadError, match="B02-missing.tif") as e2:
        T.read_pair(missing, preset)
    for text in (str(e.value), str(e2.value)):
        assert "sig=" not in text and "?" not in text and blob_server.secret not in text


def test_cache_avoids_a_second_remote_read(setup, rows, blob_server, tmp_path):
    preset = setup[1]
    first = [T.read_pair(r, preset, cache_dir=tmp_path) for r in rows[:3]]
    assert len(list(tmp_path.glob("*.npz"))) == 3
    blob_server.clear_requests()
    again = [T.read_pair(r, preset, cache_dir=tmp_path) for r in rows[:3]]
    assert blob_server.requests == []
    for (lr1, hr1), (lr2, hr2) in zip(first, again):
        np.testing.assert_array_equal(hr1, hr2)
        np.testing.assert_array_equal(lr1, lr2)
    moved = dict(rows[0], col=rows[0]["col"] + 1)  # another window: another cache entry
    assert W.cache_path(tmp_path, moved) != W.cache_path(tmp_path, rows[0])


def test_band_mismatch_and_bad_rows(setup, rows):
    preset = setup[1]
    with pytest.raises(P.PairsError, match="band mismatch: the manifest has B02, B03, B04, B08 but the model"):
        T.read_pair(rows[0], preset, bands=("B02", "B03", "B04"))
    hrefs = json.loads(rows[0]["hrefs"])
    del hrefs["B08"]
    with pytest.raises(P.PairsError, match="band mismatch between its bands"):
        T.read_pair(dict(rows[0], hrefs=json.dumps(hrefs)), preset)
    with pytest.raises(P.PairsError, match=r"band mismatch between LR \(3 bands\) and HR \(4 bands\)"):
        T.check_pair(np.zeros((3, 8, 8)), np.zeros((4, 32, 32)), rows[0])
    with pytest.raises(P.PairsError, match="do not match the grids"):
        T.check_pair(np.zeros((4, 16, 16)), np.zeros((4, 32, 32)), rows[0])
    with pytest.raises(P.PairsError, match="unsupported kind 'spot'"):
        T.read_pair(dict(rows[0], kind="spot"), preset)
    with pytest.raises(P.PairsError, match="unknown degradation"):
        T.read_pair(rows[0], preset, "bicubic")
    shifted = dict(rows[0], transform=[10.0, 0.0, rows[0]["transform"][2] + 5, 0.0, -10.0, rows[0]["transform"][5]])
    with pytest.raises(P.PairsError, match="not on the manifest's grid"):
        T.read_pair(shifted, preset)


# ------------------------------------------------------------------ Ray Data


def test_pair_dataset_shapes_cache_and_errors(setup, ray_local, pc_stand_in, tmp_path):
    scenes, preset, table = setup
    path = P.write_manifest(table, tmp_path / "pairs.parquet")
    cache = tmp_path / "cache"
    ds = T.pair_dataset(path, preset, "mtf", cache_dir=cache, bands=("B02", "B03", "B04", "B08"), rows_per_block=2)
    got = {r["id"]: r for r in ds.take_all()}
    assert sorted(got) == sorted(table.column("id").to_pylist())
    for row in table.to_pylist():
        r = got[row["id"]]
        assert r["lr"].shape == (4, 8, 8) and r["hr"].shape == (4, 32, 32) and r["lr"].dtype == np.float32
        np.testing.assert_array_equal(r["hr"], truth(row))
    assert len(list(cache.glob("*.npz"))) == table.num_rows
    pc_stand_in.clear_requests()  # a second epoch / run: everything from the cache
    batches = list(T.pair_dataset(path, preset, cache_dir=cache, rows_per_block=3).iter_batches(batch_size=6))
    assert sum(len(b["id"]) for b in batches) == 6 and batches[0]["lr"].shape[1:] == (4, 8, 8)
    assert [r for r in pc_stand_in.requests if r.path.startswith("/blob/")] == []
    # shuffled: every epoch (every pass) a new order of all rows, the same orders again from the same seed
    ids = lambda ds: [str(i) for b in ds.iter_batches(batch_size=2) for i in b["id"]]  # noqa: E731
    shuffled = T.pair_dataset(path, preset, cache_dir=cache, rows_per_block=1, shuffle=True, seed=3)
    epochs = [ids(shuffled) for _ in range(3)]
    assert all(sorted(e) == sorted(got) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    again = T.pair_dataset(path, preset, cache_dir=cache, rows_per_block=1, shuffle=True, seed=3)
    assert [ids(again) for _ in range(3)] == epochs
    with pytest.raises(P.PairsError, match="band mismatch"):
        T.pair_dataset(path, preset, bands=("B04", "B03", "B02"))
    with pytest.raises(P.PairsError, match="is empty"):
        T.pair_dataset(table.slice(0, 0), preset)
    with pytest.raises(P.PairsError, match="cannot read pairs manifest"):
        T.pair_dataset(tmp_path / "absent.parquet", preset)
    mixed = pa.concat_tables(
        [
            table.slice(0, 1),
            table.slice(1).set_column(
                table.schema.get_field_index("size"), "size", pa.array([64] * (table.num_rows - 1), pa.int32())
            ),
        ]
    )
    with pytest.raises(P.PairsError, match="mixes sizes"):
        T.pair_dataset(mixed, preset)
