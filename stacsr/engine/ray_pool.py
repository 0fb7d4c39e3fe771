"""Ray engine: a pool of tile actors, each holding the model (and a GPU when ``gpus_per_actor`` > 0), and a
writer actor that assembles items' COGs.

Actors receive the source (a few hrefs, signed just before each batch is sent) with a batch of tile
windows and read their own halo'd windows from storage. For :meth:`RayEngine.run`, each finished batch is
handed *by reference* to the writer actor, so tile outputs go from the actor that made them to the writer
without passing through the caller; the caller holds only references, and a bounded number of batches is in
flight (``in_flight`` per actor, plus at most ``pending_writes`` awaiting the writer: backpressure).

The writer runs on the caller's node, with ``items_at_once`` items open at a time: local output folders
are there, and COGs bound for object storage are uploaded from its scratch files by the caller, the process
that holds the storage credentials (none travel to other processes). Tile actors are restarted and their
tasks retried if a worker process dies: tiles are pure functions of their window. A lost writer fails the
items it was assembling (their COGs are not in place, so a re-run redoes them) and is restarted for the
next ones.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Sequence

from stacsr import tiles
from stacsr.io.grid import Window
from stacsr.io.sink import SinkSpec, TileSink
from stacsr.io.sink import upload as sink_upload
from stacsr.io.source import ArraySource, Source
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

    def __init__(self, threads: int, use_gpu: bool, precision: str = "fp32") -> None:
        self.threads, self.device, self.precision = threads, "cuda" if use_gpu else "cpu", precision
        self.predict: Any = None
        self.tiles = 0

    def where(self) -> tuple[str, int]:
        """``(node id, tiles run)`` of this actor (since it last started): where the work went."""
        import ray

        return ray.get_runtime_context().get_node_id(), self.tiles

    def run(self, model: tuple[str, bytes], source: Source, cores: list[Window], halo: int) -> list[tuple[Window, Any]]:
        if self.predict is None:
            from stacsr.model.package import Predictor, from_bytes

            package = from_bytes(*model)
            self.predict = Predictor(package, device=self.device, threads=self.threads, precision=self.precision)
        self.tiles += len(cores)
        return tiles.run_tiles(self.predict, source, cores, halo, self.predict.scale)


class _Writer:
    """Actor body: the tile sinks of the items being assembled (several at once, one thread each)."""

    def __init__(self) -> None:
        self.sinks: dict[str, TileSink] = {}

    def open(self, key: str, spec: SinkSpec) -> None:
        self.sinks[key] = TileSink(spec).open()

    def write(self, key: str, results: list[tuple[Window, Any]]) -> int:
        return self.sinks[key].write(results)

    def finish(self, key: str) -> dict[str, str] | None:
        """The COGs; object-storage ones are left on this node for the caller to upload (see :meth:`run`)."""
        return self.sinks[key].finish(upload=False)

    def abort(self, key: str) -> None:
        sink = self.sinks.pop(key, None)
        if sink is not None:
            sink.abort()


def _get(refs: Any) -> Any:
    """``ray.get``, raising a task's own exception (a one-line error) rather than Ray's wrapper."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


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
        pending_writes: int = 4,
        items_at_once: int = 8,
        precision: str = "fp32",
    ) -> None:
        import ray

        connect(address)
        resources = ray.cluster_resources()
        if actors is None:
            actors = int(resources.get("GPU", 0) / gpus_per_actor) if gpus_per_actor else None
            actors = actors or max(1, int(resources.get("CPU", 1) // cpus_per_actor))
        worker = ray.remote(_TileWorker).options(  # spread over the nodes; restarted elsewhere if a node goes
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
            max_restarts=3,
            max_task_retries=3,
            scheduling_strategy="SPREAD",
        )
        self._model_ref = ray.put(package.to_bytes())
        self._actors = [worker.remote(cpus_per_actor, gpus_per_actor > 0, precision) for _ in range(actors)]
        self._writer_actor: Any = None
        self._lock = threading.Lock()
        self.size, self.batch, self.in_flight = actors, batch, in_flight
        self.pending_writes, self.items_at_once = pending_writes, items_at_once
        self._items = ThreadPoolExecutor(2, thread_name_prefix="stacsr-item")  # one item's COGs, the next's tiles

    def __str__(self) -> str:
        return f"Ray, {self.size} actors"

    def where(self) -> list[tuple[str, int]]:
        """``(node id, tiles run)`` of every tile actor."""
        return _get([actor.where.remote() for actor in self._actors])

    def _submit_all(self, source: Source, cores: Sequence[Window], halo: int) -> Iterator[tuple[Any, int]]:
        """Keep ``in_flight`` batches queued on every actor; yield ``(result ref, tiles)`` as batches finish.
        A file or item source is signed again for each batch (fresh tokens); an in-memory one is put once."""
        import ray

        shared = ray.put(source) if isinstance(source, ArraySource) else None
        todo = deque(tiles.batches(cores, self.batch))
        pending: dict[Any, tuple[Any, int]] = {}

        def submit(actor: Any) -> None:
            if todo:
                group = todo.popleft()
                arg = shared if shared is not None else source.signed()  # type: ignore[attr-defined]
                pending[actor.run.remote(self._model_ref, arg, group, halo)] = (actor, len(group))

        for _ in range(self.in_flight):
            for actor in self._actors:
                submit(actor)
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            actor, n = pending.pop(done)
            yield done, n
            submit(actor)

    def map(self, source: Source, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, Any]]:
        for ref, _ in self._submit_all(source, cores, halo):
            yield from _get(ref)

    def _writer(self) -> Any:
        """The writer actor, on this process's node (created once)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._lock:
            if self._writer_actor is None:
                here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
                self._writer_actor = (
                    ray.remote(_Writer)
                    .options(
                        num_cpus=0,
                        max_restarts=3,
                        max_task_retries=0,
                        max_concurrency=self.items_at_once,
                        scheduling_strategy=here,
                    )
                    .remote()
                )
        return self._writer_actor

    def run(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress=None
    ) -> dict[str, str] | None:
        writer = self._writer()
        key = uuid.uuid4().hex
        _get(writer.open.remote(key, sink))
        try:
            writes: deque = deque()
            for ref, n in self._submit_all(source, cores, halo):
                writes.append(writer.write.remote(key, ref))  # resolved in the writer: no pixel comes here
                del ref
                if progress is not None:
                    progress.advance(n)
                while len(writes) > self.pending_writes:
                    _get(writes.popleft())
            _get(list(writes))
            return sink_upload(_get(writer.finish.remote(key)))
        finally:
            writer.abort.remote(key)

    def submit(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress=None
    ) -> Future[dict[str, str] | None]:
        """:meth:`run` in a driver thread (two items at once: one's COGs, the next one's tiles)."""
        return self._items.submit(self.run, source, cores, halo, sink, progress)

    def close(self) -> None:
        import ray

        self._items.shutdown(wait=True)

        for actor in [*self._actors, *([self._writer_actor] if self._writer_actor else [])]:
            ray.kill(actor)
        self._actors, self._writer_actor = [], None
