"""Writing outputs: atomic files with ordinary permissions (a tile server running as another user reads them)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from stacsr.io.write import write_cog
from stacsr.plumbing import storage
from stacsr.plumbing.storage import atomic_file


def test_cogs_and_atomic_files_get_ordinary_permissions(tmp_path):
    grid = GeoBox((8, 8), Affine(10, 0, 600000, 0, -10, 5300000), "EPSG:32632")
    cog = write_cog(tmp_path / "a" / "x.tif", np.ones((1, 8, 8), np.uint16), grid)
    with atomic_file(tmp_path / "b.json") as tmp:
        tmp.write_text("{}")
    expected = 0o666 & ~storage._UMASK  # what open() would give: 0644 under the usual umask 022, not mkstemp's 0600
    assert storage._UMASK == _process_umask()
    for path in (cog, tmp_path / "b.json"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.json", "x.tif"]  # no temporary left


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_file_leaves_nothing_when_the_block_fails(tmp_path):
    (tmp_path / "keep.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "keep.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert (tmp_path / "keep.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
