"""Faults stacsr must survive, injected by a proxy on 127.0.0.1 (tests/fixtures/faults.py) in front of the real
local services: the blob server (range reads), pgstac (STAC API) and moto (S3 PUTs).

Transient faults (500/503, 429 with Retry-After, connections reset mid-body, answers delayed past the read
timeout) must change nothing: outputs are bit-identical to a fault-free run. Permanent ones must end with a
one-line error naming the asset (without its query string) and leave nothing published. ``make faults`` runs
these tests alone and prints the table collected in :data:`tests.fixtures.faults.REPORT`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from stacsr import pipeline
from stacsr.catalog import search as S
from stacsr.catalog.presets import resolve
from stacsr.cli import app
from stacsr.engine import LocalEngine
from stacsr.io import read as R
from stacsr.model import package as M
from stacsr.plumbing import storage
from tests.fixtures import scenes as SC
from tests.fixtures.faults import REPORT, FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore::UserWarning")]

COLLECTION = "s2-faults"
AOI = SC.world_bbox(172, 172, 268, 300)
TRANSIENT = {"5xx": 0.20, "429": 0.05, "reset": 0.05, "slow": 0.02}


@pytest.fixture()
def fast_timeouts(monkeypatch):
    """A 2 s read timeout (the proxy delays 'slow' answers 3 s) and quick GDAL back-off, for test speed."""
    monkeypatch.setitem(R.GDAL_ENV, "GDAL_HTTP_TIMEOUT", "2")
    monkeypatch.setitem(R.GDAL_ENV, "GDAL_HTTP_RETRY_DELAY", "0.1")


def record(fault: str, proxy: FaultProxy, outcome: str) -> None:
    injected = sum(proxy.stats[k] for k in ("5xx", "429", "reset", "slow", "permanent"))
    REPORT.append(
        {
            "fault": fault,
            "requests": proxy.stats["requests"],
            "injected": injected,
            "retried": injected if outcome == "identical" else proxy.stats["permanent"],
            "outcome": outcome,
            "data lost": "none",
        }
    )


@pytest.fixture(scope="module")
def proxy(blob_server):
    with FaultProxy(blob_server.url, rates=TRANSIENT, delay=3.0, seed=7) as p:
        yield p


@pytest.fixture(scope="module")
def sources(pgstac, blob_server, proxy):
    """The demo items twice: collection ``s2-faults`` read directly, ``s2-faults-proxied`` through the proxy."""
    direct = SC.make_scenes(blob_server, "earth-search", collection=COLLECTION)

    def through_proxy(item):
        for asset in item["assets"].values():
            asset["href"] = proxy.rewrite(asset["href"])
        item["collection"] = COLLECTION + "-proxied"

    proxied = SC.make_scenes(blob_server, "earth-search", collection=COLLECTION + "-proxied", edit=through_proxy)
    SC.load(pgstac, direct)
    SC.load(pgstac, proxied)
    yield direct, proxied
    pgstac.reset()


def enhance(pgstac, collection: str, out: Path, stac_url: str | None = None):
    preset = resolve("earth-search", collection, None, stac_url or pgstac.url)
    items = S.search(preset, AOI)
    package = M.load("default")
    return pipeline.enhance(items, preset, AOI, out, package, LocalEngine(package), tile_size=64)


def stacks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name.split("-proxied")[0]: rasterio.open(p).read() for p in sorted(folder.rglob("*.tif"))}


def test_enhance_through_faulty_range_reads_is_bit_identical(sources, pgstac, proxy, fast_timeouts, tmp_path):
    clean = stacks(enhance(pgstac, COLLECTION, tmp_path / "clean").catalog.parent)
    proxy.stats.clear()
    faulty = stacks(enhance(pgstac, COLLECTION + "-proxied", tmp_path / "faulty").catalog.parent)
    assert sum(proxy.stats[k] for k in ("5xx", "429", "reset", "slow")) >= 3, proxy.stats  # faults really happened
    assert clean.keys() == {k.replace("-proxied", "") for k in faulty} and len(clean) == 8
    for name, data in clean.items():
        assert np.array_equal(faulty[name], data), name
    record("range reads: 5xx, 429, resets, slow (enhance)", proxy, "identical")


def test_sr_over_faulty_http_is_bit_identical(proxy, blob_server, fast_timeouts, tmp_path):
    data = SC.truth(SC.OLD, slice(0, 200), slice(0, 200)).astype(np.uint16)
    src = blob_server.root / "faults-sr" / "input.tif"
    src.parent.mkdir(parents=True, exist_ok=True)
    from affine import Affine

    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=200,
        height=200,
        count=4,
        dtype="uint16",
        crs="EPSG:32632",
        transform=Affine(10, 0, 680000, 0, -10, 5340000),
        tiled=True,
        blockxsize=64,
        blockysize=64,
    ) as dst:
        dst.write(data)
    url = blob_server.file_url("faults-sr/input.tif")
    runner = CliRunner()
    assert runner.invoke(app, ["sr", url, str(tmp_path / "clean.tif"), "--no-ray", "--tile-size", "64"]).exit_code == 0
    proxy.stats.clear()
    r = runner.invoke(app, ["sr", proxy.rewrite(url), str(tmp_path / "faulty.tif"), "--no-ray", "--tile-size", "64"])
    assert r.exit_code == 0, r.output
    assert np.array_equal(rasterio.open(tmp_path / "faulty.tif").read(), rasterio.open(tmp_path / "clean.tif").read())
    record("range reads: 5xx, 429, resets, slow (sr over HTTP)", proxy, "identical")


def test_permanently_failing_asset_is_a_clear_error_and_publishes_nothing(
    sources, pgstac, blob_server, monkeypatch, tmp_path
):
    monkeypatch.setitem(R.GDAL_ENV, "GDAL_HTTP_MAX_RETRY", "2")
    monkeypatch.setitem(R.GDAL_ENV, "GDAL_HTTP_RETRY_DELAY", "0.1")
    monkeypatch.setattr(R, "READ_RETRIES", 1)
    with FaultProxy(blob_server.url, rates={}, permanent=("/B08.tif",)) as broken:
        item = json.loads(json.dumps(sources[0].items[0]))
        for asset in item["assets"].values():
            asset["href"] = broken.rewrite(asset["href"]) + "?token=s3cr3t-value"
        preset = resolve("earth-search", COLLECTION, None, pgstac.url)
        package = M.load("default")
        with pytest.raises(R.ReadError) as e:
            pipeline.enhance([item], preset, AOI, tmp_path / "out", package, LocalEngine(package), tile_size=64)
    message = str(e.value)
    assert "\n" not in message and "nir" in message and "B08.tif" in message
    assert "s3cr3t" not in message and "token=" not in message
    assert not list((tmp_path / "out").rglob("*.json")) and not list((tmp_path / "out").rglob("*.tif"))
    record("asset answering 503 for ever", broken, "clear error")


def test_stac_search_retries_transient_api_failures(sources, pgstac, monkeypatch):
    expected = [i["id"] for i in S.search(resolve("earth-search", COLLECTION, None, pgstac.url), AOI)]
    monkeypatch.setattr(S, "STAC_TIMEOUT", (2.0, 2.0))  # the proxy holds 'slow' answers 3 s: read timeouts
    with FaultProxy(pgstac.url, rates={"5xx": 0.3, "429": 0.1, "reset": 0.05, "slow": 0.05}, delay=3.0, seed=3) as api:
        preset = resolve("earth-search", COLLECTION, None, api.url)
        for _ in range(6):
            assert [i["id"] for i in S.search(preset, AOI)] == expected
        for _ in range(6):  # one item per page: the "next" page requests fail too, mid-pagination
            pages = S.open_client(api.url).search(collections=[COLLECTION], bbox=AOI, limit=1)
            assert sorted(i["id"] for i in pages.items_as_dicts()) == sorted(expected)
    assert api.stats["5xx"] + api.stats["429"] + api.stats["reset"] + api.stats["slow"] >= 2, api.stats
    record("STAC API: 5xx, 429, resets, timeouts (searches, pages)", api, "identical")


def test_unreachable_stac_api_is_one_line(monkeypatch):
    from tests.fixtures.services import free_port

    monkeypatch.setattr(S, "STAC_RETRIES", 1)
    r = CliRunner().invoke(
        app,
        [
            "search",
            "--catalog",
            "earth-search",
            "--stac-url",
            f"http://127.0.0.1:{free_port()}",
            "--bbox",
            "4",
            "50",
            "5",
            "51",
        ],
    )
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    REPORT.append(
        {
            "fault": "STAC API unreachable (connection refused)",
            "requests": "-",
            "injected": 1,
            "retried": S.STAC_RETRIES,
            "outcome": "clear error",
            "data lost": "none",
        }
    )


def test_s3_puts_are_retried(s3, monkeypatch, tmp_path):  # noqa: F811
    """Small files are one PUT each; a large one is a multipart upload (5 MiB parts here) whose every request
    (create, parts, completion) is retried. Each goes straight to its final key."""
    bucket = s3.bucket()
    monkeypatch.setattr(storage, "PART_SIZE", 5 << 20)
    with FaultProxy(s3.url, rates={"5xx": 0.3}, seed=5) as faulty:
        for key, value in {**s3.env, "AWS_ENDPOINT_URL": faulty.url, "AWS_ENDPOINT_URL_S3": faulty.url}.items():
            monkeypatch.setenv(key, value)
        payloads = {f"obj-{i}.bin": os.urandom(200_000 + i) for i in range(8)}
        payloads["large.bin"] = os.urandom((11 << 20) + 7)
        for name, payload in payloads.items():
            (tmp_path / name).write_bytes(payload)
            storage.put(tmp_path / name, f"s3://{bucket}/out/{name}")
    assert faulty.stats["5xx"] >= 2, faulty.stats
    for name, payload in payloads.items():
        assert s3.filesystem.open_input_stream(f"{bucket}/out/{name}").read() == payload
    listed = s3.filesystem.get_file_info(
        __import__("pyarrow.fs", fromlist=["FileSelector"]).FileSelector(f"{bucket}/out")
    )
    assert sorted(i.base_name for i in listed) == sorted(payloads)  # no temporary key, ever
    direct = storage.s3_client(f"s3://{bucket}?endpoint_override={s3.endpoint}&scheme=http")
    assert not direct.list_multipart_uploads(Bucket=bucket).get("Uploads")  # none left incomplete
    record("S3 PUT / multipart upload answering 5xx", faulty, "identical")


def test_expiring_planetary_computer_tokens_are_renewed(pgstac, blob_server, pc_stand_in, tmp_path):
    """Tokens live 61 s and planetary_computer renews those with under 60 s left, so every item signed more than
    a second after the previous one needs a new token; the stand-in refuses expired tokens (checked first)."""
    import time
    import urllib.error
    import urllib.request
    from dataclasses import replace as dc_replace

    import planetary_computer

    from stacsr.catalog.presets import PRESETS

    scenes = SC.make_scenes(blob_server, "planetary-computer", collection="s2-tokens")
    SC.load(pgstac, scenes)
    try:
        blob_server.set_token_lifetime(1)
        href = blob_server.rewrite_item(planetary_computer.sign(json.loads(json.dumps(scenes.items[0]))))["assets"][
            "B02"
        ]["href"]
        with urllib.request.urlopen(href, timeout=10) as r:
            assert r.status == 200  # a fresh token is accepted …
        time.sleep(1.5)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(href, timeout=10)
        assert e.value.code == 403  # … and refused once expired

        blob_server.set_token_lifetime(61)
        preset = dc_replace(
            PRESETS["planetary-computer"],
            url=pgstac.url,
            collection="s2-tokens",
            sign=lambda item: blob_server.rewrite_item(planetary_computer.sign(item)),
        )
        items = S.search(preset, AOI)

        class Slow(pipeline.Progress):
            def item(self, item_id: str, tiles: int) -> None:
                time.sleep(1.2)  # a long run: the next item is signed after the token fell under 60 s left

        before = len(blob_server.tokens_issued)
        blob_server.clear_requests()
        package = M.load("default")
        report = pipeline.enhance(
            items, preset, AOI, tmp_path / "out", package, LocalEngine(package), tile_size=64, progress=Slow()
        )
        assert len(report.items) == 2
        assert len(blob_server.tokens_issued) - before >= 2  # renewed during the run
        assert all(r.status in (200, 206) for r in blob_server.requests)  # no read with an expired token
        REPORT.append(
            {
                "fault": "PC tokens expiring during the run",
                "requests": len(blob_server.requests),
                "injected": len(blob_server.tokens_issued) - before,
                "retried": 0,
                "outcome": "renewed, complete",
                "data lost": "none",
            }
        )
    finally:
        blob_server.set_token_lifetime(3600)
        pgstac.delete_collection("s2-tokens")  # only ours: the module's other collections stay


def test_output_that_cannot_be_written_is_a_clear_error_and_leaves_nothing(tmp_path):
    """A full disk, as the process sees it: a 200 kB file-size limit (RLIMIT_FSIZE) makes every write beyond it
    fail (EFBIG) in the middle of the COG. One error line naming the file; nothing under the final name."""
    import resource
    import signal
    import subprocess
    import sys

    from affine import Affine

    data = np.random.default_rng(0).integers(100, 3000, (4, 200, 200)).astype(np.uint16)
    src = tmp_path / "in.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=200,
        height=200,
        count=4,
        dtype="uint16",
        crs="EPSG:32632",
        transform=Affine(10, 0, 600000, 0, -10, 5300000),
    ) as dst:
        dst.write(data)
    out = tmp_path / "out"
    out.mkdir()

    def full_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    cmd = [str(Path(sys.executable).with_name("stacsr")), "sr", str(src), str(out / "sr.tif"), "--no-ray"]
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=full_disk, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot write {out / 'sr.tif'}" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and list(out.iterdir()) == []
    REPORT.append(
        {
            "fault": "disk full mid-COG (file size limit)",
            "requests": "-",
            "injected": 1,
            "retried": 0,
            "outcome": "clear error",
            "data lost": "none",
        }
    )


def test_no_secret_in_logs_at_any_level(pgstac, blob_server, pc_stand_in, monkeypatch, caplog, tmp_path):
    """A signed enhance with every logger at DEBUG and GDAL's own debug output on: no token, signature or
    secret of the stand-in appears in any log record (stacsr.logs scrubs query strings from every record)."""
    import logging
    from dataclasses import replace as dc_replace

    import planetary_computer

    from stacsr.catalog.presets import PRESETS

    monkeypatch.setenv("CPL_DEBUG", "ON")
    scenes = SC.make_scenes(blob_server, "planetary-computer", collection="s2-logs")
    SC.load(pgstac, scenes)
    try:
        preset = dc_replace(
            PRESETS["planetary-computer"],
            url=pgstac.url,
            collection="s2-logs",
            sign=lambda item: blob_server.rewrite_item(planetary_computer.sign(item)),
        )
        before = len(blob_server.tokens_issued)
        with caplog.at_level(logging.DEBUG):
            logging.getLogger().setLevel(logging.DEBUG)
            package = M.load("default")
            items = S.search(preset, AOI)
            report = pipeline.enhance(items, preset, AOI, tmp_path / "out", package, LocalEngine(package), tile_size=64)
            logging.getLogger("probe").debug(
                "signed %s", blob_server.rewrite_item(planetary_computer.sign(items[0]))["assets"]["B02"]["href"]
            )
    finally:
        pgstac.delete_collection("s2-logs")
    assert len(report.items) == 2 and len(blob_server.tokens_issued) > before
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "signed http" in text and len(caplog.records) > 20  # hrefs really were logged, at DEBUG
    for secret in [blob_server.secret, *blob_server.issued_sigs, *blob_server.tokens_issued]:
        assert secret not in text
    assert "sig=" not in text
    REPORT.append(
        {
            "fault": "secrets in DEBUG logs (GDAL CPL_DEBUG on)",
            "requests": len(caplog.records),
            "injected": 0,
            "retried": 0,
            "outcome": "none found",
            "data lost": "none",
        }
    )


def test_sigkill_of_enhance_leaves_no_item_without_its_files(sources, pgstac, tmp_path):
    """``stacsr enhance`` killed (SIGKILL) as soon as its first COG is in place: every item in the catalogue has
    all its COGs, whole; no temporary or partial file sits under a final name; the re-run completes."""
    import signal
    import subprocess
    import sys
    import time

    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "out"
    args = [
        "enhance",
        "--catalog",
        "earth-search",
        "--stac-url",
        pgstac.url,
        "--collection",
        COLLECTION,
        "--bbox",
        *map(str, AOI),
        "--out",
        str(out),
        "--no-ray",
        "--tile-size",
        "64",
    ]
    log = tmp_path / "enhance.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("stacsr")), *args], stdout=f, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 120
    while not list(out.glob("*/*/*.tif")):
        assert proc.poll() is None and time.monotonic() < deadline, (
            f"enhance ended before a COG: {log.read_text()[-2000:]}"
        )
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    def published() -> list[str]:
        found = []
        for path in out.glob("*/*/*_sr.json"):  # items (<collection>/<tile>/catalog.json are not)
            item = json.loads(path.read_text())
            for asset in item["assets"].values():
                assert cog_validate(str(path.parent / asset["href"]), quiet=True)[0]
            found.append(item["id"])
        return found

    assert len(published()) < 2
    for tif in out.rglob("*.tif"):  # under a final name only whole COGs (a killed write leaves a hidden .part)
        if any(part.startswith(".stacsr-") for part in tif.relative_to(out).parts[:-1]):
            continue  # a hidden scratch folder: the next item's intermediates, being written when killed
        assert not tif.name.startswith(".") and cog_validate(str(tif), quiet=True)[0], tif
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert len(published()) == 2
    hidden = [p.relative_to(out) for p in out.rglob(".*")]
    assert hidden == []  # the killed run's scratch folder and half-written COG were removed by the re-run
    REPORT.append(
        {
            "fault": "SIGKILL of enhance after its first COG",
            "requests": "-",
            "injected": 1,
            "retried": 0,
            "outcome": "re-run completes",
            "data lost": "none",
        }
    )


def test_log_scrubbing_removes_every_kind_of_credential():
    import logging

    from stacsr.plumbing.redaction import looks_secret, scrub

    text = (
        "GET https://acc.blob.core.windows.net/c/B02.tif?st=2026&se=2026-01-01T12:52:44Z&sig=S3CR3T: 403 "
        "s3://AKIAABCDEFGHIJKLMNOP:hunter2@bucket/key Authorization: Bearer eyJ.abc-def Basic dXNlcjpw"
    )
    clean = scrub(text)
    for secret in ("S3CR3T", "se=", "hunter2", "AKIAABCDEFGHIJKLMNOP", "eyJ.abc-def", "dXNlcjpw"):
        assert secret not in clean, secret
    assert "https://acc.blob.core.windows.net/c/B02.tif" in clean and "s3://bucket/key" in clean
    assert looks_secret(text) and not looks_secret(clean.replace("Bearer ***", "").replace("Basic ***", ""))
    made = logging.getLogRecordFactory()("x", logging.DEBUG, __file__, 1, "read %s", (text,), None)  # what loggers call
    assert "S3CR3T" not in made.getMessage() and "hunter2" not in made.getMessage() and "eyJ" not in made.getMessage()
