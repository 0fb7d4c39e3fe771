"""Ray engine: items, not tiles, are placed across the cluster; each item runs on one node, read to upload.

An item is one Ray task that asks for ``gpus_per_item`` GPUs and ``cpus_per_item`` CPUs. On the node that takes
it, the task runs the in-process engine (:class:`~stacsr.engine.local.LocalEngine`: read-ahead, batched model,
write-behind) into the item's tile sink on that node's scratch disk, makes the COGs there and writes them to
their place: uploaded from that node to object storage, with that node's credentials (its environment: a
Kubernetes secret, a workload identity), or written to a folder every node mounts. The task gets the item's
description (unsigned hrefs, windows, target URLs, the model by reference) and returns hrefs and figures
(:class:`~stacsr.engine.stats.RunResult`); no pixel of an item leaves its node, and no credential is sent.

Why tasks and not a hand-made actor pool: Ray's scheduler already places resource-shaped tasks where they fit,
spreads them (``SPREAD``), queues the rest, shows the queue to the autoscaler (a new node takes waiting items
at once) and runs a task again elsewhere when its node is lost (``max_retries``). Worker processes are reused,
so the model is built once per worker process (:func:`_engine`), not once per item.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from stacsr.engine.local import LocalEngine
from stacsr.engine.stats import RunResult
from stacsr.io.grid import Window
from stacsr.io.sink import SinkSpec
from stacsr.io.source import Source
from stacsr.model.package import ModelPackage
from stacsr.plumbing import storage

# Quiet, local-first defaults; an operator's environment wins.
QUIET_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
}
ITEM_RETRIES = 3  # an item whose node (or worker process) is lost runs again elsewhere, this many times at most
MAX_QUEUED = 256  # items a batch keeps submitted when the spec sets no limit: Ray queues what does not fit yet


class ClusterError(ValueError):
    """A run the cluster cannot do as asked (one line)."""


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


@dataclass(frozen=True)
class NodeSettings:
    """How a node runs an item's model: device, threads, batch, precision."""

    gpus: float
    cpus: int
    batch: int
    precision: str


