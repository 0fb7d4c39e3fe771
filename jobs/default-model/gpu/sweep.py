"""Train several default-model recipes side by side on one GPU (or the CPU) and score each on the validation sites.

The GPU machine has PyTorch but not Ray or the geospatial stack, so this drives the same pieces as
``stacsr train`` by hand: :class:`~stacsr.model.generator.Generator`, :func:`stacsr.train.loop.train_step`
(content losses on every scale, EMA), :func:`stacsr.train.loop.augment` and the learning-rate schedule of the
config, with Wald pairs made on the GPU from the scenes packed by ``pack.py``: every step draws 48 × 48 windows
on the 4-pixel lattice of the training scenes (the windows ``stacsr pairs --stride 4`` lists) and degrades
each with its own blur σ, drawn afresh at every step (as ``stacsr train`` now does). Scoring is
``stacsr evaluate --border 2``'s Wald protocol on the validation scenes (same degradations, rounding, reflect
padding and metrics), so the numbers can be compared with it; the chosen run is then exported and evaluated
with the real commands on the CPU machine.

Every variant runs in its own process for the same wall-clock budget; each measures its speed over its
first steps and sets its step count (and so its cosine schedule) to fit the budget. Writes
``results.json`` (every variant's scores every ``--eval-every`` steps) and ``checkpoints.tar`` (one folder
per variant with its card, EMA weights and state: what ``stacsr export`` reads) under ``--out``::

    python jobs/default-model/gpu/sweep.py --data build/device/real-s2.npz --sweep first --minutes 7 --out $OUT

``SWEEPS`` names the variants that ran together for each table of ``jobs/default-model/README.md``. Without a
GPU each variant runs on one CPU thread (about 10 steps/s on this project's 2-core machine): give
``--minutes`` room enough for the step caps.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tarfile
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from stacsr.evaluate import metrics as M  # noqa: E402
from stacsr.model.generator import Generator  # noqa: E402
from stacsr.model.package import ModelCard  # noqa: E402
from stacsr.train import checkpoint as C  # noqa: E402
from stacsr.train import degrade as D  # noqa: E402
from stacsr.train.config import TrainConfig, from_dict, load_config  # noqa: E402
from stacsr.train.loop import augment, build_nets, set_learning_rates, train_step  # noqa: E402

BASE_CONFIG = ROOT / "jobs" / "default-model" / "train.yaml"
BANDS = ["B02", "B03", "B04", "B08"]
SCALE, PATCH, STRIDE, BORDER, EVAL_SIGMA = 4, 48, 4, 2, 1.5


@dataclasses.dataclass(frozen=True)
class Variant:
    """A recipe: config overrides (``seed`` included), the mixed blur's σ range, a step cap, and its data: the
    urban scenes it adds (indexes into the packed ``urban/`` scenes) on a lattice of ``urban_stride``, and
    ``half_scale`` (each training scene also downsampled 2 × by block means, as a coarser-grained scene)."""

    over: dict[str, Any] = dataclasses.field(default_factory=dict)
    sigma_range: tuple[float, float] = (0.0, 2.0)
    cap: int = 200_000
    urban: tuple[int, ...] = ()
    urban_stride: int = STRIDE
    half_scale: bool = False


S1, S2 = {"seed": 1}, {"seed": 2}
ZERO = {"generator": {"zero_init_residual": True}}
VARIANTS: dict[str, Variant] = {
    "base-12k": Variant(cap=12_000),  # jobs/default-model/train.yaml of version 1.1.0
    "base-s1": Variant(S1, cap=12_000),
    # first sweep: longer, blur ranges, batch, width (each runs to the time budget)
    "base-long": Variant(),
    "blur05-long": Variant(sigma_range=(0.5, 2.0)),
    "blur10-long": Variant(sigma_range=(1.0, 2.0)),
    "mtf-only": Variant(sigma_range=(1.5, 1.5)),
    "blur05-b64": Variant({"batch_size": 64, "optimiser": {"lr_g": 1e-3}}, (0.5, 2.0)),
    "wide-long": Variant({"generator": {"features": 48, "blocks": 12}}),
    "wide-blur05": Variant({"generator": {"features": 48, "blocks": 12}}, (0.5, 2.0)),
    # second sweep: more varied data
    "urban1": Variant(cap=12_000, urban=(0,)),
    "urban1-s1": Variant(S1, cap=12_000, urban=(0,)),
    "urban2": Variant(cap=12_000, urban=(0, 1)),
    "urban2-s1": Variant(S1, cap=12_000, urban=(0, 1)),
    "urban1-st8": Variant(cap=12_000, urban=(0,), urban_stride=8),
    "urban1-st8-s1": Variant(S1, cap=12_000, urban=(0,), urban_stride=8),
    "half-scale": Variant(cap=12_000, half_scale=True),
    "urban1-16k": Variant(cap=16_000, urban=(0,)),
    # third sweep: the loss and the learning rate
    "half-scale-s1": Variant(S1, cap=12_000, half_scale=True),
    "l2": Variant({"losses": {"l1": 0.0, "l2": 1.0}}, cap=12_000),
    "l2-s1": Variant({"losses": {"l1": 0.0, "l2": 1.0}, **S1}, cap=12_000),
    "lr25": Variant({"optimiser": {"lr_g": 2.5e-4}}, cap=12_000),
    "lr25-s1": Variant({"optimiser": {"lr_g": 2.5e-4}, **S1}, cap=12_000),
    # fourth sweep: training starts from consistent bicubic (zero-initialised residual branches), short runs
    "zero": Variant(ZERO, cap=12_000),
    "zero-s1": Variant({**ZERO, **S1}, cap=12_000),
    "zero-2k": Variant(ZERO, cap=2000),
    "zero-2k-s1": Variant({**ZERO, **S1}, cap=2000),
    "zero-3k": Variant(ZERO, cap=3000),
    "zero-3k-s1": Variant({**ZERO, **S1}, cap=3000),
    "zero-4k": Variant(ZERO, cap=4000),
    "zero-4k-s1": Variant({**ZERO, **S1}, cap=4000),
    "zero-3k-b05": Variant(ZERO, (0.5, 2.0), cap=3000),  # jobs/default-model/train.yaml of version 1.2.0
    "zero-3k-b05-s1": Variant({**ZERO, **S1}, (0.5, 2.0), cap=3000),
    "zero-3k-b05-s2": Variant({**ZERO, **S2}, (0.5, 2.0), cap=3000),
}
SWEEPS = {  # README's tables: which variants ran together, and where
    "first": [
        "base-12k",
        "base-long",
        "blur05-long",
        "blur10-long",
        "mtf-only",
        "blur05-b64",
        "wide-long",
        "wide-blur05",
    ],  # H100, --minutes 7
    "second": [
        "base-12k",
        "base-s1",
        "urban1",
        "urban1-s1",
        "urban2",
        "urban2-s1",
        "urban1-st8",
        "urban1-st8-s1",
        "half-scale",
        "urban1-16k",
    ],  # H100, --minutes 8
    "third": ["base-12k", "base-s1", "half-scale", "half-scale-s1", "l2", "l2-s1", "lr25", "lr25-s1"],  # H100, 5.6
    "fourth": [
        "zero-2k",
        "zero-2k-s1",
        "zero-3k",
        "zero-3k-s1",
        "zero-4k",
        "zero-4k-s1",
        "zero-3k-b05",
        "zero-3k-b05-s1",
        "zero-3k-b05-s2",
    ],  # 2-core CPU, two or three at a time, no time limit
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) else v
    return out


# ------------------------------------------------------------------ data on the GPU


class Windows:
    """The ``PATCH``-pixel windows on each scene's lattice (``STRIDE`` unless given), drawn uniformly."""

    def __init__(self, scenes: list[np.ndarray], device: torch.device, strides: list[int] | None = None) -> None:
        self.images = [torch.from_numpy(s.astype(np.float32)).to(device) for s in scenes]
        strides = strides or [STRIDE] * len(scenes)
        self.index = [
            (i, r, c)
            for i, (s, st) in enumerate(zip(scenes, strides))
            for r in range(0, s.shape[1] - PATCH + 1, st)
            for c in range(0, s.shape[2] - PATCH + 1, st)
        ]

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        picks = torch.randint(len(self.index), (n,), generator=gen).tolist()
        return torch.stack(
            [self.images[i][:, r : r + PATCH, c : c + PATCH] for i, r, c in (self.index[p] for p in picks)]
        )


