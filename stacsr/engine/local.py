"""In-process engine: the model runs in this process (``--no-ray``, tests, debugging)."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from stacsr import tiles
from stacsr.io.grid import Window
from stacsr.model.package import ModelPackage, Predictor


class LocalEngine:
    def __init__(self, package: ModelPackage, batch: int = 1, device: str | None = None) -> None:
        self.predict = Predictor(package, device=device)
        self.scale = package.card.scale
        self.batch = batch

    def map(self, padded: np.ndarray, cores: Sequence[Window], halo: int) -> Iterator[tuple[Window, np.ndarray]]:
        for group in tiles.batches(cores, self.batch):
            yield from zip(group, tiles.run_batch(self.predict, padded, group, halo, self.scale))

    def __str__(self) -> str:
        return "in-process"

    def close(self) -> None:
        pass
