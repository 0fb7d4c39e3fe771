"""The tile sink alone, fed as fast as a GPU would feed it: what an item costs after its last tile.

Synthetic 4-band outputs (the demo's ground, upsampled × 4 with noise, as 2048² tiles in row order) go into
a :class:`stacsr.io.sink.TileSink` with one COG per band, with no model in the way. It prints one JSON line
per size: the seconds spent writing tiles (``tiles_s``: what runs beside the model), the seconds after the
last tile until the COGs are in place (``finish_s``: what a GPU would wait for on a single item), output
pixels/s of both together, the peak RSS of this process, the peak of the sink's scratch folder on disk
(``scratch_peak_gb``: blocks allocated, sampled every 0.2 s) and the COGs' size (``cogs_gb``).

    python -m tests.bench_sink                       # 4096², 8192² and 16384² outputs per band
    python -m tests.bench_sink --sizes 43920         # a whole Sentinel-2 tile (15.4 GB raw; disk!)
    python -m tests.bench_sink --compress none       # the same without compression: what is not compression
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox

from tests.bench_tile import BANDS, RssSampler

SCRATCH_PREFIX = ".stacsr-"  # the sink's scratch folders (stacsr.io.sink)

TILE = 2048  # output pixels (a 512² input tile at scale 4)


def texture() -> np.ndarray:
    """(4, TILE, TILE) uint16: the demo ground's four bands, upsampled × 4, with sensor-like noise."""
    from stacsr.demo import ground

    world = np.asarray(ground(seed=3), dtype=np.float32)[:4, :TILE, :TILE]
    world = np.pad(world, ((0, 0), (0, TILE - world.shape[1]), (0, TILE - world.shape[2])), mode="reflect")
    noise = np.random.default_rng(0).normal(0, 40, world.shape)
    return np.clip(world + noise, 1, 65535).astype(np.uint16)


class DiskSampler:
    """Peak bytes allocated on disk under ``folder``'s scratch folders, every 0.2 s."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _used(self) -> int:
        used = 0
        for top in self.folder.glob(SCRATCH_PREFIX + "*"):
            for path in top.rglob("*"):
                try:
                    used += path.stat().st_blocks * 512
                except OSError:  # removed meanwhile
                    pass
        return used

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak / 1e9, 2)


def run(size: int, folder: Path, base: np.ndarray, compress: str = "deflate") -> dict:
    from stacsr.io.grid import Window
    from stacsr.io.sink import CogTarget, SinkSpec, TileSink

    grid = GeoBox((size, size), Affine(2.5, 0, 600000, 0, -2.5, 5300000), "EPSG:32632")
    targets = tuple(CogTarget(str(folder / f"{b}.tif"), (i,), (b,)) for i, b in enumerate(BANDS))
    sink = TileSink(SinkSpec(grid, (0, 0), 4, targets, scratch=str(folder), compress=compress)).open()
    rss, disk = RssSampler(), DiskSampler(folder)
    start = time.perf_counter()
    step = TILE // 4  # input pixels per tile
    for row in range(0, size // 4, step):
        for col in range(0, size // 4, step):
            core = Window(row, col, min(step, size // 4 - row), min(step, size // 4 - col))
            tile = np.roll(base, (row, col), axis=(1, 2))[:, : core.height * 4, : core.width * 4]
            sink.write([(core, tile)])
    tiles = time.perf_counter() - start
    sink.finish()
    wall = time.perf_counter() - start
    return {
        "size": size,
        "compress": compress,
        "tiles_s": round(tiles, 1),
        "finish_s": round(wall - tiles, 1),
        "px_s": round(4 * size**2 / wall),
        "peak_rss_gb": rss.stop(),
        "scratch_peak_gb": disk.stop(),
        "cogs_gb": round(sum(t.stat().st_size for t in folder.glob("*.tif")) / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--compress", default="deflate", help="the COGs' compression (deflate, zstd, none, …)")
    args = parser.parse_args()
    base = texture()
    for size in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="stacsr-bench-sink-"))
        try:
            print(json.dumps(run(size, folder, base, args.compress)), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
