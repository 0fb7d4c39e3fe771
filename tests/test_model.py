"""The generator (stacsr.model.generator) and model packages (stacsr.model.package)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stacsr.model import package as P
from stacsr.model.generator import Generator, GeneratorConfig
from stacsr.model.package import ModelError

SMALL = dict(features=8, blocks=1)
BANDS4 = ["B02", "B03", "B04", "B08"]


def make_card(config: GeneratorConfig, name: str = "test-model") -> P.ModelCard:
    bands = (BANDS4 + ["B05", "B06", "B07"])[: config.bands]
    return P.ModelCard(
        name=name,
        version="0.0.1",
        bands=bands,
        common_names=[f"c{i}" for i in range(config.bands)],
        architecture=config.to_dict(),
        provenance={"trained": False},
    )


@pytest.fixture
def saved(tmp_path) -> P.ModelPackage:
    torch.manual_seed(0)
    config = GeneratorConfig(bands=4, scale=4, **SMALL)
    return P.save(make_card(config), Generator(config), tmp_path / "pkg")


def inputs(bands: int, rows: int = 12, cols: int = 10, n: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(100, 6000, size=(n, bands, rows, cols)).astype(np.float32))


# ------------------------------------------------------------------ Generator


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("bands", [3, 4, 6])
def test_generator_output_shape(scale, bands):
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=bands, scale=scale, **SMALL)).eval()
    assert g.n_upsample == {2: 1, 4: 2, 8: 3}[scale]
    with torch.no_grad():
        y = g(inputs(bands, 9, 7))
    assert y.shape == (2, bands, 9 * scale, 7 * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("scale", [1, 3, 6, 16])
def test_generator_refuses_other_scales(scale):
    with pytest.raises(ValueError, match="scale"):
        Generator(GeneratorConfig(scale=scale, **SMALL))


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_zeroed_tail_with_residual_bicubic_is_bicubic(scale):
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=4, scale=scale, residual_bicubic=True, **SMALL)).eval()
    with torch.no_grad():
        g.tail.weight.zero_()
        g.tail.bias.zero_()
        x = inputs(4, 11, 13)
        y = g(x)
        expected = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-2)
    # and without the residual base the same network outputs zero: the bicubic really comes from that path
    g2 = Generator(GeneratorConfig(bands=4, scale=scale, residual_bicubic=False, **SMALL)).eval()
    g2.load_state_dict(g.state_dict())
    with torch.no_grad():
        assert g2(x).abs().max() == 0


def test_random_generator_is_not_bicubic():
    """The bicubic test above can fail: with a live tail the output differs from bicubic."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(bands=4, scale=4, **SMALL)).eval()
    x = inputs(4)
    with torch.no_grad():
        diff = (g(x) - F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)).abs().max()
    assert diff > 10


@pytest.mark.parametrize("consistent", [False, True])
def test_zero_init_residual_starts_as_the_residual_base(consistent):
    """Blocks start as the identity and the output convs at zero: the untrained network is (consistent)
    bicubic; the other layers keep the seed's initialisation, so training moves it at once."""
    torch.manual_seed(0)
    config = GeneratorConfig(bands=4, scale=4, features=8, blocks=2, consistent=consistent)
    plain = Generator(config)
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(**{**config.to_dict(), "zero_init_residual": True})).eval()
    x = inputs(4, 11, 13)
    with torch.no_grad():
        features = g.head(x / 1e4)
        torch.testing.assert_close(g.body(features), features)
        want = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        if consistent:
            want = want + F.interpolate(x - F.avg_pool2d(want, 4), scale_factor=4, mode="nearest")
        torch.testing.assert_close(g(x), want, rtol=1e-5, atol=1e-2)
        assert all(p.abs().max() == 0 for p in g.tail.parameters())
    torch.testing.assert_close(g.head[0].weight, plain.head[0].weight)  # same seed, same random layers
    torch.testing.assert_close(g.body[0].conv1.weight, plain.body[0].conv1.weight)
    # one content-loss step moves it off bicubic
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    target = want + 50 * torch.randn_like(want)
    F.l1_loss(g.train()(x), target).backward()
    opt.step()
    with torch.no_grad():
        assert (g(x) - want).abs().max() > 1


