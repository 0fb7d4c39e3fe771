"""Scratch disk reserved per item: items wait for room instead of filling the disk.

On Kubernetes an item's scratch is an ``emptyDir`` whose ``sizeLimit`` the filesystem's free space does not
show, and two items that start together do not see each other's needs: an overrun gets the pod evicted. So
every item reserves its estimated bytes (:func:`reserve`) in a ledger kept in the scratch folder
(``.stacsr-reservations.json``), shared by every process of the node (Ray workers included) under an exclusive
``fcntl.flock``. An item fits when its bytes are within ``min(free space, STACSR_SCRATCH_LIMIT)`` less what the
others reserved; otherwise it waits, polling, for them to finish. This is conservative: the others'
reservations count in full although what they have written already shows as used.

An item that can never fit (more than the limit, or than the whole filesystem) fails at once with one line; so
does one that does not fit while nothing else is reserved (the disk is full of something else: nothing of
ours would free it). Entries of processes of this host that no longer run are dropped (a killed item frees its
reservation); other hosts' entries (a shared disk) are kept. The ledger file is removed with its last entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import IO, Iterator

from stacsr.plumbing.storage import owner_tag, pid_running

LIMIT_ENV = "STACSR_SCRATCH_LIMIT"  # bytes the scratch folder may hold (an emptyDir's sizeLimit): 60Gi, 64G, …
LEDGER = ".stacsr-reservations.json"
POLL = 1.0  # seconds between two looks at the ledger while an item waits
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
log = logging.getLogger(__name__)


class DiskSpaceError(OSError):
    """Too little disk for an item's intermediates and COGs (one line: how much, and where)."""


def parse_size(text: str) -> int:
    """Bytes from ``"68719476736"``, ``"64Gi"`` / ``"64GiB"`` (×1024³) or ``"64G"`` / ``"64GB"`` (×1000³); units
    K, M, G, T, P, E as Kubernetes writes them (a lower-case ``k`` too)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:([kKMGTPE])(i?))?B?\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (bytes, or a number with a unit such as 60Gi or 64G)")
    unit = (m[2] or "").upper()
    scale = 1024 ** ("KMGTPE".index(unit) + 1) if m[3] else _UNITS[unit]
    return int(float(m[1]) * scale)


def limit() -> int | None:
    """``STACSR_SCRATCH_LIMIT`` in bytes (``None`` when unset)."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return None
    try:
        return parse_size(raw)
    except ValueError:
        raise ValueError(
            f"{LIMIT_ENV}={raw!r} is not a size (bytes, or a number with a unit such as 60Gi or 64G)"
        ) from None


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.1f} GB" if nbytes >= 1e8 or nbytes <= 0 else f"{nbytes / 1e6:,.1f} MB"


@contextlib.contextmanager
def _ledger(folder: Path) -> Iterator[dict[str, dict]]:
    """The ledger's live entries (``{owner: {host, pid, bytes, since}}``), locked; written back (or the file
    removed when empty) when the block ends without error."""
    path = folder / LEDGER
    while True:
        f: IO[str] = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break  # still the ledger: not removed (by its last owner) while this process waited for the lock
        except FileNotFoundError:
            pass
        f.close()
    with f:  # closing the file releases the lock
        text = f.read()
        try:
            entries = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            log.warning("scratch ledger %s was unreadable; starting it afresh", path)
            entries = {}
        host = socket.gethostname()
        live = {k: e for k, e in entries.items() if e.get("host") != host or pid_running(int(e.get("pid", 0)))}
        before = dict(live)
        try:
            yield live
        finally:
            if not live:
                path.unlink(missing_ok=True)
            elif live != before or live != entries:
                f.seek(0)
                f.truncate()
                json.dump(live, f, indent=1)
                f.flush()


def reserved(folder: str | Path) -> dict[str, int]:
    """``{owner: bytes}`` reserved in ``folder`` now; dead processes' entries are dropped from its ledger (and
    the ledger removed when that empties it), as :func:`stacsr.plumbing.storage.remove_stale` does for files."""
    folder = Path(folder)
    if not (folder / LEDGER).exists():
        return {}
    with _ledger(folder) as entries:
        return {k: int(e["bytes"]) for k, e in entries.items()}


@contextlib.contextmanager
def reserve(folder: str | Path, nbytes: float) -> Iterator[str]:
    """Hold ``nbytes`` of scratch in ``folder`` for the block (waiting until they fit; see the module's
    docstring); yields the reservation's owner key (``<host>-<pid>-<id>``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    owner, cap, waiting = f"{owner_tag()}-{uuid.uuid4().hex[:8]}", limit(), False
    while True:
        with _ledger(folder) as entries:
            usage = shutil.disk_usage(folder)
            if cap is not None and nbytes > cap:
                raise DiskSpaceError(
                    f"not enough free disk space in {folder}: this item needs about {_gb(nbytes)}, "
                    f"{LIMIT_ENV} is {_gb(cap)}"
                )
            if nbytes > usage.total:
                raise DiskSpaceError(
                    f"not enough free disk space in {folder}: this item needs about {_gb(nbytes)}, "
                    f"the disk holds {_gb(usage.total)}"
                )
            others = sum(int(e["bytes"]) for e in entries.values())
            room = min(usage.free, usage.free if cap is None else cap) - others
            if room >= nbytes:
                entries[owner] = {"host": socket.gethostname(), "pid": os.getpid(), "bytes": int(nbytes)}
                entries[owner]["since"] = round(time.time(), 1)
                break
            if not entries:
                raise DiskSpaceError(
                    f"not enough free disk space in {folder}: this item needs about {_gb(nbytes)}, "
                    f"{_gb(min(usage.free, usage.free if cap is None else cap))} are free"
                )
        if not waiting:
            waiting = True
            log.info(
                "waiting for scratch space in %s: this item needs about %s, %s are left beside %d other item(s) "
                "holding %s",
                folder,
                _gb(nbytes),
                _gb(max(room, 0)),
                len(entries),
                _gb(others),
            )
        time.sleep(POLL)
    try:
        yield owner
    finally:
        with _ledger(folder) as entries:
            entries.pop(owner, None)
