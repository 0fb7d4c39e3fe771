"""Evaluation runs: a model and bicubic interpolation side by side, per image and on average.

- :func:`evaluate_images` — Wald's protocol: each real 10 m GeoTIFF (uint16 reflectance × 10000, bands in the
  model's order) is degraded ×scale (:func:`stacsr.train.degrade.degrade`: ``area`` = block mean, ``mtf`` =
  Gaussian blur then block mean), rounded to uint16, super-resolved by the model (the seam-free tiled
  :func:`stacsr.pipeline.super_resolve`) and by bicubic (:func:`stacsr.evaluate.metrics.bicubic`); both are
  compared with the original 10 m image.
- :func:`evaluate_pairs` — the pairs of a manifest (:mod:`stacsr.train.manifest`): the LR of each pair
  (:func:`stacsr.train.data.read_pair`) super-resolved and compared with its HR. Wald pairs are degraded by
  each of ``degradations``; cross-sensor pairs have a real LR (degradation ``"real"``).

Scored pixels: valid in HR, SR and bicubic (no band 0) and more than ``border`` LR pixels (default: the
model's receptive radius; ×scale on the HR grid) from the image edge. Results come back as an
:class:`Evaluation`; with ``out`` set, ``metrics.json`` and one PNG per image and degradation
(LR | bicubic | SR | HR) are written there.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from stacsr.evaluate import metrics
from stacsr.io.read import ReadError, Scene, list_images, scenes
from stacsr.model.package import ModelPackage
from stacsr.pipeline import DEFAULT_TILE_SIZE, InputError, check_band_count, check_writable, super_resolve
from stacsr.plumbing import figures
from stacsr.plumbing.redaction import first_line
from stacsr.train.degrade import DEFAULT_SIGMA, DEGRADATIONS, wald_lr

PROTOCOLS = ("wald",)
METHODS = ("model", "bicubic")
METRICS_FILE = "metrics.json"


@dataclass
class Scores:
    """Metrics of one method on one image (see :mod:`stacsr.evaluate.metrics` for definitions)."""

    psnr: float  # dB, reflectance, data range 1.0
    ssim: float
    sam: float  # degrees
    consistency: float  # mean |block-mean(SR) − LR|, reflectance
    improvement: float  # fractions of pixels (opensr-test-style correctness)
    omission: float
    hallucination: float

    @classmethod
    def mean(cls, scores: Sequence["Scores"]) -> "Scores":
        """Metric-wise mean over images, ignoring nan (a metric nan everywhere stays nan)."""
        values = {}
        for name in cls.__dataclass_fields__:
            v = np.array([getattr(s, name) for s in scores], dtype=np.float64)
            v = v[np.isfinite(v) | np.isposinf(v)]
            values[name] = float(v.mean()) if len(v) else math.nan
        return cls(**values)


@dataclass
class ImageResult:
    """One image under one degradation: the model's and bicubic's scores, and the figure written."""

    image: str
    degradation: str
    model: Scores
    bicubic: Scores
    pixels: int  # HR pixels scored
    figure: str | None = None

    @property
    def delta_psnr(self) -> float:
        return self.model.psnr - self.bicubic.psnr


@dataclass
class Evaluation:
    """A whole evaluation: every :class:`ImageResult` and the averages per degradation."""

    protocol: str
    model: str  # package ref: name@version+sha
    scale: int
    border: int  # LR pixels left out at each edge
    results: list[ImageResult] = field(default_factory=list)
    metrics_path: str | None = None

    @property
    def degradations(self) -> list[str]:
        return list(dict.fromkeys(r.degradation for r in self.results))

    def averages(self) -> dict[str, dict[str, Scores]]:
        """``{degradation: {"model": Scores, "bicubic": Scores}}``: means over the images."""
        out = {}
        for d in self.degradations:
            rs = [r for r in self.results if r.degradation == d]
            out[d] = {m: Scores.mean([getattr(r, m) for r in rs]) for m in METHODS}
        return out

    def to_dict(self) -> dict[str, Any]:
        results = []
        for r in self.results:
            results.append({**asdict(r), "delta_psnr": r.delta_psnr})
        averages = {
            d: {
                **{m: asdict(s) for m, s in avg.items()},
                "delta_psnr": avg["model"].psnr - avg["bicubic"].psnr,
                "images": sum(r.degradation == d for r in self.results),
            }
            for d, avg in self.averages().items()
        }
        return _finite(
            {
                "protocol": self.protocol,
                "model": self.model,
                "scale": self.scale,
                "border_lr_pixels": self.border,
                "results": results,
                "averages": averages,
            }
        )


def _finite(x: Any) -> Any:
    """JSON-safe: non-finite floats (PSNR of identical images, metrics over no pixel) become None."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------ scoring one image


