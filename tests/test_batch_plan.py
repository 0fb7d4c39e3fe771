"""``stacsr batch --dry-run``, the run report written as items finish, and a run publishing into two output
collections, against the local pgstac and blob server (the scenes of ``tests/test_batch.py``)."""

from __future__ import annotations

import copy
import io
import json
import socket
from pathlib import Path

import pytest
import requests
import yaml
from rich.console import Console
from typer.testing import CliRunner

from stacsr.batch import plan as P
from stacsr.batch import run as B
from stacsr.batch import spec as J
from stacsr.catalog.presets import resolve
from stacsr.cli import app
from stacsr.engine import LocalEngine
from stacsr.model import package as M
from tests.test_batch import AOI, BANDS, COLLECTION, sources  # noqa: F401  (the same four items, module-scoped)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pystac-client: DoesNotConformTo SORT

OTHER = "s2-batch-other"


def spec_dict(stac_url: str, out: Path, **over) -> dict:
    spec = {
        "name": "planned",
        "areas": [{"name": "overlap", "bbox": list(AOI)}],
        "catalog": "earth-search",
        "stac_url": stac_url,
        "collection": COLLECTION,
        "best_per_tile": False,
        "output": str(out),
        "publish": {"catalog": str(out)},
        "resources": {"tile_size": 64},
    }
    spec.update(over)
    return spec


def run(spec: J.JobSpec) -> B.RunReport:
    package = M.load(spec.model)
    return B.run(spec, resolve(spec.catalog, spec.collection, spec.bands, spec.stac_url), package, LocalEngine(package))


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")} if folder.exists() else {}


def dry_run_cli(monkeypatch, job: Path) -> tuple[int, str]:
    """``stacsr batch JOB --dry-run``, its plan rendered on an 80-column console; no engine may start."""
    import stacsr.cli.imagery as imagery

    buffer = io.StringIO()
    monkeypatch.setattr(imagery, "out", Console(file=buffer, width=80, color_system=None))

    def no_engine(*args, **kwargs):
        raise AssertionError("a dry run started an engine")

    monkeypatch.setattr(imagery, "engine_for", no_engine)
    result = CliRunner().invoke(app, ["batch", str(job), "--dry-run"], env={"COLUMNS": "80"})
    return result.exit_code, buffer.getvalue() + result.output


def check_80_columns(text: str) -> None:
    assert "…" not in text and "..." not in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text


def test_dry_run_plans_and_writes_nothing_then_uses_the_earlier_run(sources, pgstac, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec_dict(pgstac.url, out)))
    before = files(tmp_path)
    code, text = dry_run_cli(monkeypatch, job)
    assert code == 0, text
    assert files(tmp_path) == before and not out.exists()  # no folder, no report, no catalogue
    check_80_columns(text)
    assert "dry run, nothing written" in text and "unknown: no earlier run" in text
    spec = J.load(job)
    preset = resolve(spec.catalog, spec.collection, spec.bands, spec.stac_url)
    package = M.load(spec.model)
    first = P.dry_run(spec, preset, package)
    assert (len(first.items), len(first.to_do), len(first.skipped), first.earlier) == (4, 4, 0, None)
    assert first.read_fraction == P.READ_FRACTION and first.write_fraction == P.WRITE_FRACTION

    report = run(spec).to_dict()
    assert report["items"]["done"] == 4
    by_id = {o["item"]: o for o in report["outcomes"]}
    for planned in first.to_do:  # the plan's windows are the run's
        assert planned.output_pixels == by_id[planned.item]["output_pixels"]
        assert planned.km2 == pytest.approx(by_id[planned.item]["km2"])

    before = files(tmp_path)
    second = P.dry_run(spec, preset, package)
    code, text = dry_run_cli(monkeypatch, job)
    assert code == 0 and files(tmp_path) == before, text
    check_80_columns(text)
    assert (len(second.skipped), len(second.to_do), second.node_hours) == (4, 0, 0.0)
    earlier = second.earlier
    assert earlier is not None and earlier.started == report["started"]
    assert earlier.output_pixels == report["output_pixels"] and earlier.node_seconds == report["node_seconds"] > 0

    redo = sorted(by_id)[0]  # its item JSON gone: the plan redoes exactly that one
    (out / f"{COLLECTION}-sr" / redo / f"{redo}.json").unlink()
    third = P.dry_run(spec, preset, package)
    assert [i.item for i in third.to_do] == [redo]
    o = by_id[redo]
    hours = third.node_hours
    assert hours == pytest.approx(o["output_pixels"] / earlier.pixels_per_node_second / 3600)
    # the ratios measured by the run stand in for the assumed ones
    assert third.write_fraction == pytest.approx(report["bytes_written"] / (report["output_pixels"] * len(BANDS) * 2))
    assert third.read_fraction == pytest.approx(
        report["bytes_read"] / (report["output_pixels"] / package.card.scale**2 * len(BANDS) * 2)
    )
    assert 0.5 < third.write_bytes() / o["bytes_written"] < 2
    raw = o["output_pixels"] * len(BANDS) * 2
    assert third.scratch_per_item == pytest.approx(raw * (0.5 + 0.5))  # compressed blocks + COGs (local output)
    code, text = dry_run_cli(monkeypatch, job)
    assert code == 0, text
    check_80_columns(text)
    assert "node-hours" in text and "output px per node-second" in text


