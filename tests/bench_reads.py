"""Remote reads: HTTP requests and bytes fetched per item, against what the tiles need (issue 21, point 3).

A range-capable HTTP server (:class:`tests.fixtures.services.BlobServer`, which logs every request and its
``Range``) serves two inputs laid out like real ones, COGs with 1024² deflate blocks and noisy, non-constant
content. Each is read the way the in-process engine reads an item: the halo'd windows of 256 px tiles
(:func:`stacsr.tiles.plan`, the model's receptive radius), row after row, through the source held open for the
item (``source.open()``, where the source has one):

- ``sr file``: ``stacsr sr`` on a 2048² 4-band uint16 COG (one file, pixel-interleaved);
- ``item crop``: a 4096² AOI of an item of four single-band COGs (6144², as a Sentinel-2 item's 10 m bands).

It prints, per case: requests, MB fetched (the sum of the ranges served), MB of the blocks the windows touch
(their compressed bytes, plus each file's header), and fetched / touched.

    python -m tests.bench_reads                       # inputs kept in /tmp/stacsr-bench-reads
    python -m tests.bench_reads --item-size 10980     # a whole Sentinel-2 band's size (slower to make)
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

BLOCK = 1024
TILE = 256
BANDS = ("B02", "B03", "B04", "B08")
TRANSFORM = (10.0, 0.0, 600000.0, 0.0, -10.0, 5300000.0)


def texture(bands: int, size: int, seed: int) -> np.ndarray:
    """``(bands, size, size)`` uint16 like reflectances × 10000: a smooth field (fields, towns) plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(300, 3500, (bands, size // 64 + 2, size // 64 + 2)).astype(np.uint16)
    field = np.repeat(np.repeat(coarse, 64, axis=1), 64, axis=2)[:, :size, :size]
    return field + rng.integers(0, 96, (bands, size, size), dtype=np.uint16)


def make_cog(path: Path, data: np.ndarray, block: int = BLOCK) -> Path:
    """``data`` as a deflate COG with ``block``² blocks (overviews as GDAL makes them); kept when it exists."""
    import rasterio
    import rasterio.shutil
    from affine import Affine

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".plain.tif")
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="uint16")
    profile |= dict(crs="EPSG:32632", transform=Affine(*TRANSFORM), nodata=0, tiled=True, blockxsize=512)
    with rasterio.open(tmp, "w", blockysize=512, **profile) as dst:
        dst.write(data)
    part = path.with_suffix(".part.tif")
    rasterio.shutil.copy(tmp, part, driver="COG", BLOCKSIZE=str(block), COMPRESS="DEFLATE", NUM_THREADS="ALL_CPUS")
    tmp.unlink()
    part.rename(path)
    return path


def engine_windows(shape: tuple[int, int], crop: tuple[int, int, int, int] | None = None) -> list:
    """The halo'd windows the engine reads for ``crop`` (row, col, height, width; default: all), in its order."""
    from stacsr.model.package import load
    from stacsr.tiles import plan

    halo = load("default").receptive_radius
    row, col, height, width = crop or (0, 0, *shape)
    return [w.shift(row, col).pad(halo) for w in plan((height, width), TILE)]


def blocks_touched(path: Path, windows: Sequence) -> tuple[int, int]:
    """(blocks, bytes) of ``path``'s full-resolution blocks that ``windows`` touch (clipped to the raster;
    every band's bytes once), plus its header: what reading them should cost at best."""
    import rasterio

    with rasterio.open(path) as src:
        bh, bw = src.block_shapes[0]
        touched = set()
        for w in windows:
            r0, r1 = max(0, w.row), min(src.height, w.row + w.height)
            c0, c1 = max(0, w.col), min(src.width, w.col + w.width)
            touched |= {
                (i, j) for i in range(r0 // bh, (r1 - 1) // bh + 1) for j in range(c0 // bw, (c1 - 1) // bw + 1)
            }
        pixel = src.count == 1 or src.interleaving is None or src.interleaving.name == "pixel"
        indexes = (1,) if pixel else tuple(range(1, src.count + 1))
        data = sum(src.block_size(b, i, j) for i, j in touched for b in indexes)
        overviews = len(src.overviews(1))
    return len(touched), data + header_bytes(path, overviews)


def header_bytes(path: Path, overviews: int) -> int:
    """Bytes before the first block of any level (a COG's header and IFDs)."""
    import rasterio

    first = []
    for level in [None, *range(overviews)]:
        with rasterio.open(path, overview_level=level) if level is not None else rasterio.open(path) as src:
            first.append(int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)))
    return min(first)