def test_generator_config_dict_round_trip():
    c = GeneratorConfig(bands=6, scale=8, features=16, blocks=3, residual_bicubic=False)
    assert GeneratorConfig.from_dict({**c.to_dict(), "unknown": 1}) == c


# ------------------------------------------------------------------ packages


def test_save_load_round_trip(saved, tmp_path):
    folder = tmp_path / "pkg"
    weights = (folder / P.WEIGHTS).read_bytes()
    assert saved.sha256 == hashlib.sha256(weights).hexdigest()
    again = P.load(folder)
    assert again.sha256 == saved.sha256
    assert again.card == saved.card
    assert again.ref == f"test-model@0.0.1+{saved.sha256[:12]}"
    assert not again.generator.training
    x = inputs(4)
    with torch.no_grad():
        assert torch.equal(again.generator(x), saved.generator(x))
    for k, v in saved.generator.state_dict().items():
        assert torch.equal(again.generator.state_dict()[k], v), k
    card = json.loads((folder / P.CARD).read_text())
    assert card["scale"] == 4 and card["gsd_out"] == 2.5 and card["bands"] == BANDS4


def test_save_load_round_trip_preserves_a_different_model(tmp_path):
    """Two different seeds give different weights, sha256 and outputs (so the round trip test can fail)."""
    config = GeneratorConfig(bands=4, scale=4, **SMALL)
    pkgs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        pkgs.append(P.save(make_card(config), Generator(config), tmp_path / f"seed{seed}"))
    assert pkgs[0].sha256 != pkgs[1].sha256
    x = inputs(4)
    with torch.no_grad():
        assert not torch.equal(pkgs[0].generator(x), pkgs[1].generator(x))


def test_from_bytes_gives_the_same_model(saved):
    copy = P.from_bytes(*saved.to_bytes())
    assert copy.sha256 == saved.sha256
    assert copy.card == saved.card
    batch = np.random.default_rng(5).integers(100, 6000, size=(2, 4, 12, 10)).astype(np.uint16)
    np.testing.assert_array_equal(P.Predictor(copy, device="cpu")(batch), P.Predictor(saved, device="cpu")(batch))


def test_load_default_package():
    pkg = P.load("default")
    assert pkg.card.bands == ["B02", "B03", "B04", "B08"]
    assert pkg.card.scale == 4
    assert pkg.card.gsd_out == pytest.approx(2.5)
    assert pkg.card.config.bands == 4
    assert pkg.sha256 == hashlib.sha256((P.default_path() / P.WEIGHTS).read_bytes()).hexdigest()
    assert pkg.receptive_radius == pkg.generator.receptive_radius >= 2
    out = P.Predictor(pkg, device="cpu")(np.full((1, 4, 6, 5), 1234, dtype=np.uint16))
    assert out.shape == (1, 4, 24, 20) and out.dtype == np.uint16


def test_card_that_disagrees_with_the_weights_is_refused(saved, tmp_path):
    folder = tmp_path / "pkg"
    card = json.loads((folder / P.CARD).read_text())
    card["architecture"]["features"] = 16
    (folder / P.CARD).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="disagrees"):
        P.load(folder)


def test_card_with_a_different_block_count_is_refused(saved, tmp_path):
    folder = tmp_path / "pkg"
    card = json.loads((folder / P.CARD).read_text())
    card["architecture"]["blocks"] = 2
    with pytest.raises(ModelError, match="disagrees"):
        P.from_bytes(json.dumps(card), (folder / P.WEIGHTS).read_bytes())


