"""A static STAC catalogue that grows one item at a time at a cost that does not depend on its size, and that
several processes can write at once.

Layout under the root folder (every JSON stays small, whatever the catalogue holds)::

    catalog.json                                    links the collections
    <collection>/collection.json                    links its tile sub-catalogues; extent of all its items
    <collection>/<tile>/catalog.json                one per MGRS tile (``no-tile`` when unknown)
    <collection>/<tile>/<year>/catalog.json         links the items of that tile and year
    <collection>/<item>/<item>.json                 the item (+ its COGs), where the pipeline wrote them
    items.parquet/                                  stac-geoparquet index of every item (:mod:`.index`)
    catalog.lock                                    the writers' lock

Item folders stay directly under the collection, where the COGs are written before the item is published
and where a re-run finds them by id alone; the sub-catalogues hold the links. Catalogues written before
(items linked straight from ``collection.json``) stay as they are: their items are found, replaced in
place, and new items go to sub-catalogues.

Publishing an item writes its JSON, adds one link to its year catalogue, and rewrites the tile catalogue,
the collection and the root only when a link is added or the extent widens; no other item is read.

Writers hold an exclusive ``flock`` on ``catalog.lock`` (released by the kernel when a process dies, so a
dead writer never blocks the next). Before touching anything a writer records what it is about to publish
in ``catalog.journal.json`` and removes it when done, so the next writer finishes what a killed one left.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pystac

from stacsr.catalog import index
from stacsr.catalog.items import UnsafeNameError, check_name
from stacsr.plumbing import storage

CATALOG_ID = "stacsr"
LOCK, JOURNAL = "catalog.lock", "catalog.journal.json"
NO_TILE, UNDATED = "no-tile", "undated"
JSON_TYPE = pystac.MediaType.JSON


def item_folder(root: str | Path, collection_id: str, item_id: str) -> Path:
    """Where an item's JSON and COGs live."""
    return Path(root) / collection_id / item_id


def item_file(root: str | Path, collection_id: str, item_id: str) -> Path:
    return item_folder(root, collection_id, item_id) / f"{item_id}.json"


def sub_catalogue_keys(item: Mapping[str, Any]) -> tuple[str, str]:
    """``(tile, year)`` of an item dict: its MGRS tile (``s2:mgrs_tile``, else ``grid:code``) and the year of its
    datetime (else start_datetime); ``no-tile`` / ``undated`` when unknown or not a safe folder name."""
    props = item.get("properties", {})
    tile = props.get("s2:mgrs_tile") or str(props.get("grid:code") or "").removeprefix("MGRS-") or NO_TILE
    when = props.get("datetime") or props.get("start_datetime") or ""
    year = when[:4] if len(when) >= 4 and when[:4].isdigit() else UNDATED
    try:
        return check_name("tile", tile), year
    except UnsafeNameError:
        return NO_TILE, year


