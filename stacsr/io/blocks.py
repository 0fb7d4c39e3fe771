"""A COG's blocks, compressed as its tiles arrive: full resolution and every overview level, none uncompressed.

    tile (any order, any window) → cut into the COG's 512² blocks (:class:`Level`)
    → each complete block, on a pool of threads: predictor 2 + deflate/zstd (:class:`Codec`, imagecodecs) and
      averaged 2 × 2 (:func:`stacsr.io.overviews.halve`) into the next level's blocks, which complete in turn
    → compressed blocks kept in RAM up to a budget, beyond it appended to a spill file (:class:`BlockStore`)

A block is complete once the tiles (or the finer level's blocks) have covered every pixel of it: tiles must
not overlap (an item's tile cores never do). Blocks left incomplete when the tiles end, and those never
touched, are nodata (0) where nothing was written, as in a file that was never written there. The overview
levels are GDAL's (``OVERVIEWS=AUTO``, see :mod:`stacsr.io.overviews`): each pixel the nodata-aware mean of
2 × 2 pixels of the level above, so the pyramid is what GDAL's COG driver builds from the full resolution.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np

from stacsr.io.overviews import factors, halve, resample_rest

BLOCK = 512  # the COG's blocks (GDAL's COG driver default, see stacsr.io.write.BLOCKSIZE)
RAM_ENV = "STACSR_BLOCKS_RAM_MB"  # compressed blocks an item keeps in RAM before spilling to scratch
RAM_DEFAULT = 512 << 20


@dataclass(frozen=True)
class Codec:
    """A TIFF compression done outside GDAL: horizontal differencing (predictor 2), then the codec."""

    name: str
    tag: int  # TIFF Compression: 8 (Adobe deflate, a zlib stream) or 50000 (zstd, as GDAL writes it)
    level: int

    def encode(self, block: np.ndarray) -> bytes:
        """A ``(rows, cols)`` or ``(rows, cols, samples)`` block's bytes in the file."""
        diff = imagecodecs.delta_encode(block, axis=1)
        if self.name == "deflate":
            return imagecodecs.deflate_encode(diff, level=self.level)
        return imagecodecs.zstd_encode(diff, level=self.level)


CODECS = {"deflate": Codec("deflate", 8, 1), "zstd": Codec("zstd", 50000, 1)}  # levels as stacsr.io.write.LEVELS


def codec(compress: str) -> Codec | None:
    """The codec for a COG's ``compress`` option, or ``None`` where only GDAL's COG driver will do."""
    return CODECS.get(compress.lower())


