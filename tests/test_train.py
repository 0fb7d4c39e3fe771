"""Training on Ray Train (stacsr.train.trainer/loop/checkpoint/config) with a tiny SRGAN.

Pairs are the demo scenes on the blob server (Planetary-Computer style, signed at read time); the run's
storage is a local S3 server (moto), so checkpoints and TensorBoard go through ``s3://``. The Ray cluster is
the session's 2-CPU one: each of the 2 workers asks for half a CPU, leaving a CPU to Ray Data.

One run is "killed" after 3 steps (``steps: 3``), re-run with ``steps: 5`` (it must resume at step 3, not
restart), and run a third time (nothing left to do: no new checkpoint).
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from stacsr.catalog.presets import PRESETS
from stacsr.cli import app
from stacsr.model import package as M
from stacsr.train import checkpoint as C
from stacsr.train import degrade as D
from stacsr.train import manifest as P
from stacsr.train import pairs_wald as W
from stacsr.train import trainer as T
from stacsr.train.config import TrainConfig, from_dict, load_config
from stacsr.train.loop import PREVIEW_TAG, preview_image, worker_lr
from tests.fixtures import scenes as SC
from tests.fixtures.services import planetary_computer_stand_in
from tests.test_train_data import AOI, make_sign

PATCH, SCALE = 32, 4
TINY = {
    "generator": {"blocks": 1, "features": 8},
    "discriminator": {"features": 8, "max_features": 16},
    "optimiser": {"lr_g": 1e-3, "lr_d": 1e-3},
    "batch_size": 2,
    "pretrain_steps": 1,
    "ema": 0.9,
    "checkpoint_every": 2,
    "keep_checkpoints": 2,
    "preview_every": 2,
    "log_every": 1,
}
HALF_CPU = {"CPU": 0.5}


def tiny(**changes) -> TrainConfig:
    return from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def pairs(blob_server, tmp_path_factory):
    """(manifest path, preset): 8 patches of 32 px over the two demo items."""
    scenes = SC.make_scenes(blob_server, "planetary-computer")
    preset = replace(PRESETS["planetary-computer"], sign=make_sign(blob_server.sas_url, blob_server.url))
    with planetary_computer_stand_in(blob_server.sas_url):
        table = W.build_wald_manifest(scenes.items, preset, AOI, 8, PATCH, SCALE, seed=3, min_valid=1.0)
    assert table.num_rows == 8
    path = P.write_manifest(table, tmp_path_factory.mktemp("pairs") / "pairs.parquet")
    return str(path), preset


def s3_files(fs, prefix: str) -> list[str]:
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path[len(prefix) + 1 :] for i in infos if i.type == pafs.FileType.File)


def adam_steps(folder: Path, file: str) -> set[float]:
    return {float(v) for k, v in load_file(str(folder / file)).items() if k.endswith(".step")}


def tb_tags(folder: Path) -> tuple[set[str], set[str], dict[str, list[int]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images, steps = set(), set(), {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
        for tag in acc.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return scalars, images, steps


# ------------------------------------------------------------------ the Ray Train run, on S3


def test_run_checkpoints_to_s3_resumes_and_logs(pairs, s3, ray_local, pc_stand_in, tmp_path):  # noqa: F811
    manifest, preset = pairs
    bucket = s3.bucket()
    storage, name = f"s3://{bucket}/runs", "tiny"
    fs = s3.filesystem
    run = lambda steps: T.train(  # noqa: E731
        manifest,
        storage,
        name,
        tiny(steps=steps),
        2,
        False,
        preset,  # noqa: E731
        storage_filesystem=fs,
        resources_per_worker=HALF_CPU,
    )

    # (a) 3 steps, checkpoints at 2 and 3 in S3 with the documented layout
    result = run(3)
    assert result.metrics["step"] == 3
    found = C.list_checkpoints(storage, name, fs)
    assert [s for s, _ in found] == [2, 3]
    latest = C.latest_checkpoint(storage, name, fs)
    assert latest.startswith(f"s3://{bucket}/runs/{name}/checkpoint_") and latest == found[-1][1]
    assert set(s3_files(fs, latest[len("s3://") :])) == set(C.FILES)
    first = C.download(latest, tmp_path / "ckpt3", fs)
    state = json.loads((first / C.STATE).read_text())
    assert state["step"] == 3 and state["phase"] == "gan" and state["world_size"] == 2
    assert state["optimizer_g"]["param_groups"][0]["lr"] == 1e-3
    card = json.loads((first / "card.json").read_text())
    assert card["provenance"]["pairs"] == manifest and card["architecture"]["blocks"] == 1
    assert card["bands"] == ["B02", "B03", "B04", "B08"]
    assert adam_steps(first, C.OPTIMIZER_G) == {3.0} and adam_steps(first, C.OPTIMIZER_D) == {2.0}  # 1 pretrain step
    no_pickle = [p for p in first.iterdir() if p.suffix not in (".json", ".safetensors")]
    assert no_pickle == []
    package = M.from_bytes((first / "card.json").read_text(), (first / C.GENERATOR_EMA).read_bytes())
    assert package.generator.config.blocks == 1

    # (b) "killed" at step 3, run again with more steps: it continues at 3, not from 0
    result = run(5)
    assert result.metrics["step"] == 5
    found = C.list_checkpoints(storage, name, fs)
    assert [s for s, _ in found] == [4, 5]  # keep_checkpoints: 2
    second = C.download(found[-1][1], tmp_path / "ckpt5", fs)
    assert json.loads((second / C.STATE).read_text())["step"] == 5
    assert adam_steps(second, C.OPTIMIZER_G) == {5.0} and adam_steps(second, C.OPTIMIZER_D) == {4.0}
    g3, g5 = load_file(str(first / C.GENERATOR)), load_file(str(second / C.GENERATOR))
    assert any(not torch.equal(g3[k], g5[k]) for k in g3)  # it trained

    # a third run with the steps already reached trains nothing and writes no checkpoint
    run(5)
    assert C.list_checkpoints(storage, name, fs) == found

    # (c) TensorBoard under <storage>/<name>/tensorboard: every loss term, d_loss, gp, lrs, previews
    tb = C.download(f"{storage}/{name}/tensorboard", tmp_path / "tb", fs)
    scalars, images, steps = tb_tags(tb)
    expected = {
        "loss/l1",
        "loss/l2",
        "loss/content",
        "loss/adv",
        "loss/g_total",
        "loss/d_loss",
        "loss/gp",
        "loss/drift",
        "loss/wasserstein",
        "lr/generator",
        "lr/discriminator",
    }
    assert expected <= scalars, expected - scalars
    assert PREVIEW_TAG in images
    assert sorted(steps["loss/l1"]) == [1, 2, 3, 4, 5]  # each step once: the resumed run went on at 4
    assert sorted(steps["loss/d_loss"]) == [2, 3, 4, 5]  # none in the pretraining step

    # (d) no secret in anything the run wrote (checkpoints, cards, optimiser state, TensorBoard events)
    everything = C.download(f"{storage}/{name}", tmp_path / "all", fs)
    blob = pc_stand_in
    secrets = [
        blob.secret,
        *blob.issued_sigs,
        *blob.tokens_issued,
        s3.env["AWS_SECRET_ACCESS_KEY"],
        s3.env["AWS_ACCESS_KEY_ID"],
    ]
    assert blob.tokens_issued  # the patches were read with signed hrefs
    files = [p for p in everything.rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), path


def test_preview_is_rgb_stretched():
    hr = torch.zeros(4, 8, 8)
    hr[2], hr[1], hr[0] = 3000, 2000, 1000  # B04 red brightest
    hr[:, :, :4] *= 0.5
    lr = torch.nn.functional.avg_pool2d(hr[None], 4)[0]
    image = preview_image(lr, hr, hr, ["B02", "B03", "B04", "B08"])
    assert image.shape == (3, 8, 24) and image.min() >= 0 and image.max() <= 1
    np.testing.assert_allclose(image[:, :, 8:16], image[:, :, 16:])  # SR == HR here
    assert image[0, 0, 20] == 1.0 and image[0, 0, 16] == 0.0  # stretched per channel to [0, 1]


# ------------------------------------------------------------------ --init-from


def test_init_from_default_loads_and_mismatch_is_refused(pairs, ray_local, pc_stand_in, tmp_path):
    manifest, preset = pairs
    default = M.load("default")
    arch = {k: v for k, v in default.card.architecture.items()}
    cfg = tiny(
        generator=arch,
        steps=1,
        optimiser={"lr_g": 1e-12, "lr_d": 1e-12},
        pretrain_steps=1,
        degradation={"kind": "mixed"},
    )  # the workers make the LR
    T.train(
        manifest, tmp_path / "runs", "init", cfg, 1, False, preset, init_from="default", resources_per_worker=HALF_CPU
    )
    folder = Path(C.latest_checkpoint(tmp_path / "runs", "init"))
    trained = load_file(str(folder / C.GENERATOR))
    start = default.generator.state_dict()
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) < 1e-6  # started from the package
    assert any(float(start[k].abs().max()) > 0.01 for k in start)  # not trivially zero
    assert json.loads((folder / "card.json").read_text())["provenance"]["init_from"] == default.ref
    with pytest.raises(ValueError, match="another architecture.*blocks: package 8 vs config 1"):
        T.prepare(manifest, "x", tiny(), 1, init_from="default")
    # how training starts is not the architecture: a config without zero_init_residual may fine-tune it
    assert default.card.config.zero_init_residual
    T.prepare(manifest, "x", tiny(generator={**arch, "zero_init_residual": False}), 1, init_from="default")


def test_mixed_wald_pairs_get_a_fresh_lr_on_the_worker(pairs):
    table = P.read_manifest(pairs[0])
    mixed, area = tiny(degradation={"kind": "mixed"}), tiny()
    assert T.degrades_in_loop(mixed, table) and not T.degrades_in_loop(area, table)
    cross = table.set_column(table.schema.get_field_index("kind"), "kind", [["cross-sensor"] * table.num_rows])
    assert not T.degrades_in_loop(mixed, cross)  # a real LR is never replaced

    hr = torch.rand(8, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 3000 + 100
    read = D.area(hr, 4)
    assert worker_lr(read, hr, area, False) is read
    torch.manual_seed(5)
    first = worker_lr(read, hr, mixed, True)
    second = worker_lr(read, hr, mixed, True)
    assert first.shape == read.shape and not torch.allclose(first, second)  # a new blur at every step
    torch.manual_seed(5)
    torch.testing.assert_close(worker_lr(read, hr, mixed, True), first)  # seeded: reproducible
    # every LR is a blurred-then-averaged HR: it keeps the block means' overall level
    assert abs(float(first.mean() - read.mean())) < 0.01 * float(read.mean())


# ------------------------------------------------------------------ configuration and bad input


def test_config_yaml_example_and_errors(tmp_path):
    example = Path(__file__).resolve().parent.parent / "jobs" / "examples" / "train.yaml"
    cfg = load_config(example)
    assert cfg == TrainConfig()  # the example documents exactly the defaults
    assert (cfg.generator.blocks, cfg.generator.features, cfg.generator.scale) == (16, 64, 4)
    assert from_dict(cfg.to_dict()) == cfg
    for text, message in [
        ("steps: 10\nstepz: 3\n", "unknown config key stepz"),
        ("losses:\n  gam: 1\n", "unknown config key losses.gam"),
        ("batch_size: two\n", "config key batch_size must be an integer"),
        ("optimiser:\n  betas: [0.5]\n", "config key optimiser.betas"),
        ("losses:\n  gan_kind: hinge\n", "config key losses.gan_kind"),
        ("generator: 3\n", "config key generator must be a mapping"),
        ("steps: [\n", "not valid YAML"),
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config(path)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def error_line(result) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_cli_bad_inputs(pairs, tmp_path):
    manifest, _ = pairs
    base = ["train", "--storage", tmp_path / "runs", "--name", "bad"]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(manifest).slice(0, 0), empty)
    assert "is empty" in error_line(cli(*base, "--pairs", empty))
    assert "cannot read pairs manifest" in error_line(cli(*base, "--pairs", tmp_path / "absent.parquet"))
    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_text("not parquet")
    assert "cannot read pairs manifest" in error_line(cli(*base, "--pairs", not_parquet))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("generator:\n  blocks: 2\n  filters: 8\n")
    assert "unknown config key generator.filters" in error_line(cli(*base, "--pairs", manifest, "--config", unknown))
    vgg = tmp_path / "vgg.yaml"
    vgg.write_text(
        textwrap.dedent(f"""\
        losses:
          vgg: 0.01
          vgg_weights: {tmp_path / "vgg19.safetensors"}
        """)
    )
    assert "VGG weights file" in error_line(cli(*base, "--pairs", manifest, "--config", vgg))
    no_path = tmp_path / "vgg-none.yaml"
    no_path.write_text("losses:\n  vgg: 0.01\n")
    assert "no VGG weights file" in error_line(cli(*base, "--pairs", manifest, "--config", no_path))
    assert "another architecture" in error_line(cli(*base, "--pairs", manifest, "--init-from", "default"))
    assert not (tmp_path / "runs").exists()  # nothing started


def test_checkpoint_round_trip_without_pickle(tmp_path):
    from stacsr.model.discriminator import Discriminator
    from stacsr.model.generator import Generator

    cfg = tiny()
    torch.manual_seed(0)
    G, D = Generator(cfg.generator), Discriminator(cfg.discriminator_config)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), lr=0.01, betas=(0.5, 0.9)), torch.optim.Adam(D.parameters())
    for _ in range(2):
        opt_g.zero_grad()
        G(torch.rand(2, 4, 8, 8) * 3000).mean().backward()
        opt_g.step()
    card = M.ModelCard(
        "r", "0.1.0", ["B02", "B03", "B04", "B08"], ["blue", "green", "red", "nir"], cfg.generator.to_dict()
    )
    C.save_checkpoint(
        tmp_path / "checkpoint_a",
        card=card,
        generator=G,
        generator_ema=G,
        discriminator=D,
        optimizer_g=opt_g,
        optimizer_d=opt_d,
        step=2,
        phase="gan",
    )
    assert sorted(p.name for p in (tmp_path / "checkpoint_a").iterdir()) == sorted(C.FILES)
    G2 = Generator(cfg.generator)
    opt_g2 = torch.optim.Adam(G2.parameters(), lr=1.0)
    state = C.load_checkpoint(tmp_path / "checkpoint_a", generator=G2, optimizer_g=opt_g2)
    assert state.step == 2 and state.card.name == "r"
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G2.state_dict().values()))
    a, b = opt_g.state_dict(), opt_g2.state_dict()
    assert b["param_groups"][0]["lr"] == 0.01 and tuple(b["param_groups"][0]["betas"]) == (0.5, 0.9)
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    assert C.latest_checkpoint(tmp_path.parent, tmp_path.name) == str(tmp_path / "checkpoint_a")
    with pytest.raises(C.CheckpointError, match="does not fit the network"):
        C.load_checkpoint(tmp_path / "checkpoint_a", generator=Generator(tiny(generator={"blocks": 2}).generator))