def fetched(requests: Iterable, sizes: dict[str, int]) -> tuple[int, int]:
    """(requests, bytes) a server's log says it served: the sum of each GET's ranges (a whole file without)."""
    count = total = 0
    for method, path, rng, status in requests:
        count += 1
        if method != "GET" or status >= 400:
            continue
        size = sizes[path]
        if not rng:
            total += size
            continue
        for part in rng.split("=", 1)[1].split(","):
            start, _, end = part.strip().partition("-")
            total += min(int(end) if end else size - 1, size - 1) - int(start) + 1
    return count, total


def read_all(source, windows: Sequence) -> int:
    """Read ``windows`` one after the other as the engine does; the source's ``bytes_read`` (-1: not counted)."""
    opener = getattr(source, "open", None)
    with opener() if opener else contextlib.nullcontext(source) as opened:
        for w in windows:
            opened.read([w])
        return int(getattr(opened, "bytes_read", -1))


def make_inputs(folder: Path, item_size: int) -> tuple[Path, list[Path]]:
    file = make_cog(folder / "file-2048.tif", texture(4, 2048, 1))
    item = [
        make_cog(folder / f"item-{item_size}" / f"{b}.tif", texture(1, item_size, 10 + i)) for i, b in enumerate(BANDS)
    ]
    return file, item


def item_source(urls: Sequence[str], size: int):
    import rasterio
    from affine import Affine

    from stacsr.io.grid import from_rasterio
    from stacsr.io.source import Band, RasterSource

    grid = from_rasterio(Affine(*TRANSFORM), rasterio.CRS.from_epsg(32632), (size, size))
    return RasterSource(tuple(Band(u, 1, None, b) for u, b in zip(urls, BANDS)), grid, "bench item")


def measure(server, name: str, make_source: Callable[[], Any], paths: Sequence[Path], windows: Sequence) -> dict:
    """One case: ``make_source()`` (a file's probe counts) and its windows read, as the server saw them."""
    rel = {f"/files/{p.relative_to(server.root)}": p.stat().st_size for p in paths}
    touched = [blocks_touched(p, windows) for p in paths]
    server.clear_requests()
    start = time.perf_counter()
    counted = read_all(make_source(), windows)
    seconds = time.perf_counter() - start
    requests, got = fetched(server.requests, rel)
    blocks, need = sum(t[0] for t in touched), sum(t[1] for t in touched)
    return dict(case=name, windows=len(windows), requests=requests, fetched=got, touched=need, blocks=blocks,
                counted=counted, seconds=seconds)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from stacsr.io.source import file_source
    from tests.fixtures.services import BlobServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/stacsr-bench-reads"))
    parser.add_argument("--item-size", type=int, default=6144)
    parser.add_argument("--crop", type=int, default=4096)
    args = parser.parse_args(argv)
    file, item = make_inputs(args.folder, args.item_size)
    server = BlobServer(root=args.folder).start()
    try:
        url, windows = server.file_url(file.name), engine_windows((2048, 2048))
        rows = [measure(server, "sr file 2048² × 4 bands", lambda: file_source(url)[0], [file], windows)]
        offset = (args.item_size - args.crop) // 2 - 100  # an AOI not aligned to blocks
        crop = (offset, offset, args.crop, args.crop)
        urls = [server.file_url(str(p.relative_to(args.folder))) for p in item]
        windows = engine_windows((args.item_size,) * 2, crop)
        name = f"item crop {args.crop}² of 4 × {args.item_size}²"
        rows.append(measure(server, name, lambda: item_source(urls, args.item_size), item, windows))
    finally:
        server.stop()
    print("| case | windows | requests | MB fetched | MB of blocks touched | ratio | blocks touched | counted MB | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        counted = f"{r['counted'] / 1e6:.1f}" if r["counted"] >= 0 else "-"
        print(
            f"| {r['case']} | {r['windows']} | {r['requests']} | {r['fetched'] / 1e6:.1f} | {r['touched'] / 1e6:.1f} "
            f"| {r['fetched'] / r['touched']:.2f} | {r['blocks']} | {counted} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
