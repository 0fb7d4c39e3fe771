"""Training checkpoints: one folder (a Ray Train ``Checkpoint`` directory), safetensors and JSON only.

Layout (names are a contract: :mod:`stacsr.train.export` reads ``card.json``, ``generator_ema.safetensors``
and ``state.json``)::

    card.json                   ModelCard of the generator being trained (bands, architecture, provenance:
                                pairs manifest, training config, init_from)
    generator.safetensors       G weights (the raw, not averaged, generator)
    generator_ema.safetensors   EMA of G's weights (used for previews and export)
    discriminator.safetensors   D weights
    optimizer_g.safetensors     Adam state of G, flattened: ``state.<param index>.<key>`` tensors
    optimizer_d.safetensors     Adam state of D, the same way
    state.json                  {"format", "step", "phase", "optimizer_g": {"param_groups": …},
                                 "optimizer_d": {…}, "discriminator": DiscriminatorConfig, "config": …}

Nothing is pickled (no ``torch.save``/``torch.load``): an optimiser's ``state_dict`` is split into its
tensors (safetensors) and its hyper-parameters (JSON), and rebuilt from both.

Checkpoints of a run live where Ray Train puts them: ``<storage>/<name>/checkpoint_<timestamp>/``
(local folder or ``s3://``); :func:`latest_checkpoint` finds the one with the highest step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from stacsr.model.package import CARD, ModelCard
from stacsr.plumbing.storage import open_fs

GENERATOR = "generator.safetensors"
GENERATOR_EMA = "generator_ema.safetensors"
DISCRIMINATOR = "discriminator.safetensors"
OPTIMIZER_G = "optimizer_g.safetensors"
OPTIMIZER_D = "optimizer_d.safetensors"
STATE = "state.json"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's name for the folders of a run
FILES = (CARD, GENERATOR, GENERATOR_EMA, DISCRIMINATOR, OPTIMIZER_G, OPTIMIZER_D, STATE)
FORMAT = "stacsr-train-checkpoint/1"
PHASE_PRETRAIN, PHASE_GAN = "pretrain", "gan"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or does not fit the networks it is loaded into."""


@dataclass(frozen=True)
class CheckpointState:
    """What :func:`load_checkpoint` returns besides the weights it loaded."""

    step: int
    phase: str
    card: ModelCard
    state: dict[str, Any]


