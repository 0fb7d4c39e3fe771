"""A whole Sentinel-2 tile on one node, without Ray: where the time goes (issue: one tile on one GPU node).

A synthetic tile (the demo's ground, tiled: 4 bands of 10980² uint16, one COG per band on local disk, as a
Sentinel-2 L2A item has) is super-resolved into one COG per band (43920², 4 × 3.9 GB raw) through
:func:`stacsr.pipeline.run_item` and the in-process engine, the path ``stacsr enhance --no-ray`` and
``batch`` take. It prints one JSON line: wall time and output pixels/s; the seconds each stage was busy
(``read`` in the reader thread, ``transfer`` to and from the device, ``model``, ``write`` of tiles into the
intermediate in the writer thread, ``cog`` for compression and overviews at the end; stages overlap, so they
add up to more than the wall time); GPU utilisation (mean and peak, from ``nvidia-smi`` every 0.2 s) and
peak GPU memory; the host's peak RSS (this process tree, sampled every 0.2 s).

    python -m tests.bench_tile                                       # 2048², this machine's CPU (minutes)
    python -m tests.bench_tile --size 10980 --device cuda --precision fp16 --tile-size 1024 --batch 4
    python -m tests.bench_tile --size 10980 --device cuda --ray      # also `stacsr sr --gpus-per-actor 1`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tests.bench_scale import make_input, run_sampled, tree_rss

BANDS = ("B02", "B03", "B04", "B08")


def make_tile(folder: Path, size: int) -> list[Path]:
    """One COG per band, the demo's ground tiled to ``size`` × ``size`` (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [make_input(folder / f"{b}.tif", size, (i,)) for i, b in enumerate(BANDS)]


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every 0.2 s while running (nothing without nvidia-smi)."""

    def __init__(self) -> None:
        self.util: list[float] = []
        self.mem: list[float] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            cmd = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.util.append(util)
            self.mem.append(mem)

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        self.proc.terminate()
        return {
            "gpu_util_mean_pct": round(float(np.mean(self.util)), 1) if self.util else None,
            "gpu_util_max_pct": max(self.util, default=None),
            "gpu_mem_max_mib": max(self.mem, default=None),
        }


class RssSampler:
    """Peak resident memory of this process and its children, every 0.2 s."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss for rss, _ in tree_rss(os.getpid()).values()))
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak / 1e9, 2)


def run_local(paths: list[Path], out: Path, args: argparse.Namespace) -> dict:
    """The tile through ``run_item`` and the in-process engine, timed stage by stage."""
    import torch

    from stacsr import pipeline
    from stacsr.engine import LocalEngine
    from stacsr.io.grid import Window
    from stacsr.io.sink import CogTarget
    from stacsr.io.source import Band, RasterSource, file_source
    from stacsr.model import package as model_package
    from stacsr.plumbing.timing import Timings

    package = model_package.load(args.model)
    grid = file_source(str(paths[0]))[0].grid
    source = RasterSource(tuple(Band(str(p), 1, None, b) for p, b in zip(paths, BANDS)), grid, "bench tile")
    targets = [CogTarget(str(out / f"{b}.tif"), (i,), (b,)) for i, b in enumerate(BANDS)]
    timings = Timings()
    engine = LocalEngine(package, batch=args.batch, device=args.device, precision=args.precision, timings=timings)
    rss, gpu = RssSampler(), GpuSampler()
    start = time.perf_counter()
    pipeline.run_item(source, Window(0, 0, args.size, args.size), targets, package, engine, args.tile_size)
    wall = time.perf_counter() - start
    row = {
        "size": args.size,
        "device": str(engine.predict.device),
        "precision": args.precision,
        "tile_size": args.tile_size,
        "batch": args.batch,
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 1),
        "px_s": round((4 * args.size) ** 2 / wall),
        "stages_s": {k: round(v, 1) for k, v in timings.seconds.items()},
        "host_peak_rss_gb": rss.stop(),
    }
    row.update(gpu.stop())
    if torch.cuda.is_available() and engine.predict.device.type == "cuda":
        row["torch_gpu_mem_max_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return row


def run_ray(paths: list[Path], work: Path, args: argparse.Namespace) -> dict:
    """``stacsr sr --gpus-per-actor 1`` on the same tile (as one 4-band file), with its own local Ray."""
    import rasterio

    src = work / "tile-4band.vrt"
    subprocess.run(
        ["gdalbuildvrt", "-separate", str(src), *map(str, paths)], check=True, capture_output=True
    ) if shutil.which("gdalbuildvrt") else None
    if not src.exists():
        with rasterio.open(paths[0]) as first:
            raise SystemExit(f"--ray needs gdalbuildvrt to stack the bands ({first.name})")
    out = work / "out-ray.tif"
    cmd = [
        str(Path(sys.executable).with_name("stacsr")),
        "sr",
        str(src),
        str(out),
        "--tile-size",
        str(args.tile_size),
        "--gpus-per-actor",
        "1" if args.device == "cuda" else "0",
    ]
    result, peak, roles, _, wall = run_sampled(cmd, dict(os.environ))
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    out.unlink(missing_ok=True)
    return {
        "size": args.size,
        "mode": "stacsr sr (Ray)",
        "wall_s": round(wall, 1),
        "px_s": round((4 * args.size) ** 2 / wall),
        "peak_rss_gb": round(peak / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--model", default="default")
    parser.add_argument("--ray", action="store_true", help="also run `stacsr sr` with Ray")
    parser.add_argument("--work", type=Path, default=None, help="folder for inputs and outputs (default: a temp)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="stacsr-bench-tile-"))
    paths = make_tile(work / f"tile-{args.size}", args.size)
    out = work / "out"
    out.mkdir(exist_ok=True)
    print(json.dumps(run_local(paths, out, args)), flush=True)
    shutil.rmtree(out, ignore_errors=True)
    if args.ray:
        print(json.dumps(run_ray(paths, work, args)), flush=True)


if __name__ == "__main__":
    main()
