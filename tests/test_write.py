"""Writing outputs: atomic files with ordinary permissions (a tile server running as another user reads them)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from stacsr.io.grid import Window
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


def _dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_what_a_killed_process_left_is_removed_by_the_next_write_beside_it(tmp_path):
    """A killed run leaves its hidden scratch folder and half-written file (named after its host and pid); the
    next sink or atomic write in that folder removes them, and leaves alone those of running processes and
    of other hosts (a shared disk)."""
    from stacsr.io.sink import CogTarget, SinkSpec, TileSink

    host, dead = socket.gethostname(), _dead_pid()
    stale = [tmp_path / f".stacsr-{host}-{dead}-abc", tmp_path / f".x.tif.{host}-{dead}-def.part"]
    kept = [
        tmp_path / f".stacsr-{host}-{os.getpid()}-ghi",  # this process: running
        tmp_path / f".stacsr-other-host-{dead}-jkl",  # another host's: its pids mean nothing here
        tmp_path / f".y.tif.{host}-{dead}-mno.part",  # another file's: removed when that file is written
    ]
    stale[0].mkdir()
    (stale[0] / "0.tif").write_bytes(b"half")
    stale[1].write_bytes(b"half")
    kept[0].mkdir()
    kept[1].mkdir()
    kept[2].write_bytes(b"half")

    grid = GeoBox((64, 64), Affine(2.5, 0, 600000, 0, -2.5, 5300000), "EPSG:32632")
    sink = TileSink(SinkSpec(grid, (0, 0), 4, (CogTarget(str(tmp_path / "x.tif"), (0,), ("B02",)),))).open()
    assert not stale[0].exists() and stale[1].exists()  # the sink removes scratch folders only
    sink.write([(Window(0, 0, 16, 16), np.full((1, 64, 64), 7, np.uint16))])
    sink.finish()
    assert not stale[1].exists()  # the COG's atomic write removed its own name's leftover
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ["x.tif"])
