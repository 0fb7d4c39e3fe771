"""``make bench`` (precision): half precision against float32, on the demo's landscape (water, town, soil).

For ``fp16`` and ``bf16`` (the network under autocast; residual base and consistency shift in float32), one
JSON line each: deviation from the ``fp32`` output in DN (mean, 99.9th percentile, max), the worst 4 × 4 block
mean against its input pixel (consistency), and the model's speed in output pixels/s against ``fp32``'s,
on this machine's device (``--device``).

    python -m tests.bench_precision                 # 512² input, CPU (about a minute here)
    python -m tests.bench_precision --device cuda   # on a GPU node
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from stacsr import demo, tiles
from stacsr.model.package import Predictor, load
from stacsr.train.degrade import block_mean

SCALE = 4


def run(package, image: np.ndarray, precision: str, device: str | None, tile_size: int) -> tuple[np.ndarray, float]:
    predict = Predictor(package, device=device, precision=precision)
    tiles.super_resolve(image[:, :64, :64], predict, 64, package.receptive_radius, SCALE)  # warm-up
    start = time.perf_counter()
    out = tiles.super_resolve(image, predict, tile_size, package.receptive_radius, SCALE)
    return out, out[0].size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    package = load("default")
    world = np.rint(block_mean(demo.ground(seed=5), SCALE)).astype(np.uint16)
    image = np.tile(world, (1, args.size // world.shape[1] + 1, args.size // world.shape[2] + 1))
    image = image[:, : args.size, : args.size]
    reference, fp32_speed = run(package, image, "fp32", args.device, args.tile_size)
    for precision in ("fp16", "bf16"):
        out, speed = run(package, image, precision, args.device, args.tile_size)
        deviation = np.abs(out.astype(np.int32) - reference.astype(np.int32))
        consistency = np.abs(block_mean(out.astype(np.float64), SCALE) - image).max()
        row = {
            "precision": precision,
            "input": f"{args.size}x{args.size}",
            "device": str(Predictor(package, device=args.device).device),
            "deviation_dn": {
                "mean": round(float(deviation.mean()), 3),
                "p99_9": float(np.percentile(deviation, 99.9)),
                "max": int(deviation.max()),
            },
            "worst_block_mean_vs_input_dn": round(float(consistency), 3),
            "px_s": round(speed),
            "speed_vs_fp32": round(speed / fp32_speed, 2),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
