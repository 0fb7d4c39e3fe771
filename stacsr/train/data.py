"""Reading training pairs: manifest rows → ``(lr, hr)`` arrays, one by one or as a Ray Data pipeline.

Each pair kind reads its rows in its own module (:data:`KINDS`: ``wald`` in :mod:`.pairs_wald`,
``cross-sensor`` in :mod:`.pairs_cross_sensor`): hrefs are signed when the pixels are read, only the window
is fetched, radiometry is made uniform (reflectance × 10000, 0 = nodata), and an optional cache folder keeps
each decoded patch (named after the row id and a digest of its source) so that later epochs or runs read
nothing remotely; degradation and noise are applied after the cache, so they may change between runs. Every
pair goes through the same :func:`check_pair`. A new kind is a new module with a builder, a reader and its
``pair_grids``, registered in :data:`KINDS`.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from stacsr.catalog.presets import Preset
from stacsr.io.grid import GeoBox
from stacsr.train import pairs_cross_sensor, pairs_wald
from stacsr.train.degrade import DEFAULT_SIGMA, TRAIN_DEGRADATIONS
from stacsr.train.manifest import KIND_CROSS_SENSOR, KIND_WALD, PairsError, check_manifest, read_manifest

Reader = Callable[..., tuple[np.ndarray, np.ndarray]]


class Kind(NamedTuple):
    """How the pairs of one kind are read: ``read(row, preset, degradation, noise_std, *, sigma, rng, bands,
    cache_dir, sigma_min) -> (lr, hr)`` and ``grids(row) -> (lr_grid, hr_grid)``."""

    read: Reader
    grids: Callable[[Mapping[str, Any]], tuple[GeoBox, GeoBox]]


KINDS: dict[str, Kind] = {
    KIND_WALD: Kind(pairs_wald.read_wald_pair, pairs_wald.pair_grids),
    KIND_CROSS_SENSOR: Kind(pairs_cross_sensor.read_cross_sensor_pair, pairs_cross_sensor.pair_grids),
}


# ------------------------------------------------------------------ one pair


def _kind(row: Mapping[str, Any]) -> Kind:
    kind = KINDS.get(row.get("kind"))
    if kind is None:
        raise PairsError(f"pair {row.get('id')}: unsupported kind {row.get('kind')!r} (readers: {', '.join(KINDS)})")
    return kind


def pair_grids(row: Mapping[str, Any]) -> tuple[GeoBox, GeoBox]:
    """``(lr_grid, hr_grid)`` of a manifest row, as its kind defines them (same footprint, HR ``scale``× finer)."""
    return _kind(row).grids(row)


def check_pair(lr: np.ndarray, hr: np.ndarray, row: Mapping[str, Any], bands: Sequence[str] | None = None) -> None:
    """Refuse pairs whose bands or footprints disagree: same band count (and the model's bands when given),
    LR and HR shapes those of their grids, HR footprint == LR footprint."""
    rid = row.get("id")
    if lr.ndim != 3 or hr.ndim != 3:
        raise PairsError(f"pair {rid}: expected (bands, rows, cols) arrays, got LR {lr.shape} and HR {hr.shape}")
    if lr.shape[0] != hr.shape[0]:
        raise PairsError(f"pair {rid}: band mismatch between LR ({lr.shape[0]} bands) and HR ({hr.shape[0]} bands)")
    if bands is not None and len(bands) != hr.shape[0]:
        raise PairsError(f"pair {rid}: {hr.shape[0]} bands but the model expects {len(bands)} ({', '.join(bands)})")
    lr_grid, hr_grid = pair_grids(row)
    lr_shape, hr_shape = tuple(lr_grid.shape.yx), tuple(hr_grid.shape.yx)
    if lr.shape[1:] != lr_shape or hr.shape[1:] != hr_shape:
        raise PairsError(
            f"pair {rid}: LR {lr.shape[1:]} / HR {hr.shape[1:]} do not match the grids {lr_shape} / {hr_shape}"
        )
    lr_box, hr_box = tuple(lr_grid.boundingbox), tuple(hr_grid.boundingbox)
    if not np.allclose(lr_box, hr_box, rtol=0, atol=1e-6):
        raise PairsError(f"pair {rid}: LR footprint {lr_box} != HR {hr_box}")


def read_pair(
    row: Mapping[str, Any],
    preset: Preset,
    degradation: str = "area",
    noise_std: float = 0.0,
    *,
    sigma: float = DEFAULT_SIGMA,
    rng: np.random.Generator | None = None,
    bands: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    sigma_min: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, hr)`` float32 reflectance × 10000 of a manifest row: ``(bands, size/scale, size/scale)`` and
    ``(bands, size, size)``, checked with :func:`check_pair`. ``degradation``: ``"area"``, ``"mtf"`` or ``"mixed"``
    (``sigma``, ``sigma_min`` in HR pixels: :func:`stacsr.train.degrade.degrade`); ``noise_std`` adds noise to
    LR; ``bands``: the model's bands, to refuse others."""
    if degradation not in TRAIN_DEGRADATIONS:
        raise PairsError(f"unknown degradation {degradation!r}: use {', '.join(TRAIN_DEGRADATIONS)}")
    read = _kind(row).read
    lr, hr = read(
        row, preset, degradation, noise_std, sigma=sigma, rng=rng, bands=bands, cache_dir=cache_dir, sigma_min=sigma_min
    )
    check_pair(lr, hr, row, bands)
    return lr, hr


# ------------------------------------------------------------------ Ray Data


class _PairBatch:
    """The ``map_batches`` function: a pyarrow batch of manifest rows → ``{"id", "lr", "hr"}`` numpy columns."""

    def __init__(
        self,
        preset: Preset,
        degradation: str,
        noise_std: float,
        sigma: float,
        bands: Sequence[str] | None,
        cache_dir: str | None,
        seed: int | None,
        sigma_min: float = 0.0,
    ) -> None:
        self.preset, self.degradation, self.noise_std, self.sigma = preset, degradation, noise_std, sigma
        self.bands, self.cache_dir, self.seed, self.sigma_min = bands, cache_dir, seed, sigma_min

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        ids, lrs, hrs = [], [], []
        for row in batch.to_pylist():
            rng = None
            if self.noise_std or self.degradation == "mixed":
                rng = np.random.default_rng(None if self.seed is None else [self.seed, zlib.crc32(row["id"].encode())])
            lr, hr = read_pair(
                row,
                self.preset,
                self.degradation,
                self.noise_std,
                sigma=self.sigma,
                rng=rng,
                bands=self.bands,
                cache_dir=self.cache_dir,
                sigma_min=self.sigma_min,
            )
            ids.append(row["id"])
            lrs.append(lr)
            hrs.append(hr)
        return {"id": np.array(ids, dtype=object), "lr": np.stack(lrs), "hr": np.stack(hrs)}


def pair_dataset(
    manifest: str | os.PathLike | Any,
    preset: Preset,
    degradation: str = "area",
    noise_std: float = 0.0,
    *,
    sigma: float = DEFAULT_SIGMA,
    sigma_min: float = 0.0,
    bands: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    rows_per_block: int = 8,
    filesystem: Any = None,
    shuffle: bool = False,
) -> Any:
    """A lazy ``ray.data.Dataset`` of ``{"id", "lr", "hr"}`` rows read from a manifest (path, ``s3://`` URI or
    pyarrow Table). Everything checkable without pixels (emptiness, bands, uniform size and scale, the
    degradation) is checked here; pixels are read by Ray tasks when the dataset is consumed.

    ``cache_dir`` must be a folder every Ray worker can reach (local disk on one node, a shared mount on a
    cluster). With ``noise_std`` and a ``seed``, each patch gets the same noise every epoch.

    ``shuffle``: manifests list patches scene by scene, and batches of neighbouring windows of one scene
    train badly. The rows are dealt at random into blocks of ``rows_per_block`` (once), and the blocks come in
    a new random order at every pass over the dataset (every training epoch), reproducible from ``seed``.
    (A full row shuffle per epoch, Ray Data's ``random_shuffle``, made a training epoch 10× slower here.)
    """
    import pyarrow as pa
    import ray

    if degradation not in TRAIN_DEGRADATIONS:
        raise PairsError(f"unknown degradation {degradation!r}: use {', '.join(TRAIN_DEGRADATIONS)}")
    table = manifest if isinstance(manifest, pa.Table) else read_manifest(manifest, filesystem)
    check_manifest(table)
    unknown = sorted(set(table.column("kind").to_pylist()) - set(KINDS))
    if unknown:
        raise PairsError(f"unsupported pair kind(s) {', '.join(map(str, unknown))} (readers: {', '.join(KINDS)})")
    band_sets = {tuple(b) for b in table.column("bands").to_pylist()}
    if bands is not None and band_sets != {tuple(bands)}:
        raise PairsError(
            f"band mismatch: the manifest has {' / '.join(','.join(b) for b in sorted(band_sets))} "
            f"but the model expects {','.join(bands)}"
        )
    if len(band_sets) > 1:
        raise PairsError(f"the manifest mixes band sets {sorted(band_sets)}: one dataset needs one band set")
    for col in ("size", "scale"):
        values = set(table.column(col).to_pylist())
        if len(values) > 1:
            raise PairsError(f"the manifest mixes {col}s {sorted(values)}: one dataset needs one {col}")
    table = table.drop_columns(["geometry"])
    if shuffle:  # rows in random blocks (once), blocks in a new random order every epoch
        table = table.take(np.random.default_rng(seed).permutation(table.num_rows))
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, max(1, rows_per_block))]
    fn = _PairBatch(
        preset,
        degradation,
        noise_std,
        sigma,
        tuple(bands) if bands else None,
        None if cache_dir is None else str(Path(cache_dir).resolve()),
        seed,
        sigma_min,
    )
    ds = ray.data.from_arrow(blocks)
    if shuffle:
        from ray.data import RandomSeedConfig

        ds = ds.randomize_block_order(
            seed=None if seed is None else RandomSeedConfig(seed=seed, reseed_after_execution=True)
        )
    return ds.map_batches(fn, batch_format="pyarrow", batch_size=rows_per_block)
