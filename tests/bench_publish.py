"""Static-catalogue publishing: the cost of one more item against the catalogue's size (issue 23).

Items are :mod:`tests.fixtures.catalogue`'s synthetic outputs (25 MGRS tiles, each seen every 5 days, 4 band
assets; no COGs: publishing never reads them), published one ``publish_static`` call each, as a batch does.
For each size N the catalogue is first filled to N items, then more items are published one call each and
timed; the table gives the mean and median seconds per item and the mean's ratio to the smallest size.

- ``after``: this tree's :func:`stacsr.catalog.publish.publish_static` (sub-catalogues, lock, journal,
  stac-geoparquet index); filled one call of 100 items at a time; 64 items timed (a whole period of the
  index's level-2 merges, so that amortised merges are in the mean).
- ``before``: ``stacsr/catalog/publish.py`` of commit d8c681c (``git show``, loaded beside this tree's
  modules); filled by one call with all N items (its cost per call is linear, so one call is the fastest
  fill); 3 items timed (each call reads and rewrites the whole collection).

    python -m tests.bench_publish                          # 100, 1,000 and 10,000 items, before and after
    python -m tests.bench_publish --sizes 100 1000 --no-before
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from tests.fixtures import catalogue as C

OLD_COMMIT = "d8c681c"
REPO = Path(__file__).resolve().parent.parent


def old_publish_static(folder: Path) -> Callable | None:
    """``publish_static`` of :data:`OLD_COMMIT`, or None when git cannot give it."""
    try:
        text = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:stacsr/catalog/publish.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = folder / "publish_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("publish_before", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.publish_static


def measure(publish: Callable, root: Path, size: int, fill_chunk: int, timed: int) -> list[float]:
    """Fill ``root`` to ``size`` items (calls of ``fill_chunk`` items), then time ``timed`` single-item calls."""
    for start in range(0, size, fill_chunk):
        items = [C.item(root, i) for i in range(start, min(size, start + fill_chunk))]
        publish(root, items, C.COLLECTION, C.MODEL, "sentinel-2-l2a")
    seconds = []
    for i in range(size, size + timed):
        item = C.item(root, i)
        t = time.perf_counter()
        publish(root, [item], C.COLLECTION, C.MODEL, "sentinel-2-l2a")
        seconds.append(time.perf_counter() - t)
    return seconds


def table(title: str, rows: dict[int, list[float]]) -> None:
    first = statistics.mean(next(iter(rows.values())))
    print(f"\n{title}")
    print(f"{'items already there':>20} {'timed':>6} {'mean s/item':>12} {'median s/item':>14} {'× smallest':>11}")
    for size, seconds in rows.items():
        mean = statistics.mean(seconds)
        print(f"{size:>20,} {len(seconds):>6} {mean:>12.4f} {statistics.median(seconds):>14.4f} {mean / first:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--no-before", action="store_true", help="skip the code of commit d8c681c")
    args = parser.parse_args()
    from stacsr.catalog.publish import publish_static

    work = Path(tempfile.mkdtemp(prefix="stacsr-bench-publish-"))
    try:
        after = {n: measure(publish_static, work / f"after-{n}", n, 100, 64) for n in args.sizes}
        table("after (this tree)", after)
        old = None if args.no_before else old_publish_static(work)
        if old is not None:
            before = {n: measure(old, work / f"before-{n}", n, n, 3) for n in args.sizes}
            table(f"before (stacsr/catalog/publish.py of {OLD_COMMIT})", before)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
