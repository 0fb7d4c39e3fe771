"""Seconds spent per stage (read, transfer, model, write, cog), summed over threads: what benchmarks print."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator


class Timings:
    """Thread-safe sums of busy seconds per stage. Stages running in parallel threads each count their own
    time, so the sums can exceed the wall time: that overlap is what they show."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def stage(self, name: str, sync: Callable[[], None] | None = None) -> Iterator[None]:
        """Time the block as ``name``; ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read,
        so that asynchronous device work is counted where it is queued."""
        if sync:
            sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                sync()
            self.add(name, time.perf_counter() - start)


@contextmanager
def timed(timings: Timings | None, name: str, sync: Callable[[], None] | None = None) -> Iterator[None]:
    """:meth:`Timings.stage` when ``timings`` is given, else nothing (no synchronisation either)."""
    if timings is None:
        yield
        return
    with timings.stage(name, sync):
        yield
