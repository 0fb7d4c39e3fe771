"""In-process engine: the model runs in this process (``--no-ray``, tests, debugging)."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from stacsr import tiles
from stacsr.io.grid import Window
from stacsr.io.sink import SinkSpec, TileSink
from stacsr.io.source import Source
from stacsr.model.package import ModelPackage, Predictor


class LocalEngine:
    def __init__(self, package: ModelPackage, batch: int = 1, device: str | None = None) -> None:
        self.predict = Predictor(package, device=device)
        self.scale = package.card.scale
        self.batch = batch

    def map(self, source: Source, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, object]]:
        for group in tiles.batches(cores, self.batch):
            yield from tiles.run_tiles(self.predict, source, group, halo, self.scale)

    def run(
        self, source: Source, cores: Sequence[Window], halo: int, sink: SinkSpec, progress=None
    ) -> dict[str, str] | None:
        return write_all(self.map(source, cores, halo), sink, progress)

    def __str__(self) -> str:
        return "in-process"

    def close(self) -> None:
        pass


def write_all(results: Iterable[tuple[Window, object]], spec: SinkSpec, progress=None) -> dict[str, str] | None:
    """Every result into a sink in this process, then its COGs (nothing is left behind if anything fails)."""
    sink = TileSink(spec).open()
    try:
        for result in results:
            sink.write([result])  # type: ignore[list-item]
            if progress is not None:
                progress.advance()
        return sink.finish()
    finally:
        sink.abort()
