"""``make bench`` (training part): remote patch reads, and the cost of Ray Train around the SRGAN step.

1. ``patches_per_s``       Wald pairs (``area`` degradation) read one by one with
                           :func:`stacsr.train.data.read_pair` from the demo COGs (64-px internal tiles) on the
                           local range server (tests/fixtures/services.py: ``BlobServer``, ``/files/`` route,
                           HTTP Range requests through GDAL), no cache; ``cache_fill_patches_per_s`` the same
                           with an empty cache folder (read + write), ``cached_patches_per_s`` with it warm.
2. ``plain_steps_per_s``   the training step in one plain process, data = in-memory tensors.
3. ``ray_steps_per_s``     the same step in a Ray Train ``TorchTrainer`` (1 worker), data = an in-memory
                           (materialised) Ray dataset of the pre-read pairs, so no reading is measured.
   ``overhead`` = 1 − ray / plain (target ≤ 0.10).

Both sides run the whole worker function :func:`stacsr.train.loop.train_loop_per_worker` (whose step is
:func:`stacsr.train.loop.train_step`), so that logging and checkpointing are counted alike: the plain loop runs
it in-process with ``ray.train``'s
handful of entry points stubbed (context rank 0 / world 1, CPU device, no checkpoint, ``prepare_model`` =
identity — what Ray does for one worker —, a dataset shard that yields the in-memory batches, ``report``
that only records). Both runs therefore execute exactly the same code: GAN phase from step 1 (G + D update,
WGAN-GP), EMA, TensorBoard scalars every step, one checkpoint and one preview at the last step.

Steps/s come from the TensorBoard wall times the loop writes itself (``loss/g_total`` at every step): from
step ``--warmup`` to the last step, i.e. neither Ray start-up nor warm-up nor the final checkpoint count.
The Ray worker gets 1 CPU (``resources_per_worker``, Ray then sets its torch to 1 thread); the plain loop
runs with the same number of torch threads. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

PATCHES, PATCH, SCALE = 64, 64, 4
WORKER_CPUS = 1
CONFIG = {
    "generator": {"blocks": 8, "features": 32},  # scale 4, 4 bands; discriminator: TrainConfig defaults
    "batch_size": 4,
    "pretrain_steps": 0,  # every measured step is a full GAN step: D update + G update
    "log_every": 1,
    "seed": 0,
}


def _config(steps: int) -> dict[str, Any]:
    return {**CONFIG, "steps": steps, "checkpoint_every": steps, "preview_every": steps}


# ------------------------------------------------------------------ 1. remote reads


def make_pairs(blob: Any, work: Path) -> tuple[Any, Any, Path]:
    """Demo scenes (earth-search style, unauthenticated /files/ hrefs) and a 64 × 64-px Wald manifest."""
    import warnings

    from stacsr.catalog.presets import PRESETS
    from stacsr.train import manifest as P
    from stacsr.train import pairs_wald as W
    from tests.fixtures import scenes as SC

    scenes = SC.make_scenes(blob, "earth-search")
    preset = PRESETS["earth-search"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer patches than asked" would only shrink the sample
        table = W.build_wald_manifest(
            scenes.items, preset, SC.world_bbox(0, 0, 480, 480), PATCHES, PATCH, SCALE, seed=1, min_valid=1.0
        )
    path = Path(P.write_manifest(table, work / "pairs.parquet"))
    return table, preset, path


def read_all(rows: list[dict], preset: Any, cache_dir: Path | None) -> tuple[float, list]:
    from stacsr.train.data import read_pair

    start = time.perf_counter()
    out = [read_pair(r, preset, "area", cache_dir=cache_dir) for r in rows]
    return time.perf_counter() - start, out


# ------------------------------------------------------------------ TensorBoard timing


def tb_steps_per_s(folder: Path, warmup: int) -> tuple[float, int]:
    """Steps/s between the ``loss/g_total`` events of step ``warmup`` and of the last step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = {}
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if "loss/g_total" in acc.Tags()["scalars"]:
            events.update({e.step: e.wall_time for e in acc.Scalars("loss/g_total")})
    last = max(events)
    if warmup not in events or last <= warmup:
        raise RuntimeError(f"TensorBoard under {folder} has steps {sorted(events)}: cannot time {warmup}..{last}")
    return (last - warmup) / (events[last] - events[warmup]), last - warmup


# ------------------------------------------------------------------ 2. plain loop (the worker function, Ray stubbed)


class _Shard:
    """Stand-in for ``ray.train.get_dataset_shard``: the in-memory pairs as float32 torch batches."""

    def __init__(self, lr: np.ndarray, hr: np.ndarray) -> None:
        import torch

        self.lr, self.hr = torch.from_numpy(lr), torch.from_numpy(hr)

    def iter_torch_batches(self, batch_size: int, drop_last: bool = True, dtypes: Any = None):
        for i in range(0, len(self.lr) - batch_size + 1, batch_size):
            yield {"lr": self.lr[i : i + batch_size], "hr": self.hr[i : i + batch_size]}


def run_plain(loop_config: dict[str, Any], lr: np.ndarray, hr: np.ndarray, threads: int) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from stacsr.train.loop import train_loop_per_worker

    ctx = mock.Mock(get_world_rank=lambda: 0, get_world_size=lambda: 1)
    shard = _Shard(lr, hr)
    reports = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with (
            mock.patch.multiple(
                ray.train,
                get_context=lambda: ctx,
                get_checkpoint=lambda: None,
                get_dataset_shard=lambda name: shard,
                report=lambda metrics, checkpoint=None: reports.append(metrics),
            ),
            mock.patch.multiple(
                ray.train.torch, get_device=lambda: torch.device("cpu"), prepare_model=lambda model, **kw: model
            ),
        ):
            train_loop_per_worker(loop_config)
    finally:
        torch.set_num_threads(previous)
    if not reports or reports[-1]["step"] != _steps(loop_config):
        raise RuntimeError(f"the plain loop did not reach its last step: {reports}")