def half_scale(scene: np.ndarray) -> np.ndarray:
    """``scene`` downsampled 2 × by 2 × 2 block means (a block with nodata becomes nodata)."""
    return D.area(scene[:, : scene.shape[1] // 2 * 2, : scene.shape[2] // 2 * 2], 2).round().astype(np.uint16)


def training_windows(files: dict[str, np.ndarray], v: Variant, device: torch.device) -> Windows:
    train = [files[k] for k in sorted(files) if k.startswith("train/")]
    urban = [files[k] for k in sorted(files) if k.startswith("urban/")]
    scenes, strides = list(train), [STRIDE] * len(train)
    if v.half_scale:
        halves = [h for h in map(half_scale, train) if min(h.shape[1:]) >= PATCH]
        scenes, strides = scenes + halves, strides + [STRIDE] * len(halves)
    scenes, strides = scenes + [urban[i] for i in v.urban], strides + [v.urban_stride] * len(v.urban)
    return Windows(scenes, device, strides)


def make_pairs(
    hr: torch.Tensor, sigma_range: tuple[float, float], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stacsr.train.degrade.mixed_batch` with σ uniform in ``sigma_range`` (``degradation.sigma_min`` to
    4/3 × ``sigma`` in ``stacsr train``). Its own draw, older than ``sigma_min``: the sweeps' figures reproduce."""
    lo, hi = sigma_range
    sigmas = (lo + (hi - lo) * torch.rand(hr.shape[0], generator=gen)).tolist()
    return D.area(D.blur_each(hr, sigmas), SCALE), hr


# ------------------------------------------------------------------ scoring (stacsr evaluate --border 2)


@torch.no_grad()
def evaluate(g: Generator, scenes: list[np.ndarray], device: torch.device) -> dict[str, dict[str, float]]:
    """Mean PSNR / SAM / consistency of ``g`` and bicubic over ``scenes`` under each Wald degradation."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    halo, g = g.receptive_radius, g.eval()
    out = {}
    try:
        for kind in D.DEGRADATIONS:
            rows = []
            for hr in scenes:
                hr = hr[:, : hr.shape[1] - hr.shape[1] % SCALE, : hr.shape[2] - hr.shape[2] % SCALE]
                lr = D.wald_lr(hr, SCALE, kind, EVAL_SIGMA)
                padded = np.pad(lr, ((0, 0), (halo, halo), (halo, halo)), mode="reflect").astype(np.float32)
                y = g(torch.from_numpy(padded)[None].to(device))[0].round().clamp(1, 65535)
                m = halo * SCALE
                sr = y[:, m:-m, m:-m].to(torch.int32).cpu().numpy().astype(np.uint16)
                base = M.bicubic(lr, SCALE)
                lr_mask = M.valid_mask(lr, border=BORDER)
                row = {}
                for method, im in (("model", sr), ("bicubic", base)):
                    mask = M.valid_mask(sr, hr, base, border=BORDER * SCALE)
                    row[method] = (M.psnr(im, hr, mask), M.sam(im, hr, mask), M.consistency(im, lr, SCALE, lr_mask))
                rows.append(row)
            summary = {}
            for method in ("model", "bicubic"):
                v = np.array([r[method] for r in rows])
                summary.update(
                    {
                        f"{method}_psnr": v[:, 0].mean(),
                        f"{method}_sam": v[:, 1].mean(),
                        f"{method}_consistency": v[:, 2].mean(),
                    }
                )
            summary["delta_psnr"] = summary["model_psnr"] - summary["bicubic_psnr"]
            out[kind] = {k: round(float(v), 6) for k, v in summary.items()}
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        g.train()
    return out


# ------------------------------------------------------------------ one variant


def run_variant(name: str, data: str, work: str, seconds: float, eval_every: int) -> dict[str, Any]:
    t0 = time.monotonic()
    torch.set_num_threads(1)
    v = VARIANTS[name]
    sigma_range, cap = v.sigma_range, v.cap
    cfg: TrainConfig = from_dict(merge(load_config(BASE_CONFIG).to_dict(), v.over))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with np.load(data) as f:
        files = {k: f[k] for k in f.files}
    val = [files[k] for k in sorted(files) if k.startswith("val/")]
    windows = training_windows(files, v, device)

    nets, opt = build_nets(cfg, device), cfg.optimiser
    weights, levels, norm = cfg.losses.weights(), cfg.generator.n_upsample + 1, cfg.generator.norm_scale
    gen = torch.Generator().manual_seed(cfg.seed)

    steps, step, curve, calibrated = cap, 0, [], False
    t_train = time.monotonic()
    while step < steps:
        lr, hr = make_pairs(windows.sample(cfg.batch_size, gen), sigma_range, gen)
        lr, hr = augment(lr, hr, cfg.augment.dihedral, cfg.augment.gain)
        set_learning_rates(nets, opt, step, steps)
        metrics = train_step(
            nets, lr, hr, weights, None, levels, norm, False, nullcontext(), cfg.ema, cfg.losses.border
        )
        step += 1
        if not calibrated and step == 300:
            if device.type == "cuda":
                torch.cuda.synchronize()
            rate = step / (time.monotonic() - t_train)
            left = seconds - (time.monotonic() - t0) - 20  # scoring and saving
            steps, calibrated = max(step + 1, min(cap, int(rate * left * 0.92))), True
            print(f"{name}: {rate:.0f} steps/s → {steps} steps", flush=True)
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "l1": float(metrics["content"].detach()), **evaluate(nets.ema, val, device)})
            print(
                f"{name} {step}: mtf {curve[-1]['mtf']['delta_psnr']:+.3f} area {curve[-1]['area']['delta_psnr']:+.3f}",
                flush=True,
            )

    cfg = dataclasses.replace(cfg, steps=steps, pretrain_steps=steps)
    card = ModelCard(
        name=f"default-gpu-{name}",
        version="0.1.0",
        bands=BANDS,
        common_names=["blue", "green", "red", "nir"],
        architecture=cfg.generator.to_dict(),
        provenance={
            "trained": True,
            "pairs": "jobs/default-model/README.md",
            "pairs_count": len(windows.index),
            "run": f"gpu-sweep/{name}",
            "init_from": None,
            "config": cfg.to_dict(),
            "sweep": {
                "sigma_range": list(sigma_range),
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "seconds": round(time.monotonic() - t0),
            },
        },
    )
    folder = Path(work) / name
    C.save_checkpoint(
        folder,
        card=card,
        generator=nets.G,
        generator_ema=nets.ema,
        discriminator=nets.D,
        optimizer_g=nets.opt_g,
        optimizer_d=nets.opt_d,
        step=steps,
        phase=C.PHASE_PRETRAIN,
        extra={"config": cfg.to_dict()},
    )
    for f in folder.iterdir():  # export needs the card, the EMA weights and the state (8 runs fit in 16 MB)
        if f.name not in (C.CARD, C.GENERATOR_EMA, C.STATE):
            f.unlink()
    return {
        "name": name,
        "steps": steps,
        "variant": dataclasses.asdict(v),
        "windows": len(windows.index),
        "curve": curve,
        "final": curve[-1],
        "seconds": round(time.monotonic() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--eval-every", type=int, default=4000)
    p.add_argument("--variants", help="comma-separated names of VARIANTS (default: those of --sweep)")
    p.add_argument("--sweep", choices=list(SWEEPS), default="fourth")
    a = p.parse_args()
    names = a.variants.split(",") if a.variants else SWEEPS[a.sweep]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    work = tempfile.mkdtemp(prefix="stacsr-sweep-")
    with ctx.Pool(len(names)) as pool:
        jobs = [pool.apply_async(run_variant, (n, a.data, work, a.minutes * 60, a.eval_every)) for n in names]
        results = []
        for n, j in zip(names, jobs):
            try:
                results.append(j.get())
            except Exception as e:  # one failing variant does not lose the others
                print(f"{n} failed: {type(e).__name__}: {e}", flush=True)
    summary = [
        {
            "name": r["name"],
            "steps": r["steps"],
            "mtf": r["final"]["mtf"]["delta_psnr"],
            "area": r["final"]["area"]["delta_psnr"],
        }
        for r in results
    ]
    with tarfile.open(Path(a.out) / "checkpoints.tar", "w") as tar:
        tar.add(work, arcname="checkpoints")
    (Path(a.out) / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1))
    for s in sorted(summary, key=lambda s: -s["mtf"]):
        print(f"{s['name']:>14} {s['steps']:>7} steps  mtf {s['mtf']:+.3f} dB  area {s['area']:+.3f} dB")


if __name__ == "__main__":
    main()
