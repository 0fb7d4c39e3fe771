"""Training the SRGAN on a Ray cluster: :func:`train` (what ``stacsr train`` runs).

It checks everything it can before a worker starts (configuration, the VGG weights file, the manifest: not
empty, readable, one band set that fits the generator, enough pairs for a batch per worker; the ``init_from``
package's architecture), builds the pair dataset (:func:`stacsr.train.data.pair_dataset`, read remotely by
Ray Data and split between the workers) and runs a Ray Train ``TorchTrainer`` over
:func:`stacsr.train.loop.train_loop_per_worker`.

Runs live under ``<storage>/<name>`` (a local folder or ``s3://bucket/prefix``): Ray Train's checkpoints
``checkpoint_*`` (keep-last-K) and ``tensorboard/``. Running again with the same ``storage`` and ``name``
resumes from the last checkpoint at its step (Ray Train V2: same ``RunConfig(name, storage_path)``).
For ``s3://`` storage without an explicit ``storage_filesystem``, a pyarrow ``S3FileSystem`` is built from the
environment (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, the usual
credentials chain).
"""

from __future__ import annotations

import os
import re
from typing import Any

from stacsr.catalog.presets import COMMON_NAMES, Preset
from stacsr.model import package as model_package
from stacsr.model.losses import perceptual_network
from stacsr.model.package import ModelCard
from stacsr.plumbing.storage import open_fs
from stacsr.train.config import TrainConfig, load_config
from stacsr.train.manifest import KIND_WALD, PairsError, manifest_metadata, read_manifest


class TrainError(RuntimeError):
    """A training run that failed on the cluster (the first line of the worker's error is in the message)."""


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_storage(storage: str | os.PathLike, filesystem: Any = None) -> tuple[str, str, Any]:
    """``(storage as given to the loop, storage_path for Ray, filesystem for Ray)``.

    Local: an absolute path and no filesystem. ``s3://``: the URI for the loop, the bucket/prefix for Ray and
    a filesystem (``filesystem``, or :func:`stacsr.plumbing.storage.open_fs`'s: from the environment).
    """
    storage = os.fspath(storage)
    if "://" not in storage:
        path = os.path.abspath(storage)
        return path, path, filesystem
    if filesystem is None and not storage.startswith("s3://"):
        raise ValueError(f"storage {storage}: only local paths and s3:// are supported")
    filesystem, path = open_fs(storage, filesystem)
    return storage.rstrip("/"), path, filesystem


def _load_config(config: TrainConfig | str | os.PathLike | None) -> TrainConfig:
    return config if isinstance(config, TrainConfig) else load_config(config)


def check_init_package(package: model_package.ModelPackage, config: TrainConfig, bands: list[str]) -> None:
    """Refuse a package whose generator or bands differ from the configuration's and the manifest's."""
    theirs, ours = package.card.config.architecture(), config.generator.architecture()
    if theirs != ours:
        diff = ", ".join(
            f"{k}: package {theirs[k]} vs config {ours.get(k)}" for k in theirs if theirs[k] != ours.get(k)
        )
        raise ValueError(
            f"--init-from package {package.card.name} has another architecture than the configured "
            f"generator ({diff}): set `generator:` in the config to the package's architecture"
        )
    if list(package.card.bands) != list(bands):
        raise ValueError(
            f"--init-from package {package.card.name} takes bands {', '.join(package.card.bands)} "
            f"but the pairs have {', '.join(bands)}"
        )


