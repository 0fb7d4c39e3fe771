"""Ray engine: a pool of actors, each holding the model (and a GPU when ``gpus_per_actor`` > 0).

The padded image goes into the object store once; actors receive it by reference (zero-copy) together
with a batch of tile windows, so only coordinates and the outputs cross process boundaries. Actors are
restarted and their tasks retried if a worker process dies: tiles are pure functions of their window.
"""

from __future__ import annotations

import os
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
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)


class _TileWorker:
    """Actor body: rebuilds the model package from bytes and runs batches of tiles."""

    def __init__(self, model: tuple[str, bytes], threads: int, use_gpu: bool) -> None:
        from stacsr.model.package import Predictor, from_bytes

        package = from_bytes(*model)
        self.predict = Predictor(package, device="cuda" if use_gpu else "cpu", threads=threads)
        self.scale = package.card.scale

    def run(self, padded: np.ndarray, cores: list[Window], halo: int) -> list[tuple[Window, np.ndarray]]:
        return list(zip(cores, tiles.run_batch(self.predict, padded, cores, halo, self.scale)))


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
    ) -> None:
        import ray
        from ray.util import ActorPool

        connect(address)
        resources = ray.cluster_resources()
        if actors is None:
            actors = int(resources.get("GPU", 0) / gpus_per_actor) if gpus_per_actor else None
            actors = actors or max(1, int(resources.get("CPU", 1) // cpus_per_actor))
        worker = ray.remote(_TileWorker).options(
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=3, max_task_retries=3
        )
        self._model_ref = ray.put(package.to_bytes())  # kept alive: restarted actors are rebuilt from it
        self._actors = [worker.remote(self._model_ref, cpus_per_actor, gpus_per_actor > 0) for _ in range(actors)]
        self._pool = ActorPool(self._actors)
        self.batch = batch

    @property
    def size(self) -> int:
        return len(self._actors)

    def map(self, padded: np.ndarray, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, np.ndarray]]:
        import ray

        image_ref: Any = ray.put(padded)
        groups = list(tiles.batches(cores, self.batch))
        for done in self._pool.map_unordered(lambda actor, g: actor.run.remote(image_ref, g, halo), groups):
            yield from done
        del image_ref

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
