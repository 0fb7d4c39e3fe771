"""``make bench`` (scale): how memory and speed of ``stacsr sr`` grow with the area, in-process and with Ray.

For each size N, a synthetic 4-band uint16 N × N input at 10 m (the demo's ground, tiled; a COG on local
disk) is super-resolved by the ``stacsr sr`` command itself, in a fresh process, with ``--no-ray`` and with
its own local Ray. While it runs, the resident memory of its whole process tree (the driver and every Ray
process: GCS, raylet, workers, actors) is summed every 0.2 s; the peak of that sum is the figure. Speed is
the command's own "output pixels/s" (tiles, reads and COG writing; Python and Ray start-up excluded) and
its wall time; the largest process of each role (driver, item worker, other Ray processes) is given
too, and the peak of each role's sum (what sizing a pod needs). One JSON line per run, then one with the ratios the streaming targets are about:

    peak RSS at the largest size ≤ 1.3 × the smallest, in both modes; in-process peak ≤ 3 GB there;
    output px/s at the largest size ≥ 0.9 × the smallest.

    python -m tests.bench_scale                         # 1024² and 4096², both modes (about 10 min here)
    python -m tests.bench_scale --sizes 10980 --modes no-ray   # a whole Sentinel-2 tile (about 25 min)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")
STRIP = 1024


ROLES = (
    ("item worker", "ray::run_item"),
    ("item worker", "ray::IDLE"),  # a worker process between items (its title while idle)
    ("ray", "ray"),
    ("ray", "gcs_server"),
    ("ray", "raylet"),
)


def tree_rss(root: int) -> dict[int, tuple[int, str]]:
    """``pid: (resident bytes, role)`` of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text().split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        role = "driver" if int(entry) == root else next((r for r, key in ROLES if key in cmd), "ray")
        info[int(entry)] = (int(statm[1]) * PAGE, role)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in info:
            tree[pid] = info[pid]
        todo += children.get(pid, [])
    return tree


def run_sampled(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, int, dict, dict, float]:
    """Run ``cmd``; return its result, the peak RSS of its process tree (sum over processes, sampled every
    0.2 s), the peak RSS of the largest process of each role, the peak of each role's sum, and its wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    peak, roles, totals = 0, {}, {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            tree = tree_rss(proc.pid)
            peak = max(peak, sum(rss for rss, _ in tree.values()))
            summed: dict[str, int] = {}
            for rss, role in tree.values():
                roles[role] = max(roles.get(role, 0), rss)
                summed[role] = summed.get(role, 0) + rss
            for role, rss in summed.items():
                totals[role] = max(totals.get(role, 0), rss)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak, roles, totals, time.perf_counter() - start


def make_input(path: Path, size: int, bands: tuple[int, ...] = (0, 1, 2, 3)) -> Path:
    """The demo's synthetic ground (10 m; ``bands`` of B02, B03, B04, B08), tiled to ``size`` × ``size``, written
    strip by strip as a COG (kept between runs)."""
    import rasterio
    from affine import Affine

    from stacsr.demo import block_mean, ground
    from stacsr.io.write import cog_from_file

    if path.is_file():
        return path
    world = np.rint(block_mean(ground(seed=3), 4)).astype(np.uint16)[list(bands)]  # 480 × 480
    tmp = path.with_suffix(".strips.tif")
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=len(bands),
        dtype="uint16",
        crs="EPSG:32632",
        nodata=0,
        transform=Affine(10, 0, 600000, 0, -10, 5300000),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        bigtiff="IF_SAFER",
    )
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.descriptions = tuple(("B02", "B03", "B04", "B08")[b] for b in bands)
        for row in range(0, size, STRIP):
            rows = np.arange(row, min(size, row + STRIP)) % world.shape[1]
            cols = np.arange(size) % world.shape[2]
            dst.write(world[:, rows[:, None], cols[None, :]], window=rasterio.windows.Window(0, row, size, len(rows)))
    cog_from_file(tmp, path)
    tmp.unlink()
    return path


def measure(src: Path, size: int, mode: str, work: Path, tile_size: int | None) -> dict:
    out = work / f"out-{size}-{mode}.tif"
    cmd = [str(Path(sys.executable).with_name("stacsr")), "sr", str(src), str(out)]
    cmd += ["--no-ray"] if mode == "no-ray" else ["--ray"]
    cmd += ["--tile-size", str(tile_size)] if tile_size else []
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"COLUMNS": "200"}
    result, peak, roles, totals, wall = run_sampled(cmd, env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    px_s = float(re.search(r"output pixels/s\s+([\d,]+)", result.stderr)[1].replace(",", ""))
    out.unlink()
    return {
        "size": size,
        "mode": mode,
        "output_px": (4 * size) ** 2,
        "peak_rss_gb": round(peak / 1e9, 2),
        "px_s": round(px_s),
        "wall_s": round(wall, 1),
        "cpus": os.cpu_count(),
        "largest_process_gb": {role: round(rss / 1e9, 2) for role, rss in sorted(roles.items())},
        "role_total_gb": {role: round(rss / 1e9, 2) for role, rss in sorted(totals.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--modes", nargs="+", default=["no-ray", "ray"], choices=["no-ray", "ray"])
    parser.add_argument("--tile-size", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--work", type=Path, default=None, help="folder for inputs and outputs (default: a temp)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="stacsr-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        src = make_input(work / f"input-{size}.tif", size)
        for mode in args.modes:
            rows.append(measure(src, size, mode, work, args.tile_size))
            print(json.dumps(rows[-1]), flush=True)
    small, large = min(args.sizes), max(args.sizes)
    summary: dict = {"sizes": [small, large]}
    for mode in args.modes:
        a = next(r for r in rows if r["size"] == small and r["mode"] == mode)
        b = next(r for r in rows if r["size"] == large and r["mode"] == mode)
        summary[mode] = {
            "rss_ratio": round(b["peak_rss_gb"] / a["peak_rss_gb"], 2),
            "px_s_ratio": round(b["px_s"] / a["px_s"], 2),
            "peak_rss_gb_large": b["peak_rss_gb"],
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
