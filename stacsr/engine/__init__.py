"""Where items run: in this process (:class:`LocalEngine`), or one item per node on a Ray cluster (:class:`RayEngine`).

Both offer the same calls over a :class:`~stacsr.io.source.Source` and an item's core windows:

- :meth:`Engine.map` yields ``(window, output)`` as tiles finish, to the caller (small areas held in memory:
  evaluation, the in-memory :func:`stacsr.pipeline.super_resolve`);
- :meth:`Engine.run` sends every output into the item's :class:`~stacsr.io.sink.TileSink` (its COGs, written
  or uploaded from where the item ran) and returns a :class:`RunResult`; :meth:`Engine.submit` returns a
  future of it as soon as it can (in-process: once the tiles are done, the COGs made in the background; on
  Ray: at once, the item queued on the cluster).

On Ray the item's whole path (read, model, sink, COGs, upload) runs on one node, in the same in-process
engine: the caller sends an item description (a few hrefs and windows) and gets back hrefs and figures,
never pixels.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Iterator, Protocol, Sequence

import numpy as np

from stacsr.engine.stats import RunResult, RunStats
from stacsr.io.grid import Window
from stacsr.io.sink import SinkSpec
from stacsr.io.source import Source

Result = tuple[Window, "np.ndarray | None"]


class Progress(Protocol):
    def advance(self, n: int = 1) -> None: ...


class Engine(Protocol):
    def map(self, source: Source, cores: Sequence[Window], halo: int) -> Iterator[Result]:
        """Super-resolve every core window of ``source``; yield results in completion order."""
        ...

    def run(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress: Progress | None = None
    ) -> RunResult:
        """Super-resolve every core into the COGs of ``sink``."""
        ...

    def submit(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress: Progress | None = None
    ) -> Future[RunResult]:
        """:meth:`run`, returning as soon as it can; the future holds its result."""
        ...

    @property
    def items_at_once(self) -> int:
        """How many items the caller should keep submitted (the rest wait in the caller)."""
        ...

    def check_output(self, root: str) -> None:
        """Refuse, before any work, an output root the engine's workers cannot write (one line)."""
        ...

    def close(self) -> None: ...

    def __str__(self) -> str:
        """Where items run, for summaries: "in-process" or "Ray, …"."""
        ...


from stacsr.engine.local import LocalEngine  # noqa: E402
from stacsr.engine.ray_items import RayEngine  # noqa: E402

__all__ = ["Engine", "LocalEngine", "RayEngine", "Progress", "Result", "RunResult", "RunStats"]
