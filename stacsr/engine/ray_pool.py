"""Ray engine: a pool of actors, each holding the model (and a GPU when ``gpus_per_actor`` > 0).

The padded image goes into the object store once; actors receive it by reference (zero-copy) together
with a batch of tile windows, so only coordinates and the outputs cross process boundaries. Actors are
restarted and their tasks retried if a worker process dies: tiles are pure functions of their window.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Iterator, Sequence

import numpy as np

from stacsr import tiles
from stacsr.io.grid import Window
from stacsr.model.package import ModelPackage

# Quiet, local-first defaults; an operator's environment wins.
QUIET_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
}


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``, as under ``ray job submit``), else start a quiet
    local Ray. Does nothing when this process is already connected."""
    for key, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **quiet)


class _TileWorker:
    """Actor body: builds the model on its first batch (and again after a restart), then runs batches.

    The model travels as an argument of each call (a reference, resolved by Ray) rather than of the
    constructor, so a restarted actor can always rebuild it.
    """

    def __init__(self, threads: int, use_gpu: bool) -> None:
        self.threads, self.device = threads, "cuda" if use_gpu else "cpu"
        self.predict: Any = None

    def run(
        self, model: tuple[str, bytes], padded: np.ndarray, cores: list[Window], halo: int
    ) -> list[tuple[Window, np.ndarray]]:
        if self.predict is None:
            from stacsr.model.package import Predictor, from_bytes

            self.predict = Predictor(from_bytes(*model), device=self.device, threads=self.threads)
        return list(zip(cores, tiles.run_batch(self.predict, padded, cores, halo, self.predict.scale)))


class RayEngine:
    """Tiles on a pool of Ray actors; ``actors=None`` sizes the pool to the cluster."""

    def __init__(
        self,
        package: ModelPackage,
        address: str | None = None,
        actors: int | None = None,
        cpus_per_actor: int = 1,
        gpus_per_actor: float = 0,
        batch: int = 1,
        in_flight: int = 2,
    ) -> None:
        import ray

        connect(address)
        resources = ray.cluster_resources()
        if actors is None:
            actors = int(resources.get("GPU", 0) / gpus_per_actor) if gpus_per_actor else None
            actors = actors or max(1, int(resources.get("CPU", 1) // cpus_per_actor))
        worker = ray.remote(_TileWorker).options(
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=3, max_task_retries=3
        )
        self._model_ref = ray.put(package.to_bytes())
        self._actors = [worker.remote(cpus_per_actor, gpus_per_actor > 0) for _ in range(actors)]
        self.size, self.batch, self.in_flight = actors, batch, in_flight

    def __str__(self) -> str:
        return f"Ray, {self.size} actors"

    def map(self, padded: np.ndarray, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, np.ndarray]]:
        """Keep ``in_flight`` batches queued on every actor, so none idles while results come back."""
        import ray

        image_ref: Any = ray.put(padded)
        todo = deque(tiles.batches(cores, self.batch))
        pending: dict[Any, Any] = {}

        def submit(actor: Any) -> None:
            if todo:
                pending[actor.run.remote(self._model_ref, image_ref, todo.popleft(), halo)] = actor

        for _ in range(self.in_flight):
            for actor in self._actors:
                submit(actor)
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            submit(pending.pop(done))
            yield from ray.get(done)

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