def _steps(loop_config: dict[str, Any]) -> int:
    return int(loop_config["config"]["steps"])


# ------------------------------------------------------------------ 3. Ray Train


def _ray_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` plus a note of the worker's torch threads (pickled by value: ``__main__``)."""
    import torch

    from stacsr.train.loop import train_loop_per_worker

    Path(loop_config["threads_file"]).write_text(str(torch.get_num_threads()))
    train_loop_per_worker(loop_config)


def run_ray(loop_config: dict[str, Any], lr: np.ndarray, hr: np.ndarray, storage: Path) -> int:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ds = ray.data.from_items([{"lr": a, "hr": b} for a, b in zip(lr, hr)]).materialize()
    threads_file = storage / "worker-threads.txt"
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={**loop_config, "threads_file": str(threads_file)},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": WORKER_CPUS}),
        run_config=RunConfig(name=loop_config["name"], storage_path=str(storage)),
        datasets={"train": ds},
    )
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise RuntimeError(f"Ray Train run failed: {result.error}")
    if result.metrics.get("step") != _steps(loop_config):
        raise RuntimeError(f"Ray Train run stopped at {result.metrics}")
    return int(threads_file.read_text())


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed (default 5)")
    args = parser.parse_args()

    from tests.fixtures.services import BlobServer, set_ray_test_env, start_ray_local

    set_ray_test_env()  # before `import ray` anywhere
    from stacsr.train import trainer as T
    from stacsr.train.config import from_dict

    work = Path(tempfile.mkdtemp(prefix="stacsr-bench-train-"))
    blob = BlobServer().start()
    ray_local = None
    figures: dict[str, Any] = {}
    try:
        # 1. reads
        table, preset, manifest = make_pairs(blob, work)
        rows = table.to_pylist()
        n = len(rows)
        read_all(rows[:2], preset, None)  # GDAL/rasterio warm-up (driver registration, first connection)
        blob.clear_requests()
        seconds, pairs = read_all(rows, preset, None)
        requests = blob.requests
        cache = work / "cache"
        fill, _ = read_all(rows, preset, cache)
        warm, _ = read_all(rows, preset, cache)
        figures.update(
            patches=n,
            patch_px=PATCH,
            scale=SCALE,
            bands=len(rows[0]["bands"]),
            patches_per_s=round(n / seconds, 1),
            http_requests=len(requests),
            range_requests=sum(1 for r in requests if r.range),
            cache_fill_patches_per_s=round(n / fill, 1),
            cached_patches_per_s=round(n / warm, 1),
        )
        print(
            f"reads   remote, no cache:   {n / seconds:10.1f} patches/s ({n} × {PATCH} px, "
            f"{figures['http_requests']} HTTP requests, {figures['range_requests']} with Range)",
            flush=True,
        )
        print(f"reads   cache fill:         {n / fill:10.1f} patches/s", flush=True)
        print(f"reads   cache warm:         {n / warm:10.1f} patches/s", flush=True)
        lr = np.stack([p[0] for p in pairs]).astype(np.float32)
        hr = np.stack([p[1] for p in pairs]).astype(np.float32)

        # the loop's inputs, as stacsr.train.trainer.train builds them
        cfg, _, card, _ = T.prepare(manifest, "bench", from_dict(_config(args.steps)), 1)
        loop_config = lambda name, storage: {  # noqa: E731
            "config": cfg.to_dict(),
            "card": card.to_dict(),
            "storage": str(storage),
            "name": name,
            "storage_filesystem": None,
            "init_card": None,
            "init_weights": None,
        }
        figures.update(
            generator=f"{cfg.generator.blocks} blocks x {cfg.generator.features} features x{cfg.generator.scale}",
            discriminator=f"{cfg.discriminator.features}..{cfg.discriminator.max_features} features",
            batch=cfg.batch_size,
            hr_px=PATCH,
            steps=args.steps,
            timed_steps=args.steps - args.warmup,
        )

        # 2. plain
        plain_storage = work / "plain"
        run_plain(loop_config("plain", plain_storage), lr, hr, WORKER_CPUS)
        plain, _ = tb_steps_per_s(plain_storage / "plain", args.warmup)
        figures["plain_steps_per_s"] = round(plain, 3)
        print(f"train   plain loop:         {plain:10.3f} steps/s ({WORKER_CPUS} torch thread)", flush=True)

        # 3. Ray Train
        ray_local = start_ray_local()
        ray_storage = work / "ray"
        threads = run_ray(loop_config("ray", ray_storage), lr, hr, ray_storage)
        ray_speed, _ = tb_steps_per_s(ray_storage / "ray", args.warmup)
        figures.update(
            ray_steps_per_s=round(ray_speed, 3),
            torch_threads=WORKER_CPUS,
            ray_worker_threads=threads,
            overhead=round(1 - ray_speed / plain, 3),
            overhead_target=0.10,
        )
        print(
            f"train   Ray Train, 1 worker: {ray_speed:9.3f} steps/s ({threads} torch thread(s) in the worker)",
            flush=True,
        )
        print(f"train   overhead 1 - ray/plain: {figures['overhead']:+.3f} (target <= 0.10)", flush=True)
        if threads != WORKER_CPUS:
            print(f"warning: the Ray worker ran {threads} torch threads, the plain loop {WORKER_CPUS}", flush=True)
        figures["step_code"] = "stacsr.train.loop.train_loop_per_worker in both (Ray stubbed in plain)"
    finally:
        if ray_local is not None:
            ray_local.shutdown()
        blob.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
