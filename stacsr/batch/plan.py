"""``stacsr batch --dry-run``: what a run of a job spec would do, and what it would cost, writing nothing.

    search each area (as a run does) → per output: already published with this model (skipped), refused
    (an id or window the run would fail), or to do → its window on the item's grid (km², pixels)
    → estimates: bytes to read and to write, scratch disk per item and per node, and node-hours from the
      rate of the job's earlier run when its report (``<output>/_runs/<job>/latest.json``) is there

Nothing is created or written: no folder, no report, no catalogue, no collection; no engine is started and
no pixel is read. The done-checks are the run's own (:class:`stacsr.batch.run.Target`: reads only).

The estimates, all "about":

- **read**: each to-do window's pixels × bands × 2 bytes × :data:`READ_FRACTION` (the share of raw 16-bit
  pixels a compressed Sentinel-2 L2A COG holds, an assumption), or the ratio the earlier run measured
  (bytes it read ÷ the raw bytes of its windows). The halos and whole blocks a read fetches are in a
  measured ratio, not in the assumed one.
- **write**: output pixels (window × scale²) × bands × 2 bytes × :data:`WRITE_FRACTION` (deflated COGs with
  overviews, measured on a whole tile), or the earlier run's measured ratio.
- **scratch**: as the sink checks free disk (:func:`stacsr.io.sink.check_disk`): an item's raw output ×
  :func:`~stacsr.io.sink.disk_fraction` (its compressed blocks, plus its COGs when the output is a local
  folder, each at :data:`~stacsr.io.sink.COG_FRACTION`, a margin over what they take); per node, the largest
  items that run on one node at once.
- **node-hours**: to-do output pixels ÷ the earlier run's output pixels per node-second (its done items'
  output pixels ÷ the seconds its nodes were busy with them, two items at once on a node counted once).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from stacsr.batch.run import Target, report_url
from stacsr.batch.run import plan as plan_tasks
from stacsr.batch.spec import JobSpec
from stacsr.catalog.presets import Preset
from stacsr.io.grid import area_km2, crop
from stacsr.io.sink import disk_fraction
from stacsr.model.package import ModelPackage
from stacsr.pipeline import item_window
from stacsr.plumbing import storage
from stacsr.plumbing.redaction import first_line

SAMPLE_BYTES = 2  # uint16 in and out
READ_FRACTION = 0.7  # assumed: a deflated 16-bit Sentinel-2 L2A band COG, as a share of its raw pixels
WRITE_FRACTION = 0.33  # measured: a whole tile's 4 output COGs, about 5 GB for 15.4 GB of raw pixels
AREA_HEADERS = ("area", "found", "skip", "to do", "km²", "read", "write")


@dataclass(frozen=True)
class PlannedItem:
    """One output of the run: its id, area, and what the run would do with it."""

    item: str
    area: str
    status: str  # to do | skipped (published with this model) | refused (the run would fail it at once)
    collection: str = ""
    error: str | None = None
    km2: float = 0.0
    input_pixels: int = 0  # the window on the source grid (rows × columns)
    output_pixels: int = 0  # × scale²


@dataclass(frozen=True)
class EarlierRun:
    """Figures of the job's earlier run, from its report."""

    started: str
    output_pixels: int  # of its done items
    node_seconds: float  # the seconds its nodes were busy with them
    read_ratio: float | None = None  # bytes read ÷ raw bytes of the windows (None: not in the report)
    write_ratio: float | None = None  # bytes written ÷ raw bytes of the outputs

    @property
    def pixels_per_node_second(self) -> float:
        return self.output_pixels / self.node_seconds


