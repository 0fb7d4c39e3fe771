"""Export a training checkpoint as a model package plus its STAC MLM item (``stacsr export``).

A checkpoint folder (a Ray Train checkpoint, local or ``s3://``) holds ``card.json`` (the
:class:`~stacsr.model.package.ModelCard` of the generator being trained), ``generator_ema.safetensors``
(the EMA generator weights: what gets exported), ``generator.safetensors``, ``discriminator.safetensors``
and ``state.json`` (``{"step": int, …}``). A run folder ``<storage>/<name>`` holds ``checkpoint_*`` folders;
the latest is the one with the highest ``state.json`` step (ties and unreadable states: the lexically
last name).

:func:`export` copies the three files it needs (card, EMA weights, state) to a local temporary folder,
loads the weights with safetensors (never pickle) into a :class:`~stacsr.model.generator.Generator`
built from the card, writes the package with :func:`stacsr.model.package.save` and ``item.json``
(:func:`stacsr.model.mlm.mlm_item`, relative hrefs) beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from stacsr.model.generator import Generator
from stacsr.model.mlm import mlm_item
from stacsr.model.package import CARD, ModelCard, ModelError, ModelPackage, load_generator, save
from stacsr.plumbing.redaction import first_line, redact
from stacsr.plumbing.storage import StoreError, open_fs
from stacsr.train.checkpoint import (
    CHECKPOINT_PREFIX,
    DISCRIMINATOR,
    GENERATOR,
    GENERATOR_EMA,
    STATE,
    checkpoint_folders,
    run_checkpoints,
)

EMA = GENERATOR_EMA
CHECKPOINT_FILES = (CARD, EMA, GENERATOR, DISCRIMINATOR, STATE)
ITEM = "item.json"
_STRIP = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers, should a state carry them


class ExportError(ValueError):
    """A run or checkpoint that cannot be exported (missing, empty, incomplete, inconsistent)."""


def export(
    run_or_checkpoint: str | os.PathLike,
    out: str | Path,
    filesystem: Any = None,
    name: str | None = None,
    version: str | None = None,
    description: str | None = None,
) -> ModelPackage:
    """Write the model package of a checkpoint (or of a run's latest checkpoint) to the local folder ``out``.

    ``run_or_checkpoint`` is a local path or a URI pyarrow understands (``s3://bucket/runs/name``; S3
    settings from the URI's query or the environment), unless a pyarrow ``filesystem`` is given. Returns the
    :class:`~stacsr.model.package.ModelPackage` as loaded back from ``out``, whose card's provenance names
    the checkpoint (without query string) and its step. ``name``/``version`` replace the card's (by default
    the run name and 0.1.0); ``description`` goes into its provenance. Raises :class:`ExportError`.
    """
    source = os.fspath(run_or_checkpoint)
    fs_, root = _filesystem(source, filesystem)
    checkpoint = _find_checkpoint(fs_, root, source)
    where = redact(_uri(source, root, checkpoint))
    with tempfile.TemporaryDirectory(prefix="stacsr-export-") as tmp:
        local = _copy_local(fs_, checkpoint, Path(tmp), where)
        card_text = (local / CARD).read_bytes()
        ema = (local / EMA).read_bytes()
        state = _read_state(local / STATE, where)
    card, generator = _build(card_text, ema, where)

    step = state.get("step")
    provenance = _redacted(dict(card.provenance or {}))  # no signed URL or key survives into the package
    provenance.update(
        checkpoint=where,
        weights="generator_ema (exponential moving average of the generator)",
        exported=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    )
    if step is not None:
        provenance["step"] = step
        provenance["trained"] = bool(step)
    if description:
        provenance["description"] = description
    card = replace(card, provenance=provenance, name=name or card.name, version=version or card.version)

    out = Path(out)
    try:
        package = save(card, generator, out)
    except OSError as e:
        raise ExportError(f"cannot write the model package to {out}: {first_line(e)}") from None
    pairs = provenance.get("pairs")
    metrics = {k: v for k, v in state.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    item = mlm_item(package, pairs=_relative_href(pairs, out) if pairs else None, metrics=metrics or None)
    (out / ITEM).write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2) + "\n")
    return package


# ------------------------------------------------------------------ locating the checkpoint


def _filesystem(path: str, filesystem: Any = None) -> tuple[Any, str]:
    """:func:`stacsr.plumbing.storage.open_fs`, refusing with :class:`ExportError`."""
    try:
        return open_fs(path, filesystem)
    except StoreError as e:
        raise ExportError(str(e)) from None


def _uri(source: str, root: str, path: str) -> str:
    """``path`` (found under ``root``) spelled like ``source`` was (keeps the scheme of a URI)."""
    if "://" in source:
        scheme = source.split("://", 1)[0]
        return f"{scheme}://{path}"
    return path


def _info(fs_: Any, path: str, where: str):
    try:
        return fs_.get_file_info(path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot read {where}: {first_line(e)}") from None


def _list(fs_: Any, path: str, where: str) -> list:
    from pyarrow import fs

    try:
        return fs_.get_file_info(fs.FileSelector(path, recursive=False))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot list {where}: {first_line(e)}") from None


def _find_checkpoint(fs_: Any, root: str, source: str) -> str:
    """The checkpoint folder: ``root`` itself, or the run ``root``'s latest checkpoint
    (:func:`stacsr.train.checkpoint.run_checkpoints`; when no state can be read, the lexically last)."""
    from pyarrow import fs

    where = redact(source)
    info = _info(fs_, root, where)
    if info.type == fs.FileType.NotFound:
        raise ExportError(f"{where} does not exist (expected a run folder or a checkpoint folder)")
    if info.type != fs.FileType.Directory:
        raise ExportError(f"{where} is not a folder (expected a run folder or a checkpoint folder)")
    names = {e.base_name for e in _list(fs_, root, where) if e.type == fs.FileType.File}
    if names & set(CHECKPOINT_FILES):
        return root  # a checkpoint folder (complete or not: _copy_local says what is missing)
    try:
        complete = run_checkpoints(fs_, root)
        folders = checkpoint_folders(fs_, root)
    except OSError as e:
        raise ExportError(f"cannot list {where}: {first_line(e)}") from None
    if complete:
        return complete[-1][1]
    if not folders:
        raise ExportError(f"{where} holds no checkpoint (no {CHECKPOINT_PREFIX}* folder, no {EMA})")
    return max(folders, key=lambda p: p.rstrip("/").rsplit("/", 1)[-1])


def _copy_local(fs_: Any, checkpoint: str, folder: Path, where: str) -> Path:
    """Copy card, EMA weights and state (when present) of ``checkpoint`` into ``folder``."""
    from pyarrow import fs

    for name in (CARD, EMA, STATE):
        src = f"{checkpoint.rstrip('/')}/{name}"
        if _info(fs_, src, where).type != fs.FileType.File:
            if name == STATE:
                continue
            what = "the EMA generator weights" if name == EMA else "the model card"
            raise ExportError(f"checkpoint {where} has no {name} ({what})")
        try:
            with fs_.open_input_stream(src) as f_in, open(folder / name, "wb") as f_out:
                while chunk := f_in.read(1 << 22):
                    f_out.write(chunk)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"cannot copy {name} of checkpoint {where}: {first_line(e)}") from None
    return folder


def _read_state(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{STATE} of checkpoint {where} is not valid JSON: {e}") from None
    if not isinstance(state, dict):
        raise ExportError(f"{STATE} of checkpoint {where} is not a JSON object")
    return state


# ------------------------------------------------------------------ building the package


def _card(card_text: bytes, where: str) -> ModelCard:
    """The checkpoint's model card; ExportError when it is not one."""
    try:
        card = ModelCard.from_dict(json.loads(card_text))
        _ = card.config  # the architecture must make a network
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{CARD} of checkpoint {where} is not valid JSON: {e}") from None
    except (ModelError, TypeError, ValueError) as e:
        raise ExportError(f"{CARD} of checkpoint {where} is not a model card: {first_line(e)}") from None
    return card


def _build(card_text: bytes, ema: bytes, where: str) -> tuple[ModelCard, Generator]:
    """(card, generator with the EMA weights) from the checkpoint's files; ExportError when they disagree."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    card = _card(card_text, where)
    try:
        state = load_safetensors(ema)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{EMA} of checkpoint {where} is not a safetensors file ({first_line(e)})") from None
    try:
        generator = load_generator(card, {_strip(k): v for k, v in state.items()}, f"checkpoint {where}")
    except (ModelError, ValueError, RuntimeError) as e:
        raise ExportError(f"{EMA} does not match {CARD}: {first_line(e)}") from None
    return card, generator


def _redacted(value: Any) -> Any:
    """A JSON value with every URL-like string's query string (signatures, keys) removed."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact(value)
    return value


def _strip(key: str) -> str:
    for prefix in _STRIP:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _relative_href(pairs: str, out: Path) -> str:
    """A URI as is; a local path relative to ``out`` (item.json stays free of absolute paths)."""
    pairs = str(pairs)
    if "://" in pairs:
        return pairs
    try:
        return Path(os.path.relpath(os.path.abspath(pairs), os.path.abspath(out))).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(pairs).name
