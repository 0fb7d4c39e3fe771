"""The fallback COG path: tiles into uncompressed intermediates, then GDAL's COG driver (any compression).

    tiles → one uncompressed tiled BigTIFF per COG in the scratch folder, and its overview levels averaged down
      from each tile as it arrives (:class:`stacsr.io.overviews.Pyramid`)
    → :func:`stacsr.io.write.cog_from_file` (GDAL's COG driver takes that pyramid; all cores compressing)
    → the COG's final place: renamed into a local folder, or uploaded (:func:`stacsr.plumbing.storage.put`)

It costs the item's raw size on scratch and a compression after the last tile; :mod:`stacsr.io.block_cogs`
avoids both for deflate and zstd, and :func:`stacsr.io.sink.cog_path` chooses between them.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window as RioWindow

from stacsr.io.grid import Window
from stacsr.io.overviews import Pyramid, aligned_levels, factors
from stacsr.io.units import REFLECTANCE_SCALE
from stacsr.io.write import BLOCKSIZE, cog_from_file, describe, raster_profile
from stacsr.plumbing import storage


class GdalCogs:
    """An item's COGs through uncompressed intermediates and GDAL's COG driver (see the module)."""

    def __init__(self, spec, folder: Path, naming) -> None:
        self.spec = spec
        self.valid = False
        self.bytes_written = 0
        self._naming = naming  # (target) → context turning a write's failure into a one-line WriteError
        self._stack = contextlib.ExitStack()
        self._datasets: list = []
        self._pyramids: list[Pyramid] = []
        try:
            self._create(folder)
        except BaseException:
            self._stack.close()
            raise
        self._pool = ThreadPoolExecutor(len(spec.targets), thread_name_prefix="stacsr-band")
        self._stack.callback(self._pool.shutdown)

    def _create(self, folder: Path) -> None:
        levels, per_tile = factors(self.spec.grid.shape.yx, BLOCKSIZE), aligned_levels(self.spec.scale)
        for i, target in enumerate(self.spec.targets):
            path = folder / f"{i}.tif"
            profile = dict(
                raster_profile(self.spec.grid, len(target.layers)),
                tiled=True,
                blockxsize=BLOCKSIZE,
                blockysize=BLOCKSIZE,
                interleave="band",
                bigtiff="YES",
                sparse_ok=True,
            )
            with rasterio.Env(), self._naming(target):  # an env of ours: the dataset owns none, any thread may close it
                dataset = self._stack.enter_context(rasterio.open(path, "w", **profile))
                pyramid = Pyramid(path, profile, levels, per_tile)
            self._stack.callback(pyramid.close)
            describe(dataset, target.descriptions, REFLECTANCE_SCALE)
            self._datasets.append(dataset)
            self._pyramids.append(pyramid)

    def write(self, window: Window, tile: np.ndarray | None) -> None:
        """A tile's output at ``window`` of the output grid (``None``: no valid pixel, left sparse = 0)."""
        if tile is None:
            return
        n = len(self.spec.targets)
        list(self._pool.map(self._put, range(n), [window] * n, [tile] * n))
        self.valid = self.valid or bool(tile.any())

    def _put(self, i: int, w: Window, tile: np.ndarray) -> None:
        """Target ``i``'s layers of a tile into its intermediate and overview levels (targets in parallel:
        one thread each, a dataset per target; the pixels' copy, averaging and GDAL's writes release the GIL)."""
        target = self.spec.targets[i]
        layers = tile[list(target.layers)]
        with self._naming(target):
            self._datasets[i].write(layers, window=RioWindow(w.col, w.row, w.width, w.height))
            self._pyramids[i].write(w, layers)

    def close(self) -> None:
        """Close the intermediates (their files go with the scratch folder)."""
        self._stack.close()

    def finish(self) -> dict[str, str]:
        """Every target's COG made and put in place side by side (one thread each; GDAL compresses each on all
        cores; object-storage ones uploaded from here as each is made)."""
        with self._naming(self.spec.targets[0]):
            self.close()
        targets = self.spec.targets
        with ThreadPoolExecutor(len(targets), thread_name_prefix="stacsr-cog") as pool:
            made = [pool.submit(self._make, t, p) for t, p in zip(targets, self._pyramids)]
        placed = [m.result() for m in made]  # the first error, once every thread has stopped
        self.bytes_written = sum(size for _, size in placed)
        return {t.url: href for t, (href, _) in zip(targets, placed)}

    def _make(self, target, pyramid: Pyramid) -> tuple[str, int]:
        """``target``'s COG from its intermediate and levels, in place (made in the scratch folder and uploaded,
        for object storage); the intermediates are removed. Returns its href and size in bytes."""
        with rasterio.Env(), self._naming(target):
            pyramid.finish()
        source = pyramid.vrt(pyramid.base.with_suffix(".vrt"), target.descriptions, REFLECTANCE_SCALE)
        remote = storage.is_remote(target.url)
        local = pyramid.base.with_suffix(".cog.tif") if remote else Path(target.url)
        path = cog_from_file(source, local, compress=self.spec.compress, overviews="FORCE_USE_EXISTING")
        pyramid.remove()
        size = path.stat().st_size
        if not remote:
            return str(path), size
        href = storage.put(path, target.url)
        path.unlink(missing_ok=True)
        return href, size