# ------------------------------------------------------------------ optimisers without pickle


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, json)``: an optimiser's per-parameter state as ``state.<i>.<key>`` tensors, and its
    param groups (hyper-parameters and parameter indices) as JSON. Non-tensor state values go to JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` that :func:`flatten_optimizer` split up."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------ save and load


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (and our pyramid wrapper, which keeps the generator as ``.g``)."""
    model = getattr(model, "module", model)
    return getattr(model, "g", model)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}


def save_checkpoint(
    folder: str | os.PathLike,
    *,
    card: ModelCard,
    generator: nn.Module,
    generator_ema: nn.Module,
    discriminator: nn.Module,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer,
    step: int,
    phase: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder (see the module's layout); returns it. Networks may be DDP-wrapped."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "step": str(step)}
    save_file(_weights(generator), str(folder / GENERATOR), metadata=meta)
    save_file(_weights(generator_ema), str(folder / GENERATOR_EMA), metadata=meta)
    save_file(_weights(discriminator), str(folder / DISCRIMINATOR), metadata=meta)
    state: dict[str, Any] = {"format": FORMAT, "step": int(step), "phase": phase}
    for name, optimizer, file in (("optimizer_g", optimizer_g, OPTIMIZER_G), ("optimizer_d", optimizer_d, OPTIMIZER_D)):
        tensors, groups = flatten_optimizer(optimizer)
        save_file(tensors, str(folder / file), metadata=meta)
        state[name] = groups
    state.update(extra or {})
    (folder / STATE).write_text(json.dumps(state, indent=2) + "\n")
    (folder / CARD).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return folder


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of a checkpoint folder."""
    path = Path(folder) / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder} is not a stacsr training checkpoint ({STATE}: {e})") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not a stacsr training checkpoint (format {state.get('format')!r})")
    return state


def _load_weights(module: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} ({e})") from None
    target = _unwrap(module)
    own = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if own != found:
        diff = sorted(set(own.items()) ^ set(found.items()))[:3]
        raise CheckpointError(f"{path.name} does not fit the network (architecture changed? first differences: {diff})")
    target.load_state_dict(state)


def load_checkpoint(
    folder: str | os.PathLike,
    *,
    generator: nn.Module,
    generator_ema: nn.Module | None = None,
    discriminator: nn.Module | None = None,
    optimizer_g: torch.optim.Optimizer | None = None,
    optimizer_d: torch.optim.Optimizer | None = None,
) -> CheckpointState:
    """Load a checkpoint folder into the given networks/optimisers (those given); returns step, phase, card."""
    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {', '.join(missing)} missing")
    state = read_state(folder)
    card = ModelCard.from_dict(json.loads((folder / CARD).read_text()))
    _load_weights(generator, folder / GENERATOR)
    if generator_ema is not None:
        _load_weights(generator_ema, folder / GENERATOR_EMA)
    if discriminator is not None:
        _load_weights(discriminator, folder / DISCRIMINATOR)
    for name, optimizer, file in (("optimizer_g", optimizer_g, OPTIMIZER_G), ("optimizer_d", optimizer_d, OPTIMIZER_D)):
        if optimizer is None:
            continue
        try:
            tensors = load_file(str(folder / file))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {folder / file} ({e})") from None
        sd = unflatten_optimizer(tensors, state[name])
        device = next(iter(_unwrap(generator).parameters())).device
        for values in sd["state"].values():
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    values[key] = value.to(device)
        try:
            optimizer.load_state_dict(sd)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{file} does not fit the optimiser: {e}") from None
    return CheckpointState(int(state["step"]), str(state.get("phase", "")), card, state)


# ------------------------------------------------------------------ finding checkpoints of a run


def storage_fs(storage: str | os.PathLike, filesystem: Any = None) -> tuple[Any, str, str]:
    """``(pyarrow filesystem, path on it, scheme prefix)`` for a local path or a URI (:func:`open_fs`)."""
    storage = os.fspath(storage)
    fs_, path = open_fs(storage if "://" in storage else os.path.abspath(storage), filesystem)
    return fs_, path, f"{storage.split('://', 1)[0]}://" if "://" in storage else ""


def _step(filesystem: Any, folder: str) -> int | None:
    """The step in ``folder``'s state.json; None when it is unreadable (being written) or not ours."""
    try:
        with filesystem.open_input_stream(f"{folder}/{STATE}") as f:
            state = json.loads(f.read())
    except (OSError, json.JSONDecodeError):
        return None
    step = state.get("step") if isinstance(state, dict) and state.get("format") == FORMAT else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def checkpoint_folders(filesystem: Any, run: str) -> list[str]:
    """Paths of every ``checkpoint_*`` folder in the run folder ``run`` on ``filesystem``, complete or not."""
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(run, allow_not_found=True))
    return [i.path for i in infos if i.type == fs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)]


def run_checkpoints(filesystem: Any, run: str) -> list[tuple[int, str]]:
    """``[(step, path)]`` of the complete checkpoints in the run folder ``run`` on ``filesystem``, by step
    (then path); ``OSError`` when the run cannot be listed."""
    found = ((_step(filesystem, path), path) for path in checkpoint_folders(filesystem, run))
    return sorted((step, path) for step, path in found if step is not None)


def list_checkpoints(storage: str | os.PathLike, name: str, filesystem: Any = None) -> list[tuple[int, str]]:
    """``[(step, path)]`` of the run's complete checkpoints, by step (paths keep ``storage``'s scheme)."""
    filesystem, root, prefix = storage_fs(os.fspath(storage), filesystem)
    run = f"{root}/{name}"
    try:
        found = run_checkpoints(filesystem, run)
    except OSError as e:
        raise CheckpointError(f"cannot list run {prefix}{run}: {str(e).splitlines()[0]}") from None
    return [(step, prefix + path) for step, path in found]


def latest_checkpoint(storage: str | os.PathLike, name: str, filesystem: Any = None) -> str:
    """Path (local, or ``s3://…`` like ``storage``) of the run's checkpoint with the highest step."""
    found = list_checkpoints(storage, name, filesystem)
    if not found:
        raise CheckpointError(f"run {name!r} under {os.fspath(storage)} has no checkpoint")
    return found[-1][1]


def download(path: str, dest: str | os.PathLike, filesystem: Any = None) -> Path:
    """Copy a checkpoint folder (local or ``s3://``) to the local folder ``dest``; returns ``dest``."""
    from pyarrow import fs

    filesystem, src, _ = storage_fs(path, filesystem)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fs.copy_files(src, str(dest.resolve()), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return dest