def level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Full resolution, then GDAL's overview levels: sizes halved (rounded down) until one block holds it."""
    rows, cols = shape
    return [(rows, cols)] + [(rows // f, cols // f) for f in factors(shape, BLOCK)]


def blocks_of(shape: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(shape[0] / BLOCK), math.ceil(shape[1] / BLOCK)


class Level:
    """One resolution of a COG, its blocks being filled: ``add`` a window's pixels, get the blocks it completed."""

    def __init__(self, shape: tuple[int, int], bands: int) -> None:
        self.shape = shape
        self.bands = bands
        self.grid = blocks_of(shape)
        self._filling: dict[tuple[int, int], list] = {}  # (block row, block col) → [pixels, pixels covered]

    def block_shape(self, key: tuple[int, int]) -> tuple[int, int]:
        return min(BLOCK, self.shape[0] - key[0] * BLOCK), min(BLOCK, self.shape[1] - key[1] * BLOCK)

    def add(self, row: int, col: int, height: int, width: int, data: np.ndarray | None) -> list:
        """Pixels ``data`` (bands, height, width; ``None``: nodata) at ``(row, col)``; returns the
        ``(key, block)`` pairs this completed, blocks as ``(bands, rows, cols)`` arrays (views when a window
        covers a whole block)."""
        done = []
        for br in range(row // BLOCK, (row + height - 1) // BLOCK + 1):
            for bc in range(col // BLOCK, (col + width - 1) // BLOCK + 1):
                r0, c0 = max(row, br * BLOCK), max(col, bc * BLOCK)
                r1, c1 = min(row + height, (br + 1) * BLOCK), min(col + width, (bc + 1) * BLOCK)
                key, (bh, bw) = (br, bc), self.block_shape((br, bc))
                piece = None if data is None else data[:, r0 - row : r1 - row, c0 - col : c1 - col]
                if (r1 - r0, c1 - c0) == (bh, bw) and key not in self._filling:
                    done.append((key, piece if piece is not None else self._zeros(bh, bw)))
                    continue
                entry = self._filling.setdefault(key, [self._zeros(bh, bw), 0])
                if piece is not None:
                    entry[0][:, r0 - br * BLOCK : r1 - br * BLOCK, c0 - bc * BLOCK : c1 - bc * BLOCK] = piece
                entry[1] += (r1 - r0) * (c1 - c0)
                if entry[1] >= bh * bw:
                    done.append((key, self._filling.pop(key)[0]))
        return done

    def rest(self) -> list:
        """The blocks started but not completed (their missing pixels nodata), taken out."""
        done = [(key, entry[0]) for key, entry in sorted(self._filling.items())]
        self._filling.clear()
        return done

    def _zeros(self, rows: int, cols: int) -> np.ndarray:
        return np.zeros((self.bands, rows, cols), np.uint16)


def encode_block(codec: Codec, block: np.ndarray, nodata: int, last: bool) -> tuple[bytes, np.ndarray | None, bool]:
    """One block's work, off the caller's thread: its file bytes (padded to a whole block, bands interleaved
    by pixel), its 2 × 2 mean for the next level (``None`` for the last level), and whether any pixel is valid."""
    bands, rows, cols = block.shape
    whole = np.zeros((BLOCK, BLOCK, bands), np.uint16)
    whole[:rows, :cols] = np.moveaxis(block, 0, -1)
    data = codec.encode(whole[..., 0] if bands == 1 else whole)
    smaller = None if last else halve(block[:, : rows // 2 * 2, : cols // 2 * 2], nodata)
    return data, smaller, bool(block.any())


def ram_budget() -> int:
    """Bytes of compressed blocks an item keeps in RAM: ``$STACSR_BLOCKS_RAM_MB`` MiB (0: every block to
    scratch), else :data:`RAM_DEFAULT`."""
    value = os.environ.get(RAM_ENV, "").strip()
    if not value:
        return RAM_DEFAULT
    if not value.isdigit():
        raise ValueError(f"{RAM_ENV} must be a whole number of MiB, not {value!r}")
    return int(value) << 20


class BlockStore:
    """Compressed blocks by key: in RAM up to ``budget`` bytes, the rest appended to a spill file in ``folder``.
    Filled by one thread; read back when every block is in."""

    def __init__(self, folder: Path, budget: int | None = None, name: str = "blocks") -> None:
        self.path = folder / name
        self.budget = budget if budget is not None else ram_budget()
        self.in_ram = 0
        self.spilled = 0
        self._ram: dict = {}
        self._spill: dict = {}  # key → (offset, length)
        self._file = None
        self._lock = threading.Lock()

    def put(self, key, data: bytes) -> None:
        with self._lock:
            if self.in_ram + len(data) <= self.budget:
                self._ram[key] = data
                self.in_ram += len(data)
                return
            if self._file is None:
                self._file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())
            self._spill[key] = (self.spilled, len(data))
            self._file.write(data)
            self.spilled += len(data)

    def sizes(self) -> dict:
        """Every block's size in bytes, by key."""
        with self._lock:
            return {key: len(data) for key, data in self._ram.items()} | {k: n for k, (_, n) in self._spill.items()}

    def size(self, key) -> int | None:
        if key in self._ram:
            return len(self._ram[key])
        return self._spill[key][1] if key in self._spill else None

    def get(self, key) -> bytes:
        with self._lock:
            if key in self._ram:
                return self._ram[key]
            offset, length = self._spill[key]
            self._file.flush()
            return os.pread(self._file.fileno(), length, offset)

    def close(self) -> None:
        """Drop every block (the spill file is removed with the scratch folder)."""
        with self._lock:
            self._ram.clear()
            self._spill.clear()
            if self._file is not None:
                self._file.close()
                self._file = None


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool() -> ThreadPoolExecutor:
    """The process's block compressors: one thread per core (imagecodecs and numpy release the GIL)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(cores(), thread_name_prefix="stacsr-blocks")
        return _POOL


class Pyramid:
    """One COG's levels, filled from tiles: complete blocks are compressed on :func:`pool` and cascade down the
    levels; their bytes land in ``store`` under ``(level, block row, block col)``. Not thread-safe: one
    caller at a time (the sink holds a lock)."""

    # Blocks being compressed at once, per pyramid: enough to keep every compressor busy, few enough that little
    # is left to compress after the last tile (and that memory is bounded: each block ≤ 2 MB for 4 bands).
    PENDING_PER_CORE = 2

    def __init__(self, shape: tuple[int, int], bands: int, codec: Codec, store: BlockStore, nodata: int = 0):
        self.levels = [Level(s, bands) for s in level_shapes(shape)]
        self.codec = codec
        self.store = store
        self.nodata = nodata
        self.valid = False
        self._most = max(4, self.PENDING_PER_CORE * cores())
        self._pending: deque[tuple[int, tuple[int, int], np.ndarray, Future]] = deque()
        # Levels made by exact 2 × 2 means: down to the first with an odd side; GDAL resamples the rest from it
        # (:func:`stacsr.io.overviews.resample_rest`), as its COG driver does, so they are GDAL's own.
        odd = [i for i, lvl in enumerate(self.levels[:-1]) if lvl.shape[0] % 2 or lvl.shape[1] % 2]
        self.exact = odd[0] if odd else len(self.levels) - 1
        self._kept = None  # level ``exact``'s pixels, when GDAL makes the levels below it
        if self.exact < len(self.levels) - 1:
            path = Path(f"{store.path}.level.npy")
            kept = (bands, *self.levels[self.exact].shape)
            self._kept = np.lib.format.open_memmap(path, "w+", np.uint16, kept)

    def write(self, row: int, col: int, tile: np.ndarray | None, height: int, width: int) -> None:
        """Full-resolution pixels (``None``: a window with no valid pixel) at ``(row, col)``."""
        self._submit(0, self.levels[0].add(row, col, height, width, tile))
        self._collect(block=len(self._pending) > self._most)

    def finish(self) -> None:
        """Complete every level, finest first: blocks partly covered are completed as they are; the levels
        below :attr:`exact`, small, resampled by GDAL."""
        for index, level in enumerate(self.levels[: self.exact + 1]):
            self._drain()
            self._submit(index, level.rest())
        self._drain()
        if self._kept is None:
            return
        self._kept.flush()
        rest = resample_rest(self._kept, len(self.levels) - 1 - self.exact, self.store.path)
        for index, pixels in enumerate(rest, self.exact + 1):
            h, w = self.levels[index].shape
            self._submit(index, self.levels[index].add(0, 0, h, w, pixels[:, :h, :w]))
            self._drain()

    def missing(self) -> bytes:
        """The bytes of a block nowhere written (all nodata), stored once for every such block."""
        bands = self.levels[0].bands
        return encode_block(self.codec, np.full((bands, 1, 1), self.nodata, np.uint16), self.nodata, True)[0]

    def cancel(self) -> None:
        for *_, future in self._pending:
            future.cancel()
        wait([f for *_, f in self._pending])
        self._pending.clear()
        self._kept = None

    def _submit(self, index: int, blocks: list) -> None:
        last = index >= self.exact
        for key, block in blocks:
            future = pool().submit(encode_block, self.codec, block, self.nodata, last)
            self._pending.append((index, key, block, future))

    def _collect(self, block: bool = False) -> None:
        """Store the blocks compressed so far, in order (waiting for the oldest while too many are pending)."""
        while self._pending and (self._pending[0][-1].done() or block):
            if block:
                wait([self._pending[0][-1]], return_when=FIRST_COMPLETED)
            index, (br, bc), pixels, future = self._pending.popleft()
            data, smaller, valid = future.result()
            self.store.put((index, br, bc), data)
            self.valid = self.valid or valid
            if index == self.exact and self._kept is not None:
                h, w = pixels.shape[-2:]
                self._kept[:, br * BLOCK : br * BLOCK + h, bc * BLOCK : bc * BLOCK + w] = pixels
            h, w = smaller.shape[-2:] if smaller is not None else (0, 0)
            if h and w:
                self._submit(index + 1, self.levels[index + 1].add(br * BLOCK // 2, bc * BLOCK // 2, h, w, smaller))
            block = len(self._pending) > self._most

    def _drain(self) -> None:
        while self._pending:
            self._collect(block=True)
