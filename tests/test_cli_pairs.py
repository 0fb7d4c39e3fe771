"""`stacsr pairs` through the CLI: Earth-Search-style scenes in pgstac, COGs over HTTP, manifest written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stacsr.cli import app
from stacsr.train import manifest as P
from tests.fixtures import scenes as SC

AOI = SC.world_bbox(172, 172, 308, 308)  # where both demo items overlap


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def es_scenes(blob_server):
    return SC.make_scenes(blob_server, "earth-search")


def test_pairs_writes_a_wald_manifest(pgstac, es_scenes, tmp_path):
    out = tmp_path / "pairs.parquet"
    with_catalog = SC.loaded(pgstac, es_scenes)
    next(with_catalog)
    try:
        r = cli(
            "pairs",
            "--catalog",
            "earth-search",
            "--stac-url",
            pgstac.url,
            "--bbox",
            *AOI,
            "--patches",
            6,
            "--patch-size",
            32,
            "--out",
            out,
        )
    finally:
        next(with_catalog, None)
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "6 patches from 2 items" in r.stderr
    table = P.read_manifest(out)
    assert table.num_rows == 6
    assert set(table.column("kind").to_pylist()) == {"wald"}
    assert set(table.column("size").to_pylist()) == {32}
    assert set(table.column("item_id").to_pylist()) == {i["id"] for i in es_scenes.items}


def test_pairs_refuses_unknown_kind_and_writes_nothing(tmp_path):
    out = tmp_path / "pairs.parquet"
    r = cli("pairs", "--kind", "spot", "--bbox", *AOI, "--out", out)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "error: pair kind 'spot' is not available yet; use --kind wald or cross-sensor"
    ]
    assert not out.exists()
