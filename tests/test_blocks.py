"""COGs from compressed blocks (``stacsr.io.block_cogs``): the same files as GDAL's COG driver makes from
uncompressed intermediates (``stacsr.io.gdal_cogs``, the fallback), pixel for pixel, overviews included; valid
by rio-cogeo and by GDAL's own layout check; with no uncompressed copy in scratch, BigTIFF when needed, and
streamed to S3 as one multipart upload to the final key."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from rio_cogeo.cogeo import cog_validate

from stacsr.io import cog_file
from stacsr.io import sink as S
from stacsr.io.block_cogs import BlockCogs
from stacsr.io.blocks import RAM_ENV, ram_budget
from stacsr.io.gdal_cogs import GdalCogs
from stacsr.io.grid import Window
from stacsr.io.write import WriteError
from stacsr.plumbing import retry as R
from stacsr.plumbing import storage

SCALE = 4
STEP = 96  # tile cores on the 10 m grid: not a divisor of the 512-px blocks, so tiles straddle them
BANDS = ("B02", "B03", "B04", "B08")


def spec_for(folder: Path | str, rows: int, cols: int, compress: str = "deflate", scratch: Path | None = None):
    """Two COGs (one band; three bands) on a ``rows × cols`` 2.5 m grid, in ``folder`` (a path or a URL)."""
    grid = GeoBox((rows, cols), Affine(2.5, 0, 600000, 0, -2.5, 5300000), "EPSG:32632")
    base = str(folder).rstrip("/")
    targets = (
        S.CogTarget(f"{base}/a.tif", (0,), BANDS[:1]),
        S.CogTarget(f"{base}/b.tif", (1, 2, 3), BANDS[1:]),
    )
    return S.SinkSpec(grid, (0, 0), SCALE, targets, compress, str(scratch) if scratch else None)


def image(rows: int, cols: int, seed: int = 0, noise: bool = False) -> np.ndarray:
    """An item's output: smooth fields with some noise (much: ``noise``), rows of nodata, nodata in one band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    field = (1000 + 800 * np.sin(yy / 37.0) * np.cos(xx / 53.0)).astype(np.uint16)
    out = field + rng.integers(0, 3000 if noise else 40, (4, rows, cols), dtype=np.uint16)
    out[:, 200:237] = 0
    out[1, :, 300:700:3] = 0
    return out


EMPTY = (1, 1)  # the tile with no valid pixel


