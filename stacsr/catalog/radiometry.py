"""Radiometry made uniform: every source becomes reflectance × 10000 as uint16, 0 = nodata.

Sentinel-2 L2A digital numbers carry a +1000 offset from processing baseline 04.00 on (January 2022):
reflectance = (DN − 1000) / 10000 there, DN / 10000 before. Catalogues say so differently:

- Planetary Computer items carry no scale/offset; ``s2:processing_baseline`` decides.
- Earth Search items declare ``raster:bands`` scale 0.0001 / offset −0.1 and a flag
  ``earthsearch:boa_offset_applied``, which is known to be wrong at times.

The rule, in order: a known processing baseline ≥ 04.00, or the Earth Search flag set, means the data
carry the offset; a baseline < 04.00 with no flag means they do not; without either, the asset's
``raster:bands`` offset is used as declared. The scale comes from ``raster:bands`` (default 0.0001).
Valid pixels are kept ≥ 1 so that they never read as nodata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

BOA_OFFSET = -0.1  # reflectance offset of baseline ≥ 04.00
DEFAULT_SCALE = 1e-4
BASELINE_KEYS = ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version")
FLAG_KEYS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")


@dataclass(frozen=True)
class Radiometry:
    """reflectance = DN × scale + offset."""

    scale: float = DEFAULT_SCALE
    offset: float = 0.0

    def to_uint16(self, dn: np.ndarray) -> np.ndarray:
        """DN → reflectance × 10000 as uint16; DN 0 stays 0 (nodata), valid pixels become ≥ 1."""
        if self.scale == DEFAULT_SCALE and self.offset in (0.0, BOA_OFFSET):
            shift = int(round(self.offset / DEFAULT_SCALE))
            out = np.clip(dn.astype(np.int32) + shift, 1, 65535)
        else:
            out = np.clip(np.rint((dn * self.scale + self.offset) * 10000), 1, 65535)
        return np.where(dn == 0, 0, out).astype(np.uint16)


def _first(props: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((props[k] for k in keys if props.get(k) is not None), None)


def of_asset(item: Mapping[str, Any], asset_key: str) -> Radiometry:
    """Radiometry of one asset of a Sentinel-2 L2A item dict (see the module docstring)."""
    props = item.get("properties", {})
    band = (item["assets"][asset_key].get("raster:bands") or [{}])[0]
    scale = float(band.get("scale", DEFAULT_SCALE))
    declared = float(band.get("offset", 0.0))
    baseline, flag = _first(props, BASELINE_KEYS), _first(props, FLAG_KEYS)
    if flag is True or (baseline is not None and _version(baseline) >= (4, 0)):
        has_offset = True
    elif baseline is not None or flag is False:
        has_offset = False
    else:
        return Radiometry(scale, declared)
    return Radiometry(scale, (declared or BOA_OFFSET) if has_offset else 0.0)


def _version(baseline: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in str(baseline).split(".") if p.isdigit())
