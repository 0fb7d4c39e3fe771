"""The batch job spec: a YAML file (``jobs/examples/*.yaml`` documents every key) read into :class:`JobSpec`.

Unknown keys, values of the wrong type, a bad bbox or MGRS id, an unparsable time window and a missing
output are refused with a :class:`SpecError` naming the key. Credentials never belong here: object storage
and STAC APIs take them from the environment (AWS_*, AZURE_*, GOOGLE_APPLICATION_CREDENTIALS…), so a spec
holding anything that looks like a key or a signed URL is refused too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from stacsr.catalog.items import check_name
from stacsr.catalog.search import SearchError, check_bbox, check_datetime, check_mgrs
from stacsr.plumbing.config import parse_dataclass
from stacsr.plumbing.redaction import looks_secret
from stacsr.plumbing.storage import is_remote

_RELATIVE = re.compile(r"^last\s+(\d+)\s+(hour|day|week)s?$", re.IGNORECASE)


class SpecError(ValueError):
    """A job spec stacsr refuses, with a one-line reason."""


@dataclass(frozen=True)
class Area:
    """One area of interest: exactly one of ``bbox`` (lon/lat), ``mgrs`` (a whole tile) or ``geojson`` (a file
    whose features' bounds make the bbox). ``name`` goes into the output item ids."""

    name: str
    bbox: tuple[float, float, float, float] | None = None
    mgrs: str | None = None
    geojson: str | None = None


@dataclass(frozen=True)
class Publish:
    """Where output items go: ``api`` (a STAC API with the Transactions extension) or ``catalog`` (a static
    catalogue folder); ``collection`` is the output collection id (default ``<source collection>-sr``)."""

    api: str | None = None
    catalog: str | None = None
    collection: str | None = None


@dataclass(frozen=True)
class Resources:
    """What each item asks of the node it runs on (on Ray, one item runs on one node), and how many run at once."""

    gpus_per_item: float = 0.0  # 0: CPU; 0.5: two items share a 1-GPU node (one's COGs overlap the other's tiles)
    cpus_per_item: int | None = None  # None: 1 with a GPU, else the cores of the cluster's smallest node
    items_in_flight: int | None = None  # None: as many as the cluster's resources hold (grows with autoscaling)
    tile_size: int = 512  # as stacsr.pipeline.DEFAULT_TILE_SIZE (1024 on a GPU)
    batch: int = 1  # tiles per model call (on a GPU: 4, with tile_size 1024)
    precision: str = "fp32"  # the model's arithmetic: fp32 (exact), fp16 or bf16 (README, "Half precision")


@dataclass(frozen=True)
class JobSpec:
    name: str
    areas: list[Area]
    output: str
    publish: Publish = field(default_factory=Publish)
    datetime: str | None = None  # ISO date/interval, or "last N days|weeks|hours" (relative to the run)
    max_cloud: float | None = None
    catalog: str = "planetary-computer"
    stac_url: str | None = None
    collection: str | None = None
    bands: str | None = None  # "B02=blue,B03=green,…" for a catalogue that is not a preset
    limit: int | None = None  # most items per area
    best_per_tile: bool = True
    model: str = "default"
    compress: str = "deflate"
    resources: Resources = field(default_factory=Resources)

    def window(self, now: datetime | None = None) -> str | None:
        """The STAC datetime interval of this run (a relative window ends ``now``)."""
        return resolve_datetime(self.datetime, now)

    @property
    def remote_output(self) -> bool:
        return is_remote(self.output)


def resolve_datetime(text: str | None, now: datetime | None = None) -> str | None:
    """``"last 7 days"`` → ``"<now − 7 days>/<now>"`` (UTC, whole seconds); anything else is checked as ISO."""
    if not text:
        return None
    m = _RELATIVE.match(text.strip())
    if m:
        now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
        start = now - timedelta(**{f"{m[2].lower()}s": int(m[1])})
        return f"{start.isoformat().replace('+00:00', 'Z')}/{now.isoformat().replace('+00:00', 'Z')}"
    return check_datetime(text)


def _check(spec: JobSpec) -> JobSpec:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise SpecError(what)

    need(
        bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.name)), f"name {spec.name!r}: use letters, digits, . _ -"
    )
    need(bool(spec.areas), "areas: give at least one area (bbox, mgrs or geojson)")
    names = [a.name for a in spec.areas]
    need(len(set(names)) == len(names), f"areas: names must be unique ({', '.join(names)})")
    for i, a in enumerate(spec.areas):
        where = f"areas[{i}] ({a.name})"
        need(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", a.name)), f"{where}: name: use letters, digits, . _ -")
        need(
            sum(x is not None for x in (a.bbox, a.mgrs, a.geojson)) == 1,
            f"{where}: give exactly one of bbox, mgrs, geojson",
        )
        try:
            if a.bbox is not None:
                check_bbox(a.bbox)
            if a.mgrs is not None:
                check_mgrs(a.mgrs)
        except SearchError as e:
            raise SpecError(f"{where}: {e}") from None
    need(bool(spec.output.strip()), "output: give a folder or an s3:// / gs:// / az:// prefix")
    p = spec.publish
    if p.collection is not None:
        try:
            check_name("publish.collection", p.collection)
        except ValueError as e:
            raise SpecError(str(e)) from None
    need(
        (p.api is None) != (p.catalog is None),
        "publish: give exactly one of api (STAC Transactions API) or catalog (folder)",
    )
    need(p.api is None or p.api.startswith(("http://", "https://")), f"publish.api {p.api!r} is not an http(s) URL")
    need(
        p.catalog is None or not spec.remote_output,
        "publish.catalog: a static catalogue needs a local output; use publish.api",
    )
    need(spec.max_cloud is None or 0 <= spec.max_cloud <= 100, "max_cloud: must lie in [0, 100]")
    need(spec.limit is None or spec.limit >= 1, "limit: must be ≥ 1")
    r = spec.resources
    need(r.gpus_per_item >= 0, "resources.gpus_per_item: must be ≥ 0")
    need(r.cpus_per_item is None or r.cpus_per_item >= 1, "resources.cpus_per_item: must be ≥ 1")
    need(r.tile_size >= 16, "resources.tile_size: must be ≥ 16")
    need(1 <= r.batch <= 64, "resources.batch: must lie in [1, 64]")
    need(r.items_in_flight is None or r.items_in_flight >= 1, "resources.items_in_flight: must be ≥ 1")
    need(r.precision in ("fp32", "fp16", "bf16"), f"resources.precision: fp32, fp16 or bf16, not {r.precision!r}")
    need(spec.compress in ("deflate", "zstd"), f"compress: deflate or zstd, not {spec.compress!r}")
    try:
        resolve_datetime(spec.datetime)
    except SearchError as e:
        raise SpecError(f"datetime: {e} (or 'last N days')") from None
    return spec


def from_dict(data: Any) -> JobSpec:
    """A checked :class:`JobSpec` from a YAML-shaped mapping."""

    if not isinstance(data, dict):
        raise SpecError("a job spec is a mapping of keys to values")
    if looks_secret(json.dumps(data)):
        raise SpecError(
            "the job spec holds what looks like a credential or a signed URL: credentials come from the "
            "environment (AWS_*, AZURE_*, GOOGLE_APPLICATION_CREDENTIALS), never from a job spec"
        )
    for key in ("name", "areas", "output"):
        if data.get(key) in (None, "", []):
            raise SpecError(f"missing key {key}")
    try:
        spec = parse_dataclass(JobSpec, data)
    except ValueError as e:
        raise SpecError(str(e).replace("config key", "key")) from None
    return _check(spec)


def load(path: str | os.PathLike) -> JobSpec:
    """Read and check a job spec file; relative ``geojson`` paths are taken from the spec's folder."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"cannot read job spec {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"job spec {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict):
        for area in data.get("areas") or []:
            if isinstance(area, dict) and isinstance(area.get("geojson"), str):
                area["geojson"] = str((path.parent / area["geojson"]).resolve())
    return from_dict(data)


def area_bbox(area: Area) -> tuple[float, float, float, float] | None:
    """The area's lon/lat bbox (``None`` for an MGRS tile: the whole item)."""
    if area.bbox is not None:
        return tuple(area.bbox)  # type: ignore[return-value]
    if area.geojson is None:
        return None
    import shapely.geometry

    try:
        doc = json.loads(Path(area.geojson).read_text())
    except (OSError, ValueError) as e:
        raise SpecError(f"area {area.name}: cannot read GeoJSON {area.geojson}: {e}") from None
    features = doc.get("features", [doc]) if isinstance(doc, dict) else []
    try:
        shapes = [shapely.geometry.shape(f.get("geometry", f)) for f in features]
    except (AttributeError, ValueError, TypeError) as e:
        raise SpecError(f"area {area.name}: {area.geojson} holds no valid geometry ({e})") from None
    if not shapes:
        raise SpecError(f"area {area.name}: {area.geojson} holds no feature")
    bounds = shapely.GeometryCollection(shapes).bounds
    try:
        return check_bbox(bounds)
    except SearchError as e:
        raise SpecError(f"area {area.name}: {e}") from None
