"""``stacsr batch`` against real local services: pgstac with the Transactions extension as the publish target,
a moto S3 server as the output, the blob server for the source COGs and the session's Ray.

Four source items (the demo's two scenes, twice under other ids) over one area: outputs land in S3 under
their final keys only, items appear in the API with s3:// hrefs, pixels equal ``pipeline.enhance``'s; a re-run
writes and publishes nothing; deleting one output item redoes exactly that one; a model actor killed mid-run
costs nothing; a broken item fails alone with a clear error and exit code 1.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from stacsr import pipeline
from stacsr.batch import run as B
from stacsr.batch import spec as J
from stacsr.catalog.presets import resolve
from stacsr.cli import app
from stacsr.engine import LocalEngine, RayEngine
from stacsr.model import package as M
from tests.fixtures import scenes as SC
from tests.fixtures.dying import DyingRayEngine

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pystac-client: DoesNotConformTo SORT

COLLECTION = "s2-batch-test"
OUT_COLLECTION = "s2-batch-test-sr"
AOI = SC.world_bbox(172, 172, 268, 300)  # where both demo items overlap
BANDS = ("B02", "B03", "B04", "B08")


# ------------------------------------------------------------------ spec


def base_spec(**over) -> dict:
    spec = {
        "name": "t",
        "areas": [{"name": "a", "bbox": [4.3, 50.8, 4.4, 50.9]}],
        "output": "out",
        "publish": {"catalog": "out"},
    }
    spec.update(over)
    return spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown key colour"),
        ({"areas": [{"name": "a", "bbox": [5, 50, 4, 51]}]}, "areas[0] (a): bbox west (5.0) must be less than east"),
        ({"areas": [{"name": "a", "bbox": [4, 50, 5]}]}, "key areas[0].bbox must be a list of 4 numbers"),
        ({"areas": [{"name": "a", "mgrs": "99ZZZ"}]}, "is not an MGRS tile id"),
        ({"areas": [{"name": "a", "bbox": [4, 50, 5, 51], "mgrs": "31UFS"}]}, "exactly one of bbox, mgrs, geojson"),
        ({"output": None}, "missing key output"),
        ({"datetime": "2024-09-01/2024-06-01"}, "datetime"),
        ({"datetime": "since forever"}, "datetime"),
        ({"max_cloud": "low"}, "key max_cloud must be a number"),
        ({"resources": {"items_in_flight": 0}}, "resources.items_in_flight"),
        ({"resources": {"precision": "fp8"}}, "resources.precision: fp32, fp16 or bf16, not 'fp8'"),
        ({"output": "s3://b/p"}, "publish.catalog: a static catalogue needs a local output"),
        ({"publish": {"api": "ftp://x"}}, "is not an http(s) URL"),
        ({"stac_url": "https://x/api?sig=abc&se=2030"}, "credential"),
        ({"output": "s3://AKIAABCDEFGHIJKLMNOP:secret@bucket/x"}, "credential"),
    ],
)
def test_bad_specs_are_refused_with_the_key_named(change, message):
    with pytest.raises(J.SpecError) as e:
        J.from_dict(base_spec(**change))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_spec_relative_window_geojson_and_examples(tmp_path):
    now = datetime(2026, 3, 10, 12, 0, 0, tzinfo=timezone.utc)
    assert J.resolve_datetime("last 7 days", now) == "2026-03-03T12:00:00Z/2026-03-10T12:00:00Z"
    assert J.resolve_datetime("last 2 weeks", now).startswith("2026-02-24T12:00:00Z/")
    (tmp_path / "f.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [4.3, 50.8]}},
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [4.5, 50.95]}},
                ],
            }
        )
    )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(base_spec(areas=[{"name": "f", "geojson": "f.geojson"}])))
    spec = J.load(tmp_path / "job.yaml")
    assert J.area_bbox(spec.areas[0]) == (4.3, 50.8, 4.5, 50.95)
    root = Path(__file__).resolve().parent.parent
    examples = sorted((root / "jobs" / "examples").glob("*.yaml"))
    specs = [J.load(p) for p in examples if p.name != "train.yaml"]
    assert {s.name for s in specs} >= {"alps-weekly", "brussels-summer-2024"}
    with pytest.raises(J.SpecError, match="not valid YAML"):
        (tmp_path / "bad.yaml").write_text("name: [")
        J.load(tmp_path / "bad.yaml")


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def sources(pgstac, blob_server):
    """Four searchable items: the demo scenes, and a copy of them under other ids (a later date)."""
    first = SC.make_scenes(blob_server, "earth-search", collection=COLLECTION)

    def later(item):
        item["id"] += "-later"
        item["properties"]["datetime"] = item["properties"]["datetime"].replace("2024", "2025")

    second = SC.make_scenes(blob_server, "earth-search", collection=COLLECTION, edit=later)
    scenes = SC.Scenes("earth-search", COLLECTION, first.folder, first.items + second.items)
    yield from SC.loaded(pgstac, scenes)


@pytest.fixture()
def job(sources, pgstac, s3, monkeypatch, tmp_path) -> J.JobSpec:  # noqa: F811
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    pgstac.delete_items(OUT_COLLECTION)
    spec = J.from_dict(
        {
            "name": "demo-batch",
            "areas": [{"name": "overlap", "bbox": list(AOI)}],
            "catalog": "earth-search",
            "stac_url": pgstac.url,
            "collection": COLLECTION,
            "best_per_tile": False,
            "model": "default",
            "output": f"s3://{s3.bucket()}/sr",
            "publish": {"api": pgstac.url, "collection": OUT_COLLECTION},
            "resources": {"tile_size": 64, "items_in_flight": 2},
        }
    )
    return spec


def preset_of(spec: J.JobSpec):
    return resolve(spec.catalog, spec.collection, spec.bands, spec.stac_url)


def run(spec: J.JobSpec, engine) -> B.RunReport:
    return B.run(spec, preset_of(spec), M.load(spec.model), engine)


def objects(s3, spec: J.JobSpec) -> dict[str, tuple[int, float]]:  # noqa: F811
    from pyarrow import fs

    bucket_prefix = spec.output[len("s3://") :]
    infos = s3.filesystem.get_file_info(fs.FileSelector(bucket_prefix, recursive=True))
    return {i.path: (i.size, i.mtime.timestamp()) for i in infos if i.type == fs.FileType.File}


def api_items(pgstac) -> dict[str, dict]:
    import requests

    r = requests.get(f"{pgstac.url}/collections/{OUT_COLLECTION}/items", params={"limit": 100}, timeout=30)
    r.raise_for_status()
    return {f["id"]: f for f in r.json()["features"]}


def read_s3(s3, url: str) -> np.ndarray:  # noqa: F811
    from rasterio.io import MemoryFile

    with s3.filesystem.open_input_stream(url[len("s3://") :]) as f, MemoryFile(f.read()) as mem, mem.open() as src:
        return src.read(1)


def test_batch_to_s3_and_transactions_api_is_idempotent(job, s3, pgstac, ray_local, tmp_path):  # noqa: F811
    package = M.load("default")
    engine = RayEngine(package)
    try:
        first = run(job, engine)
        after_first = objects(s3, job)
        second = run(job, engine)
        after_second = objects(s3, job)
        deleted = sorted(api_items(pgstac))[0]
        import requests

        requests.delete(f"{pgstac.url}/collections/{OUT_COLLECTION}/items/{deleted}", timeout=30).raise_for_status()
        third = run(job, engine)
    finally:
        engine.close()

    d = first.to_dict()
    assert d["items"] == {"found": 4, "skipped": 0, "done": 4, "failed": 0, "nodata": 0, "to_do": 0}, d["outcomes"]
    assert d["tiles"] > 4 and d["km2"] > 0 and d["sha256"] == package.sha256
    for o in d["outcomes"]:  # where each item ran (a Ray node) and what it cost
        assert len(o["node"].split()) == 2 and o["stages"] and o["bytes_read"] > 0 and o["bytes_written"] > 0
    items = api_items(pgstac)
    assert len(items) == 4 and all(i.endswith("_sr_overlap") for i in items)
    cogs = [k for k in after_first if k.endswith(".tif")]
    assert len(cogs) == 16 and not any("/.tmp-" in k for k in after_first)  # only final keys remain
    for item in items.values():
        assert set(item["assets"]) == set(BANDS)
        for asset in item["assets"].values():
            assert asset["href"].startswith(job.output + f"/{OUT_COLLECTION}/")
            assert asset["href"][len("s3://") :] in after_first
        assert item["properties"]["stacsr:model"]["sha256"] == package.sha256
        assert item["properties"]["stacsr:area"] == "overlap"

    # the pixels are exactly what the one-off pipeline makes from the same item and area
    one = sorted(items)[0]
    src_id = one[: -len("_sr_overlap")].removesuffix("_sr")
    src_item = next(i for i in preset_search(job) if i["id"] == src_id)
    local = tmp_path / "local"
    pipeline.enhance([src_item], preset_of(job), AOI, local, package, LocalEngine(package), tile_size=64)
    for band in BANDS:
        expected = rasterio.open(next(local.rglob(f"*_{band}.tif"))).read(1)
        assert np.array_equal(read_s3(s3, items[one]["assets"][band]["href"]), expected)

    report = json.loads(s3.filesystem.open_input_stream(B.report_url(job)[len("s3://") :]).read())
    assert report["items"] == third.to_dict()["items"]  # latest.json is the last run's
    assert second.to_dict()["items"] == {"found": 4, "skipped": 4, "done": 0, "failed": 0, "nodata": 0, "to_do": 0}
    changed = {k for k in after_second if after_first.get(k) != after_second[k]}
    assert changed and all("/_runs/" in k for k in changed)  # a re-run writes nothing but its report
    t = third.to_dict()
    assert t["items"]["done"] == 1 and t["items"]["skipped"] == 3
    assert [o["item"] for o in t["outcomes"] if o["status"] == "done"] == [deleted]
    assert deleted in api_items(pgstac)
    # no credential anywhere a run writes: items in the API, run reports, object keys
    written = json.dumps(api_items(pgstac)) + json.dumps(report) + " ".join(objects(s3, job))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert s3.env[key] not in written


def preset_search(spec: J.JobSpec) -> list[dict]:
    from stacsr.catalog.search import search

    return search(preset_of(spec), AOI)


def test_a_worker_lost_mid_item_costs_nothing(job, s3, pgstac, ray_local, tmp_path):  # noqa: F811
    """Each item's worker process dies once mid-item: every item runs again, identical, published once."""
    package = M.load("default")
    reference = replace(
        job, output=job.output + "-reference", publish=J.Publish(api=pgstac.url, collection=OUT_COLLECTION)
    )
    engine = DyingRayEngine(package, tmp_path / "markers", after=3)
    faulty = run(job, engine)
    hrefs = {i: it["assets"] for i, it in api_items(pgstac).items()}
    pgstac.delete_items(OUT_COLLECTION)
    clean = run(reference, RayEngine(package))
    assert engine.deaths() == 4  # every item lost its process once
    assert faulty.to_dict()["items"]["done"] == 4 and clean.to_dict()["items"]["done"] == 4
    now = api_items(pgstac)
    assert sorted(now) == sorted(hrefs), (sorted(now), sorted(hrefs))
    for item_id, item in now.items():
        assets = item["assets"]
        assert all(a["href"].startswith(reference.output) for a in assets.values())
        for band in BANDS:
            assert np.array_equal(read_s3(s3, hrefs[item_id][band]["href"]), read_s3(s3, assets[band]["href"]))