def test_dry_run_table_fits_80_columns_with_big_numbers(monkeypatch, tmp_path):
    """2,000 whole tiles over long-named areas: full numbers, nothing cut, at 80 columns."""
    plan = P.Plan(
        "europe-week",
        "stacsr-sr4 1.0.0",
        "ab" * 32,
        "2026-03-03T12:00:00Z/2026-03-10T12:00:00Z",
        4,
        4,
        2,
        "s3://bucket/sr/_runs/europe-week/latest.json",
        0.5,
        earlier=P.EarlierRun("2026-03-03T12:00:00Z", 10_000_000_000, 3600.0, 0.71, 0.33),
    )
    for i in range(2000):
        area = "a-very-long-area-name-for-the-whole-of-central-europe" if i % 2 else "alps"
        status = "skipped" if i % 7 == 0 else "to do"
        plan.items.append(P.PlannedItem(f"S2A_{i}_sr_{area}", area, status, "c", None, 12056.04, 10980**2, 43920**2))
    plan.items.append(P.PlannedItem("bad", "alps", "refused", error="item bad: the area does not overlap it"))
    monkeypatch.setattr(P, "dry_run", lambda *a, **k: plan)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec_dict("http://127.0.0.1:1", tmp_path / "out")))
    import stacsr.cli.imagery as imagery

    monkeypatch.setattr(imagery, "preset_from", lambda *a: None)
    code, text = dry_run_cli(monkeypatch, job)
    assert code == 0, text
    check_80_columns(text)
    total = next(line for line in text.splitlines() if "total" in line)
    assert "2,001" in total and "1,714" in total
    assert f"{1714 * 12056.04:,.2f}" in total
    assert "refused bad: item bad: the area does not overlap it" in text
    assert P.size(41.2e12) == "41.2 TB" and P.size(5.07e9) == "5.07 GB" and P.size(999) == "999 B"


