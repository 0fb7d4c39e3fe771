"""Scratch disk reserved per item (stacsr/io/scratch.py): items that do not fit together wait for each other, in
threads and across processes; an item that can never fit fails at once in one line; dead processes' entries do
not block; the sink holds its reservation from open to finish/abort."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from stacsr.io import scratch as S
from stacsr.io.grid import GeoBox, Window
from stacsr.io.sink import CogTarget, DiskSpaceError, SinkSpec, TileSink

GB = 10**9


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(S, "POLL", 0.05)
    monkeypatch.delenv(S.LIMIT_ENV, raising=False)


@pytest.mark.parametrize(
    "text, nbytes",
    [
        ("68719476736", 64 << 30),
        ("64Gi", 64 << 30),
        ("64GiB", 64 << 30),
        ("60Gi", 60 << 30),
        ("64G", 64 * GB),
        ("64GB", 64 * GB),
        (" 1.5T ", 1_500_000_000_000),
        ("512Mi", 512 << 20),
        ("100k", 100_000),
        ("2Ki", 2048),
        ("1Ti", 1 << 40),
    ],
)
def test_limit_parsing(monkeypatch, text, nbytes):
    assert S.parse_size(text) == nbytes
    monkeypatch.setenv(S.LIMIT_ENV, text)
    assert S.limit() == nbytes


def test_a_bad_limit_is_one_line(monkeypatch):
    assert S.limit() is None
    monkeypatch.setenv(S.LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=r"^STACSR_SCRATCH_LIMIT='lots' is not a size \(bytes, or .* 60Gi or 64G\)$"):
        S.limit()


def test_the_second_waits_until_the_first_is_released(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(S.LIMIT_ENV, "1G")
    events: list[str] = []
    first = S.reserve(tmp_path, 0.6 * GB)
    owner = first.__enter__()
    assert S.reserved(tmp_path) == {owner: 600_000_000}

    def second() -> None:
        with S.reserve(tmp_path, 0.6 * GB):
            events.append("second in")
        events.append("second out")

    with caplog.at_level(logging.INFO, logger="stacsr.io.scratch"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert events == [] and t.is_alive()  # 0.6 + 0.6 GB > 1 GB: waiting
        events.append("first out")
        first.__exit__(None, None, None)
        t.join(10)
    assert events == ["first out", "second in", "second out"]
    (waiting,) = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]  # logged once
    assert f"waiting for scratch space in {tmp_path}: this item needs about 0.6 GB, 0.4 GB are left" in waiting
    assert S.reserved(tmp_path) == {} and not (tmp_path / S.LEDGER).exists()  # the last one out removes the ledger


def _hold(folder: str, nbytes: int, ready, release) -> None:
    with S.reserve(folder, nbytes):
        ready.set()
        release.wait(30)


def test_processes_share_the_ledger(tmp_path, monkeypatch):
    """One process holds 0.7 GB of a 1 GB limit; another asking for 0.5 GB waits until the first lets go."""
    monkeypatch.setenv(S.LIMIT_ENV, "1G")
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), 700_000_000, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        (entry,) = json.loads((tmp_path / S.LEDGER).read_text()).values()
        assert entry["pid"] == holder.pid and entry["bytes"] == 700_000_000
        code = (
            "import time, sys; from stacsr.io import scratch as S; S.POLL = 0.05; t = time.time()\n"
            f"with S.reserve({str(tmp_path)!r}, 500_000_000): print(round(time.time() - t, 2))"
        )
        waiter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert waiter.poll() is None  # still waiting
        release.set()
        out, _ = waiter.communicate(timeout=60)
        assert waiter.returncode == 0 and float(out) >= 1.0
    finally:
        release.set()
        holder.join(30)
    assert not (tmp_path / S.LEDGER).exists()


def test_an_item_over_the_limit_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(S.LIMIT_ENV, "64Gi")
    t = time.monotonic()
    with pytest.raises(DiskSpaceError) as e:
        with S.reserve(tmp_path, 80 * GB):
            pass
    assert time.monotonic() - t < 1
    assert str(e.value) == (
        f"not enough free disk space in {tmp_path}: this item needs about 80.0 GB, STACSR_SCRATCH_LIMIT is 68.7 GB"
    )
    total = shutil.disk_usage(tmp_path).total
    monkeypatch.delenv(S.LIMIT_ENV)
    with pytest.raises(
        DiskSpaceError, match=r"^not enough free disk space in .*: this item needs about .* GB, the disk"
    ):
        with S.reserve(tmp_path, total + 1):
            pass
    assert not (tmp_path / S.LEDGER).exists()


def test_a_full_disk_with_nothing_reserved_fails_at_once(tmp_path):
    """Nothing of ours would free it: failing beats waiting forever."""
    usage = shutil.disk_usage(tmp_path)
    if usage.free > usage.total - 2:
        pytest.skip("an empty disk")
    with pytest.raises(DiskSpaceError, match=r"GB are free$"):
        with S.reserve(tmp_path, usage.free + (usage.total - usage.free) // 2):
            pass


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_process_entry_does_not_block(tmp_path, monkeypatch):
    monkeypatch.setenv(S.LIMIT_ENV, "1G")
    host, dead = socket.gethostname(), _dead_pid()
    ledger = {
        f"{host}-{dead}-deadbeef": {"host": host, "pid": dead, "bytes": 900_000_000, "since": 0},
        "elsewhere-1-cafe": {"host": "another-host", "pid": os.getpid(), "bytes": 100_000_000, "since": 0},
    }
    (tmp_path / S.LEDGER).write_text(json.dumps(ledger))
    with S.reserve(tmp_path, 0.8 * GB) as owner:  # the dead one's 0.9 GB would block it
        assert S.reserved(tmp_path) == {"elsewhere-1-cafe": 100_000_000, owner: 800_000_000}
    assert S.reserved(tmp_path) == {"elsewhere-1-cafe": 100_000_000}  # another host's entry: kept


def _spec(tmp_path: Path, side: int) -> SinkSpec:
    grid = GeoBox((side, side), Affine(2.5, 0, 600000, 0, -2.5, 5300000), "EPSG:32632")
    target = CogTarget(str(tmp_path / "out" / "x.tif"), (0, 1), ("a", "b"))
    return SinkSpec(grid, (0, 0), 4, (target,), scratch=str(tmp_path / "scratch"))


def test_the_sink_holds_its_reservation_until_finish(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    spec = _spec(tmp_path, 1024)
    sink = TileSink(spec).open()
    (held,) = S.reserved(tmp_path / "scratch").values()
    assert held == pytest.approx(spec.raw_bytes * (0.5 + 0.5), abs=1)  # compressed blocks, and the COG: same disk
    tile = np.full((2, 64, 64), 700, np.uint16)
    sink.write([(Window(0, 0, 16, 16), tile)])
    assert sink.finish() is not None and Path(spec.targets[0].url).exists()
    assert S.reserved(tmp_path / "scratch") == {}


def test_the_sink_frees_its_reservation_on_abort_and_refuses_at_once(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    sink = TileSink(_spec(tmp_path, 1024)).open()
    assert S.reserved(tmp_path / "scratch")
    sink.abort()
    assert S.reserved(tmp_path / "scratch") == {} and list((tmp_path / "scratch").iterdir()) == []
    monkeypatch.setenv(S.LIMIT_ENV, "1Mi")
    with pytest.raises(DiskSpaceError, match=r"needs about 4.2 MB, STACSR_SCRATCH_LIMIT is 1.0 MB$"):
        TileSink(_spec(tmp_path, 1024)).open()
    assert list((tmp_path / "scratch").iterdir()) == []