class _Payload:
    """Unpickling this creates ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickled_weights_are_refused_and_never_unpickled(saved, tmp_path):
    folder = tmp_path / "pkg"
    state = saved.generator.state_dict()

    # control: the payload works, so the check below could fail
    control_marker = tmp_path / "control-unpickled"
    torch.save({**state, "payload": _Payload(control_marker)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)["payload"].close()
    assert control_marker.exists()

    marker = tmp_path / "package-unpickled"
    torch.save({**state, "payload": _Payload(marker)}, folder / P.WEIGHTS)
    with pytest.raises(ModelError, match="safetensors"):
        P.load(folder)
    with pytest.raises(ModelError):
        P.from_bytes((folder / P.CARD).read_text(), (folder / P.WEIGHTS).read_bytes())
    assert not marker.exists()


def test_plain_pickled_state_dict_is_refused(saved, tmp_path):
    folder = tmp_path / "pkg"
    torch.save(saved.generator.state_dict(), folder / P.WEIGHTS)
    with pytest.raises(ModelError, match="not a safetensors file"):
        P.load(folder)


def test_folder_without_card_is_refused(saved, tmp_path):
    folder = tmp_path / "pkg"
    (folder / P.CARD).unlink()
    with pytest.raises(ModelError, match="card.json"):
        P.load(folder)


def test_folder_without_weights_or_missing_folder_is_refused(saved, tmp_path):
    with pytest.raises(ModelError):
        P.load(tmp_path / "nowhere")
    folder = tmp_path / "pkg"
    (folder / P.WEIGHTS).unlink()
    with pytest.raises(ModelError, match="weights.safetensors"):
        P.load(folder)


def test_invalid_or_incomplete_card_is_refused(saved, tmp_path):
    weights = (tmp_path / "pkg" / P.WEIGHTS).read_bytes()
    with pytest.raises(ModelError, match="JSON"):
        P.from_bytes("{not json", weights)
    with pytest.raises(ModelError, match="incomplete"):
        P.from_bytes(json.dumps({"name": "x", "version": "1"}), weights)


def test_packages_copied_elsewhere_still_load(saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "pkg", copy)
    assert P.load(copy).sha256 == saved.sha256


# ------------------------------------------------------------------ Predictor


@pytest.mark.parametrize("scale", [2, 4])
def test_predictor_returns_uint16_without_zeros(tmp_path, scale):
    torch.manual_seed(0)
    config = GeneratorConfig(bands=4, scale=scale, **SMALL)
    pkg = P.save(make_card(config), Generator(config), tmp_path / "pkg")
    predict = P.Predictor(pkg, device="cpu")
    rng = np.random.default_rng(0)
    batch = rng.integers(1, 10000, size=(3, 4, 13, 9)).astype(np.uint16)
    batch[0, :, 0, 0] = 1  # darkest valid input
    batch[1, :, 5, 5] = 65535  # saturated input
    out = predict(batch)
    assert out.dtype == np.uint16
    assert out.shape == (3, 4, 13 * scale, 9 * scale)
    assert (out > 0).all(), "0 is reserved for nodata"
    # it is the generator's output, rounded
    with torch.no_grad():
        expected = pkg.generator(torch.from_numpy(batch.astype(np.float32))).round().clamp(1, 65535).numpy()
    np.testing.assert_array_equal(out, expected.astype(np.uint16))


def test_predictor_of_a_bicubic_model_keeps_a_flat_image_flat(tmp_path):
    torch.manual_seed(0)
    config = GeneratorConfig(bands=4, scale=4, **SMALL)
    g = Generator(config)
    with torch.no_grad():
        g.tail.weight.zero_()
        g.tail.bias.zero_()
    pkg = P.save(make_card(config), g, tmp_path / "pkg")
    out = P.Predictor(pkg, device="cpu")(np.full((1, 4, 8, 8), 4321, dtype=np.uint16))
    assert (out == 4321).all()


def test_package_without_training_heads_loads_with_them_zeroed(tmp_path):
    """Packages exported without the MSG-GAN heads (inference only) still load; the heads are zero."""
    import json

    from safetensors.torch import load_file, save_file

    from stacsr.model import package as P

    src = P.default_path()
    state = {k: v for k, v in load_file(str(src / P.WEIGHTS)).items() if not k.startswith(P.TRAINING_ONLY)}
    assert len(state) < len(load_file(str(src / P.WEIGHTS)))
    save_file(state, str(tmp_path / P.WEIGHTS))
    (tmp_path / P.CARD).write_text((src / P.CARD).read_text())
    pkg = P.load(tmp_path)
    heads = [v for k, v in pkg.generator.state_dict().items() if k.startswith(P.TRAINING_ONLY)]
    assert heads and all(float(v.abs().sum()) == 0 for v in heads)
    assert json.loads((tmp_path / P.CARD).read_text())["name"] == pkg.card.name