def test_the_report_is_written_as_items_finish(sources, pgstac, tmp_path, monkeypatch):  # noqa: F811
    """Each item finished rewrites the report (interval 0), which tells the items still to do and
    ``finished: false`` until the end; per item: node, seconds per stage, bytes read and written."""
    out = tmp_path / "out"
    spec = J.from_dict(spec_dict(pgstac.url, out, name="progress"))
    seen: list[tuple[bool, int, int]] = []
    write_report = B.write_report

    def watched(report, spec):
        d = json.loads(json.dumps(report.to_dict()))
        seen.append((d["finished"], len(d["outcomes"]), d["items"]["to_do"]))
        return write_report(report, spec)

    monkeypatch.setattr(B, "write_report", watched)
    monkeypatch.setattr(B, "REPORT_INTERVAL", 0.0)
    report = run(spec).to_dict()
    # the start, each item but the last, the end (which follows the last item at once)
    assert seen == [(False, 0, 4), (False, 1, 3), (False, 2, 2), (False, 3, 1), (True, 4, 0)]
    final = json.loads((out / "_runs" / "progress" / "latest.json").read_text())
    assert final["finished"] and final["items"]["to_do"] == 0 and final == {**report, "updated": final["updated"]}
    for o in final["outcomes"]:
        assert o["status"] == "done" and o["node"].split()[0] == socket.gethostname()
        assert set(o["stages"]) == {"read", "model", "write", "tiles", "cog"} and all(
            v > 0 for v in o["stages"].values()
        )
        assert o["bytes_read"] > 0 and o["finished"] >= o["started"] > 0
        cogs = (out / f"{COLLECTION}-sr" / o["item"]).glob("*.tif")
        assert o["bytes_written"] == sum(p.stat().st_size for p in cogs)
    assert final["bytes_written"] == sum(o["bytes_written"] for o in final["outcomes"])
    assert 0 < final["node_seconds"] <= final["seconds"] and final["nodes"] == 1

    # a long interval: the start and the end only (the items finished meanwhile wait for the end)
    seen.clear()
    monkeypatch.setattr(B, "REPORT_INTERVAL", 3600.0)
    spec = J.from_dict(spec_dict(pgstac.url, tmp_path / "out2", name="progress"))
    assert run(spec).to_dict()["items"]["done"] == 4 and seen == [(False, 0, 4), (True, 4, 0)]


def test_node_seconds_count_overlapping_items_once():
    o = [
        B.Outcome("a", "done", node="n1", started=100.0, finished=110.0),
        B.Outcome("b", "done", node="n1", started=105.0, finished=112.0),
        B.Outcome("c", "done", node="n2", started=100.0, finished=104.0),
        B.Outcome("d", "done", seconds=3.0),  # no times: its own seconds
    ]
    assert B.node_seconds(o) == 12.0 + 4.0 + 3.0


def test_a_run_publishes_into_two_output_collections(sources, pgstac, tmp_path, monkeypatch):  # noqa: F811
    """Items from two source collections, no ``publish.collection``: both ``<source>-sr`` collections are created
    in the STAC API and hold their items (one collection-ready flag for all once left the second uncreated)."""
    plan = B.plan

    def two_sources(*args):
        tasks = plan(*args)
        moved = []
        for i, task in enumerate(tasks):
            item = copy.deepcopy(task.item)
            if i % 2:
                item["collection"] = OTHER
            moved.append(B.Task(item, task.area, task.bbox))
        return moved

    monkeypatch.setattr(B, "plan", two_sources)
    out = tmp_path / "out"
    spec = J.from_dict(spec_dict(pgstac.url, out, name="two", publish={"api": pgstac.url}))
    for c in (f"{COLLECTION}-sr", f"{OTHER}-sr"):
        pgstac.delete_collection(c)
    report = run(spec).to_dict()
    assert report["items"]["done"] == 4, report["outcomes"]
    assert {f"{COLLECTION}-sr", f"{OTHER}-sr"} <= set(pgstac.collection_ids())
    for c in (f"{COLLECTION}-sr", f"{OTHER}-sr"):
        r = requests.get(f"{pgstac.url}/collections/{c}/items", params={"limit": 10}, timeout=30)
        r.raise_for_status()
        assert len(r.json()["features"]) == 2, c
    target = B.Target(spec, M.load("default"))  # one publisher per collection, never swapped
    a, b = target._api(f"{COLLECTION}-sr"), target._api(f"{OTHER}-sr")
    assert a is target._api(f"{COLLECTION}-sr") and a.collection_id != b.collection_id
