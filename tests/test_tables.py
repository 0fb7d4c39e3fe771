"""Every table the CLI prints, rendered at 80 columns as in a pipe or a CI log: nothing cut to "…", no line
wider than 80, every full value there (names and paths may fold over lines, numbers stay whole)."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from stacsr.batch import plan as P
from stacsr.catalog.presets import resolve
from stacsr.cli import app, tables
from stacsr.evaluate.report import Evaluation, ImageResult, Scores
from stacsr.pipeline import Report

LONG_ID = "S2B_MSIL2A_20240615T102559_R108_T32UPU_20240615T142319_sr_a-very-long-area-name-over-central-europe"
LONG_PATH = "/data/" + "/".join(["a-rather-deep-folder"] * 5) + "/catalog.json"
STACK = "worldcereal_0000280849BAC91C_clear8_timestack_2021-03-15_and_a_name_longer_than_a_whole_line_of_text"


def render(*renderables) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=80, color_system=None).print(*renderables)
    return buffer.getvalue()


def check_80_columns(text: str) -> list[str]:
    """The lines of ``text``, after checking that none is cut or wider than 80 characters."""
    assert "…" not in text and "..." not in text, text
    lines = text.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), text
    return lines


def squeezed(text: str) -> str:
    """``text`` without any white space: a value folded at the end of its lines reads whole again."""
    return re.sub(r"\s+", "", text)


# ------------------------------------------------------------------ evaluate: one block per image


def scores(psnr: float, ssim: float, sam: float, consistency: float, fractions=(0.0, 1.0, 0.0)) -> Scores:
    return Scores(psnr, ssim, sam, consistency, *fractions)


def evaluation() -> Evaluation:
    ev = Evaluation("wald", "stacsr-s2-rgbn-x4@1.2.0+dc4e8a82f904", 4, 24, metrics_path="/tmp/report/metrics.json")
    cases = [
        ("openeo_gfmap_temp_256", "area", scores(38.0014, 0.93758, 1.48515, 5.43e-6, (0.2354, 0.6586, 0.1060))),
        ("openeo_gfmap_temp_256", "mtf", scores(37.8128, 0.93161, 1.57660, 5.48e-6, (0.2192, 0.7197, 0.0611))),
        (STACK, "area", scores(101.234, 0.99999, 0.01234, 0.000001, (0.9, 0.1, 0.0))),
        (STACK, "mtf", scores(math.nan, math.nan, 12.3456, 0.0123456, (math.nan,) * 3)),
    ]
    for image, degradation, model in cases[::2] + cases[1::2]:  # by degradation, then image: blocks by image
        bicubic = scores(36.7856, 0.91529, 1.69451, 0.00213455)
        ev.results.append(ImageResult(image, degradation, model, bicubic, 4096))
    return ev


def expected_rows(degradation: str, model: Scores, bicubic: Scores) -> list[list[str]]:
    def num(v: float, digits: int, sign: str = "") -> str:
        return "—" if math.isnan(v) else f"{v:{sign}.{digits}f}"

    return [
        [degradation, "model", num(model.psnr, 2), num(model.psnr - bicubic.psnr, 2, "+"), num(model.ssim, 4)]
        + [num(model.sam, 3), num(model.consistency, 6)]
        + [num(v, 2) for v in (model.improvement, model.omission, model.hallucination)],
        ["bicubic", num(bicubic.psnr, 2), num(bicubic.ssim, 4), num(bicubic.sam, 3), num(bicubic.consistency, 6)],
    ]


def test_the_evaluation_is_one_block_per_image_with_every_number_whole():
    ev = evaluation()
    lines = check_80_columns(render(tables.evaluation_report(ev)))
    cells = [line.split() for line in lines]
    for r in ev.results:
        for row in expected_rows(r.degradation, r.model, r.bicubic):
            assert row in cells, (row, "\n".join(lines))
    for d, avg in ev.averages().items():
        for row in expected_rows(d, avg["model"], avg["bicubic"]):
            assert row in cells, row
    headers = [c for c in cells if c[:2] == ["degr.", "method"]]
    assert len(headers) == 3  # two images and the average, each with the full header
    assert all(" ".join(h) == "degr. method PSNR dB Δ dB SSIM SAM ° consist. impr. omis. hall." for h in headers)
    # the blocks' columns line up: every header line is the same
    assert len({line for line in lines if line.startswith("degr.")}) == 1
    text = squeezed("\n".join(lines))
    assert STACK in text and "averageover2images" in text  # the long name folds, whole
    assert "stacsr-s2-rgbn-x4@1.2.0+dc4e8a82f904:modelvsbicubic" in text and "border24LRpx" in text
    # the average comes last, the image blocks in their order
    assert text.index("openeo_gfmap_temp_256") < text.index(STACK) < text.index("averageover")


def test_the_evaluate_command_prints_that_report_at_80_columns(monkeypatch, tmp_path):
    """The command is the thin layer: what it prints is :func:`tables.evaluation_report` (no model run here)."""
    import stacsr.cli.training as training
    from stacsr.evaluate import report

    buffer = io.StringIO()
    monkeypatch.setattr(training, "out", Console(file=buffer, width=80, color_system=None))
    monkeypatch.setattr(report, "check_args", lambda *a: 24)
    monkeypatch.setattr(report, "image_scenes", lambda *a: [])
    monkeypatch.setattr(report, "evaluate_images", lambda *a, **k: evaluation())
    image = tmp_path / "x.tif"
    image.write_bytes(b"")
    result = CliRunner().invoke(app, ["evaluate", "--images", str(image), "--no-ray"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert buffer.getvalue() == render(tables.evaluation_report(evaluation()))
    assert "metrics: /tmp/report/metrics.json" in result.stderr


# ------------------------------------------------------------------ search, summaries, dry run, progress


def test_search_keeps_date_cloud_and_tile_whole_and_folds_long_ids():
    preset = resolve("planetary-computer", None, None, None)
    long_id = "S2B_MSIL2A_20240615T102559_R108_T32UPU_20240615T142319"
    items = [
        {"id": long_id, "properties": {"datetime": "2024-06-15T10:25:59.024000Z", "eo:cloud_cover": 1.523}},
        {"id": "S2A_32UQU_20240610_0_L2A", "properties": {"datetime": "2024-06-10T10:36:21Z", "eo:cloud_cover": 42.07}},
    ]
    items[0]["properties"]["s2:mgrs_tile"] = "32UPU"
    items[1]["properties"]["s2:mgrs_tile"] = "32UQU"
    lines = check_80_columns(render(tables.search_table(items, preset)))
    first = next(i for i, line in enumerate(lines) if line.startswith("S2B_MSIL2A"))
    assert lines[first].split()[1:] == ["2024-06-15T10:25:59Z", "1.5", "32UPU"]
    ids = "".join(line.split("  ")[0].strip() for line in lines[first : first + 3])
    assert ids.startswith(long_id + "S2A_32UQU")  # folded over lines, whole, then the next id
    assert ["S2A_32UQU_20240610_0_L2A", "2024-06-10T10:36:21Z", "42.1", "32UQU"] in [ln.split() for ln in lines]
    assert lines[0].split() == ["id", "datetime", "cloud", "%", "tile"]


def test_run_and_batch_summaries_fold_long_values_and_keep_numbers():
    report = Report(items=["a", "b"], skipped=[LONG_ID, LONG_ID + "-2"], km2=12056.04, output_pixels=10**12)
    report.seconds, report.catalog = 3.26, Path(LONG_PATH)
    engine = "ray: 12 nodes, 8 GPUs, 0.5 GPU per item, 4 items in flight on each node, fp16"
    text = render(tables.pairs_table(tables.run_summary_rows(report, "items written", engine)))
    lines = check_80_columns(text)
    assert lines[0].split() == ["items", "written", "2"]
    for whole in ("12056.04 km²", "3.3 s", "306,748,466,258"):
        assert whole in text, whole
    for value in (engine, LONG_PATH, f"{LONG_ID}, {LONG_ID}-2"):
        assert squeezed(value) in squeezed(text), value

    run = {"items": dict(found=2001, skipped=287, done=1713, failed=1, nodata=0), "km2": 20654974.6}
    run |= {"seconds": 86400.04, "tiles_per_second": 123.456}
    url = "s3://a-bucket-with-a-long-name/some/prefix/europe-week/_runs/europe-week/latest.json"
    text = render(tables.pairs_table(tables.batch_summary_rows(run, engine, url)))
    lines = check_80_columns(text)
    for label, value in [("items found", "2001"), ("items done", "1713"), ("items failed", "1")]:
        assert re.search(rf"^\s*{label}\s+{value}\s*$", text, re.M), label
    assert "20654974.60 km²" in text and "86400.0 s (123.46 tiles/s)" in text
    assert squeezed(url) in squeezed(text)


def test_the_dry_run_plan_fits():
    plan = P.Plan(
        job="a-job-with-a-long-name-for-a-whole-week",
        model="stacsr-sr4 1.0.0",
        sha256="ab" * 32,
        datetime=None,
        bands=4,
        scale=4,
        items_per_node=2,
        report="r.json",
        disk_fraction=1.0,
    )
    area = "a-very-long-area-name-for-central-europe"
    plan.items += [P.PlannedItem(f"S2A_{i}_sr", area, "to do", "c", None, 12056.04, 10980**2, 1) for i in range(30)]
    text = render(*tables.plan_tables(plan))
    lines = check_80_columns(text)
    assert f"{30 * 12056.04:,.2f}" in text and f"{30:,}" in text
    assert squeezed("node-hours unknown: no earlier run's report at r.json") in squeezed(text)
    assert "".join(line.split("│")[1].strip() for line in lines if line.startswith("│")) == area
    assert squeezed(f"batch {plan.job}: dry run, nothing written") in squeezed(text)


def test_the_progress_bar_folds_a_long_item_id_and_keeps_counts():
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None)
    with Progress(*tables.progress_columns(), console=console) as bar:
        task = bar.add_task(LONG_ID, total=123456)
        bar.advance(task, 123456)
    lines = check_80_columns(buffer.getvalue())
    assert lines[0].split()[-3:] == ["123456/123456", "tiles", "0:00:00"]
    assert "".join(line.split(" ")[0] for line in lines) == LONG_ID  # the id's column, folded, whole


@pytest.mark.parametrize("name", ["common", "imagery", "training", "catalogue"])
def test_commands_build_no_table_of_their_own(name):
    """Tables are built in :mod:`stacsr.cli.tables`, where the tests above render them."""
    source = (Path(tables.__file__).parent / f"{name}.py").read_text()
    assert "Table(" not in source and "Column(" not in source


def test_whole_seconds():
    assert tables.whole_seconds("2024-06-15T10:25:59.024000Z") == "2024-06-15T10:25:59Z"
    assert tables.whole_seconds("2024-06-15T10:25:59Z") == "2024-06-15T10:25:59Z"
    assert tables.whole_seconds("None") == "None"
