"""Catalogue presets: where to search, which collection, which asset holds which band, how to sign.

A :class:`Preset` is a plain value. ``planetary-computer`` and ``earth-search`` are built in; any other
STAC API is a URL plus a collection and a band mapping (``B02=blue,B03=green,B04=red,B08=nir``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

SignFn = Callable[[dict[str, Any]], dict[str, Any]]

S2_BANDS = ("B02", "B03", "B04", "B08")
COMMON_NAMES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}


def sign_planetary_computer(item: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``item`` with SAS-signed asset hrefs (tokens from ``PC_SDK_SAS_URL``)."""
    import planetary_computer

    return planetary_computer.sign(item)


def no_signing(item: dict[str, Any]) -> dict[str, Any]:
    return item


@dataclass(frozen=True)
class Preset:
    name: str
    url: str
    collection: str
    assets: Mapping[str, str]  # band name (model order, e.g. B02) -> asset key
    sign: SignFn = no_signing
    mgrs_keys: tuple[str, ...] = ("s2:mgrs_tile", "grid:code", "mgrs:grid_square")
    local_assets: bool = False  # a local catalogue whose assets are files here (the demo); off for any API
    extra: Mapping[str, Any] = field(default_factory=dict)

    def asset_keys(self, bands: tuple[str, ...] | list[str]) -> list[str]:
        missing = [b for b in bands if b not in self.assets]
        if missing:
            raise ValueError(f"catalogue preset {self.name!r} has no asset mapping for band(s) {', '.join(missing)}")
        return [self.assets[b] for b in bands]


PRESETS: dict[str, Preset] = {
    "planetary-computer": Preset(
        name="planetary-computer",
        url="https://planetarycomputer.microsoft.com/api/stac/v1",
        collection="sentinel-2-l2a",
        assets={b: b for b in S2_BANDS},
        sign=sign_planetary_computer,
    ),
    "earth-search": Preset(
        name="earth-search",
        url="https://earth-search.aws.element84.com/v1",
        collection="sentinel-2-l2a",
        assets={b: COMMON_NAMES[b] for b in S2_BANDS},
    ),
}


def parse_band_map(text: str) -> dict[str, str]:
    """``"B02=blue,B03=green"`` → ``{"B02": "blue", "B03": "green"}``."""
    pairs = [[s.strip() for s in p.split("=")] for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"band mapping {text!r} is not of the form B02=blue,B03=green,…")
    return dict(pairs)


def resolve(
    catalog: str, collection: str | None = None, bands: str | None = None, stac_url: str | None = None
) -> Preset:
    """A preset by name, or a custom one for a STAC API URL; ``stac_url`` overrides a preset's URL."""
    if catalog in PRESETS:
        preset = PRESETS[catalog]
    elif catalog.startswith(("http://", "https://")):
        if not collection:
            raise ValueError("a custom STAC API needs --collection")
        preset = Preset(name="custom", url=catalog, collection=collection, assets={b: b for b in S2_BANDS})
    else:
        raise ValueError(f"unknown catalogue {catalog!r}: use {', '.join(PRESETS)} or a STAC API URL")
    if collection:
        preset = replace(preset, collection=collection)
    if bands:
        preset = replace(preset, assets=parse_band_map(bands))
    if stac_url:
        preset = replace(preset, url=stac_url)
    return preset
