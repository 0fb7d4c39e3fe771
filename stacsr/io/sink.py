"""Where an item's tile outputs go: its COGs, made as the tiles arrive, put in place when all are in.

Two ways, chosen in one place (:func:`cog_path`):

- **blocks** (deflate, zstd: the default): each tile is cut into the COGs' blocks, compressed and averaged down
  the overview levels on all cores as it arrives; each COG is then assembled once and streamed to its place
  (:mod:`stacsr.io.block_cogs`). Scratch holds compressed blocks only, beyond a RAM budget.
- **gdal** (any other compression): uncompressed intermediates, then GDAL's COG driver (:mod:`stacsr.io.gdal_cogs`).

Memory is bounded whatever the size of the output. Disk is reserved before the first tile
(:mod:`stacsr.io.scratch`: an item waits for room) and freed at the end. A sink that does not finish leaves no
file under a final name; its scratch folder (hidden, ``.stacsr-<host>-<pid>-*``) is removed, or, when the
process was killed, by the next sink that opens beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from stacsr.io.block_cogs import BlockCogs
from stacsr.io.blocks import codec
from stacsr.io.gdal_cogs import GdalCogs
from stacsr.io.grid import GeoBox, Window, crop_to_own, own
from stacsr.io.scratch import DiskSpaceError, reserve, reserved
from stacsr.io.write import WriteError
from stacsr.plumbing import storage
from stacsr.plumbing.redaction import first_line, redact

SCRATCH_ENV = "STACSR_SCRATCH"  # where intermediates go when outputs are remote (default: the system's temp)
COG_FRACTION = 0.5  # a deflated COG with overviews, as a share of the raw pixels (0.3–0.4 measured; margin)
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


def cog_path(spec: SinkSpec) -> type:
    """How ``spec``'s COGs are made: from blocks compressed as tiles arrive (deflate, zstd), else through
    uncompressed intermediates and GDAL's COG driver."""
    return BlockCogs if codec(spec.compress) is not None else GdalCogs


def disk_fraction(compress: str = "deflate", remote: bool = False) -> float:
    """Disk an item needs while it runs, all disks together, as a share of its raw output: its compressed
    blocks (:data:`COG_FRACTION` at most: part stays in RAM) or its uncompressed intermediates and their levels
    (GDAL's path), plus its COGs unless the block path streams them to object storage."""
    blocks = codec(compress) is not None
    return (COG_FRACTION if blocks else 1 + PYRAMID_FRACTION) + (0.0 if blocks and remote else COG_FRACTION)


def disk_needs(spec: SinkSpec) -> list[tuple[Path, float]]:
    """``(folder, bytes)`` an item needs per disk, the scratch folder's disk first, estimated from the raw size:
    compressed blocks (the block path) or uncompressed intermediates and their overview levels (GDAL's path) in
    scratch; a COG, taken at :data:`COG_FRACTION` of raw, on its own folder's disk (local targets) or in
    scratch (object storage, GDAL's path only: the block path streams it)."""
    need: dict[int, tuple[Path, float]] = {}

    def add(folder: Path, nbytes: float) -> None:
        dev = _existing(folder).stat().st_dev
        need[dev] = (need.get(dev, (folder, 0.0))[0], need.get(dev, (folder, 0.0))[1] + nbytes)

    per_layer = spec.raw_bytes / max(1, sum(len(t.layers) for t in spec.targets))
    blocks = cog_path(spec) is BlockCogs
    add(scratch_folder(spec), spec.raw_bytes * (COG_FRACTION if blocks else 1 + PYRAMID_FRACTION))
    for t in spec.targets:
        cog = per_layer * len(t.layers) * COG_FRACTION
        if not storage.is_remote(t.url):
            add(Path(t.url).parent, cog)
        elif not blocks:
            add(scratch_folder(spec), cog)
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
    """A failed write (disk full, file size limit, an upload refused) as a one-line error naming the COG."""
    try:
        yield
    except (RasterioError, CPLE_BaseError, OSError) as e:
        raise WriteError(f"cannot write {redact(target.url)}: {first_line(e)}") from None


class TileSink:
    """Receives tile outputs in any order and turns them into the COGs of a :class:`SinkSpec`."""

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.bytes_written = 0  # bytes of the COGs made (set by finish)
        self._cogs: BlockCogs | GdalCogs | None = None
        self._scratch = contextlib.ExitStack()  # the scratch disk's reservation, held until finish/abort
        self._folder: Path | None = None
        self._lock = threading.Lock()  # one writer at a time (the engine's writer thread, and finish)

    @property
    def valid(self) -> bool:
        """Whether any output pixel written so far is valid (non-zero)."""
        return self._cogs is not None and self._cogs.valid

    def open(self) -> "TileSink":
        """Reserve the scratch disk (waiting for room: :func:`stacsr.io.scratch.reserve`; the free space of a
        local target's other disk is checked) and start the COGs (:func:`cog_path`). A failure leaves nothing
        behind."""
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
        self._cogs = cog_path(self.spec)(self.spec, self._folder, _naming)
        return self

    def write(self, results: Sequence[tuple[Window, np.ndarray | None]]) -> int:
        """Write tile outputs (``None``: a tile with no valid pixel, nodata = 0); returns how many."""
        with self._lock:
            for core, tile in results:
                if tile is None:
                    self._cogs.write(self.spec.out_window(own(core, self.spec.origin)), None)
                    continue
                core, tile = crop_to_own(core, tile, self.spec.scale, self.spec.origin)
                self._cogs.write(self.spec.out_window(core), tile)
        return len(results)

    def finish(self) -> dict[str, str] | None:
        """Make every COG and put it in place; returns ``{url: href}`` (``None`` when no pixel was valid: then
        nothing is written). The scratch folder and its reservation are dropped either way."""
        try:
            with self._lock:
                hrefs = self._cogs.finish()
                self.bytes_written = self._cogs.bytes_written
            return hrefs
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything not yet in place (the blocks or intermediates, the scratch folder) and free the
        reservation."""
        try:
            if self._cogs is not None:
                self._cogs.close()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None
        finally:
            self._scratch.close()
