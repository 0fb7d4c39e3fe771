"""Seam-free tiling: cut an area into tiles with a halo, run a function per tile, keep the cores.

Every tile is read from its source as its core plus ``halo`` pixels of context on each side: real
neighbouring pixels of the source, mirrored only past the source's edge (:mod:`stacsr.io.source`). With a
halo at least the network's receptive radius, each output pixel sees exactly the input it would see in a
whole-source pass, so tiled output equals whole-image output: no seams, no blending, and no dependence on
the area of interest or the tile size.

Tiles all have the same shape (the last row/column of tiles is shifted back inside the area and
overlaps its neighbour), which keeps batches uniform. A tile whose core holds no valid pixel (0 in any band
is nodata) is not run: its output is all nodata. No I/O of its own, no torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from stacsr.io.grid import Window, crop_to_own
from stacsr.io.source import ArraySource, Source

BatchFn = Callable[[np.ndarray], np.ndarray]  # (N, bands, h, w) -> (N, bands, h·s, w·s)


def plan(shape: tuple[int, int], tile_size: int) -> list[Window]:
    """Core windows of equal shape covering an image of ``shape`` (rows, cols)."""
    if tile_size < 1:
        raise ValueError(f"tile size must be positive, not {tile_size}")
    rows, cols = shape
    th, tw = min(tile_size, rows), min(tile_size, cols)
    return [Window(r, c, th, tw) for r in _starts(rows, th) for c in _starts(cols, tw)]


def _starts(length: int, size: int) -> list[int]:
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


@dataclass
class TileBatch:
    """Halo'd inputs of a group of same-shape core windows, read from a source, and which of them to run."""

    cores: list[Window]
    inputs: list[np.ndarray]
    valid: list[np.ndarray]  # per tile: (rows, cols) bool of its core, no input band 0
    run: list[int]  # tiles with at least one valid pixel: the only ones the model sees

    @property
    def stack(self) -> np.ndarray:
        """``(len(run), bands, h, w)``: the model's input."""
        return np.stack([self.inputs[i] for i in self.run])


def read_tiles(source: Source, cores: Sequence[Window], halo: int) -> TileBatch:
    """Read the halo'd tiles of ``cores`` (same shape) from ``source``."""
    inputs = source.read([c.pad(halo) for c in cores])
    valid = [(x[:, halo : x.shape[1] - halo, halo : x.shape[2] - halo] != 0).all(axis=0) for x in inputs]
    return TileBatch(list(cores), inputs, valid, [i for i, v in enumerate(valid) if v.any()])


def finish_tiles(
    batch: TileBatch, outputs: np.ndarray | None, halo: int, scale: int
) -> list[tuple[Window, np.ndarray | None]]:
    """Each core's output from the model's ``outputs`` (one per ``batch.run``), its halo cut off and nodata (0 in
    any input band) propagated to its ``scale`` × ``scale`` block; ``None`` for a tile with no valid pixel."""
    results: list[np.ndarray | None] = [None] * len(batch.cores)
    m = halo * scale
    for i, o in zip(batch.run, outputs if outputs is not None else []):
        core = o[:, m : o.shape[1] - m, m : o.shape[2] - m]
        core[:, ~np.repeat(np.repeat(batch.valid[i], scale, axis=0), scale, axis=1)] = 0
        results[i] = core
    return list(zip(batch.cores, results))


def run_tiles(
    fn: BatchFn, source: Source, cores: Sequence[Window], halo: int, scale: int
) -> list[tuple[Window, np.ndarray | None]]:
    """:func:`read_tiles`, the model ``fn`` on the tiles that hold a valid pixel, :func:`finish_tiles`."""
    batch = read_tiles(source, cores, halo)
    return finish_tiles(batch, fn(batch.stack) if batch.run else None, halo, scale)


def stitch(
    results: Iterable[tuple[Window, np.ndarray]], shape: tuple[int, int], bands: int, scale: int, dtype=np.uint16
) -> np.ndarray:
    """Place core outputs into the ``scale``-times finer output image."""
    out = np.zeros((bands, shape[0] * scale, shape[1] * scale), dtype=dtype)
    for core, tile in results:
        if tile is not None:
            mine, part = crop_to_own(core, tile, scale)
            out[(slice(None), *mine.scale(scale).slices)] = part
    return out


def batches(cores: Sequence[Window], size: int) -> Iterator[list[Window]]:
    """Consecutive groups of at most ``size`` windows."""
    for i in range(0, len(cores), size):
        yield list(cores[i : i + size])


def super_resolve(image: np.ndarray, fn: BatchFn, tile_size: int, halo: int, scale: int, batch: int = 1) -> np.ndarray:
    """In-process tiled super-resolution of an in-memory ``(bands, rows, cols)`` image."""
    source, cores = ArraySource(image), plan(image.shape[1:], tile_size)
    results = (r for group in batches(cores, batch) for r in run_tiles(fn, source, group, halo, scale))
    return stitch(results, image.shape[1:], image.shape[0], scale)
