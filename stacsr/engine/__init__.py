"""Where tiles run: in-process (:class:`LocalEngine`) or on a pool of Ray actors (:class:`RayEngine`).

Both take the reflect-padded image once and a list of core windows, and yield ``(window, output)`` as
tiles finish, so callers can stitch and report progress the same way whichever engine runs.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np

from stacsr.io.grid import Window


class Engine(Protocol):
    def map(self, padded: np.ndarray, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, np.ndarray]]:
        """Super-resolve every core window of ``padded``; yield results in completion order."""
        ...

    def close(self) -> None: ...

    def __str__(self) -> str:
        """Where tiles run, for summaries: "in-process" or "Ray, N actors"."""
        ...


from stacsr.engine.local import LocalEngine  # noqa: E402
from stacsr.engine.ray_pool import RayEngine  # noqa: E402

__all__ = ["Engine", "LocalEngine", "RayEngine"]
