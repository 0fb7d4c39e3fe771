"""``make bench`` (batch part): throughput of ``stacsr batch`` with 1 and 2 items at once on Ray, and its memory.

Local services as in the tests (pgstac STAC API, range-capable blob server), ``--items`` copies of the demo's
two Sentinel-2 items (480 × 480 at 10 m each, whole items through an MGRS-free bbox), the shipped model.

1. ``tiles/s`` of the same batch (fresh output each time), one item at a time using every core, and two at
   once with half the cores each (``speedup``);
2. the memory high-water mark of ``stacsr batch`` run as a command over N and 2N items: resident memory of
   the command's process (driver: reads, stitching, COG writing) and of its whole process tree (Ray included),
   sampled every 0.1 s. Bounded memory means the peak does not grow with the number of items.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

COLLECTION = "bench-s2"
BBOX: list[float] = []  # every loaded item, whole


def load_items(pgstac, blob, copies: int) -> list[float]:
    """``copies`` × the demo's two items (distinct ids), searchable in pgstac; returns the bbox of them all."""
    from stacsr import demo
    from tests.fixtures.services import sample_collection

    items = []
    for k in range(copies):
        prefix = f"bench-{k}"
        for item in demo.build_catalog(blob.root / prefix, style="earth-search", href_base=blob.file_url(prefix)):
            item["id"] += f"-{k}"
            item["collection"] = COLLECTION
            items.append(item)
    pgstac.delete_collection(COLLECTION)
    pgstac.load_collection(sample_collection(COLLECTION, "bench"))
    pgstac.load_items(items)
    boxes = [i["bbox"] for i in items]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def spec(pgstac, out: Path, name: str, limit: int | None = None, in_flight: int = 2) -> dict:
    return {
        "name": name,
        "areas": [{"name": "all", "bbox": BBOX}],
        "catalog": "earth-search",
        "stac_url": pgstac.url,
        "collection": COLLECTION,
        "best_per_tile": False,
        "limit": limit,
        "output": str(out),
        "publish": {"catalog": str(out)},
        "resources": {"tile_size": 128, "items_in_flight": in_flight},
    }


def throughput(pgstac, work: Path, at_once: int) -> dict:
    from stacsr.batch import run as B
    from stacsr.batch import spec as J
    from stacsr.catalog.presets import resolve
    from stacsr.engine import RayEngine
    from stacsr.model.package import load

    package = load("default")
    engine = RayEngine(package, cpus_per_item=max(1, (os.cpu_count() or 2) // at_once), items_in_flight=at_once)
    try:
        s = J.from_dict(spec(pgstac, work / f"warm-{at_once}", f"warm{at_once}", limit=1))
        B.run(s, resolve(s.catalog, s.collection, None, s.stac_url), package, engine)  # workers started, model loaded
        s = J.from_dict(spec(pgstac, work / f"tp-{at_once}", f"tp{at_once}"))
        report = B.run(s, resolve(s.catalog, s.collection, None, s.stac_url), package, engine).to_dict()
    finally:
        engine.close()
    assert report["ok"], report
    return {
        "items": report["items"]["done"],
        "tiles": report["tiles"],
        "seconds": report["seconds"],
        "tiles_per_second": report["tiles_per_second"],
    }


def _tree_rss(pid: int) -> tuple[int, int]:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    own = 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        total += rss
        own = rss if p.pid == pid else own
    return own, total


def memory(pgstac, work: Path, items: int) -> dict:
    """Peak RSS (MiB) of ``stacsr batch`` as a command over ``items`` items."""
    path = work / f"mem-{items}.yaml"
    path.write_text(yaml.safe_dump(spec(pgstac, work / f"mem-{items}", f"mem{items}", limit=items)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stacsr.cli", "batch", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            own, total = _tree_rss(proc.pid)
            peak[0], peak[1] = max(peak[0], own), max(peak[1], total)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    done.set()
    sampler.join()
    assert code == 0, f"stacsr batch over {items} items exited with {code}"
    return {"items": items, "driver_peak_mib": round(peak[0] / 2**20), "tree_peak_mib": round(peak[1] / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=4, help="items of the throughput batch (even)")
    args = parser.parse_args()

    from tests.fixtures.services import BlobServer, PgstacService, set_ray_test_env

    set_ray_test_env()
    work = Path(tempfile.mkdtemp(prefix="stacsr-bench-batch-"))
    pgstac, blob = PgstacService().start(), BlobServer(work / "blobs").start()
    figures: dict = {}
    try:
        BBOX[:] = load_items(pgstac, blob, max(2, args.items // 2))
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        one = throughput(pgstac, work, 1)
        two = throughput(pgstac, work, 2)
        ray.shutdown()
        figures.update(one_item=one, two_items=two, speedup=round(two["tiles_per_second"] / one["tiles_per_second"], 2))
        print(
            f"batch  1 item at once : {one['tiles_per_second']:6.2f} tiles/s ({one['items']} items, {one['tiles']} tiles)",
            flush=True,
        )
        print(
            f"batch  2 items at once: {two['tiles_per_second']:6.2f} tiles/s  speedup {figures['speedup']}", flush=True
        )
        n = max(3, args.items // 2)
        BBOX[:] = load_items(pgstac, blob, n)  # 2n items searchable
        figures["memory"] = [memory(pgstac, work, n), memory(pgstac, work, 2 * n)]
        for m in figures["memory"]:
            print(
                f"memory {m['items']:2d} items: driver {m['driver_peak_mib']} MiB, with Ray {m['tree_peak_mib']} MiB",
                flush=True,
            )
    finally:
        blob.stop()
        pgstac.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
