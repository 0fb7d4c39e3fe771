"""``stacsr batch``: every item of a job spec's areas and time window, super-resolved and published, idempotently.

    plan (search each area) → drop items already done (same output id and model sha256 in the target)
    → per item, at most ``items_in_flight`` at once: read window → tiles on the shared engine → COGs written
      locally, put under a temporary key and moved into place → item published (upsert) once every asset exists
    → run report JSON at ``<output>/_runs/<job name>/latest.json`` (and a timestamped copy), rewritten as
      items finish (``"finished": false`` and the items still to do until the end; at most every
      :data:`REPORT_INTERVAL` seconds), so a run killed at its deadline leaves a true report

:func:`stacsr.batch.plan.dry_run` is the same plan without running anything (``stacsr batch --dry-run``).
A failing item is recorded with its one-line error and does not stop the others; :attr:`RunReport.ok` says
whether all succeeded. Re-running after a crash redoes only what has no published item with this model.
Output item ids are ``<source id>_sr_<area name>``, so one source item over two areas gives two outputs.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import pystac

from stacsr.batch.spec import Area, JobSpec, area_bbox
from stacsr.catalog.items import build_collection, output_names
from stacsr.catalog.presets import Preset
from stacsr.catalog.publish import (
    ApiPublisher,
    GroupPublisher,
    PublishError,
    item_folder,
    publish_model,
    publish_static,
)
from stacsr.catalog.search import best_per_tile, search
from stacsr.engine import Engine, LocalEngine, RunStats
from stacsr.engine.ray_items import MAX_QUEUED
from stacsr.model.package import ModelPackage
from stacsr.pipeline import Job, item_window, model_ref, process_item
from stacsr.plumbing import storage
from stacsr.plumbing.redaction import first_line

RUNS_FOLDER = "_runs"
REPORT_INTERVAL = 5.0  # seconds: the run report is rewritten at most this often while items finish
Log = Callable[[str], None]


@dataclass(frozen=True)
class Task:
    """One output to make: a source item over one area."""

    item: dict[str, Any]
    area: Area
    bbox: tuple[float, float, float, float] | None

    def output_names(self, collection: str | None) -> tuple[str, str]:
        """``(collection id, item id)`` of this output (:func:`stacsr.catalog.items.output_names`)."""
        return output_names(self.item, self.area.name, collection)


@dataclass
class Outcome:
    item: str
    status: str  # done | skipped (already published with this model) | nodata | failed
    error: str | None = None
    km2: float = 0.0
    output_pixels: int = 0
    tiles: int = 0
    seconds: float = 0.0  # the whole item, as the driver saw it (done-check, run, publish)
    node: str = ""  # where it ran (host, and Ray node id on a cluster): stacsr.engine.RunStats
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage on its node (RunStats.seconds)
    bytes_read: int = 0  # compressed source bytes fetched
    bytes_written: int = 0  # bytes of its COGs written or uploaded
    started: float = 0.0  # Unix time its first tile was read (0: it never ran)
    finished: float = 0.0  # Unix time its last COG was in place

    def ran(self, stats: RunStats | None) -> "Outcome":
        """This outcome with where the item ran and what it cost (``ItemResult.stats``)."""
        if stats is not None:
            self.node, self.stages = stats.node, dict(stats.seconds)
            self.bytes_read, self.bytes_written = int(stats.bytes_read), int(stats.bytes_written)
            self.started, self.finished = round(stats.started, 3), round(stats.finished, 3)
        return self


def node_seconds(outcomes: list[Outcome]) -> float:
    """Seconds the nodes spent on ``outcomes``: per node, the union of its items' [started, finished] spans
    (two items at once on a node count once), summed over nodes; an item without times counts its own seconds."""
    spans: dict[str, list[tuple[float, float]]] = {}
    total = 0.0
    for o in outcomes:
        if o.started and o.finished >= o.started:
            spans.setdefault(o.node, []).append((o.started, o.finished))
        else:
            total += o.seconds
    for intervals in spans.values():
        end = float("-inf")
        for a, b in sorted(intervals):
            total += max(0.0, b - max(a, end))
            end = max(end, b)
    return total


@dataclass
class RunReport:
    job: str
    model: str
    sha256: str
    datetime: str | None
    started: str
    seconds: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    found: int | None = None  # outputs planned (None: as many as outcomes)
    finished: bool = False  # False while the run goes on (or when it was killed before its end)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        done = [o for o in self.outcomes if o.status == "done"]
        pixels, tiles_ = sum(o.output_pixels for o in done), sum(o.tiles for o in done)
        found = len(self.outcomes) if self.found is None else self.found
        busy = node_seconds(done)
        return {
            "job": self.job,
            "model": self.model,
            "sha256": self.sha256,
            "datetime": self.datetime,
            "started": self.started,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "finished": self.finished,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "items": {
                "found": found,
                "skipped": self.count("skipped"),
                "done": len(done),
                "failed": self.count("failed"),
                "nodata": self.count("nodata"),
                "to_do": max(0, found - len(self.outcomes)),
            },
            "km2": round(sum(o.km2 for o in done), 6),
            "output_pixels": pixels,
            "tiles": tiles_,
            "pixels_per_second": round(pixels / self.seconds, 1) if self.seconds else 0.0,
            "tiles_per_second": round(tiles_ / self.seconds, 3) if self.seconds else 0.0,
            "bytes_read": sum(o.bytes_read for o in self.outcomes),
            "bytes_written": sum(o.bytes_written for o in self.outcomes),
            "nodes": len({o.node for o in done if o.node}),
            "node_seconds": round(busy, 3),  # done items' busy time per node, summed (see node_seconds)
            "outcomes": [asdict(o) for o in self.outcomes],
        }


# ------------------------------------------------------------------ where items are published


class Target:
    """A publish target: tells whether an output is already done, and publishes one (thread-safe)."""

    def __init__(self, spec: JobSpec, package: ModelPackage) -> None:
        self.spec, self.package, self.lock = spec, package, threading.Lock()
        self.model = model_ref(package, spec.output)
        self._apis: dict[str, ApiPublisher] = {}  # one per output collection, never replaced
        self._groups: dict[str, GroupPublisher] = {}  # items finished together go in one bulk request
        self._apis_lock = threading.Lock()  # not self.lock: a done-check does not wait for a publish
        self._known: dict[str, dict[str, dict]] = {}  # output collection → its items found by prefetch()
        self._collections_ready: set[str] = set()  # output collections known to exist in the API (under self.lock)
        self._model_published = False

    def _api(self, collection_id: str) -> ApiPublisher:
        with self._apis_lock:
            api = self._apis.get(collection_id)
            if api is None:
                api = self._apis[collection_id] = ApiPublisher(self.spec.publish.api, collection_id)  # type: ignore[arg-type]
                self._groups[collection_id] = GroupPublisher(api)
            return api

    def prefetch(self, tasks: list[Task], log: Log) -> None:
        """For an API target: which outputs of ``tasks`` are already published, by one search per output
        collection (a few pages) rather than one request per item. Where the search fails, items are looked
        up one by one."""
        if not self.spec.publish.api:
            return
        wanted: dict[str, list[str]] = {}
        for task in tasks:
            try:
                collection_id, item_id = task.output_names(self.spec.publish.collection)
            except ValueError:
                continue  # reported as this item's failure by process()
            wanted.setdefault(collection_id, []).append(item_id)
        for collection_id, ids in wanted.items():
            try:
                self._known[collection_id] = self._api(collection_id).find_items(ids)
            except PublishError as e:
                log(f"already published: searching failed, asking item by item ({first_line(e)})")

    def existing(self, item_id: str, collection_id: str) -> dict[str, Any] | None:
        if self.spec.publish.api:
            if collection_id in self._known:
                return self._known[collection_id].get(item_id)
            return self._api(collection_id).get_item(item_id)
        path = item_folder(self.spec.publish.catalog, collection_id, item_id) / f"{item_id}.json"  # type: ignore[arg-type]
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self, item_id: str, collection_id: str) -> bool:
        found = self.existing(item_id, collection_id)
        return bool(found) and found.get("properties", {}).get("stacsr:model", {}).get("sha256") == self.package.sha256

    def publish(self, item: pystac.Item, collection_id: str, source_collection: str | None) -> None:
        with self.lock:
            if not self._model_published:  # before the first item, so its link to the model resolves
                publish_model(self.package.folder, self.spec.output)
                self._model_published = True
            if self.spec.publish.api:
                api = self._api(collection_id)
                if collection_id not in self._collections_ready:
                    api.ensure_collection(build_collection([item], collection_id, self.model, source_collection))
                    self._collections_ready.add(collection_id)
            else:
                publish_static(self.spec.publish.catalog, [item], collection_id, self.model, source_collection)  # type: ignore[arg-type]
                return
        self._groups[collection_id].publish(item)  # outside self.lock: items finished meanwhile join this request


# ------------------------------------------------------------------ the run


def plan(spec: JobSpec, preset: Preset, window: str | None) -> list[Task]:
    """Search every area; one task per (item, area), least cloudy first within an area."""
    tasks = []
    for area in spec.areas:
        bbox = area_bbox(area)
        items = search(preset, bbox, window, spec.max_cloud, spec.limit, mgrs=area.mgrs)
        if spec.best_per_tile:
            items = best_per_tile(items, preset)
        tasks += [Task(item, area, bbox) for item in items]
    return tasks


def process(
    task: Task, spec: JobSpec, preset: Preset, package: ModelPackage, engine: Engine, target: Target
) -> Outcome:
    """Make and publish one output (or say why not); never raises for a problem of this item alone."""
    start = time.perf_counter()
    try:
        collection, item_id = task.output_names(spec.publish.collection)
    except ValueError as e:  # an id the output root cannot hold safely: this item fails, the others go on
        return Outcome(str(task.item.get("id"))[:200], "failed", error=first_line(e))
    try:
        if target.done(item_id, collection):
            return Outcome(item_id, "skipped")
        keys = preset.asset_keys(list(package.card.bands))
        bbox = task.bbox or tuple(task.item["bbox"])
        job = Job(task.item, keys, *item_window(task.item, keys, bbox))
        done = process_item(
            job,
            preset,
            spec.output,
            collection,
            item_id,
            package,
            engine,
            spec.resources.tile_size,
            spec.compress,
            model=target.model,
        )
        stats = getattr(done, "stats", None)
        if done.item is None:
            return Outcome(item_id, "nodata", seconds=time.perf_counter() - start).ran(stats)
        done.item.properties["stacsr:area"] = task.area.name
        target.publish(done.item, collection, task.item.get("collection"))
        return Outcome(
            item_id,
            "done",
            km2=done.km2,
            output_pixels=done.output_pixels,
            tiles=done.tiles,
            seconds=time.perf_counter() - start,
        ).ran(stats)
    except Exception as e:  # one item's failure is reported, the others go on
        return Outcome(item_id, "failed", error=first_line(e), seconds=time.perf_counter() - start)


def run(
    spec: JobSpec,
    preset: Preset,
    package: ModelPackage,
    engine: Engine,
    now: datetime | None = None,
    log: Log | None = None,
) -> RunReport:
    """Run a batch job; returns (and writes into the output) its report. Errors before any item is touched
    (search, unreachable target) raise; errors of single items are in the report."""
    log = log or (lambda _: None)
    now = now or datetime.now(timezone.utc)
    window = spec.window(now)
    report = RunReport(spec.name, package.ref, package.sha256, window, now.isoformat().replace("+00:00", "Z"))
    start = time.perf_counter()
    tasks = plan(spec, preset, window)
    log(f"{len(tasks)} item(s) over {len(spec.areas)} area(s), {window or 'any date'}")
    target = Target(spec, package)
    target.prefetch(tasks, log)
    engine.check_output(spec.output)  # a local output on a cluster: refused before any work unless every node sees it
    report.found = len(tasks)
    writer = ReportWriter(report, spec, start, log)
    writer.write()  # before the first item: a run killed at once still leaves a report (everything to do)
    workers = (
        1 if isinstance(engine, LocalEngine) else min(max(1, len(tasks)), spec.resources.items_in_flight or MAX_QUEUED)
    )
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stacsr-item") as pool:
        pending: set[Future[Outcome]] = {pool.submit(process, t, spec, preset, package, engine, target) for t in tasks}
        while pending:
            finished, pending = wait(pending, timeout=writer.wait_for(), return_when=FIRST_COMPLETED)
            for future in finished:
                outcome = future.result()
                report.outcomes.append(outcome)
                log(f"{outcome.status:8} {outcome.item}" + (f": {outcome.error}" if outcome.error else ""))
            if pending:  # else the last write follows at once
                writer.changed(bool(finished))
    report.seconds = time.perf_counter() - start
    report.finished = True
    writer.write()
    return report


class ReportWriter:
    """Rewrites the run report while items finish: after an item finishes, once :data:`REPORT_INTERVAL`
    seconds have passed since the last write (the items finished meanwhile go together), and at the end."""

    def __init__(self, report: RunReport, spec: JobSpec, start: float, log: Log, interval: float | None = None) -> None:
        self.report, self.spec, self.start, self.log = report, spec, start, log
        self.interval = REPORT_INTERVAL if interval is None else interval
        self.last, self.dirty = float("-inf"), False

    def wait_for(self) -> float | None:
        """How long the run may wait for the next item before a write is due (None: no write is due)."""
        return max(0.0, self.last + self.interval - time.monotonic()) if self.dirty else None

    def changed(self, changed: bool) -> None:
        self.dirty = self.dirty or changed
        if self.dirty and time.monotonic() - self.last >= self.interval:
            try:
                self.write()
            except Exception as e:  # noqa: BLE001 - a report not updated now is tried again; the items go on
                self.last = time.monotonic()
                self.log(f"run report not updated: {first_line(e)}")

    def write(self) -> None:
        """Write the report now (raises when it cannot: the first and the last write must happen)."""
        self.report.seconds = time.perf_counter() - self.start
        write_report(self.report, self.spec)
        self.last, self.dirty = time.monotonic(), False


def report_url(spec: JobSpec, name: str = "latest.json") -> str:
    return storage.join(spec.output, RUNS_FOLDER, spec.name, name)


def write_report(report: RunReport, spec: JobSpec) -> str:
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    stamp = report.started.replace(":", "").replace("-", "")
    storage.write_text(report_url(spec, f"{stamp}.json"), text)
    return storage.write_text(report_url(spec), text)