_ENGINES: dict[tuple, LocalEngine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(model: tuple[str, bytes], settings: NodeSettings) -> LocalEngine:
    """This worker process's in-process engine for ``model`` (built once, kept while the process lives)."""
    key = (hashlib.sha256(model[1]).hexdigest(), settings)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            from stacsr.model.package import from_bytes

            device = "cuda" if settings.gpus > 0 else "cpu"
            _ENGINES[key] = LocalEngine(
                from_bytes(*model), settings.batch, device, settings.precision, threads=settings.cpus
            )
        return _ENGINES[key]


def run_item(
    model: tuple[str, bytes], source: Source, cores: list[Window], halo: int, sink: SinkSpec, settings: NodeSettings
) -> RunResult:
    """Task body: one item on this node, from its first read to its COGs in place."""
    return _engine(model, settings).run(source, cores, halo, sink)


def map_tiles(
    model: tuple[str, bytes], source: Source, cores: list[Window], halo: int, settings: NodeSettings
) -> list[tuple[Window, Any]]:
    """Task body: the tiles of a small in-memory source (evaluation), returned whole."""
    return list(_engine(model, settings).map(source, cores, halo))


def sees(path: str) -> bool:
    """Task body: whether ``path`` exists on this node."""
    return Path(path).exists()


def _cause(e: BaseException) -> BaseException:
    """A task's own exception (a one-line error) rather than Ray's wrapper."""
    from ray.exceptions import RayTaskError

    cause = getattr(e, "cause", None) if isinstance(e, RayTaskError) else None
    return cause if isinstance(cause, Exception) else e


class RayEngine:
    """Items on a Ray cluster, one node each (see the module's docstring).

    ``gpus_per_item``: GPUs an item asks for (0: CPU; 0.5 lets two items share a GPU node, one's COGs overlapping
    the other's tiles); ``cpus_per_item``: CPUs (default: 1 with a GPU, else the cores of the smallest node);
    ``items_in_flight``: the most items submitted at once (default: as many as the cluster's resources hold).
    """

    def __init__(
        self,
        package: ModelPackage,
        address: str | None = None,
        gpus_per_item: float = 0.0,
        cpus_per_item: int | None = None,
        items_in_flight: int | None = None,
        batch: int = 1,
        precision: str = "fp32",
    ) -> None:
        import ray

        connect(address)
        self.gpus = gpus_per_item
        self.cpus = cpus_per_item or (1 if gpus_per_item else _smallest_node_cpus())
        self.items_in_flight = items_in_flight
        self.settings = NodeSettings(self.gpus, self.cpus, batch, precision)
        self._model = ray.put(package.to_bytes())
        self._item = ray.remote(run_item).options(
            num_cpus=self.cpus,
            num_gpus=self.gpus,
            max_retries=ITEM_RETRIES,
            retry_exceptions=False,  # an item's own error is final: only a lost node or process is retried
            scheduling_strategy="SPREAD",
        )
        self._slots = threading.BoundedSemaphore(items_in_flight) if items_in_flight else None
        self._checked: set[str] = set()
        self._waiters = ThreadPoolExecutor(MAX_QUEUED, thread_name_prefix="stacsr-item")  # threads made as needed

    def __str__(self) -> str:
        per = f"{self.gpus:g} GPU + {self.cpus} CPU" if self.gpus else f"{self.cpus} CPU"
        return f"Ray, one item per node ({per} each)"

    @property
    def items_at_once(self) -> int:
        """``items_in_flight``, else the items the cluster's resources hold now (at least 1)."""
        if self.items_in_flight:
            return self.items_in_flight
        import ray

        total = ray.cluster_resources()
        slots = int(total.get("GPU", 0) // self.gpus) if self.gpus else int(total.get("CPU", 0) // self.cpus)
        return max(1, slots)

    def task_args(self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec) -> tuple:
        """Everything an item's task is sent: the model's reference, the source (unsigned: the node signs),
        windows, the sink's spec (target URLs) and settings. No credential is among them (a test holds it)."""
        return (self._model, source, list(cores), halo, sink, self.settings)

    def submit(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress=None
    ) -> Future[RunResult]:
        """Queue the item on the cluster (waiting first while ``items_in_flight`` items are out)."""
        self.check_output(sink.targets[0].url)
        if self._slots is not None:
            self._slots.acquire()
        ref = self._item.remote(*self.task_args(source, cores, halo, sink))
        return self._waiters.submit(self._wait, ref, len(cores), progress)

    def _wait(self, ref: Any, tiles: int, progress) -> RunResult:
        """Wait in a thread of ours (callbacks chained on the future run here, not in Ray's own threads)."""
        import ray

        try:
            result = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the task's own one-line error
            raise _cause(e) from None
        finally:
            if self._slots is not None:
                self._slots.release()
        if progress is not None:
            progress.advance(tiles)
        return result

    def run(self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress=None) -> RunResult:
        return self.submit(source, cores, halo, sink, progress).result()

    def map(self, source: Source, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, Any]]:
        import ray

        task = ray.remote(map_tiles).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=ITEM_RETRIES)
        try:
            yield from ray.get(task.remote(self._model, source, list(cores), halo, self.settings))
        except Exception as e:  # noqa: BLE001 - the task's own one-line error
            raise _cause(e) from None

    def check_output(self, root: str) -> None:
        """A local output folder must be one every node sees (a shared filesystem): probed once per folder,
        before any work, on every live node; refused with one line otherwise. Object storage always passes.
        Nodes that join later (autoscaling) are taken to mount what the others mount."""
        if storage.is_remote(root) or "://" in root:
            return
        folder = _existing_folder(Path(root))
        if str(folder) in self._checked:
            return
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n["Alive"]]
        if len(nodes) > 1:
            marker = folder / f".stacsr-shared-{uuid.uuid4().hex}"
            marker.touch()
            try:
                probe = ray.remote(sees)
                seen = ray.get(
                    [
                        probe.options(
                            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                        ).remote(str(marker))
                        for n in nodes
                    ]
                )
            finally:
                marker.unlink(missing_ok=True)
            blind = [n["NodeManagerHostname"] for n, ok in zip(nodes, seen) if not ok]
            if blind:
                raise ClusterError(
                    f"output folder {folder} is not on a filesystem the cluster's nodes share ({', '.join(blind)} "
                    "cannot see it): write to object storage (s3://, gs://, az://) or to a shared mount"
                )
        self._checked.add(str(folder))

    def close(self) -> None:
        """Wait for the items submitted (tasks hold nothing else)."""
        self._waiters.shutdown(wait=True)


def _existing_folder(path: Path) -> Path:
    path = path.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _smallest_node_cpus() -> int:
    """The CPUs of the smallest live node that has any (1 when none has joined yet: an autoscaled cluster)."""
    import ray

    cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
    return min(cpus) if cpus else 1
