"""Where tile outputs go: a tiled GeoTIFF on local disk, written as tiles arrive, then made into COGs.

    tiles (any order) → one uncompressed tiled BigTIFF per output COG, in a scratch folder, and its overview
      levels averaged down from each tile as it arrives (:mod:`stacsr.io.overviews`)
    → :func:`stacsr.io.write.cog_from_file` (GDAL's COG driver takes that pyramid; all cores compressing)
    → the COG's final place: renamed into a local folder, or uploaded (:func:`stacsr.plumbing.storage.put`)

Memory is what GDAL's bounded block cache and the tiles in hand hold, whatever the size of the output. Disk
is reserved before the first tile (:mod:`stacsr.io.scratch`: an item waits for room) and freed at the end. A
:class:`TileSink` lives in whichever process assembles an item (the caller's, or a Ray actor on the node
that owns the output folder). A sink that does not finish leaves no file under a final name; its scratch
folder (hidden, ``.stacsr-<host>-<pid>-*``) is removed, or, when the process was killed, by the next sink
that opens beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from stacsr.io.grid import GeoBox, Window, crop_to_own
from stacsr.io.overviews import Pyramid, aligned_levels, factors
from stacsr.io.scratch import DiskSpaceError, reserve, reserved
from stacsr.io.units import REFLECTANCE_SCALE
from stacsr.io.write import BLOCKSIZE, WriteError, cog_from_file, describe, raster_profile
from stacsr.plumbing import storage
from stacsr.plumbing.redaction import first_line, redact

SCRATCH_ENV = "STACSR_SCRATCH"  # where intermediates go when outputs are remote (default: the system's temp)
COG_FRACTION = 0.75  # a deflated COG with overviews, as a share of the raw pixels (≈ 0.3–0.4 measured; margin)
PYRAMID_FRACTION = 1 / 3  # the overview levels' intermediates, as a share of the full resolution's (¼ + ¹⁄₁₆ + …)


@dataclass(frozen=True)
class CogTarget:
    """One COG to make: its final path or URL, the output layers it holds (0-based) and their names."""

    url: str
    layers: tuple[int, ...]
    descriptions: tuple[str, ...]


@dataclass(frozen=True)
class SinkSpec:
    """What an item's tiles become: COGs on ``grid`` (the output grid); a tile core ``w`` of the source grid
    lands at ``(w - origin) × scale``."""

    grid: GeoBox
    origin: tuple[int, int]
    scale: int
    targets: tuple[CogTarget, ...]
    compress: str = "deflate"
    scratch: str | None = None

    def out_window(self, core: Window) -> Window:
        return core.shift(-self.origin[0], -self.origin[1]).scale(self.scale)

    @property
    def raw_bytes(self) -> int:
        rows, cols = self.grid.shape.yx
        return 2 * rows * cols * sum(len(t.layers) for t in self.targets)


def scratch_folder(spec: SinkSpec) -> Path:
    """Where intermediates go: ``spec.scratch``, else ``$STACSR_SCRATCH``, else beside the first local target
    (same disk as the output), else the system's temporary folder."""
    if spec.scratch:
        return Path(spec.scratch)
    if os.environ.get(SCRATCH_ENV):
        return Path(os.environ[SCRATCH_ENV])
    local = [t.url for t in spec.targets if not storage.is_remote(t.url)]
    return _existing(Path(local[0]).parent) if local else Path(tempfile.gettempdir())


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_needs(spec: SinkSpec) -> list[tuple[Path, float]]:
    """``(folder, bytes)`` an item needs per disk, the scratch folder's disk first, estimated from the raw size:
    intermediates and their overview levels are uncompressed; a COG is taken at :data:`COG_FRACTION` of raw
    (in scratch for object storage, else on its own folder's disk)."""
    need: dict[int, tuple[Path, float]] = {}

    def add(folder: Path, nbytes: float) -> None:
        dev = _existing(folder).stat().st_dev
        need[dev] = (need.get(dev, (folder, 0.0))[0], need.get(dev, (folder, 0.0))[1] + nbytes)

    per_layer = spec.raw_bytes / max(1, sum(len(t.layers) for t in spec.targets))
    add(scratch_folder(spec), spec.raw_bytes * (1 + PYRAMID_FRACTION))
    for t in spec.targets:
        cog = per_layer * len(t.layers) * COG_FRACTION
        add(scratch_folder(spec) if storage.is_remote(t.url) else Path(t.url).parent, cog)
    return list(need.values())


def check_disk(spec: SinkSpec, needs: list[tuple[Path, float]] | None = None) -> None:
    """Refuse an item whose intermediates and COGs cannot fit in the free space of their disks now
    (:func:`disk_needs`; ``needs`` instead when given)."""
    for folder, nbytes in disk_needs(spec) if needs is None else needs:
        free = shutil.disk_usage(_existing(folder)).free
        if free < nbytes:
            raise DiskSpaceError(
                f"not enough free disk space in {_existing(folder)}: this item needs about "
                f"{nbytes / 1e9:,.1f} GB, {free / 1e9:,.1f} GB are free"
            )


@contextlib.contextmanager
def _naming(target: CogTarget):
    """A failed write of an intermediate (disk full, file size limit) as a one-line error naming the COG."""
    try:
        yield
    except (RasterioError, CPLE_BaseError, OSError) as e:
        raise WriteError(f"cannot write {redact(target.url)}: {first_line(e)}") from None


