"""A COG assembled once from blocks already compressed: its IFDs first, then the blocks, smallest overview first.

The layout is the one GDAL's COG driver writes (and its validator and rio-cogeo's ``cog_validate`` check):

    TIFF header │ GDAL's structural metadata ("ghost" area) │ every IFD, full resolution first │ blocks of the
    smallest overview … blocks of the full resolution, each row-major, each block with GDAL's leader (its size,
    4 bytes) and trailer (its last 4 bytes again)

The IFDs are written by tifffile with empty tiles; their tile offsets and byte counts are then filled in place
(tifffile's ``TiffTag.overwrite``), as odc-geo's COG writer does. GeoTIFF and GDAL tags (georeferencing,
nodata, band descriptions, scale and offset) are the ones GDAL itself writes for the same raster. Nothing is
decoded or compressed again here: the bytes stream from a :class:`~stacsr.io.blocks.BlockStore` to a file or
an object store (:func:`stacsr.plumbing.storage.put_stream`).
"""

from __future__ import annotations

import io
import itertools
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import tifffile
from rasterio.io import MemoryFile

from stacsr.io.blocks import BLOCK, BlockStore, Codec, blocks_of
from stacsr.io.grid import GeoBox
from stacsr.io.write import describe, raster_profile

GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)  # GeoTIFF, GDAL_METADATA, GDAL_NODATA
GHOST = (  # GDAL's structural metadata: what GDAL's reader may rely on (its COG driver writes the same)
    "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n "
)
CLASSIC_LIMIT = 2**32 - 1  # past this many bytes, a BigTIFF


def geo_tags(grid: GeoBox, bands: int, descriptions: Sequence[str], scale: float | None, nodata: int) -> list:
    """``(code, type, count, value)`` of the georeferencing and GDAL tags GDAL writes for a raster on ``grid``
    (taken from a 1 × 1 GeoTIFF GDAL writes in memory with the same CRS, transform, nodata and bands)."""
    profile = dict(raster_profile(grid, bands, nodata), width=1, height=1)
    with MemoryFile() as mem:
        with mem.open(**profile) as dataset:
            describe(dataset, descriptions, scale)
        with tifffile.TiffFile(io.BytesIO(mem.read())) as tif:
            tags = tif.pages.first.tags.values()
            return [(t.code, int(t.dtype), t.count, t.value) for t in tags if t.code in GEO_TAGS]


@dataclass(frozen=True)
class Layout:
    """Where everything goes in one COG: its header (IFDs included) and its blocks' keys in file order."""

    header: bytes
    keys: list[tuple[int, int, int]]  # (level, block row, block col), in file order
    size: int  # bytes in all


def layout(
    shapes: Sequence[tuple[int, int]], bands: int, codec: Codec, tags: list, sizes: dict, missing: int
) -> Layout:
    """The COG of the levels ``shapes`` (full resolution first) whose blocks have ``sizes`` (by key; absent:
    ``missing`` bytes): a classic TIFF when it fits, else a BigTIFF."""
    keys = [
        (level, br, bc)
        for level in reversed(range(len(shapes)))
        for br in range(blocks_of(shapes[level])[0])
        for bc in range(blocks_of(shapes[level])[1])
    ]
    lengths = [sizes.get(key, missing) for key in keys]
    data = sum(lengths) + 8 * len(keys)  # each block with its leader and trailer
    for bigtiff in (False, True):
        header = _with_ghost(_ifds(shapes, bands, codec, tags, bigtiff), bigtiff)
        if bigtiff or len(header) + data <= CLASSIC_LIMIT:
            break
    offsets: dict[int, list[int]] = {level: [] for level in range(len(shapes))}
    counts: dict[int, list[int]] = {level: [] for level in range(len(shapes))}
    position = len(header)
    for (level, _, _), length in zip(keys, lengths):
        offsets[level].append(position + 4)
        counts[level].append(length)
        position += length + 8
    return Layout(_patched(header, offsets, counts), keys, position)


def chunks(lay: Layout, store: BlockStore, missing: bytes) -> Iterator[bytes]:
    """The COG's bytes, in order: header, then each block between its leader and trailer."""
    yield lay.header
    for key in lay.keys:
        data = store.get(key) if store.size(key) is not None else missing
        yield struct.pack("<I", len(data))
        yield data
        yield data[-4:]


def _ifds(shapes: Sequence[tuple[int, int]], bands: int, codec: Codec, tags: list, bigtiff: bool) -> bytes:
    """Header and IFDs (full resolution, then each overview) with empty tiles, as tifffile writes them."""
    buffer = io.BytesIO()
    options = dict(
        dtype=np.uint16,
        tile=(BLOCK, BLOCK),
        compression=codec.tag,
        predictor=2,
        photometric="minisblack",
        planarconfig="contig" if bands > 1 else None,
        software=False,
        metadata=None,
    )
    with tifffile.TiffWriter(buffer, bigtiff=bigtiff) as writer:
        for level, (rows, cols) in enumerate(shapes):
            shape = (rows, cols, bands) if bands > 1 else (rows, cols)
            extra = dict(extratags=tags) if level == 0 else dict(subfiletype=1)
            writer.write(itertools.repeat(b""), shape=shape, **options, **extra)
    return buffer.getvalue()


def _with_ghost(header: bytes, bigtiff: bool) -> bytes:
    """``header`` with GDAL's structural metadata inserted right after the TIFF header, every offset shifted."""
    text = GHOST
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(text):06d} bytes\n{text}".encode("ascii")
    start = 16 if bigtiff else 8
    shift = len(ghost)
    out = bytearray(header[:start] + ghost + header[start:])
    pointer, entry, count_size = ("<Q", 20, 8) if bigtiff else ("<I", 12, 2)
    value_at = 12 if bigtiff else 8  # where an entry's value (or its offset) sits in it
    first = start - struct.calcsize(pointer)
    struct.pack_into(pointer, out, first, struct.unpack_from(pointer, header, first)[0] + shift)
    with tifffile.TiffFile(io.BytesIO(header)) as tif:
        for page in tif.pages:
            for tag in page.tags.values():
                if tag.valueoffset != tag.offset + value_at:  # stored out of line: shift its offset
                    struct.pack_into(pointer, out, tag.offset + value_at + shift, tag.valueoffset + shift)
            following = page.offset + count_size + entry * len(page.tags)
            nxt = struct.unpack_from(pointer, header, following)[0]
            struct.pack_into(pointer, out, following + shift, nxt + shift if nxt else 0)
    return bytes(out)


def _patched(header: bytes, offsets: dict[int, list[int]], counts: dict[int, list[int]]) -> bytes:
    """``header`` with each level's tile offsets and byte counts filled in (the header's size unchanged)."""
    buffer = io.BytesIO(header)
    with tifffile.TiffFile(buffer, mode="r+", name="header.tif") as tif:
        for level, page in enumerate(tif.pages):
            page.tags[324].overwrite(offsets[level])
            page.tags[325].overwrite(counts[level])
    patched = buffer.getvalue()
    if len(patched) != len(header):
        raise AssertionError("the COG's tile offsets did not fit in place")
    return patched
