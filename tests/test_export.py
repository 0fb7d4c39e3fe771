"""``stacsr export``: checkpoint → model package (card + safetensors) + STAC MLM item.

Checkpoint folders are built by hand here with the layout the trainer writes (card.json,
generator_ema.safetensors, generator.safetensors, discriminator.safetensors, state.json): the EMA and the
raw generator get different random weights, so that exporting the wrong one shows. Runs hold several
``checkpoint_*`` folders, locally and on a moto S3 server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from stacsr.cli import app
from stacsr.model import package as M
from stacsr.model.generator import Generator, GeneratorConfig
from stacsr.model.mlm import MLM, mlm_item
from stacsr.train import export as X
from tests.fixtures.stac import require_schemas, schemas_available, validate_stac, validate_with_pystac

TINY = GeneratorConfig(bands=4, scale=4, features=8, blocks=2)
TINY3 = GeneratorConfig(bands=3, scale=2, features=8, blocks=1)
BANDS = {
    4: (["B02", "B03", "B04", "B08"], ["blue", "green", "red", "nir"]),
    3: (["B04", "B03", "B02"], ["red", "green", "blue"]),
}


def _card(config: GeneratorConfig, pairs: str | None = None, **provenance: Any) -> M.ModelCard:
    bands, common = BANDS[config.bands]
    prov = {"config": {"lr_g": 1e-4, "storage": "/somewhere/local/runs", "steps": 10}, **provenance}
    if pairs:
        prov["pairs"] = pairs
    return M.ModelCard(
        name="stacsr-test-x",
        version="0.2.0",
        bands=bands,
        common_names=common,
        architecture=config.to_dict(),
        provenance=prov,
    )


def _generator(config: GeneratorConfig, seed: int) -> Generator:
    torch.manual_seed(seed)
    g = Generator(config)
    with torch.no_grad():  # the tail starts at zero in SRGAN-like inits; make every layer matter here
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return g.eval()


def _state(g: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in g.state_dict().items()}


def make_checkpoint(
    folder: Path,
    step: int | None,
    config: GeneratorConfig = TINY,
    seed: int = 0,
    pairs: str | None = None,
    card: M.ModelCard | None = None,
    ema: bool = True,
) -> tuple[Generator, Generator]:
    """A trainer-like checkpoint folder; returns (EMA generator, raw generator)."""
    folder.mkdir(parents=True, exist_ok=True)
    g_ema, g_raw = _generator(config, seed), _generator(config, seed + 1000)
    if ema:
        save_file(_state(g_ema), str(folder / "generator_ema.safetensors"), metadata={"format": "pt"})
    save_file(_state(g_raw), str(folder / "generator.safetensors"), metadata={"format": "pt"})
    save_file({"w": torch.randn(3, 3)}, str(folder / "discriminator.safetensors"))
    (folder / "card.json").write_text(json.dumps((card or _card(config, pairs)).to_dict(), indent=2))
    if step is not None:
        state = {"format": "stacsr-train-checkpoint/1", "step": step, "phase": "gan", "loss_g": 0.5, "config": {"x": 1}}
        (folder / "state.json").write_text(json.dumps(state))
    return g_ema, g_raw


def _inputs(config: GeneratorConfig, seed: int = 7) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(1, 6000, (2, config.bands, 12, 10)).astype(np.float32))


@torch.no_grad()
def assert_reproduces(out: Path, package: M.ModelPackage, g_ema: Generator, g_raw: Generator) -> None:
    """The package (as returned, and as loaded again from ``out``) computes exactly what the EMA generator does."""
    x = _inputs(g_ema.config)
    expected = g_ema(x)
    for p in (package, M.load(out)):
        got = p.generator(x)
        assert torch.equal(got, expected), "exported package must reproduce the EMA generator exactly"
        assert not torch.allclose(got, g_raw(x)), "exported the raw generator instead of the EMA one"


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def check_item(out: Path, package: M.ModelPackage, forbidden: tuple[str, ...] = ()) -> dict:
    """item.json agrees with the package and card, is self-contained, and validates offline."""
    text = (out / "item.json").read_text()
    item = json.loads(text)
    weights = (out / "weights.safetensors").read_bytes()
    card = json.loads((out / "card.json").read_text())
    sha = hashlib.sha256(weights).hexdigest()
    assert sha == package.sha256
    props = item["properties"]
    assert MLM in item["stac_extensions"]
    assert item["geometry"] is None and "bbox" not in item
    assert props["mlm:name"] == card["name"] and props["mlm:architecture"] == "SRResNet (SRGAN generator)"
    assert props["mlm:tasks"] == ["super-resolution"] and props["mlm:framework"] == "PyTorch"
    assert props["mlm:total_parameters"] == sum(p.numel() for p in package.generator.parameters())
    assert props["stacsr:model"]["sha256"] == sha and props["stacsr:scale"] == card["scale"]
    assert props["stacsr:gsd_out"] == card["gsd_out"] and props["stacsr:receptive_radius"] == card["receptive_radius"]
    (inp,) = props["mlm:input"]
    assert inp["bands"] == card["bands"] and inp["input"]["shape"] == [-1, len(card["bands"]), -1, -1]
    assert inp["input"]["data_type"] == "uint16" and inp["value_scaling"] == [{"type": "scale", "value": 10000.0}]
    (output,) = props["mlm:output"]
    assert output["bands"] == card["bands"] and output["result"]["data_type"] == "uint16"
    w = item["assets"]["weights"]
    assert w["href"] == "./weights.safetensors" and set(w["roles"]) >= {"mlm:model", "mlm:weights"}
    assert w["file:checksum"] == "1220" + sha and w["file:size"] == len(weights)
    assert item["assets"]["card"]["href"] == "./card.json"
    # self-contained: no absolute path, no file:// URL, no secret anywhere in the item
    for s in strings(item):
        assert not s.startswith("/") and "file://" not in s, s
    for bad in forbidden:
        assert bad not in text, bad
    if schemas_available():  # offline schemas beside the repository (tests/fixtures/stac.py)
        validate_stac(item)
        validate_with_pystac(item)
    return item


# ------------------------------------------------------------------ mlm_item alone


def test_mlm_item_of_default_package_validates():
    package = M.load()
    item = mlm_item(package, pairs="https://host/pairs.parquet?sig=SECRET", metrics={"step": 3, "note": "x"})
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    assert d["properties"]["mlm:pretrained"] is False and d["properties"]["mlm:pretrained_source"] is None
    assert d["properties"]["stacsr:metrics"] == {"step": 3}
    (link,) = [lk for lk in d["links"] if lk["rel"] == "derived_from"]
    assert link["href"] == "https://host/pairs.parquet"
    assert "SECRET" not in json.dumps(d)
    require_schemas()
    validate_stac(d)


def test_mlm_item_fine_tuned_names_its_source_without_local_paths():
    card = _card(TINY, init_from="/home/me/models/base-x4")
    package = M.from_bytes(json.dumps(card.to_dict()), _bytes(_generator(TINY, 1)))
    d = mlm_item(package).to_dict(include_self_link=False, transform_hrefs=False)
    assert d["properties"]["mlm:pretrained"] is True and d["properties"]["mlm:pretrained_source"] == "base-x4"
    assert "/home/me" not in json.dumps(d)
    require_schemas()
    validate_stac(d)


def _bytes(g: Generator) -> bytes:
    from safetensors.torch import save

    return save(_state(g))


# ------------------------------------------------------------------ local checkpoints and runs


def test_export_checkpoint_folder(tmp_path):
    pairs = tmp_path / "data" / "pairs.parquet"
    ckpt = tmp_path / "runs" / "fr24" / "checkpoint_000001"
    g_ema, g_raw = make_checkpoint(ckpt, step=40, pairs=str(pairs))
    out = tmp_path / "models" / "fr24"
    package = X.export(ckpt, out)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "item.json", "weights.safetensors"]
    assert_reproduces(out, package, g_ema, g_raw)
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"] == TINY.to_dict() and card["bands"] == BANDS[4][0]
    assert card["provenance"]["step"] == 40 and card["provenance"]["checkpoint"] == str(ckpt)
    assert card["provenance"]["pairs"] == str(pairs) and card["provenance"]["trained"] is True
    item = check_item(out, package, forbidden=(str(tmp_path),))
    (link,) = [lk for lk in item["links"] if lk["rel"] == "derived_from"]
    assert (out / link["href"]).resolve() == pairs.resolve()  # relative to the package folder
    assert item["properties"]["stacsr:metrics"] == {"step": 40, "loss_g": 0.5}
    # the exported folder is a package enhance can use
    predictor = M.Predictor(M.load(out), device="cpu")
    y = predictor(_inputs(TINY).numpy().astype(np.uint16))
    assert y.shape == (2, 4, 48, 40) and y.dtype == np.uint16


def test_export_run_picks_highest_step(tmp_path):
    run = tmp_path / "runs" / "fr24"
    # lexically last is not the latest: the step decides
    old_ema, _ = make_checkpoint(run / "checkpoint_2025-01-02_00-00-00.000000", step=100, seed=1)
    new_ema, new_raw = make_checkpoint(run / "checkpoint_2025-01-01_00-00-00.000000", step=200, seed=2)
    (run / "tensorboard").mkdir()
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    package = X.export(run, tmp_path / "out")
    assert package.card.provenance["step"] == 200
    assert package.card.provenance["checkpoint"].endswith("checkpoint_2025-01-01_00-00-00.000000")
    assert_reproduces(tmp_path / "out", package, new_ema, new_raw)
    check_item(tmp_path / "out", package, forbidden=(str(tmp_path),))


def test_export_run_without_states_takes_lexically_last(tmp_path):
    run = tmp_path / "run"
    make_checkpoint(run / "checkpoint_a", step=None, seed=1)
    last_ema, last_raw = make_checkpoint(run / "checkpoint_b", step=None, seed=2)
    package = X.export(str(run), tmp_path / "out")
    assert "step" not in package.card.provenance
    assert_reproduces(tmp_path / "out", package, last_ema, last_raw)


# ------------------------------------------------------------------ S3


def _upload(fs, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            with fs.open_output_stream(f"{prefix}/{path.relative_to(local).as_posix()}") as f:
                f.write(path.read_bytes())


def test_export_from_s3(s3, tmp_path, monkeypatch):  # noqa: F811
    bucket = s3.bucket()
    pairs = f"s3://{bucket}/pairs/wald.parquet?X-Amz-Signature=SECRETSIG&X-Amz-Credential=KEYID"
    local = tmp_path / "staging"
    make_checkpoint(local / "checkpoint_000001", step=10, config=TINY3, seed=3, pairs=pairs)
    ema, raw = make_checkpoint(local / "checkpoint_000002", step=20, config=TINY3, seed=4, pairs=pairs)
    _upload(s3.filesystem, local, f"{bucket}/runs/fr24")

    package = X.export(f"s3://{bucket}/runs/fr24", tmp_path / "out", filesystem=s3.filesystem)
    assert package.card.provenance["checkpoint"] == f"s3://{bucket}/runs/fr24/checkpoint_000002"
    assert_reproduces(tmp_path / "out", package, ema, raw)
    item = check_item(tmp_path / "out", package, forbidden=("SECRETSIG", "KEYID", str(tmp_path)))
    card_text = (tmp_path / "out" / "card.json").read_text()
    assert "SECRETSIG" not in card_text and f"s3://{bucket}/pairs/wald.parquet" in card_text
    (link,) = [lk for lk in item["links"] if lk["rel"] == "derived_from"]
    assert link["href"] == f"s3://{bucket}/pairs/wald.parquet"
    assert item["properties"]["stacsr:scale"] == 2 and item["properties"]["mlm:input"][0]["bands"] == [
        "B04",
        "B03",
        "B02",
    ]

    for key, value in s3.env.items():  # a plain URI: endpoint and credentials from the environment
        monkeypatch.setenv(key, value)
    again = X.export(f"s3://{bucket}/runs/fr24/checkpoint_000001", tmp_path / "out1")
    assert again.card.provenance["step"] == 10
    with pytest.raises(X.ExportError, match="does not exist"):
        X.export(f"s3://{bucket}/runs/nothing-here", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# ------------------------------------------------------------------ bad inputs


def test_missing_folder(tmp_path):
    with pytest.raises(X.ExportError, match="does not exist") as e:
        X.export(tmp_path / "nope", tmp_path / "out")
    assert isinstance(e.value, ValueError)
    assert not (tmp_path / "out").exists()


def test_not_a_folder(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(X.ExportError, match="not a folder"):
        X.export(tmp_path / "file.txt", tmp_path / "out")


def test_run_without_checkpoint(tmp_path):
    (tmp_path / "run" / "tensorboard").mkdir(parents=True)
    with pytest.raises(X.ExportError, match="no checkpoint"):
        X.export(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_ema(tmp_path):
    make_checkpoint(tmp_path / "run" / "checkpoint_1", step=5, ema=False)
    with pytest.raises(X.ExportError, match="generator_ema.safetensors"):
        X.export(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_card_weights_mismatch(tmp_path):
    wrong = _card(GeneratorConfig(bands=4, scale=4, features=16, blocks=2))
    make_checkpoint(tmp_path / "ckpt", step=5, card=wrong)
    with pytest.raises(X.ExportError, match="does not match card.json"):
        X.export(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_card_band_count_mismatch(tmp_path):
    bad = _card(TINY)
    bad = M.ModelCard(**{**bad.__dict__, "bands": ["B02", "B03"], "common_names": ["blue", "green"]})
    make_checkpoint(tmp_path / "ckpt", step=5, card=bad)
    with pytest.raises(X.ExportError, match="lists 2 bands"):
        X.export(tmp_path / "ckpt", tmp_path / "out")


def test_weights_not_safetensors(tmp_path):
    make_checkpoint(tmp_path / "ckpt", step=5)
    (tmp_path / "ckpt" / "generator_ema.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(X.ExportError, match="not a safetensors file"):
        X.export(tmp_path / "ckpt", tmp_path / "out")


def test_card_not_json(tmp_path):
    make_checkpoint(tmp_path / "ckpt", step=5)
    (tmp_path / "ckpt" / "card.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(X.ExportError, match="card.json of checkpoint .* is not valid JSON"):
        X.export(tmp_path / "ckpt", tmp_path / "out")


# ------------------------------------------------------------------ command line


def cli(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_cli_export(tmp_path):
    g_ema, g_raw = make_checkpoint(tmp_path / "runs" / "a" / "checkpoint_1", step=7)
    result = cli("export", tmp_path / "runs" / "a", "--out", tmp_path / "pkg")
    assert result.exit_code == 0, result.stderr
    assert "step 7" in result.stderr
    assert_reproduces(tmp_path / "pkg", M.load(tmp_path / "pkg"), g_ema, g_raw)
    assert (tmp_path / "pkg" / "item.json").is_file()


def test_cli_export_missing_folder(tmp_path):
    result = cli("export", tmp_path / "missing", "--out", tmp_path / "pkg")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip() == ""
    assert not (tmp_path / "pkg").exists()