@dataclass
class Plan:
    job: str
    model: str
    sha256: str
    datetime: str | None
    bands: int  # output bands (the model's)
    scale: int
    items_per_node: int  # items at once on one node (1-GPU nodes: 1 ÷ gpus_per_item; else 1)
    report: str  # where the earlier run's report is looked for
    disk_fraction: float  # an item's disk while it runs ÷ its raw output (stacsr.io.sink.disk_fraction)
    items: list[PlannedItem] = field(default_factory=list)
    earlier: EarlierRun | None = None

    def _with(self, status: str) -> list[PlannedItem]:
        return [i for i in self.items if i.status == status]

    @property
    def to_do(self) -> list[PlannedItem]:
        return self._with("to do")

    @property
    def skipped(self) -> list[PlannedItem]:
        return self._with("skipped")

    @property
    def refused(self) -> list[PlannedItem]:
        return self._with("refused")

    @property
    def read_fraction(self) -> float:
        return self.earlier.read_ratio if self.earlier and self.earlier.read_ratio else READ_FRACTION

    @property
    def write_fraction(self) -> float:
        return self.earlier.write_ratio if self.earlier and self.earlier.write_ratio else WRITE_FRACTION

    def read_bytes(self, items: list[PlannedItem] | None = None) -> float:
        items = self.to_do if items is None else items
        return sum(i.input_pixels for i in items) * self.bands * SAMPLE_BYTES * self.read_fraction

    def write_bytes(self, items: list[PlannedItem] | None = None) -> float:
        items = self.to_do if items is None else items
        return sum(i.output_pixels for i in items) * self.bands * SAMPLE_BYTES * self.write_fraction

    def scratch(self, item: PlannedItem) -> float:
        """Scratch disk an item needs while it runs (its intermediates and COGs, as the sink estimates it)."""
        return item.output_pixels * self.bands * SAMPLE_BYTES * self.disk_fraction

    @property
    def scratch_per_item(self) -> float:
        return max((self.scratch(i) for i in self.to_do), default=0.0)

    @property
    def scratch_per_node(self) -> float:
        largest = sorted((self.scratch(i) for i in self.to_do), reverse=True)
        return sum(largest[: self.items_per_node])

    @property
    def node_hours(self) -> float | None:
        if self.earlier is None:
            return None
        return sum(i.output_pixels for i in self.to_do) / self.earlier.pixels_per_node_second / 3600

    def area_rows(self) -> list[tuple[str, ...]]:
        """Per area, then the total: :data:`AREA_HEADERS`' cells (read and write: estimates of the items to do)."""

        def row(name: str, items: list[PlannedItem]) -> tuple[str, ...]:
            todo = [i for i in items if i.status == "to do"]
            skipped = sum(i.status == "skipped" for i in items)
            km2 = sum(i.km2 for i in todo)
            return (
                name,
                f"{len(items):,}",
                f"{skipped:,}",
                f"{len(todo):,}",
                f"{km2:,.2f}",
                size(self.read_bytes(todo)),
                size(self.write_bytes(todo)),
            )

        areas = list(dict.fromkeys(i.area for i in self.items))
        rows = [row(a, [i for i in self.items if i.area == a]) for a in areas]
        return rows + [row("total", self.items)] if len(areas) > 1 else rows or [row("total", [])]

    def summary_rows(self) -> list[tuple[str, str]]:
        """``(what, value)`` lines of the plan, estimates marked "about" with how they were made."""
        started = short_time(self.earlier.started) if self.earlier else ""
        measured = f"measured by the run of {started}"
        read_how = measured if self.earlier and self.earlier.read_ratio else "assumed"
        write_how = measured if self.earlier and self.earlier.write_ratio else "measured on a whole tile"
        rows = [
            ("job", f"{self.job}, {self.datetime or 'any date'}"),
            ("model", f"{self.model} (sha256 {self.sha256[:12]})"),
            ("items found", f"{len(self.items):,}"),
            ("skipped", f"{len(self.skipped):,} (published with this model)"),
            ("to do", f"{len(self.to_do):,}"),
        ]
        if self.refused:
            rows.append(("refused", f"{len(self.refused):,} (the run would fail them)"))
        rows += [
            ("area", f"{sum(i.km2 for i in self.to_do):,.2f} km² to do"),
            (
                "read",
                f"about {size(self.read_bytes())} (window px × {self.bands} bands × 2 B × "
                f"{self.read_fraction:.2f}, {read_how})",
            ),
            (
                "write",
                f"about {size(self.write_bytes())} (output px × {self.bands} bands × 2 B × "
                f"{self.write_fraction:.2f}, {write_how})",
            ),
            ("scratch/item", f"about {size(self.scratch_per_item)} (the largest item)"),
            ("scratch/node", f"about {size(self.scratch_per_node)} ({self.items_per_node} item(s) at once)"),
        ]
        if self.earlier is None:
            rows.append(("node-hours", f"unknown: no earlier run's report at {self.report}"))
        else:
            rate, hours = self.earlier.pixels_per_node_second, self.node_hours or 0.0
            value = f"{hours:,.1f}" if hours >= 10 else f"{hours:.2g} ({hours * 3600:,.0f} node-seconds)"
            rows.append(
                (
                    "node-hours",
                    f"about {value}: the run of {started} made {rate:,.0f} output px per node-second",
                )
            )
        return rows