class TileSink:
    """Receives tile outputs in any order and turns them into the COGs of a :class:`SinkSpec`."""

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.valid = False  # any valid (non-zero) output pixel seen
        self.bytes_written = 0  # bytes of the COGs made (set by finish)
        self._stack = contextlib.ExitStack()
        self._scratch = contextlib.ExitStack()  # the scratch disk's reservation, held until finish/abort
        self._folder: Path | None = None
        self._datasets: list = []
        self._pyramids: list[Pyramid] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # a GDAL dataset is written by one thread at a time (a writer actor has several)

    def open(self) -> "TileSink":
        """Reserve the scratch disk (waiting for room: :func:`stacsr.io.scratch.reserve`; the free space of a
        local target's other disk is checked) and create the intermediates (one per target, and its overview
        levels). A failure leaves nothing behind."""
        try:
            return self._open()
        except BaseException:
            self.abort()
            raise

    def _open(self) -> "TileSink":
        (_, nbytes), *others = disk_needs(self.spec)
        check_disk(self.spec, others)
        folder = scratch_folder(self.spec)
        self._scratch.enter_context(reserve(folder, nbytes))
        for place in (folder, *folder.parents):  # a killed run's scratch: here, or where this folder did not exist yet
            storage.remove_stale(place, ".stacsr-")
            reserved(place)  # and its reservations there
        self._folder = Path(tempfile.mkdtemp(prefix=f".stacsr-{storage.owner_tag()}-", dir=folder))
        levels, per_tile = factors(self.spec.grid.shape.yx, BLOCKSIZE), aligned_levels(self.spec.scale)
        for i, target in enumerate(self.spec.targets):
            path = self._folder / f"{i}.tif"
            profile = dict(
                raster_profile(self.spec.grid, len(target.layers)),
                tiled=True,
                blockxsize=BLOCKSIZE,
                blockysize=BLOCKSIZE,
                interleave="band",
                bigtiff="YES",
                sparse_ok=True,
            )
            with rasterio.Env(), _naming(target):  # an env of ours: the dataset owns none, any thread may close it
                dataset = self._stack.enter_context(rasterio.open(path, "w", **profile))
                pyramid = Pyramid(path, profile, levels, per_tile)
            self._stack.callback(pyramid.close)
            describe(dataset, target.descriptions, REFLECTANCE_SCALE)
            self._datasets.append(dataset)
            self._pyramids.append(pyramid)
        self._pool = ThreadPoolExecutor(len(self.spec.targets), thread_name_prefix="stacsr-band")
        self._stack.callback(self._pool.shutdown)
        return self

    def write(self, results: Sequence[tuple[Window, np.ndarray | None]]) -> int:
        """Write tile outputs (``None``: a tile with no valid pixel, left sparse = 0); returns how many."""
        with self._lock:
            return self._write(results)

    def _write(self, results: Sequence[tuple[Window, np.ndarray | None]]) -> int:
        for core, tile in results:
            if tile is None:
                continue
            core, tile = crop_to_own(core, tile, self.spec.scale, self.spec.origin)
            w = self.spec.out_window(core)
            n = len(self.spec.targets)
            list(self._pool.map(self._put, range(n), [w] * n, [tile] * n))
            self.valid = self.valid or bool(tile.any())
        return len(results)

    def _put(self, i: int, w: Window, tile: np.ndarray) -> None:
        """Target ``i``'s layers of a tile into its intermediate and overview levels (targets in parallel:
        one thread each, a dataset per target; the pixels' copy, averaging and GDAL's writes release the GIL)."""
        target = self.spec.targets[i]
        layers = tile[list(target.layers)]
        with _naming(target):
            self._datasets[i].write(layers, window=RioWindow(w.col, w.row, w.width, w.height))
            self._pyramids[i].write(w, layers)

    def finish(self) -> dict[str, str] | None:
        """Make every COG and put it in place; returns ``{url: href}`` (``None`` when no pixel was valid: then
        nothing is written). The scratch folder and its reservation are dropped either way."""
        try:
            with self._lock, _naming(self.spec.targets[0]):
                self._stack.close()
            if not self.valid:
                return None
            return self._make_all()
        finally:
            self.abort()

    def _make_all(self) -> dict[str, str]:
        """Every target's COG made and put in place side by side (one thread each; GDAL compresses each on all
        cores; object-storage ones uploaded from here as each is made)."""
        targets = self.spec.targets
        with ThreadPoolExecutor(len(targets), thread_name_prefix="stacsr-cog") as pool:
            made = [pool.submit(self._make, t, p) for t, p in zip(targets, self._pyramids)]
        placed = [m.result() for m in made]  # the first error, once every thread has stopped
        self.bytes_written = sum(size for _, size in placed)
        return {t.url: href for t, (href, _) in zip(targets, placed)}

    def _make(self, target: CogTarget, pyramid: Pyramid) -> tuple[str, int]:
        """``target``'s COG from its intermediate and levels, in place (made in the scratch folder and uploaded,
        for object storage); the intermediates are removed. Returns its href and size in bytes."""
        with rasterio.Env(), _naming(target):
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

    def abort(self) -> None:
        """Drop everything not yet in place (the intermediates and the scratch folder) and free the reservation."""
        try:
            self._stack.close()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None
        finally:
            self._scratch.close()