# ------------------------------------------------------------------ JSON files, written whole


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """``path`` replaced atomically (a temporary file beside it, renamed): never half a document. Unlike
    :func:`storage.atomic_file` it does not list the folder (a collection's folder holds every item)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{storage.owner_tag()}-{uuid.uuid4().hex[:8]}.part"
    try:
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rel(target: Path, start_file: Path) -> str:
    """``target`` relative to the folder of ``start_file``, ``./``-prefixed when below it (pystac's style)."""
    href = os.path.relpath(target, start_file.parent)
    return href if href.startswith("..") else f"./{href}"


# ------------------------------------------------------------------ the writers' lock and journal


@contextmanager
def locked(root: str | Path) -> Iterator[None]:
    """Hold the catalogue's exclusive lock (``<root>/catalog.lock``); threads and processes wait their turn."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def publish(root: str | Path, items: Sequence[pystac.Item], collection: pystac.Collection) -> Path:
    """Add ``items`` to ``collection`` (created from this template when absent) in the catalogue at ``root``;
    an item with the same id replaces the old one. Returns the catalog.json path."""
    root = Path(root).absolute()
    template = collection.to_dict(include_self_link=False, transform_hrefs=False)
    template["links"] = []
    with locked(root):
        repair(root, locked_already=True)
        if (root / "catalog.json").is_file() and not index.folder(root).is_dir():
            index.rebuild(root, walk_items(root))  # once: a catalogue of an earlier version, or a lost index
        for item in items:
            doc = item_document(root, item, collection.id)
            journal = {"collection": template, "item": os.path.relpath(item_file(root, collection.id, item.id), root)}
            write_json(root / JOURNAL, journal)
            _publish_one(root, doc, template)
            (root / JOURNAL).unlink()
    return root / "catalog.json"


def repair(root: str | Path, locked_already: bool = False) -> str | None:
    """Finish the publication a killed writer left half done (its item written but not linked, or not in the
    index); returns that item's path relative to ``root``, or None when there was nothing to finish."""
    root = Path(root).absolute()
    if not locked_already:
        with locked(root):
            return repair(root, locked_already=True)
    index.clean(root)  # what a writer killed while writing the index left (none other runs: we hold the lock)
    storage.remove_stale(root, f".{JOURNAL}.")  # a journal a killed writer had not finished writing
    journal_file = root / JOURNAL
    if not journal_file.is_file():
        return None
    journal = read_json(journal_file)
    path = root / journal["item"]
    folders = {path.parent, path.parent.parent, root}
    if path.is_file():  # its sub-catalogues, where it was being linked (bottom-up, after the item was written)
        parent = _current_parent(path) or _leaf(root, path.parent.parent.name, read_json(path))
        folders |= {parent.parent, parent.parent.parent}
    for folder in folders:
        for name in ("catalog.json", "collection.json", path.name):
            storage.remove_stale(folder, f".{name}.")
    if path.is_file():
        _publish_one(root, read_json(path), journal["collection"], written=True)
    journal_file.unlink()
    return journal["item"]


def rebuild_index(root: str | Path) -> int:
    """Finish any half-done publication, then write the index anew from the catalogue; returns its rows."""
    root = Path(root).absolute()
    if not (root / "catalog.json").is_file():
        raise FileNotFoundError(f"{root}: no catalog.json there, not a static catalogue")
    with locked(root):
        repair(root, locked_already=True)
        return index.rebuild(root, walk_items(root))


def walk_items(root: str | Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """Every item of the catalogue at ``root`` as ``(item dict, path)``, following child and item links from
    catalog.json (the JSON as written: no pystac migration). An item linked twice is given once."""
    root = Path(root).absolute()
    seen: set[Path] = set()
    stack = [root / "catalog.json"]
    while stack:
        catalogue = stack.pop()
        for link in read_json(catalogue).get("links", []):
            href = link.get("href", "")
            if link.get("rel") not in ("child", "item") or "://" in href:
                continue
            path = Path(os.path.normpath(catalogue.parent / href))
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            if link["rel"] == "child":
                stack.append(path)
            else:
                yield read_json(path), path


# ------------------------------------------------------------------ one item


def item_document(root: Path, item: pystac.Item, collection_id: str) -> dict[str, Any]:
    """The item as written: hierarchical links set by :func:`_publish_one`; local asset hrefs and links inside
    ``root`` made relative to the item (a self-contained catalogue); other links as they are."""
    path = item_file(root, collection_id, item.id)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    doc["collection"] = collection_id
    for asset in doc.get("assets", {}).values():
        asset["href"] = _relative_inside(asset["href"], root, path)
    doc["links"] = [
        {**link, "href": _relative_inside(link["href"], root, path)}
        for link in doc.get("links", [])
        if link.get("rel") not in ("self", "root", "parent", "collection")
    ]
    return doc


def _relative_inside(href: str, root: Path, start_file: Path) -> str:
    if "://" in href or not os.path.isabs(href) or not Path(href).is_relative_to(root):
        return href
    return rel(Path(href), start_file)


def _publish_one(root: Path, doc: dict[str, Any], template: Mapping[str, Any], written: bool = False) -> None:
    """Write the item (unless ``written``), then link it bottom-up (a parent never links a missing child),
    widen the collection's extent, and put it in the index."""
    collection_id = doc["collection"]
    path = item_file(root, collection_id, doc["id"])
    collection_file = root / collection_id / "collection.json"
    parent = _current_parent(path) or _leaf(root, collection_id, doc)
    root_file = root / "catalog.json"
    doc["links"] = [
        {"rel": "root", "href": rel(root_file, path), "type": JSON_TYPE, "title": "stacsr"},
        {"rel": "parent", "href": rel(parent, path), "type": JSON_TYPE},
        {"rel": "collection", "href": rel(collection_file, path), "type": JSON_TYPE},
        *[link for link in doc["links"] if link.get("rel") not in ("root", "parent", "collection")],
    ]
    replaced = path.is_file() and not written
    if not written:
        write_json(path, doc)
    chain = [parent]
    while chain[-1] != collection_file:
        chain.append(_parent_of(root, chain[-1]))
    child = path
    for catalogue in chain:
        _ensure_link(root, catalogue, child, "item" if child == path else "child", doc, template)
        child = catalogue
    _ensure_link(root, root_file, collection_file, "child", doc, template)
    index.put(root, doc, path, replaced=replaced or written)


def _current_parent(path: Path) -> Path | None:
    """The catalogue an item already published at ``path`` names as its parent (a re-run replaces it there,
    where an earlier version may have linked it straight from the collection), or None."""
    if not path.is_file():
        return None
    try:
        href = next(lk["href"] for lk in read_json(path).get("links", []) if lk.get("rel") == "parent")
    except (StopIteration, ValueError, KeyError):
        return None
    parent = Path(os.path.normpath(path.parent / href))
    collection_folder = path.parent.parent
    ok = parent.name in ("catalog.json", "collection.json") and parent.is_relative_to(collection_folder)
    return parent if ok and parent.is_file() else None


def _leaf(root: Path, collection_id: str, doc: Mapping[str, Any]) -> Path:
    tile, year = sub_catalogue_keys(doc)
    return root / collection_id / tile / year / "catalog.json"


def _ensure_link(
    root: Path, catalogue: Path, child: Path, rel_type: str, doc: Mapping[str, Any], template: Mapping[str, Any]
) -> None:
    """Make ``catalogue`` (created when absent) link ``child``; a collection's extent also covers ``doc``.
    Written only when something changed."""
    existing = catalogue.is_file()
    d = read_json(catalogue) if existing else _new(root, catalogue, template, doc)
    href = rel(child, catalogue)
    changed = not existing
    if not any(lk.get("rel") == rel_type and _same(catalogue, lk.get("href", ""), child) for lk in d["links"]):
        link = {"rel": rel_type, "href": href, "type": pystac.MediaType.GEOJSON if rel_type == "item" else JSON_TYPE}
        d["links"].append(link)
        changed = True
    if existing and d.get("type") == "Collection":
        changed |= _widen(d, doc)
    if changed:
        write_json(catalogue, d)


def _same(catalogue: Path, href: str, child: Path) -> bool:
    return os.path.normpath(catalogue.parent / href) == os.path.normpath(child)


def _new(root: Path, catalogue: Path, template: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """A new catalogue or collection at ``catalogue`` (no children yet; a collection's extent is ``doc``'s),
    linked up to the root."""
    root_file = root / "catalog.json"
    if catalogue == root_file:
        cat = pystac.Catalog(CATALOG_ID, "Super-resolved Sentinel-2 imagery written by stacsr.", title="stacsr")
        d = cat.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []
        return d
    if catalogue.name == "collection.json":
        d = json.loads(json.dumps(template))
        props = doc.get("properties", {})
        interval = [
            props.get("start_datetime") or props.get("datetime"),
            props.get("end_datetime") or props.get("datetime"),
        ]
        d["extent"] = {"spatial": {"bbox": [list(doc["bbox"])]}, "temporal": {"interval": [interval]}}
    else:
        folder, cid = catalogue.parent, template["id"]
        what = f"tile {folder.parent.name}, {folder.name}" if folder.parent.parent != root else f"tile {folder.name}"
        cat = pystac.Catalog(folder.name, f"Items of {cid}: {what}.", title=f"{cid}: {what}")
        d = cat.to_dict(include_self_link=False, transform_hrefs=False)
    d["links"] = [
        {"rel": "root", "href": rel(root_file, catalogue), "type": JSON_TYPE, "title": "stacsr"},
        {"rel": "parent", "href": rel(_parent_of(root, catalogue), catalogue), "type": JSON_TYPE},
    ]
    return d


def _parent_of(root: Path, catalogue: Path) -> Path:
    """The catalogue above ``catalogue`` in the layout."""
    if catalogue.name == "collection.json":
        return root / "catalog.json"
    above = catalogue.parent.parent
    return above / "collection.json" if above.parent == root else above / "catalog.json"


def _widen(collection: dict[str, Any], doc: Mapping[str, Any]) -> bool:
    """Widen the collection's extent to cover ``doc``; True when it changed."""
    (bbox,) = collection["extent"]["spatial"]["bbox"][:1]
    ((start, end),) = collection["extent"]["temporal"]["interval"][:1]
    ib = doc.get("bbox") or bbox
    props = doc.get("properties", {})
    first = props.get("start_datetime") or props.get("datetime")
    last = props.get("end_datetime") or props.get("datetime")
    new_bbox = [min(bbox[0], ib[0]), min(bbox[1], ib[1]), max(bbox[2], ib[2]), max(bbox[3], ib[3])]
    new_start = min(filter(None, (start, first)), key=_instant, default=None)
    new_end = max(filter(None, (end, last)), key=_instant, default=None)
    if (new_bbox, new_start, new_end) == (bbox, start, end):
        return False
    collection["extent"]["spatial"]["bbox"][0] = new_bbox
    collection["extent"]["temporal"]["interval"][0] = [new_start, new_end]
    return True


def _instant(text: str) -> Any:
    return pystac.utils.str_to_datetime(text)