def score(
    sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, base: np.ndarray, scale: int, border: int
) -> tuple[Scores, int]:
    """Scores of ``sr`` against ``hr``; ``lr`` its input, ``base`` bicubic of ``lr``; ``border`` in LR pixels."""
    mask = metrics.valid_mask(sr, hr, base, border=border * scale)
    lr_mask = metrics.valid_mask(lr, border=border)
    c = metrics.correctness(sr, hr, base, mask)
    s = Scores(
        psnr=metrics.psnr(sr, hr, mask),
        ssim=metrics.ssim(sr, hr, mask),
        sam=metrics.sam(sr, hr, mask),
        consistency=metrics.consistency(sr, lr, scale, lr_mask),
        improvement=c["improvement"],
        omission=c["omission"],
        hallucination=c["hallucination"],
    )
    return s, int(mask.sum())


def compare(
    lr: np.ndarray,
    hr: np.ndarray,
    package: ModelPackage,
    engine: Any,
    border: int,
    name: str,
    degradation: str,
    out: Path | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> ImageResult:
    """Super-resolve uint16 ``lr`` with the model and bicubic, score both against ``hr``, draw the figure."""
    scale = package.card.scale
    sr = super_resolve(lr, package, engine, tile_size)
    base = metrics.bicubic(lr, scale)
    model, pixels = score(sr, hr, lr, base, scale, border)
    bic, _ = score(base, hr, lr, base, scale, border)
    if pixels == 0:
        raise InputError(
            f"{name}: no pixel left to score ({hr.shape[2]}×{hr.shape[1]} pixels, border {border} LR pixels "
            f"× {scale}, nodata): use larger images or a smaller --border"
        )
    figure = None
    if out is not None:
        figure = str(figure_png(out / f"{_safe(name)}_{degradation}.png", lr, base, sr, hr, package.card.bands))
    return ImageResult(name, degradation, model, bic, pixels, figure)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def figure_png(
    path: Path, lr: np.ndarray, bic: np.ndarray, sr: np.ndarray, hr: np.ndarray, bands: Sequence[str]
) -> Path:
    """PNG of LR (nearest) | bicubic | SR | HR, RGB stretched on the HR."""
    near = figures.upsample_nearest(lr, hr.shape[1] // lr.shape[1])
    return figures.save_png(path, [near, bic, sr, hr], bands, reference=-1)


# ------------------------------------------------------------------ Wald's protocol on GeoTIFFs


def image_scenes(images: str | Path | Iterable[str | Path], package: ModelPackage) -> list[Scene]:
    """Every scene of the GeoTIFFs named by ``images`` (files or folders), each checked by :func:`check_image`."""
    try:
        paths = list_images(images)
    except ReadError as e:
        raise InputError(str(e)) from None
    return [s for p in paths for s in check_image(p, package)]


def check_image(path: Path, package: ModelPackage) -> list[Scene]:
    """The scenes of a GeoTIFF (one, or one per date of a ``<date>_<band>`` time stack, see
    :func:`stacsr.io.read.scenes`), refusing before any pixel is read one that is not uint16 or lacks the
    model's bands."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            count, dtypes = src.count, set(src.dtypes)
    except RasterioError as e:
        raise InputError(f"cannot read {path}: {first_line(e)}") from None
    if dtypes != {"uint16"}:
        raise InputError(f"{path} is {', '.join(sorted(dtypes))}; stacsr expects uint16 reflectance x 10000")
    try:
        return scenes(path, package.card.bands)
    except ReadError as e:
        try:
            check_band_count(count, package)
        except InputError as e2:
            raise InputError(f"{path}: {e2}") from None
        raise InputError(str(e)) from None


def _engine(package: ModelPackage, engine: Any) -> tuple[Any, bool]:
    if engine is not None:
        return engine, False
    from stacsr.engine import LocalEngine

    return LocalEngine(package), True


def check_args(protocol: str, degradations: Sequence[str], border: int | None, package: ModelPackage) -> int:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
    bad = [d for d in degradations if d not in DEGRADATIONS]
    if bad or not degradations:
        raise InputError(f"unknown degradation {', '.join(bad) or '(none)'}: use {', '.join(DEGRADATIONS)}")
    if border is not None and border < 0:
        raise InputError(f"border must be ≥ 0 LR pixels, not {border}")
    return package.receptive_radius if border is None else int(border)


def evaluate_images(
    images: str | Path | Iterable[str | Path],
    package: ModelPackage,
    protocol: str = "wald",
    degradations: Sequence[str] = DEGRADATIONS,
    engine: Any = None,
    out: str | Path | None = None,
    border: int | None = None,
    sigma: float = DEFAULT_SIGMA,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> Evaluation:
    """Wald's-protocol evaluation of ``package`` (and bicubic) on real 10 m GeoTIFFs.

    ``images``: a file, a folder of ``.tif``/``.tiff`` or a list of them; uint16 reflectance × 10000 with the
    model's bands in its order. Each is cropped to a multiple of the scale, degraded by each of
    ``degradations`` (``sigma`` in 10 m pixels for ``mtf``), rounded to uint16 and super-resolved; the model
    and bicubic are scored against the original. ``engine``: where tiles run (default in-process).
    ``border``: LR pixels left out at each edge (default the model's receptive radius). With ``out``,
    ``metrics.json`` and the figures are written there. Every input is checked before any is evaluated.
    """
    from stacsr.io.read import read_raster

    border = check_args(protocol, degradations, border, package)
    found = image_scenes(images, package)
    folder = check_writable(out) if out is not None else None
    scale = package.card.scale
    evaluation = Evaluation(protocol, package.ref, scale, border)
    engine, own = _engine(package, engine)
    try:
        for scene in found:
            hr = read_raster(scene.href).data
            rows, cols = (n - n % scale for n in hr.shape[1:])
            hr = hr[:, :rows, :cols]
            if not hr.any():
                raise InputError(f"{scene.name} is all nodata (0)")
            for kind in degradations:
                lr = wald_lr(hr, scale, kind, sigma)
                evaluation.results.append(compare(lr, hr, package, engine, border, scene.name, kind, folder, tile_size))
    finally:
        if own:
            engine.close()
    return _write(evaluation, folder)


def _write(evaluation: Evaluation, folder: Path | None) -> Evaluation:
    if folder is not None:
        path = folder / METRICS_FILE
        path.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        evaluation.metrics_path = str(path)
    return evaluation


# ------------------------------------------------------------------ pairs of a manifest


def evaluate_pairs(
    manifest: Any,
    package: ModelPackage,
    preset: Any = None,
    degradations: Sequence[str] = DEGRADATIONS,
    engine: Any = None,
    out: str | Path | None = None,
    border: int | None = None,
    sigma: float = DEFAULT_SIGMA,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> Evaluation:
    """Evaluate ``package`` (and bicubic) on the pairs of a manifest (a path/URI or a pyarrow table).

    Wald pairs: the HR patch degraded by each of ``degradations``; cross-sensor pairs: their real S2 LR
    (reported as degradation ``"real"``). ``preset``: the catalogue conventions used to sign and read
    (default Planetary Computer). ``limit``: the first rows only. Patches must be larger than two borders
    (``border`` LR pixels, default the receptive radius) or nothing is left to score.
    """
    from stacsr.train.data import read_pair
    from stacsr.train.manifest import KIND_WALD, read_manifest

    border = check_args("wald", degradations, border, package)
    table = manifest if hasattr(manifest, "to_pylist") else read_manifest(manifest)
    rows = table.to_pylist()[: limit if limit else None]
    if not rows:
        raise InputError("the pairs manifest lists no pair")
    if preset is None:
        from stacsr.catalog.presets import PRESETS

        preset = PRESETS["planetary-computer"]
    scale = package.card.scale
    bad = sorted({int(r["scale"]) for r in rows} - {scale})
    if bad:
        raise InputError(f"the manifest's pairs are ×{bad[0]}, the model is ×{scale}")
    folder = check_writable(out) if out is not None else None
    evaluation = Evaluation(f"pairs:{rows[0].get('kind')}", package.ref, scale, border)
    engine, own = _engine(package, engine)
    try:
        for row in rows:
            kinds = list(degradations) if row.get("kind") == KIND_WALD else ["real"]
            for kind in kinds:
                lr, hr = read_pair(
                    row,
                    preset,
                    kind if kind != "real" else "area",
                    sigma=sigma,
                    bands=package.card.bands,
                    cache_dir=cache_dir,
                )
                lr16 = np.rint(lr).clip(0, 65535).astype(np.uint16)
                hr16 = np.rint(hr).clip(0, 65535).astype(np.uint16)
                evaluation.results.append(
                    compare(lr16, hr16, package, engine, border, str(row["id"]), kind, folder, tile_size)
                )
    finally:
        if own:
            engine.close()
    return _write(evaluation, folder)
