"""Static catalogues under several writers, killed writers and earlier versions' catalogues.

Writers are real processes (``python -m tests.fixtures.catalogue ROOT START COUNT``, one ``publish_static``
call per item, as a batch does). After each scenario the catalogue must hold exactly the item files on disk,
every one reachable through pystac and linked once, every JSON valid against the vendored schemas, and the
stac-geoparquet index must have one row per item with the item's fields.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pystac
import pytest

from stacsr.catalog import index, static
from stacsr.catalog.items import build_collection
from stacsr.catalog.publish import publish_static
from tests.fixtures import catalogue as C
from tests.fixtures.stac import require_schemas, validate_stac

REPO = Path(__file__).resolve().parent.parent


def writer(root: Path, start: int, count: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.fixtures.catalogue", str(root), str(start), str(count)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)


def item_files(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in (root / C.COLLECTION).glob("*/*_sr.json")}


def check_catalogue(root: Path, validate: bool = True) -> set[str]:
    """The invariants above; returns the item ids."""
    on_disk = item_files(root)
    catalog = pystac.Catalog.from_file(str(root / "catalog.json"))
    read = [i.id for i in catalog.get_items(recursive=True)]
    assert sorted(read) == sorted(on_disk)  # every item written is linked, once
    links = [
        lk
        for p in (root / C.COLLECTION).rglob("c*.json")  # catalog.json, collection.json
        for lk in json.loads(p.read_text())["links"]
        if lk["rel"] == "item"
    ]
    assert len(links) == len(on_disk)
    rows = {r["id"]: r for r in index.read(root)}
    assert sorted(rows) == sorted(on_disk) and len(index.read(root)) == len(rows)  # the index: one row per item
    for item_id, path in on_disk.items():
        doc = json.loads(path.read_text())
        when = [pystac.utils.str_to_datetime(d["properties"]["datetime"]) for d in (rows[item_id], doc)]
        assert rows[item_id]["bbox"] == doc["bbox"] and when[0] == when[1]
        assert (root / rows[item_id]["assets"]["B04"]["href"]) == (path.parent / doc["assets"]["B04"]["href"]).resolve()
    if validate:
        require_schemas()
        for path in root.rglob("*.json"):
            if path.name != static.JOURNAL:
                validate_stac(json.loads(path.read_text()))
    assert not (root / static.JOURNAL).exists()
    assert not [p for p in root.rglob("*") if p.name.endswith(".part")]
    return set(on_disk)


def test_four_writers_at_once_lose_nothing(tmp_path):
    procs = [writer(tmp_path, 1000 * k, 50) for k in range(4)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    ids = check_catalogue(tmp_path)
    assert len(ids) == 200 and ids == {i for out in outs for i in out}
    collection = json.loads((tmp_path / C.COLLECTION / "collection.json").read_text())
    assert len([lk for lk in collection["links"] if lk["rel"] == "child"]) == len(C.TILES)  # small JSON: tiles only
    ((start, end),) = collection["extent"]["temporal"]["interval"]
    assert start[:10] == "2021-01-01" and end[:10] == C.source(3049)["properties"]["datetime"][:10]


def test_a_re_run_replaces_an_item_in_place(tmp_path):
    for i in (0, 1, 2, 1, 25):  # item 1 again; item 25: the tile of item 0, five days later
        C.publish(tmp_path, i)
    assert len(check_catalogue(tmp_path, validate=False)) == 4  # each linked once, one index row each


DIE = "def die(*a, **k): os.kill(os.getpid(), signal.SIGKILL)\n"
DIES_ON_REPLACE = "replace = os.replace\nos.replace = lambda a, b: die() if {} else replace(a, b)\n"
MOMENTS = {  # where the writer dies: Python run in it before it publishes item 3
    "writing-journal": DIES_ON_REPLACE.format(f"Path(b).name == {static.JOURNAL!r}"),  # item 3 not begun
    "before-linking": "static._ensure_link = die\n",  # item 3 written, not linked
    "writing-year": DIES_ON_REPLACE.format("Path(b).parent.name.isdigit()"),  # its year catalogue half replaced
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_writer_killed_mid_publish_is_repaired_by_the_next(tmp_path, moment):
    for i in range(3):
        C.publish(tmp_path, i)
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from stacsr.catalog import static\n"
        "from tests.fixtures import catalogue as C\n"
        f"{DIE}{MOMENTS[moment]}"
        f"C.publish({str(tmp_path)!r}, 3)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert killed.returncode == -signal.SIGKILL
    if "os.replace" in MOMENTS[moment]:
        assert list(tmp_path.rglob("*.part"))  # a temporary file left for the next run to remove
    half_done = f"{C.source(3)['id']}_sr"
    begun = moment != "writing-journal"
    assert (half_done in item_files(tmp_path)) == begun and (tmp_path / static.JOURNAL).exists() == begun
    C.publish(tmp_path, 4)  # the next run: not blocked by the dead writer's lock, and it finishes its work
    finished = {f"{C.source(i)['id']}_sr" for i in (0, 1, 2, 4)} | ({half_done} if begun else set())
    assert check_catalogue(tmp_path) == finished


@pytest.mark.parametrize("delay", [0.0, 0.007, 0.019])
def test_a_writer_killed_at_any_moment_leaves_a_valid_catalogue(tmp_path, delay):
    finished = []
    for attempt in range(3):  # killed three times, somewhere inside a publication (or an index merge)
        proc = writer(tmp_path, 1000 * attempt, 10_000)
        for _ in range(27 + 8 * attempt):
            finished.append(proc.stdout.readline().strip())
        time.sleep(delay * (attempt + 1))
        proc.send_signal(signal.SIGKILL)
        finished += proc.stdout.read().split()
        proc.wait()
    C.publish(tmp_path, 20_000)
    ids = check_catalogue(tmp_path, validate=False)
    assert set(finished) <= ids and f"{C.source(20_000)['id']}_sr" in ids


def legacy_catalogue(root: Path, n: int) -> None:
    """A catalogue as stacsr wrote it before sub-catalogues: items linked straight from the collection."""
    items = [C.item(root, i) for i in range(n)]
    catalog = pystac.Catalog(static.CATALOG_ID, "Super-resolved Sentinel-2 imagery written by stacsr.", title="stacsr")
    collection = build_collection(items, C.COLLECTION, C.MODEL, "sentinel-2-l2a")
    catalog.add_child(collection)
    for item in items:
        collection.add_item(item)
    catalog.normalize_hrefs(str(root) + os.sep)
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)


def test_a_catalogue_of_an_earlier_version_stays_readable_and_grows(tmp_path):
    legacy_catalogue(tmp_path, 3)
    old = C.item(tmp_path, 1)
    publish_static(tmp_path, [old], C.COLLECTION, C.MODEL, "sentinel-2-l2a")  # a re-run replaces it in place
    C.publish(tmp_path, 500)  # a new item goes to a sub-catalogue
    ids = check_catalogue(tmp_path)
    assert len(ids) == 4
    collection = json.loads((tmp_path / C.COLLECTION / "collection.json").read_text())
    assert len([lk for lk in collection["links"] if lk["rel"] == "item"]) == 3  # the old items, linked once
    new = json.loads(next((tmp_path / C.COLLECTION).glob(f"*/{C.source(500)['id']}_sr.json")).read_text())
    parent = next(lk["href"] for lk in new["links"] if lk["rel"] == "parent")
    assert parent == f"../{C.TILES[0]}/{C.source(500)['properties']['datetime'][:4]}/catalog.json"
    (bbox,) = collection["extent"]["spatial"]["bbox"]
    assert bbox[2] >= new["bbox"][2] and bbox[0] <= new["bbox"][0]


def test_the_index_is_rebuilt_by_the_command_when_lost(tmp_path):
    from typer.testing import CliRunner

    from stacsr.cli import app

    for i in range(5):
        C.publish(tmp_path, i)
    before = sorted(json.dumps(r, sort_keys=True) for r in index.read(tmp_path))
    for part in index.parts(tmp_path):
        part.unlink()
    result = CliRunner().invoke(app, ["catalog", "index", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "5 items" in result.output
    assert sorted(json.dumps(r, sort_keys=True) for r in index.read(tmp_path)) == before
    bad = CliRunner().invoke(app, ["catalog", "index", str(tmp_path / "nothing")])
    assert bad.exit_code != 0 and "not a static catalogue" in bad.output
    assert not (tmp_path / "nothing").exists()
