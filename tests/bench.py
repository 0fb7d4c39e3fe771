"""``make bench``: what seam-free tiling, reads, Ray and COG writing cost against the model's best speed.

On one 1024 × 1024 4-band uint16 input and one model (the shipped default unless ``--model``):

1. ``limit``     the model's best in-memory speed: forward over halo-free chunks at the fastest chunk size;
2. ``tiles``     in-memory forward over exactly the halo'd tiles the pipeline uses (same tile size, halo);
3. ``sr``        ``pipeline.sr_file`` end to end (GeoTIFF read, tiles, COG write) on the default engine (in-process;
                 ``--ray``: the item as one task of a warm local Ray), as ``stacsr sr`` runs it after start-up;
4. ``cli``       wall time of the ``stacsr sr`` command itself (Python start-up included; in-process, its default).

Figures are output pixels per second. The last line printed is one JSON object with every figure,
``ratio`` = sr / tiles and ``ratio_vs_limit`` = sr / limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 1024


def best_of(fn, repeat: int = 2) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_input(path: Path) -> np.ndarray:
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from stacsr.io.write import write_cog

    image = np.rint(_tile_ground()).astype(np.uint16)
    grid = GeoBox((SIZE, SIZE), Affine(10, 0, 600000, 0, -10, 5300000), "EPSG:32632")
    write_cog(path, image, grid, ["B02", "B03", "B04", "B08"], scale=None)
    return image


def _tile_ground() -> np.ndarray:
    """The demo's synthetic ground (10 m), tiled to SIZE × SIZE."""
    from stacsr.demo import block_mean, ground

    world = block_mean(ground(seed=3), 4)  # 480 × 480 at 10 m
    reps = -(-SIZE // world.shape[1])
    return np.tile(world, (1, reps, reps))[:, :SIZE, :SIZE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--tile-size", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--ray", action="store_true", help="(3) on a local Ray instead of in-process")
    args = parser.parse_args()

    from stacsr import pipeline, tiles
    from stacsr.model.package import Predictor, load

    package = load(args.model)
    predict = Predictor(package)
    tile_size = args.tile_size or pipeline.DEFAULT_TILE_SIZE
    halo, scale = package.receptive_radius, package.card.scale
    out_pixels = (SIZE * scale) ** 2
    work = Path(tempfile.mkdtemp(prefix="stacsr-bench-"))
    src = work / "input.tif"
    image = make_input(src)
    figures: dict[str, float | int | str] = {"input": f"{SIZE}x{SIZE}x4 uint16", "model": package.ref}

    chunk_speed = {}
    for chunk in (64, 128, 256, 512):
        cores = tiles.plan(image.shape[1:], chunk)
        seconds = best_of(
            lambda cores=cores: [
                predict(image[None, :, c.row : c.row + c.height, c.col : c.col + c.width]) for c in cores
            ]
        )
        chunk_speed[chunk] = out_pixels / seconds
        print(f"limit  chunk {chunk:4d}: {chunk_speed[chunk]:12,.0f} px/s", flush=True)
    best_chunk = max(chunk_speed, key=chunk_speed.get)
    figures.update(limit_px_s=round(chunk_speed[best_chunk]), limit_chunk=best_chunk)

    seconds = best_of(lambda: tiles.super_resolve(image, predict, tile_size, halo, scale))
    figures.update(tiles_px_s=round(out_pixels / seconds), tile_size=tile_size, halo=halo)
    print(f"tiles  {tile_size} + halo {halo}: {figures['tiles_px_s']:12,} px/s", flush=True)

    engine = pipeline.make_engine(package, use_ray=args.ray)
    seconds = best_of(lambda: pipeline.sr_file(str(src), work / "out.tif", package, engine, tile_size))
    figures.update(sr_px_s=round(out_pixels / seconds), engine=str(engine))
    print(f"sr     end to end ({engine}): {figures['sr_px_s']:12,} px/s", flush=True)
    engine.close()
    if args.ray:
        import ray

        ray.shutdown()
    start = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "stacsr.cli",
        "sr",
        str(src),
        str(work / "cli.tif"),
        "--tile-size",
        str(tile_size),
        *(["--ray"] if args.ray else []),
        "--model",
        args.model,
    ]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "COLUMNS": "100"})
    figures["cli_seconds"] = round(time.perf_counter() - start, 2)
    print(f"cli    stacsr sr, cold:        {figures['cli_seconds']:12} s", flush=True)

    figures["ratio"] = round(figures["sr_px_s"] / figures["tiles_px_s"], 3)
    figures["ratio_vs_limit"] = round(figures["sr_px_s"] / figures["limit_px_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
