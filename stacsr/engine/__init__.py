"""Where tiles run: in-process (:class:`LocalEngine`) or on a pool of Ray actors (:class:`RayEngine`).

Both offer the same two calls over a :class:`~stacsr.io.source.Source` and core windows:

- :meth:`Engine.map` yields ``(window, output)`` as tiles finish, to the caller (small areas held in memory:
  evaluation, the in-memory :func:`stacsr.pipeline.super_resolve`);
- :meth:`Engine.run` sends every output into a :class:`~stacsr.io.sink.TileSink` and returns what it
  wrote; :meth:`Engine.submit` does the same but returns as soon as the tiles are done, its COGs made in the
  background (the next item's tiles overlap this item's compression). In-process the sink is in this process; on Ray it is a writer actor, and outputs go from the tile
  actors to it directly: the caller handles references only, never pixels.

Workers read their own windows from the source, so nothing the size of the area crosses a process boundary.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Iterator, Protocol, Sequence

import numpy as np

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
    ) -> dict[str, str] | None:
        """Super-resolve every core into the COGs of ``sink``; ``{url: href}``, or None if no pixel was valid."""
        ...

    def submit(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress: Progress | None = None
    ) -> Future[dict[str, str] | None]:
        """:meth:`run`, returning once the tiles are computed (or at once); the future holds its result."""
        ...

    def close(self) -> None: ...

    def __str__(self) -> str:
        """Where tiles run, for summaries: "in-process" or "Ray, N actors"."""
        ...


from stacsr.engine.local import LocalEngine  # noqa: E402
from stacsr.engine.ray_pool import RayEngine  # noqa: E402

__all__ = ["Engine", "LocalEngine", "RayEngine", "Progress", "Result"]