def cores(rows: int, cols: int) -> list[tuple[tuple[int, int], Window]]:
    """Tile cores as the planner lays them (:func:`stacsr.tiles.plan`): the last of a row or column shifted
    back inside the area, overlapping its neighbour."""

    def starts(n: int) -> list[int]:
        return sorted({*range(0, n - STEP, STEP), max(0, n - STEP)})

    rs, cs = starts(rows // SCALE), starts(cols // SCALE)
    return [((i, j), Window(r, c, STEP, STEP)) for i, r in enumerate(rs) for j, c in enumerate(cs)]


def tiles(rows: int, cols: int, seed: int = 0, noise: bool = False):
    """``(core, output)`` covering the grid, ``None`` for the empty tile."""
    full = image(rows, cols, seed, noise)
    for index, core in cores(rows, cols):
        out = core.scale(SCALE)
        yield core, None if index == EMPTY else full[:, out.row : out.row + out.height, out.col : out.col + out.width]


def expected(rows: int, cols: int) -> np.ndarray:
    """The pixels an item's COGs must hold: the image, and nodata over the empty tile's core."""
    out = image(rows, cols)
    empty = dict(cores(rows, cols))[EMPTY].scale(SCALE)
    out[:, empty.row : empty.row + empty.height, empty.col : empty.col + empty.width] = 0
    return out


def make(spec, path: type | None = None, monkeypatch=None, **tile_args) -> dict[str, str]:
    if path is not None:
        monkeypatch.setattr(S, "cog_path", lambda spec: path)
    sink = S.TileSink(spec).open()
    for core, tile in tiles(*spec.grid.shape.yx, **tile_args):
        sink.write([(core, tile)])
    return sink.finish()


def read_all(path: str) -> list[np.ndarray]:
    """Full resolution, then each overview level."""
    with rasterio.open(path) as src:
        levels = [src.read()] + [None] * len(src.overviews(1))
    for i in range(1, len(levels)):
        with rasterio.open(path, overview_level=i - 1) as src:
            levels[i] = src.read()
    return levels


def facts(path: str) -> dict:
    with rasterio.open(path) as src:
        structure = src.tags(ns="IMAGE_STRUCTURE")
        return {
            "profile": {k: v for k, v in src.profile.items() if k not in ("tiled",)},
            "descriptions": src.descriptions,
            "scales": src.scales,
            "offsets": src.offsets,
            "overviews": src.overviews(1),
            "mask_flags": src.mask_flag_enums,
            "compression": structure.get("COMPRESSION"),
            "predictor": structure.get("PREDICTOR"),
            "interleave": structure.get("INTERLEAVE"),
        }


def check_cog(path: str) -> None:
    valid, errors, warnings = cog_validate(path, quiet=True)
    assert valid and errors == [] and warnings == [], (errors, warnings)
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # GDAL's own check of the layout


@pytest.mark.parametrize(("rows", "cols", "compress"), [(1100, 1324, "deflate"), (2048, 1536, "zstd")])
def test_block_cogs_are_gdal_cogs_pixel_for_pixel(rows, cols, compress, tmp_path, monkeypatch):
    """Odd and even sizes, straddling tiles, nodata and an empty tile: same pixels at every level, same tags."""
    assert S.cog_path(spec_for(tmp_path, rows, cols, compress)) is BlockCogs
    blocks = make(spec_for(tmp_path / "blocks", rows, cols, compress))
    gdal = make(spec_for(tmp_path / "gdal", rows, cols, compress), GdalCogs, monkeypatch)
    for name in ("a.tif", "b.tif"):
        ours, theirs = str(tmp_path / "blocks" / name), str(tmp_path / "gdal" / name)
        assert blocks[ours] and gdal[theirs]
        check_cog(ours)
        assert facts(ours) == facts(theirs)
        assert facts(ours)["compression"] == compress.upper() and facts(ours)["predictor"] == "2"
        mine, its = read_all(ours), read_all(theirs)
        assert len(mine) == len(its) >= 2
        for level, (x, y) in enumerate(zip(mine, its)):
            assert np.array_equal(x, y), f"{name} level {level}"
    assert np.array_equal(mine[0], expected(rows, cols)[1:])  # b.tif: the pixels given


def test_blocks_spilled_to_scratch_are_compressed_and_give_the_same_file(tmp_path, monkeypatch):
    """Beyond the RAM budget (0 here) blocks go to a spill file in scratch; no uncompressed copy of the item
    is written there, and the COG is the same, byte for byte, as from RAM."""
    rows, cols = 1536, 1536
    make(spec_for(tmp_path / "ram", rows, cols))
    monkeypatch.setenv(RAM_ENV, "0")
    assert ram_budget() == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    listed: list[dict[str, int]] = []
    put_stream = storage.put_stream

    def watched(source, size, url):
        listed.append({p.name: p.stat().st_size for p in scratch.rglob("*") if p.is_file()})  # before assembly
        return put_stream(source, size, url)

    monkeypatch.setattr(storage, "put_stream", watched)
    spec = spec_for(tmp_path / "spill", rows, cols, scratch=scratch)
    make(spec)
    files = listed[0]
    spilled = sum(size for name, size in files.items() if name.endswith(".blocks"))
    made = sum((tmp_path / "spill" / name).stat().st_size for name in ("a.tif", "b.tif"))
    assert spilled > 0.9 * made  # every block went to scratch ...
    assert sum(files.values()) < 0.7 * spec.raw_bytes  # ... compressed: no uncompressed copy
    assert not any(name.endswith(".tif") for name in files)
    assert list(scratch.iterdir()) == []  # the scratch folder went with the sink
    for name in ("a.tif", "b.tif"):
        assert (tmp_path / "spill" / name).read_bytes() == (tmp_path / "ram" / name).read_bytes()


def test_a_cog_past_4_gib_is_a_bigtiff(tmp_path, monkeypatch):
    """The layout turns BigTIFF when the blocks would pass the classic TIFF's 4 GiB; such a file (forced here
    on a small item) reads the same and is a valid COG."""
    shapes, codec = [(43920, 43920), (21960, 21960), (10980, 10980)], S.codec("deflate")
    small = cog_file.layout(shapes, 4, codec, [], {}, 100_000)
    big = cog_file.layout(shapes, 4, codec, [], {}, 700_000)  # 9,000+ blocks of 700 kB: over 4 GiB
    assert small.header[:4] == b"II*\x00" and small.size < 2**32
    assert big.header[:4] == b"II+\x00" and big.size > 2**32
    make(spec_for(tmp_path / "classic", 700, 900))
    monkeypatch.setattr(cog_file, "CLASSIC_LIMIT", 0)
    make(spec_for(tmp_path / "big", 700, 900))
    for name in ("a.tif", "b.tif"):
        assert (tmp_path / "big" / name).read_bytes()[:4] == b"II+\x00"
        check_cog(str(tmp_path / "big" / name))
        for x, y in zip(read_all(str(tmp_path / "big" / name)), read_all(str(tmp_path / "classic" / name))):
            assert np.array_equal(x, y)


def test_a_failed_assembly_leaves_no_cog_and_no_scratch(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    chunks = cog_file.chunks

    def broken(lay, store, missing):
        pieces = chunks(lay, store, missing)
        yield next(pieces)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("stacsr.io.block_cogs.chunks", broken)
    with pytest.raises(WriteError, match=r"^cannot write .*\.tif: .*No space left on device"):
        make(spec_for(tmp_path / "out", 700, 900, scratch=scratch))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # neither COG, nor a temporary file
    assert list(scratch.iterdir()) == []


def test_disk_an_item_needs():
    """Compressed blocks and the COG (local output); blocks only when the COG streams to object storage; GDAL's
    path: uncompressed intermediates and their levels, plus the COG, wherever it goes."""
    assert S.disk_fraction("deflate") == S.disk_fraction("zstd") == 2 * S.COG_FRACTION
    assert S.disk_fraction("deflate", remote=True) == S.COG_FRACTION
    assert S.disk_fraction("lzw", remote=True) == S.disk_fraction("lzw") == 1 + S.PYRAMID_FRACTION + S.COG_FRACTION


@pytest.fixture()
def s3_env(s3, monkeypatch):  # noqa: F811
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage, "PART_SIZE", 5 << 20)  # S3's smallest part: a 6+ MB COG takes two
    monkeypatch.setattr(storage, "retry", functools.partial(R.retry, delay=0.01))
    return s3


def test_cogs_stream_to_s3_as_one_multipart_upload_to_the_final_key(s3_env, tmp_path, monkeypatch):
    """No local copy of the COG and no temporary key: the upload is pending at the final key while parts go."""
    bucket = s3_env.bucket()
    client = storage.s3_client()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    seen: list[tuple[list[str], list[str], list[str]]] = []
    parts = storage._read_parts

    def watched(src, chunk):
        for data in parts(src, chunk):
            yield data
            listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            on_disk = [p.name for p in scratch.rglob("*") if p.is_file() and p.suffix == ".tif"]
            seen.append(([o["Key"] for o in listed], [u["Key"] for u in uploads], on_disk))

    monkeypatch.setattr(storage, "_read_parts", watched)
    rows, cols = 1600, 1600
    hrefs = make(spec_for(f"s3://{bucket}/out", rows, cols, scratch=scratch), noise=True)
    monkeypatch.setattr(storage, "_read_parts", parts)
    assert sorted(hrefs) == [f"s3://{bucket}/out/a.tif", f"s3://{bucket}/out/b.tif"]
    assert len(seen) >= 3 and all(keys == [] or keys == ["out/a.tif"] or keys == ["out/b.tif"] for keys, _, _ in seen)
    assert all(uploads and set(uploads) <= {"out/a.tif", "out/b.tif"} for _, uploads, _ in seen)
    assert all(tifs == [] for _, _, tifs in seen)
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == ["out/a.tif", "out/b.tif"] and not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    local = make(spec_for(tmp_path / "local", rows, cols), noise=True)
    for name in ("a.tif", "b.tif"):
        got = tmp_path / f"s3-{name}"
        got.write_bytes(client.get_object(Bucket=bucket, Key=f"out/{name}")["Body"].read())
        assert got.read_bytes() == Path(local[str(tmp_path / "local" / name)]).read_bytes()
        assert os.path.getsize(got) > 5 << 20 or name == "a.tif"
