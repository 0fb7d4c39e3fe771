"""In-process engine: the model runs in this process (``--no-ray``, one GPU node, tests).

One item streams through threads so that none waits on another: readers read the next batches of tiles
(their bands side by side) while the model runs on this one, and a writer puts finished tiles into the
item's sink; the model's device is never idle while tiles are read or written. On a CPU, model calls run in
``workers`` threads side by side (one per :data:`THREADS_PER_WORKER` cores), since one torch call on a small
tile does not keep many cores busy; outputs are written in tile order whatever finishes first. The item's COGs are then
made (side by side, compression on all cores) by a finisher thread, while the caller goes on to the next
item: :meth:`submit`.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Sequence

from stacsr import tiles
from stacsr.engine.stats import RunResult, RunStats, node_name
from stacsr.io.grid import Window
from stacsr.io.sink import SinkSpec, TileSink
from stacsr.io.source import Source
from stacsr.model.package import ModelPackage, Predictor
from stacsr.plumbing.timing import Timings, timed

READ_AHEAD = 2  # batches read before the model needs them, side by side (one reader thread each)
# Model outputs waiting for the writer; the model waits beyond that. With the one being written, at most
# WRITES_PENDING + 1 output batches exist at once, in pinned host memory on a GPU (PyTorch's pinned-memory cache
# rounds each up to a power of two): what bounds the GPU path's host memory, whatever the area.
WRITES_PENDING = 2
# On a CPU, model calls run side by side in several threads: torch's intra-op threads scale poorly on small tiles.
# On this project's 2-core machine, two 1-thread model calls ran 1.46 M px/s against one 2-thread call's 1.38 M, and
# `sr` was the same either way (1.17–1.18 against 1.11–1.19 M px/s). Not measured on many cores: one model worker
# per THREADS_PER_WORKER cores is a choice (16 cores: 4 workers of 4 threads), `workers=` overrides it.
THREADS_PER_WORKER = 4


class LocalEngine:
    def __init__(
        self,
        package: ModelPackage,
        batch: int = 1,
        device: str | None = None,
        precision: str = "fp32",
        timings: Timings | None = None,
        threads: int | None = None,
        workers: int | None = None,
    ) -> None:
        import torch

        cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
        cores = threads or torch.get_num_threads()
        self.workers = workers or (max(1, cores // THREADS_PER_WORKER) if cpu else 1)
        per_worker = max(1, cores // self.workers) if cpu else threads
        self.predict = Predictor(package, device=device, threads=per_worker, precision=precision, timings=timings)
        self.scale = package.card.scale
        self.batch = batch
        self.timings = timings
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="stacsr-cog")

    def map(self, source: Source, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, object]]:
        for group in tiles.batches(cores, self.batch):
            yield from tiles.run_tiles(self.predict, source, group, halo, self.scale)

    def run(self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress=None) -> RunResult:
        return self.submit(source, cores, halo, sink, progress).result()

    @property
    def items_at_once(self) -> int:
        return 1

    def check_output(self, root: str) -> None:
        """Any folder this process can write will do (nothing to check)."""

    def submit(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress=None
    ) -> Future[RunResult]:
        """Run every tile into ``sink`` now (in this thread, the reader and the writer), then make its COGs in
        the background; the future holds the :class:`RunResult` (hrefs None when no pixel was valid)."""
        stats = RunStats(node=node_name(), started=time.time())
        item = Timings()
        opened = TileSink(sink).open()
        try:
            with item.stage("tiles"):
                stats.bytes_read = self._stream(source, cores, halo, opened, progress, item)
        except BaseException:
            opened.abort()
            raise
        return self._finisher.submit(self._finish, opened, stats, item)

    def _stream(
        self, source: Source, cores: Sequence[Window], halo: int, sink: TileSink, progress, item: Timings
    ) -> int:
        """Every tile through the model into ``sink``, the source held open meanwhile; its compressed bytes read.
        ``item`` receives the busy seconds of each stage (read, model, write: they overlap)."""
        groups = deque(tiles.batches(cores, self.batch))
        ahead = max(READ_AHEAD, self.workers)
        with (
            source.open() as opened,
            ThreadPoolExecutor(ahead, thread_name_prefix="stacsr-read") as reader,
            ThreadPoolExecutor(1, thread_name_prefix="stacsr-write") as writer,
            ThreadPoolExecutor(self.workers, thread_name_prefix="stacsr-model") as models,
        ):
            reads = deque(
                reader.submit(self._read, opened, groups.popleft(), halo, item) for _ in range(min(ahead, len(groups)))
            )
            writes: deque[Future] = deque()
            while reads:
                batch = reads.popleft().result()
                if groups:
                    reads.append(reader.submit(self._read, opened, groups.popleft(), halo, item))
                output = models.submit(self._launch, batch, item) if batch.run else None
                writes.append(writer.submit(self._write, sink, batch, output, halo, progress, item))
                del batch, output  # the writer's now: the next launch must not find this output still held here
                while len(writes) > WRITES_PENDING + self.workers - 1:
                    writes.popleft().result()
            for done in writes:
                done.result()
        return opened.bytes_read

    def _read(self, source: Source, cores: list[Window], halo: int, item: Timings) -> tiles.TileBatch:
        with timed(self.timings, "read"), item.stage("read"):
            return tiles.read_tiles(source, cores, halo)

    def _launch(self, batch: tiles.TileBatch, item: Timings):
        with item.stage("model"):
            return self.predict.launch(batch.stack)

    def _write(self, sink: TileSink, batch: tiles.TileBatch, output, halo: int, progress, item: Timings) -> None:
        """The batch's model output (``output``: a future of the launched call, None when no tile ran) into ``sink``."""
        with item.stage("model"):  # the model worker's call, and on a GPU the wait for the device's output
            output = output.result()() if output is not None else None
        results = tiles.finish_tiles(batch, output, halo, self.scale)
        with timed(self.timings, "write"), item.stage("write"):
            sink.write(results)
        if progress is not None:
            progress.advance(len(results))

    def _finish(self, sink: TileSink, stats: RunStats, item: Timings) -> RunResult:
        with timed(self.timings, "cog"), item.stage("cog"):
            hrefs = sink.finish()
        stats.seconds = {k: round(v, 3) for k, v in item.seconds.items()}
        stats.bytes_written, stats.finished = sink.bytes_written, time.time()
        return RunResult(hrefs, stats)

    def __str__(self) -> str:
        return "in-process"

    def close(self) -> None:
        self._finisher.shutdown(wait=True)
