"""A STAC Item describing a model package with the Machine Learning Model (MLM) extension.

:func:`mlm_item` turns a loaded :class:`~stacsr.model.package.ModelPackage` into a self-contained Item that
sits beside the package's files (``item.json`` next to ``card.json`` and ``weights.safetensors``): asset
hrefs are relative, the training-data link is unsigned, and nothing here trains, runs or imports a network
beyond counting the package's parameters.

Schemas: MLM v1.5.2 (the latest release; 1.5.x keeps 1.4's fields and adds ``variables``, entrypoints and a
``description`` in processing expressions), file v2.1.0 (``file:checksum`` / ``file:size`` of the weights),
eo v1.1.0 (``eo:bands`` on the model asset, which MLM's band names refer to: STAC 1.1 core ``bands``
are not allowed in Item properties, and eo v1.1.0 allows ``eo:bands`` there only beside asset ones). The Item
has no geometry (``null``, no ``bbox``): a model applies anywhere Sentinel-2 L2A exists.

How the values map:

* input: ``[-1, bands, -1, -1]`` (batch, bands, height, width) of ``uint16`` reflectance × 10000, the DN
  that stacsr reads; ``value_scaling`` ``{"type": "scale", "value": 10000}`` (MLM's ``data / value``) is the
  division to reflectance that :class:`stacsr.model.generator.Generator` applies inside ``forward``
  (``norm_scale``), so a caller feeds DN as they are.
* output: ``[-1, bands, -1, -1]`` with height and width × scale, ``uint16`` again (the generator multiplies
  back by 10000; stacsr rounds and clips to 1…65535, 0 staying nodata), same bands, task ``super-resolution``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Mapping

import pystac

from stacsr import __version__
from stacsr.model.package import CARD, WEIGHTS, ModelPackage
from stacsr.plumbing.redaction import redact

MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
EXTENSIONS = [MLM, FILE, EO]

ARCHITECTURE = "SRResNet (SRGAN generator)"
TASKS = ["super-resolution"]  # in MLM's task enum (v1.4.0 … v1.5.2)
FRAMEWORK = "PyTorch"  # MLM's enum spelling
ARTIFACT_TYPE = "safetensors.torch.save_file"  # MLM's example value for this artifact
WEIGHTS_TYPE = "application/octet-stream; framework=pytorch; profile=safetensors"
SHA256_MULTIHASH = "1220"  # multihash prefix: sha2-256 (0x12), 32 bytes (0x20)
LOADER = "stacsr.model.package:load"

_NAME_OK = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]$")  # mlm:name's pattern
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_HYPER_KEY = re.compile(r"^[0-9a-zA-Z_.-]+$")


def mlm_item(package: ModelPackage, pairs: str | None = None, metrics: dict | None = None) -> pystac.Item:
    """The MLM STAC Item of ``package``, to be written beside its ``card.json`` and ``weights.safetensors``.

    ``pairs`` is the training manifest (default: the card's ``provenance["pairs"]``), linked as
    ``derived_from`` without its query string; ``metrics`` (numbers, e.g. the step and losses of the
    exported checkpoint) go to ``stacsr:metrics``.
    """
    card = package.card
    provenance = dict(card.provenance or {})
    pairs = pairs if pairs is not None else provenance.get("pairs")
    scale, n = card.scale, len(card.bands)
    init_from = provenance.get("init_from") or provenance.get("init-from")
    created = _created(provenance)
    band_list = ", ".join(f"{b} ({c})" for b, c in zip(card.bands, card.common_names))

    props: dict[str, Any] = {
        "title": f"{card.name} {card.version}",
        "description": (
            f"stacsr super-resolution model: Sentinel-2 L2A {band_list} from {card.gsd_in:g} m to "
            f"{card.gsd_out:g} m (x{scale}). Load with {LOADER}('<this folder>')."
        ),
        "created": created.isoformat().replace("+00:00", "Z"),
        "mlm:name": _mlm_name(card.name),
        "mlm:architecture": ARCHITECTURE,
        "mlm:tasks": list(TASKS),
        "mlm:framework": FRAMEWORK,
        "mlm:total_parameters": int(sum(p.numel() for p in package.generator.parameters())),
        "mlm:pretrained": bool(init_from),
        "mlm:pretrained_source": _source_name(init_from) if init_from else None,
        "mlm:accelerator": None,  # runs on CPU or CUDA alike
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": "CPU or CUDA GPU; tiles of any size with a halo of the receptive radius",
        "mlm:input": [
            {
                "name": "reflectance",
                "bands": list(card.bands),
                "input": {
                    "shape": [-1, n, -1, -1],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "uint16",
                },
                "description": (
                    f"Sentinel-2 L2A {', '.join(card.bands)} in this order, {card.input_unit}, on the "
                    f"{card.gsd_in:g} m grid; any height and width (tile with a halo of "
                    f"{card.config.receptive_radius} pixels for seamless output). The division by "
                    f"{card.config.norm_scale:g} (value_scaling) happens inside the generator's forward."
                ),
                "value_scaling": [{"type": "scale", "value": card.config.norm_scale}],
                "resize_type": None,
            }
        ],
        "mlm:output": [
            {
                "name": "super-resolved",
                "tasks": list(TASKS),
                "result": {
                    "shape": [-1, n, -1, -1],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "uint16",
                },
                "bands": list(card.bands),
                "description": (
                    f"The same bands at {card.gsd_out:g} m: height and width x{scale} the input's, same origin. "
                    f"Reflectance x {card.config.norm_scale:g}, rounded and clipped to 1..65535 (0 = nodata)."
                ),
            }
        ],
        "mlm:hyperparameters": {k: v for k, v in card.architecture.items() if _HYPER_KEY.match(str(k))},
        "stacsr:version": __version__,
        "stacsr:scale": scale,
        "stacsr:gsd_in": card.gsd_in,
        "stacsr:gsd_out": card.gsd_out,
        "stacsr:receptive_radius": card.config.receptive_radius,
        "stacsr:model": {"name": card.name, "version": card.version, "sha256": package.sha256, "ref": package.ref},
    }
    version = _framework_version(provenance)
    if version:
        props["mlm:framework_version"] = version
    if metrics:
        props["stacsr:metrics"] = {str(k): v for k, v in metrics.items() if _is_number(v)}

    item = pystac.Item(
        id=_item_id(card.name, card.version),
        geometry=None,
        bbox=None,
        datetime=created,
        properties=props,
        stac_extensions=list(EXTENSIONS),
    )
    item.add_asset(
        "weights",
        pystac.Asset(
            href=f"./{WEIGHTS}",
            media_type=WEIGHTS_TYPE,
            roles=["mlm:model", "mlm:weights"],
            title=f"{card.name} {card.version} generator weights (safetensors, EMA)",
            extra_fields={
                "mlm:artifact_type": ARTIFACT_TYPE,
                "file:checksum": SHA256_MULTIHASH + package.sha256,
                "file:size": len(package.weights),
                "file:local_path": WEIGHTS,
                "eo:bands": [
                    {"name": b, "common_name": c, "description": f"Sentinel-2 {b} ({c}), {card.input_unit}"}
                    for b, c in zip(card.bands, card.common_names)
                ],
            },
        ),
    )
    item.add_asset(
        "card",
        pystac.Asset(
            href=f"./{CARD}",
            media_type=pystac.MediaType.JSON,
            roles=["metadata"],
            title="stacsr model card (bands, scale, architecture, provenance)",
            extra_fields={"file:local_path": CARD},
        ),
    )
    if pairs:
        item.add_link(
            pystac.Link(
                "derived_from",
                redact(str(pairs)),
                media_type="application/vnd.apache.parquet",
                title="training pairs manifest (stacsr pairs, GeoParquet)",
            )
        )
    return item


def sha256_multihash(sha256_hex: str) -> str:
    """``file:checksum`` value (multihash, hex) of a sha256 hex digest."""
    return SHA256_MULTIHASH + sha256_hex


def _source_name(init_from: Any) -> str:
    """What a fine-tuned model started from, without local paths or signatures."""
    if isinstance(init_from, Mapping):
        init_from = init_from.get("ref") or init_from.get("name") or init_from.get("path") or "model package"
    text = str(init_from)
    if text == "default":
        return "stacsr default model package"
    if "://" in text:
        return redact(text)
    return text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or text


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mlm_name(name: str) -> str:
    if _NAME_OK.match(name):
        return name
    cleaned = re.sub(r"[^a-zA-Z0-9_.\-\s]", "-", name)
    cleaned = re.sub(r"^[^a-zA-Z]+", "", cleaned)
    cleaned = re.sub(r"[^a-zA-Z0-9]+$", "", cleaned)
    for candidate in (cleaned, f"stacsr-{cleaned}"):
        if _NAME_OK.match(candidate):
            return candidate
    return "stacsr-model"


def _item_id(name: str, version: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", f"{name}-{version}").strip("-") or "stacsr-model"


def _created(provenance: Mapping[str, Any]) -> dt.datetime:
    """The card's ``provenance["created"]`` (date or datetime) in UTC, else now."""
    for key in ("exported", "created"):
        value = provenance.get(key)
        if not value:
            continue
        try:
            when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            continue
        return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _framework_version(provenance: Mapping[str, Any]) -> str | None:
    """The torch version the model was trained with (card provenance ``torch``), else the one here."""
    candidates = [provenance.get("torch"), provenance.get("framework_version")]
    try:
        import torch

        candidates.append(str(torch.__version__))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    for v in candidates:
        if v and _SEMVER.match(str(v)):
            return str(v)
    return None
