"""The search index kept beside a static catalogue: ``<root>/items.parquet/``, a stac-geoparquet dataset with
one row per item, so that 100,000 items are queried in one read (geopandas, pyarrow, DuckDB) without
walking JSON.

Rows are the items as published, with hierarchical links dropped, a ``self`` link to the item JSON, and
every relative href (assets, the model's MLM item) made relative to the catalogue's root folder, so that
the index, like the catalogue, can be moved.

A parquet file cannot be appended to, so the dataset is a few files that grow like an LSM tree: each item
adds a small file at level 0, and when a level holds :data:`FANOUT` files they are merged into one of the
next level. An item costs a small write plus, amortised, a few rows rewritten per level: nearly constant,
whatever the catalogue holds; the dataset keeps under ``FANOUT`` files per level (about 40 for 100,000 items).
Callers hold the catalogue's lock (:func:`stacsr.catalog.static.locked`); :func:`rebuild` writes the index
anew from the catalogue's JSON.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

INDEX = "items.parquet"
FANOUT = 8
MERGING = "merging.json"
HIERARCHY = ("self", "root", "parent", "collection")


def folder(root: str | Path) -> Path:
    return Path(root) / INDEX


def row(root: Path, doc: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The index row of item ``doc`` written at ``path``: hrefs relative to ``root``."""
    out = json.loads(json.dumps(doc))

    def rebase(href: str) -> str:
        if "://" in href or os.path.isabs(href):
            return href
        return os.path.relpath(os.path.normpath(path.parent / href), root).replace(os.sep, "/")

    for asset in out.get("assets", {}).values():
        asset["href"] = rebase(asset["href"])
    links = [{**lk, "href": rebase(lk["href"])} for lk in out.get("links", []) if lk.get("rel") not in HIERARCHY]
    self_href = os.path.relpath(path, root).replace(os.sep, "/")
    out["links"] = [{"rel": "self", "href": self_href, "type": "application/geo+json"}, *links]
    return out


def put(root: Path, doc: Mapping[str, Any], path: Path, replaced: bool) -> None:
    """Add item ``doc`` (written at ``path``) to the index; ``replaced``: remove an older row of its id first."""
    finish_merge(root)
    if replaced:
        remove(root, {doc["id"]})
    _write(folder(root), [row(root, doc, path)], 0)
    compact(root)


def parts(root: Path) -> list[Path]:
    """The dataset's files, oldest first within each level."""
    return sorted(folder(root).glob("L*.parquet"))


def _name(level: int) -> str:
    return f"L{level}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


def _write(where: Path, rows: Iterable[Mapping[str, Any]] | Any, level: int, name: str | None = None) -> Path:
    """A new file at ``level`` in folder ``where`` from item dicts or an Arrow table, written atomically."""
    import pyarrow as pa
    import stac_geoparquet.arrow as sga
    from stac_geoparquet.arrow._api import stac_items_to_arrow  # the public parse_* logs psutil figures per call

    table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([stac_items_to_arrow(list(rows))])
    name = name or _name(level)
    dest = where / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{name}.part"
    try:
        sga.to_parquet(table, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _read(paths: list[Path]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()  # one row group per file


def compact(root: Path) -> None:
    """Merge every level that holds :data:`FANOUT` files into one file of the next level."""
    level = 0
    while True:
        files = parts(root)
        at_level = [p for p in files if _level(p) == level]
        if len(at_level) >= FANOUT:
            merge(root, at_level, level + 1)
        if not any(_level(p) > level for p in files):
            return
        level += 1


def _level(path: Path) -> int:
    return int(path.name[1 : path.name.index("-")])


def merge(root: Path, inputs: list[Path], level: int) -> Path:
    """One file at ``level`` with the rows of ``inputs``, which are then removed. The intent is recorded
    first, so that a merge a killed writer left half done is finished by :func:`finish_merge`."""
    name = _name(level)
    (folder(root) / MERGING).write_text(json.dumps({"output": name, "inputs": [p.name for p in inputs]}))
    output = _write(folder(root), _read(inputs), level, name)
    finish_merge(root)
    return output


def finish_merge(root: Path) -> None:
    """Remove the inputs of a merge whose output was written, or forget one that wrote nothing (see
    :func:`merge`)."""
    intent = folder(root) / MERGING
    if not intent.is_file():
        return
    done = json.loads(intent.read_text())
    if (folder(root) / done["output"]).is_file():
        for name in done["inputs"]:
            (folder(root) / name).unlink(missing_ok=True)
    intent.unlink()


def clean(root: Path) -> None:
    """Remove the temporary files and staging folders of writers that were killed (the caller holds the lock);
    finish a merge they left half done."""
    import shutil

    for tmp in folder(root).glob(".*.part"):
        tmp.unlink(missing_ok=True)
    for staging in Path(root).glob(f".{INDEX}.rebuild-*"):
        shutil.rmtree(staging, ignore_errors=True)
    finish_merge(root)


def remove(root: Path, ids: set[str]) -> None:
    """Rewrite the files holding rows of ``ids`` without them (reads only the ``id`` column of the others)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in parts(root):
        found = pc.is_in(pq.read_table(path, columns=["id"])["id"], value_set=_array(ids))
        if not pc.any(found).as_py():
            continue
        table = pq.read_table(path)
        kept = table.filter(pc.invert(pc.is_in(table["id"], value_set=_array(ids))))
        if kept.num_rows:
            _write(folder(root), kept, _level(path))
        path.unlink()


def _array(ids: set[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(ids), pa.string())


def read(root: str | Path) -> list[dict[str, Any]]:
    """Every row of the index as an item dict (hrefs relative to ``root``)."""
    import stac_geoparquet.arrow as sga

    paths = parts(Path(root))
    return list(sga.stac_table_to_items(_read(paths))) if paths else []


def rebuild(root: str | Path, items: Iterable[tuple[Mapping[str, Any], Path]]) -> int:
    """Write the index anew from ``(item dict, path)`` pairs (the catalogue's items), in a staging folder
    renamed into place at the end; returns the row count."""
    import shutil

    root = Path(root)
    rows = [row(root, doc, path) for doc, path in items]
    staging = root / f".{INDEX}.rebuild-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        if rows:
            level = 0
            while FANOUT ** (level + 1) <= len(rows):
                level += 1
            _write(staging, rows, level)
        if folder(root).exists():
            shutil.rmtree(folder(root))
        os.replace(staging, folder(root))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(rows)