class RaisingEngine(LocalEngine):
    """The local engine, whose model raises on the third tile of the first image it gets (a model bug on odd
    input); the other images go through."""

    def __init__(self, package) -> None:
        super().__init__(package)
        self.calls, self.raised, self.tiles = 0, 0, 0
        launch = self.predict.launch

        def failing(batch):
            self.tiles += 1
            if self.calls == 1 and self.tiles == 3:
                self.raised += 1
                raise RuntimeError("model failed on tile 2: NaN in activations")
            return launch(batch)

        self.predict.launch = failing

    def submit(self, source, cores, halo, sink, progress=None):
        self.calls, self.tiles = self.calls + 1, 0
        return super().submit(source, cores, halo, sink, progress)


def test_a_model_error_on_one_tile_fails_that_item_and_the_batch_goes_on(job, pgstac):
    spec = replace(job, resources=J.Resources(tile_size=64, items_in_flight=1))
    engine = RaisingEngine(M.load("default"))
    report = run(spec, engine).to_dict()
    assert engine.raised == 1
    failed = [o for o in report["outcomes"] if o["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == "model failed on tile 2: NaN in activations"
    assert report["items"]["done"] == 3 and not report["ok"]
    published = api_items(pgstac)
    assert failed[0]["item"] not in published and len(published) == 3  # nothing published for the failed item


def test_a_broken_item_fails_alone_and_the_exit_code_says_so(sources, pgstac, tmp_path, ray_local):
    broken_id = sources.items[0]["id"]
    blue = sources.file(broken_id, "B02")
    hidden = blue.with_name("B02.hidden")
    blue.rename(hidden)  # this item's blue band is gone from the object store
    out = tmp_path / "out"
    spec = {
        "name": "broken",
        "areas": [{"name": "overlap", "bbox": list(AOI)}],
        "catalog": "earth-search",
        "stac_url": pgstac.url,
        "collection": COLLECTION,
        "best_per_tile": False,
        "output": str(out),
        "publish": {"catalog": str(out)},
        "resources": {"tile_size": 64},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    try:
        result = CliRunner().invoke(app, ["batch", str(tmp_path / "job.yaml")], env={"COLUMNS": "200"})
    finally:
        hidden.rename(blue)
    assert result.exit_code == 1, result.output
    report = json.loads((out / "_runs" / "broken" / "latest.json").read_text())
    assert report["items"]["failed"] == 1 and report["items"]["done"] == 3 and not report["ok"]
    failed = next(o for o in report["outcomes"] if o["status"] == "failed")
    assert failed["item"] == f"{broken_id}_sr_overlap" and "B02" in failed["error"]
    catalog = json.loads((out / "catalog.json").read_text())
    assert catalog["id"] == "stacsr"
    published = sorted(p.parent.name for p in out.glob(f"{COLLECTION}-sr/*/*_sr_*.json"))  # items, not tiles
    assert len(published) == 3 and not any(p.startswith(broken_id + "_") for p in published)
    assert not list((out / f"{COLLECTION}-sr").glob(f"{failed['item']}/*.tif"))  # nothing left for the failed one


# ------------------------------------------------------------------ as a Ray job on a `ray start` cluster


def distinct_free_ports(n: int) -> list[int]:
    """``n`` different free ports on loopback (all sockets held open together, so no port comes twice)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_stacsr_batch_submitted_as_a_ray_job(sources, pgstac, tmp_path):
    """``ray start --head`` on loopback, then ``JobSubmissionClient.submit_job("stacsr batch job.yaml")``: the job
    joins that cluster (RAY_ADDRESS set by Ray), succeeds, and its outputs and report are there."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.fixtures.services import HOST, RAY_TEST_ENV, wait_for_http

    out = tmp_path / "out"
    spec = {
        "name": "submitted",
        "areas": [{"name": "overlap", "bbox": list(AOI)}],
        "catalog": "earth-search",
        "stac_url": pgstac.url,
        "collection": COLLECTION,
        "best_per_tile": False,
        "output": str(out),
        "publish": {"catalog": str(out)},
        "resources": {"cpus_per_item": 1, "tile_size": 64},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    temp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths live under it
    gcs, dash, agent, client_port = distinct_free_ports(4)
    env = {**os.environ, **RAY_TEST_ENV}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "ray-head.log"
    bin_dir = Path(sys.executable).parent
    cmd = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        f"--node-ip-address={HOST}",
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--dashboard-host={HOST}",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent}",
        f"--ray-client-server-port={client_port}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    with open(log, "wb") as f:
        head = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://{HOST}:{dash}/api/version", 90, head, log)
        client = JobSubmissionClient(f"http://{HOST}:{dash}")
        job_id = client.submit_job(entrypoint=f"{bin_dir / 'stacsr'} batch {tmp_path / 'job.yaml'}")
        deadline = time.monotonic() + 240
        while (status := client.get_job_status(job_id)) not in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.STOPPED,
        }:
            assert time.monotonic() < deadline, client.get_job_logs(job_id)
            time.sleep(1)
        logs = client.get_job_logs(job_id)
    finally:
        try:
            os.killpg(
                head.pid, signal.SIGTERM
            )  # `ray start --block` stops its cluster; never `ray stop` (stops every Ray)
            head.wait(60)
        except ProcessLookupError:
            pass  # it already ended (the assertion above says why)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", temp], check=False)
    assert status == JobStatus.SUCCEEDED, logs
    assert "Ray, one item per node (1 CPU each)" in logs  # $RAY_ADDRESS (set by the job) means Ray
    report = json.loads((out / "_runs" / "submitted" / "latest.json").read_text())
    assert report["ok"] and report["items"]["done"] == 4
    assert len(list(out.glob(f"{COLLECTION}-sr/*/*.tif"))) == 16


def test_sigkill_between_cogs_and_item_leaves_nothing_half_done(sources, pgstac, tmp_path):
    """``stacsr batch`` killed (SIGKILL) as soon as its first COG is in place: no item points at a missing or
    partial file, no partial COG sits under a final name, and the re-run finishes the job."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    spec = {
        "name": "killed",
        "areas": [{"name": "overlap", "bbox": list(AOI)}],
        "catalog": "earth-search",
        "stac_url": pgstac.url,
        "collection": COLLECTION,
        "best_per_tile": False,
        "output": str(out),
        "publish": {"catalog": str(out)},
        "resources": {"tile_size": 64, "items_in_flight": 1},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    cmd = [str(Path(sys.executable).with_name("stacsr")), "batch", str(tmp_path / "job.yaml"), "--no-ray"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob(f"{COLLECTION}-sr/*/*.tif")):
        assert proc.poll() is None and time.monotonic() < deadline, "the batch ended before writing a COG"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    def check_published() -> int:
        items = list(out.glob(f"{COLLECTION}-sr/*/*_sr_*.json"))  # items, not tile sub-catalogues
        for path in items:
            for asset in json.loads(path.read_text())["assets"].values():
                with rasterio.open(path.parent / asset["href"]) as src:  # present and complete
                    src.read(1, out_shape=(1, 8, 8))
        return len(items)

    assert check_published() < 4  # killed mid-job
    killed = json.loads((out / "_runs" / "killed" / "latest.json").read_text())  # written before the first item
    assert not killed["finished"] and killed["items"]["found"] == 4
    assert killed["items"]["to_do"] == 4 - len(killed["outcomes"]) > 0
    from rio_cogeo.cogeo import cog_validate

    for tif in out.rglob("*.tif"):  # a file under a final name is a whole COG (written, then renamed)
        assert cog_validate(str(tif), quiet=True)[0], tif
        with rasterio.open(tif) as src:
            assert src.read(1).any()
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "job.yaml"), "--no-ray"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((out / "_runs" / "killed" / "latest.json").read_text())
    assert report["items"]["done"] + report["items"]["skipped"] == 4 and report["items"]["done"] >= 1
    assert report["finished"] and report["items"]["to_do"] == 0
    assert check_published() == 4


def test_a_static_batch_with_its_own_collection_skips_its_outputs_on_a_re_run(sources, pgstac, tmp_path):
    """``publish.collection`` names one folder for COGs and item JSON alike, so a re-run finds what it did."""
    out = tmp_path / "out"
    job = J.from_dict(
        {
            "name": "own",
            "areas": [{"name": "overlap", "bbox": list(AOI)}],
            "catalog": "earth-search",
            "stac_url": pgstac.url,
            "collection": COLLECTION,
            "best_per_tile": False,
            "output": str(out),
            "publish": {"catalog": str(out), "collection": "my-sr"},
            "resources": {"tile_size": 64},
        }
    )
    engine = LocalEngine(M.load("default"))
    first, second = run(job, engine).to_dict(), run(job, engine).to_dict()
    assert first["items"]["done"] == 4 and second["items"] == {
        "found": 4,
        "skipped": 4,
        "done": 0,
        "failed": 0,
        "nodata": 0,
        "to_do": 0,
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "_runs",
        "catalog.json",
        "catalog.lock",
        "items.parquet",
        "models",
        "my-sr",
    ]  # models: the MLM item + weights; items.parquet: the index; catalog.lock: the writers' lock
    for doc in (out / "my-sr").glob("*/*_sr_*.json"):
        assert sorted(p.name for p in doc.parent.glob("*.tif")) == sorted(f"{doc.stem}_{b}.tif" for b in BANDS)
    assert len(list((out / "my-sr").glob("*/*_sr_*.json"))) == 4
    assert json.loads((out / "my-sr" / "collection.json").read_text())["id"] == "my-sr"
