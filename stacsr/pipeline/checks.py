"""What fails fast: checks made before any pixel is read, each refusing bad input with a one-line
:class:`InputError` (and leaving nothing behind)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stacsr.catalog.presets import Preset
from stacsr.io.sink import CogTarget
from stacsr.model.package import ModelPackage
from stacsr.plumbing import storage
from stacsr.plumbing.redaction import redact

if TYPE_CHECKING:
    from stacsr.pipeline import Job

REMOTE_SCHEMES = ("https", "http", "s3", "gs", "az", "abfs")  # what a catalogue's asset may point at


class InputError(ValueError):
    """Input that stacsr refuses, with a one-line reason."""


def check_band_count(bands: int, package: ModelPackage) -> None:
    if bands != len(package.card.bands):
        raise InputError(
            f"the image has {bands} bands but model {package.card.name} expects "
            f"{len(package.card.bands)} ({', '.join(package.card.bands)})"
        )


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it is writable, or raise a one-line error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stacsr-write-test"):
            pass
    except OSError as e:
        raise InputError(f"output folder {folder} is not writable ({e.strerror or e})") from None
    return folder


def check_asset_hrefs(item: dict[str, Any], keys: Sequence[str], preset: Preset) -> None:
    """Refuse assets a catalogue points at local files or unknown schemes (a hostile catalogue could make
    stacsr read ``/etc/...`` into its outputs) unless the preset is a local one (``local_assets``)."""
    for key in keys:
        href = str(item["assets"][key].get("href", ""))
        scheme = href.split("://", 1)[0].lower() if "://" in href else "file"
        if scheme not in REMOTE_SCHEMES and not (preset.local_assets and scheme == "file"):
            raise InputError(
                f"item {item.get('id')}: asset {key} is {'a local file' if scheme == 'file' else scheme + '://'} "
                f"({redact(href)}); stacsr reads only {', '.join(s + '://' for s in REMOTE_SCHEMES)} "
                "assets from a catalogue unless told it is local"
            )


def check_not_input(src: str, dst: str | Path) -> None:
    """Refuse an output that is its own input (the same file by any path: ``./a.tif``, a symlink, a hard link)."""
    if "://" in str(src):
        return
    same = Path(src).resolve() == Path(dst).resolve()
    try:
        same = same or os.path.samefile(src, dst)
    except OSError:
        pass  # one of them does not exist: not the same file
    if same:
        raise InputError(f"the output {dst} is the input {src}: stacsr never overwrites its input; choose another path")


def check_outputs_spare_sources(job: "Job", targets: Sequence[CogTarget]) -> None:
    """Refuse to write an item's COG over one of its own source assets (a local catalogue under the output)."""
    sources = {
        str(Path(job.item["assets"][k]["href"].removeprefix("file://")).resolve())
        for k in job.assets
        if "://" not in job.item["assets"][k]["href"].removeprefix("file://")
    }
    for t in targets:
        if not storage.is_remote(t.url) and str(Path(t.url).resolve()) in sources:
            raise InputError(
                f"item {job.item.get('id')}: its output {t.url} would replace its source asset; "
                "choose another output folder"
            )