def short_time(iso: str) -> str:
    """``2026-03-03T12:00:00Z`` from an ISO time with fractions of a second."""
    return iso[:19] + "Z" if len(iso) > 20 and iso[10:11] == "T" else iso


def size(nbytes: float) -> str:
    """``1.23 GB``: three significant figures in the largest decimal unit under the value."""
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= factor:
            value = nbytes / factor
            return f"{value:,.{max(0, 2 - int(math.log10(value)))}f} {unit}"
    return f"{nbytes:,.0f} B"


def items_per_node(spec: JobSpec) -> int:
    """Items one node runs at once, for the scratch estimate: ``1 ÷ gpus_per_item`` on a 1-GPU node, else 1
    (``cpus_per_item`` unset gives an item the whole node)."""
    gpus = spec.resources.gpus_per_item
    return max(1, math.floor(1 / gpus + 1e-9)) if gpus > 0 else 1


def read_report(url: str) -> dict[str, Any] | None:
    """The JSON at ``url`` (a path or an object-storage URL), or None when it is absent or unreadable."""
    try:
        if storage.is_remote(url):
            fs_, path = storage.open_fs(url)
            with fs_.open_input_stream(path) as f:
                text = f.read().decode("utf-8")
        else:
            text = Path(url).read_text(encoding="utf-8")
        doc = json.loads(text)
    except (OSError, ValueError, storage.StoreError):
        return None
    return doc if isinstance(doc, dict) else None


def earlier_run(report: dict[str, Any] | None, bands: int, scale: int) -> EarlierRun | None:
    """The rate and ratios of an earlier run's report (None when it finished no item)."""
    if not report:
        return None
    done = [o for o in report.get("outcomes", []) if isinstance(o, dict) and o.get("status") == "done"]
    pixels = sum(int(o.get("output_pixels") or 0) for o in done)
    busy = float(report.get("node_seconds") or sum(float(o.get("seconds") or 0) for o in done))
    if pixels <= 0 or busy <= 0:
        return None
    raw_out = pixels * bands * SAMPLE_BYTES
    read = sum(int(o.get("bytes_read") or 0) for o in done)
    written = sum(int(o.get("bytes_written") or 0) for o in done)
    return EarlierRun(
        str(report.get("started", "?")),
        pixels,
        busy,
        read / (raw_out / scale**2) if read else None,
        written / raw_out if written else None,
    )


def dry_run(spec: JobSpec, preset: Preset, package: ModelPackage, now: datetime | None = None) -> Plan:
    """The plan of a run of ``spec`` now: searched and checked against the target, nothing written."""
    window = spec.window(now)
    card = package.card
    found = plan_tasks(spec, preset, window)
    target = Target(spec, package)
    keys = preset.asset_keys(list(card.bands))
    result = Plan(
        spec.name,
        package.ref,
        package.sha256,
        window,
        len(card.bands),
        card.scale,
        items_per_node(spec),
        report_url(spec),
        disk_fraction(spec.compress, storage.is_remote(spec.output)),
    )
    for task in found:
        try:
            collection, item_id = task.output_names(spec.publish.collection)
        except ValueError as e:
            result.items.append(
                PlannedItem(str(task.item.get("id"))[:200], task.area.name, "refused", error=first_line(e))
            )
            continue
        if target.done(item_id, collection):  # a target that cannot answer stops the plan, in one line
            result.items.append(PlannedItem(item_id, task.area.name, "skipped", collection))
            continue
        try:
            grid, win = item_window(task.item, keys, task.bbox or tuple(task.item["bbox"]))
        except (ValueError, KeyError) as e:
            result.items.append(PlannedItem(item_id, task.area.name, "refused", collection, first_line(e)))
            continue
        pixels = win.height * win.width
        km2 = area_km2(crop(grid, win))
        result.items.append(
            PlannedItem(item_id, task.area.name, "to do", collection, None, km2, pixels, pixels * card.scale**2)
        )
    result.earlier = earlier_run(read_report(report_url(spec)), result.bands, result.scale)
    return result
