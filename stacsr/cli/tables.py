"""Every table the CLI prints, built from plain results so that each can be rendered on its own (and tested).

The rule: readable at 80 columns (a pipe, a CI log, a small terminal). Numbers never wrap nor get cut
(``no_wrap``); names, paths and URLs may wrap but are folded, never cut to "…" (``overflow="fold"``); a
table too wide for 80 columns is stacked instead (the evaluation: one block per image).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

WIDTH = 80  # the narrowest console every table must fit


def pairs_table(rows: Iterable[tuple[str, str]]) -> Table:
    """``what  value`` lines without borders: labels kept whole, values folded when longer than a line."""
    table = Table(Column(no_wrap=True), Column(overflow="fold"), show_header=False, box=None)
    for what, value in rows:
        table.add_row(what, value)
    return table


def progress_columns() -> list[ProgressColumn]:
    """The tile progress bar's columns: the item id folds over lines; the bar, counts and time stay whole."""
    return [
        TextColumn("{task.description}", table_column=Column(overflow="fold", ratio=1)),
        BarColumn(bar_width=16),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn("tiles", table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
    ]


def compact(*columns: Column) -> Table:
    """A table without a frame: a rule under the header, two spaces between columns."""
    return Table(*columns, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)


def run_summary_rows(report: Any, what: str, engine: Any) -> list[tuple[str, str]]:
    """The summary of ``enhance``, ``sr`` and ``demo`` (a :class:`stacsr.pipeline.Report`)."""
    rows = [(what, str(len(report.items))), ("engine", str(engine))]
    if report.skipped:
        rows.append(("skipped (all nodata)", ", ".join(report.skipped)))
    rows += [
        ("area", f"{report.km2:.2f} km²"),
        ("time", f"{report.seconds:.1f} s"),
        ("output pixels/s", f"{report.pixels_per_second:,.0f}"),
    ]
    if report.catalog:
        rows.append(("catalogue", str(report.catalog)))
    return rows


def batch_summary_rows(report: dict[str, Any], engine: Any, report_url: str) -> list[tuple[str, str]]:
    """The summary of ``batch`` from its run report (:meth:`stacsr.batch.run.RunReport.to_dict`)."""
    rows = [(f"items {key}", str(report["items"][key])) for key in ("found", "skipped", "done", "failed", "nodata")]
    return rows + [
        ("engine", str(engine)),
        ("area", f"{report['km2']:.2f} km²"),
        ("time", f"{report['seconds']:.1f} s ({report['tiles_per_second']:.2f} tiles/s)"),
        ("report", report_url),
    ]


def search_table(items: Sequence[dict[str, Any]], preset: Any) -> Table:
    """``stacsr search``: one row per item (ids fold when long; date, cloud cover and tile stay whole)."""
    from stacsr.catalog.search import cloud, tile_of

    table = compact(
        Column("id", overflow="fold"),
        Column("datetime", no_wrap=True),
        Column("cloud %", justify="right", no_wrap=True),
        Column("tile", no_wrap=True),
    )
    for item in items:
        when = item.get("properties", {}).get("datetime")
        table.add_row(item["id"], whole_seconds(str(when)), f"{cloud(item):.1f}", tile_of(item, preset))
    return table


def whole_seconds(iso: str) -> str:
    """``2024-06-15T10:30:29Z`` from ``2024-06-15T10:30:29.024000Z`` (other text is left as it is)."""
    if len(iso) > 20 and iso[10:11] == "T" and iso[19:20] == "." and iso.endswith("Z"):
        return iso[:19] + "Z"
    return iso


def plan_tables(plan: Any) -> list[RenderableType]:
    """``stacsr batch --dry-run``: the per-area table, then the plan's summary lines."""
    from stacsr.batch.plan import AREA_HEADERS

    areas = Table(title=f"batch {plan.job}: dry run, nothing written", title_justify="left")
    for i, header in enumerate(AREA_HEADERS):
        areas.add_column(header, justify="left" if i == 0 else "right", no_wrap=i > 0, overflow="fold")
    for row in plan.area_rows():
        areas.add_row(*row)
    return [areas, pairs_table(plan.summary_rows())]


# ------------------------------------------------------------------ evaluation: one block per image

EVAL_COLUMNS = ("degr.", "method", "PSNR dB", "Δ dB", "SSIM", "SAM °", "consist.", "impr.", "omis.", "hall.")


def _num(v: float | None, digits: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _eval_rows(degradation: str, model: Any, bicubic: Any) -> list[tuple[str, ...]]:
    """The model's row (with Δ PSNR and the correctness fractions), then bicubic's."""
    return [
        (
            degradation,
            "model",
            _num(model.psnr, 2),
            _num(model.psnr - bicubic.psnr, 2, sign=True),
            _num(model.ssim, 4),
            _num(model.sam, 3),
            _num(model.consistency, 6),
            _num(model.improvement, 2),
            _num(model.omission, 2),
            _num(model.hallucination, 2),
        ),
        ("", "bicubic", _num(bicubic.psnr, 2), "", _num(bicubic.ssim, 4), _num(bicubic.sam, 3))
        + (_num(bicubic.consistency, 6), "", "", ""),
    ]


def evaluation_report(result: Any) -> Group:
    """``stacsr evaluate`` (a :class:`stacsr.evaluate.report.Evaluation`): a heading, then one block per image
    (its name on a line of its own, then model and bicubic per degradation), then the averages."""
    by_image: dict[str, list[tuple[str, ...]]] = {}
    for r in result.results:
        by_image.setdefault(r.image, []).extend(_eval_rows(r.degradation, r.model, r.bicubic))
    average = [row for d, avg in result.averages().items() for row in _eval_rows(d, avg["model"], avg["bicubic"])]
    images = len(by_image)
    blocks = [*by_image.items(), (f"average over {images} image{'s' if images != 1 else ''}", average)]
    widths = [max(len(row[i]) for _, rows in blocks for row in [EVAL_COLUMNS, *rows]) for i in range(10)]
    parts: list[RenderableType] = [
        Text(f"{result.model}: model vs bicubic", overflow="fold"),
        Text(
            f"{result.protocol} protocol, border {result.border} LR px. Δ dB: PSNR model − bicubic; "
            "consist.: mean |block mean of SR − LR| (reflectance); impr./omis./hall.: fractions of pixels "
            "where the model adds true detail / stays near bicubic / invents detail.",
            style="dim",
        ),
    ]
    for name, rows in blocks:
        table = compact(
            *(
                Column(h, justify="left" if i < 2 else "right", no_wrap=True, min_width=w)
                for i, (h, w) in enumerate(zip(EVAL_COLUMNS, widths))
            )
        )
        for row in rows:
            table.add_row(*row)
        parts += [Text(""), Text(name, style="bold", overflow="fold"), table]
    return Group(*parts)
