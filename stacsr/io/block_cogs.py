"""The default COG path: blocks compressed as tiles arrive, each COG assembled once, no uncompressed copy.

    tiles → each COG's pyramid of blocks (:class:`stacsr.io.blocks.Pyramid`: cut into 512² blocks, compressed
      and averaged down on all cores beside the model; compressed blocks in RAM, beyond a budget in scratch)
    → after the last tile: the few blocks not yet complete, then each COG's IFDs and its blocks in COG order
      (:mod:`stacsr.io.cog_file`), streamed to its final place: a local file renamed into place when complete,
      or one S3 multipart upload straight to the final key (:func:`stacsr.plumbing.storage.put_stream`)

Full-resolution pixels are those given; overviews are the nodata-aware 2 × 2 means GDAL's COG driver makes;
georeferencing, nodata, descriptions, compression (deflate or zstd, level 1) and predictor 2 are as GDAL's
COG path writes them (:mod:`stacsr.io.gdal_cogs`, the fallback for other compressions).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from stacsr.io.blocks import BlockStore, Pyramid, codec
from stacsr.io.cog_file import chunks, geo_tags, layout
from stacsr.io.grid import Window
from stacsr.io.units import REFLECTANCE_SCALE
from stacsr.plumbing import storage


class BlockCogs:
    """An item's COGs from blocks compressed as its tiles arrive (see the module). One writer at a time."""

    def __init__(self, spec, folder: Path, naming) -> None:
        self.spec = spec
        self.bytes_written = 0
        self._naming = naming  # (target) → context turning a write's failure into a one-line WriteError
        self._codec = codec(spec.compress)
        n = len(spec.targets)
        self._stores = [BlockStore(folder, name=f"{i}.blocks") for i in range(n)]
        for store in self._stores:
            store.budget //= n
        shape = spec.grid.shape.yx
        self._pyramids = [
            Pyramid(shape, len(t.layers), self._codec, store) for t, store in zip(spec.targets, self._stores)
        ]

    @property
    def valid(self) -> bool:
        return any(p.valid for p in self._pyramids)

    def write(self, window: Window, tile: np.ndarray | None) -> None:
        """A tile's output at ``window`` of the output grid (``None``: no valid pixel). The tile's pixels are
        read later, by the compressing threads: it must not change once given."""
        for target, pyramid in zip(self.spec.targets, self._pyramids):
            with self._naming(target):
                layers = None if tile is None else _layers(tile, target.layers)
                pyramid.write(window.row, window.col, layers, window.height, window.width)

    def finish(self) -> dict[str, str] | None:
        """Complete every COG's blocks; ``None`` when no pixel was valid (nothing written), else every COG
        assembled and put in place side by side (``{url: href}``)."""
        for target, pyramid in zip(self.spec.targets, self._pyramids):
            with self._naming(target):
                pyramid.finish()
        if not self.valid:
            return None
        targets = self.spec.targets
        with ThreadPoolExecutor(len(targets), thread_name_prefix="stacsr-cog") as pool:
            made = [pool.submit(self._put, i) for i in range(len(targets))]
        placed = [m.result() for m in made]  # the first error, once every thread has stopped
        self.bytes_written = sum(size for _, size in placed)
        return {t.url: href for t, (href, _) in zip(targets, placed)}

    def _put(self, i: int) -> tuple[str, int]:
        """Target ``i``'s COG, assembled from its blocks and streamed to its place; returns its href and size."""
        target, pyramid, store = self.spec.targets[i], self._pyramids[i], self._stores[i]
        with self._naming(target):
            tags = geo_tags(self.spec.grid, len(target.layers), target.descriptions, REFLECTANCE_SCALE, 0)
            missing = pyramid.missing()
            shapes = [level.shape for level in pyramid.levels]
            lay = layout(shapes, len(target.layers), self._codec, tags, store.sizes(), len(missing))
            href = storage.put_stream(lambda: chunks(lay, store, missing), lay.size, target.url)
        store.close()
        return href, lay.size

    def close(self) -> None:
        """Stop compressing and drop every block (the spill files go with the scratch folder)."""
        for pyramid, store in zip(self._pyramids, self._stores):
            pyramid.cancel()
            store.close()


def _layers(tile: np.ndarray, layers: tuple[int, ...]) -> np.ndarray:
    """``tile``'s ``layers``: a view when they are consecutive (the usual case), else a copy."""
    first = layers[0]
    if layers == tuple(range(first, first + len(layers))):
        return tile[first : first + len(layers)]
    return tile[list(layers)]