def prepare(
    manifest: str | os.PathLike,
    name: str,
    config: TrainConfig | str | os.PathLike | None,
    workers: int,
    init_from: str | os.PathLike | None = None,
    manifest_filesystem: Any = None,
) -> tuple[TrainConfig, Any, ModelCard, model_package.ModelPackage | None]:
    """Every check that needs no cluster: ``(config, manifest table, card, init package)``; ValueError if bad."""
    cfg = _load_config(config)
    if not NAME_RE.match(name or ""):
        raise ValueError(f"run name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    if workers < 1:
        raise ValueError(f"--workers must be ≥ 1, not {workers}")
    weights = cfg.losses.weights()
    if weights.vgg > 0:
        perceptual_network(weights, cfg.losses.vgg_weights, cfg.losses.vgg_layer)  # the file exists and fits
    table = read_manifest(manifest, manifest_filesystem)
    bands_sets = {tuple(b) for b in table.column("bands").to_pylist()}
    if len(bands_sets) != 1:
        raise PairsError(f"the manifest mixes band sets {sorted(bands_sets)}: one run needs one band set")
    bands = list(next(iter(bands_sets)))
    if len(bands) != cfg.generator.bands:
        raise PairsError(
            f"band mismatch: the pairs have {len(bands)} bands ({', '.join(bands)}) but the generator "
            f"takes {cfg.generator.bands} (generator.bands in the config)"
        )
    scales = set(table.column("scale").to_pylist())
    if scales != {cfg.generator.scale}:
        raise PairsError(
            f"the pairs are made for scale {'/'.join(map(str, sorted(scales)))} but the generator's "
            f"scale is {cfg.generator.scale}"
        )
    sizes = set(table.column("size").to_pylist())
    factor = cfg.generator.scale
    if any(s % factor for s in sizes):
        raise PairsError(f"patch size(s) {sorted(sizes)} are not multiples of the scale {factor}")
    if table.num_rows < workers * cfg.batch_size:
        raise PairsError(
            f"the manifest has {table.num_rows} pairs, fewer than one batch per worker "
            f"({workers} workers × batch_size {cfg.batch_size})"
        )
    package = None
    if init_from is not None:
        package = model_package.load(init_from)
        check_init_package(package, cfg, bands)
    provenance = {
        "trained": True,
        "pairs": os.fspath(manifest),
        "pairs_metadata": manifest_metadata(table),
        "pairs_count": table.num_rows,
        "run": name,
        "init_from": package.ref if package is not None else None,
        "config": cfg.to_dict(),
    }
    card = ModelCard(
        name=name,
        version="0.1.0",
        bands=bands,
        common_names=[COMMON_NAMES.get(b, b.lower()) for b in bands],
        architecture=cfg.generator.to_dict(),
        provenance=provenance,
    )
    return cfg, table, card, package


def degrades_in_loop(cfg: TrainConfig, table: Any) -> bool:
    """Whether the workers make the LR (Wald pairs under the ``mixed`` degradation): a fresh blur per patch at
    every step, where a σ drawn in the dataset (seeded per patch) would be the same every epoch. The dataset
    then reads HR (and a block-mean LR that the workers replace)."""
    return cfg.degradation.kind == "mixed" and set(table.column("kind").to_pylist()) == {KIND_WALD}


def train(
    manifest: str | os.PathLike,
    storage: str | os.PathLike,
    name: str,
    config: TrainConfig | str | os.PathLike | None = None,
    workers: int = 1,
    use_gpu: bool = False,
    preset: Preset | None = None,
    init_from: str | os.PathLike | None = None,
    storage_filesystem: Any = None,
    *,
    resources_per_worker: dict[str, float] | None = None,
    manifest_filesystem: Any = None,
) -> Any:
    """Train (or resume training) run ``name`` under ``storage``; returns Ray Train's ``Result``.

    ``preset`` signs the manifest's hrefs at read time (default: ``planetary-computer``). ``init_from`` (a
    package folder or ``"default"``) initialises the generator when the run has no checkpoint yet (a resumed
    run continues from its checkpoint). Raises ValueError for bad inputs, :class:`TrainError` when the run fails.
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from stacsr.catalog.presets import PRESETS
    from stacsr.train.data import pair_dataset
    from stacsr.train.loop import train_loop_per_worker

    cfg, table, card, package = prepare(manifest, name, config, workers, init_from, manifest_filesystem)
    loop_storage, ray_storage, filesystem = resolve_storage(storage, storage_filesystem)
    preset = preset or PRESETS["planetary-computer"]
    in_loop = degrades_in_loop(cfg, table)
    kind, noise = ("area", 0.0) if in_loop else (cfg.degradation.kind, cfg.degradation.noise_std)
    ds = pair_dataset(
        table,
        preset,
        kind,
        noise,
        sigma=cfg.degradation.sigma,
        sigma_min=cfg.degradation.sigma_min,
        bands=card.bands,
        cache_dir=cfg.cache_dir,
        seed=cfg.seed,
        shuffle=True,
    ).select_columns(["lr", "hr"])
    import json

    loop_config = {
        "config": cfg.to_dict(),
        "card": card.to_dict(),
        "storage": loop_storage,
        "name": name,
        "storage_filesystem": filesystem,
        "init_card": json.dumps(package.card.to_dict()) if package is not None else None,
        "init_weights": package.weights if package is not None else None,
        "degrade_in_loop": in_loop,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker),
        run_config=RunConfig(
            name=name,
            storage_path=ray_storage,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets={"train": ds},
    )
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError and friends: one readable line
        raise TrainError(f"training run {name} failed: {_root_cause(e)}") from e
    if getattr(result, "error", None) is not None:
        raise TrainError(f"training run {name} failed: {_root_cause(result.error)}")
    return result


def _root_cause(e: BaseException) -> str:
    """The innermost error's first line (Ray wraps worker errors several times)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = e.__cause__ or getattr(e, "cause", None)
        errors = getattr(e, "worker_failures", None) or getattr(e, "errors", None)
        if inner is None and isinstance(errors, dict) and errors:
            inner = next(iter(errors.values()))
        if not isinstance(inner, BaseException):
            break
        e = inner
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}".strip()
