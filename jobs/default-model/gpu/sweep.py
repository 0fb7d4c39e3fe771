"""Train several default-model recipes side by side on one GPU and score each on the validation sites.

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

    python jobs/default-model/gpu/sweep.py --data build/device/real-s2.npz --minutes 7 --out $OUT
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

# name → (config overrides, blur σ range of the mixed degradation, step cap)
VARIANTS: dict[str, tuple[dict[str, Any], tuple[float, float], int]] = {
    "base-12k": ({}, (0.0, 2.0), 12_000),
    "base-long": ({}, (0.0, 2.0), 200_000),
    "blur05-long": ({}, (0.5, 2.0), 200_000),
    "blur10-long": ({}, (1.0, 2.0), 200_000),
    "mtf-only": ({}, (1.5, 1.5), 200_000),
    "blur05-b64": ({"batch_size": 64, "optimiser": {"lr_g": 1e-3}}, (0.5, 2.0), 200_000),
    "wide-long": ({"generator": {"features": 48, "blocks": 12}}, (0.0, 2.0), 200_000),
    "wide-blur05": ({"generator": {"features": 48, "blocks": 12}}, (0.5, 2.0), 200_000),
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) else v
    return out


# ------------------------------------------------------------------ data on the GPU


class Windows:
    """The ``PATCH``-pixel windows on the ``STRIDE`` lattice of the training scenes, drawn uniformly."""

    def __init__(self, scenes: list[np.ndarray], device: torch.device) -> None:
        self.images = [torch.from_numpy(s.astype(np.float32)).to(device) for s in scenes]
        self.index = [(i, r, c) for i, s in enumerate(scenes)
                      for r in range(0, s.shape[1] - PATCH + 1, STRIDE)
                      for c in range(0, s.shape[2] - PATCH + 1, STRIDE)]  # fmt: skip

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        picks = torch.randint(len(self.index), (n,), generator=gen).tolist()
        return torch.stack([self.images[i][:, r : r + PATCH, c : c + PATCH] for i, r, c in (self.index[p] for p in picks)])


def make_pairs(hr: torch.Tensor, sigma_range: tuple[float, float], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stacsr.train.degrade.mixed_batch` with σ uniform in ``sigma_range`` instead of [0, 4/3 × 1.5]."""
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
                lr = np.rint(D.degrade(hr, SCALE, kind, sigma=EVAL_SIGMA)).clip(0, 65535).astype(np.uint16)
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
                summary.update({f"{method}_psnr": v[:, 0].mean(), f"{method}_sam": v[:, 1].mean(),
                                f"{method}_consistency": v[:, 2].mean()})  # fmt: skip
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
    over, sigma_range, cap = VARIANTS[name]
    cfg: TrainConfig = from_dict(merge(load_config(BASE_CONFIG).to_dict(), over))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with np.load(data) as f:
        train = [f[k] for k in sorted(f.files) if k.startswith("train/")]
        val = [f[k] for k in sorted(f.files) if k.startswith("val/")]
    windows = Windows(train, device)

    nets, O = build_nets(cfg, device), cfg.optimiser
    weights, levels, norm = cfg.losses.weights(), cfg.generator.n_upsample + 1, cfg.generator.norm_scale
    gen = torch.Generator().manual_seed(cfg.seed)

    steps, step, curve, calibrated = cap, 0, [], False
    t_train = time.monotonic()
    while step < steps:
        lr, hr = make_pairs(windows.sample(cfg.batch_size, gen), sigma_range, gen)
        lr, hr = augment(lr, hr, cfg.augment.dihedral, cfg.augment.gain)
        set_learning_rates(nets, O, step, steps)
        metrics = train_step(nets, lr, hr, weights, None, levels, norm, False, nullcontext(), cfg.ema, cfg.losses.border)
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
            print(f"{name} {step}: mtf {curve[-1]['mtf']['delta_psnr']:+.3f} area {curve[-1]['area']['delta_psnr']:+.3f}", flush=True)

    cfg = dataclasses.replace(cfg, steps=steps, pretrain_steps=steps)
    card = ModelCard(name=f"default-gpu-{name}", version="0.1.0", bands=BANDS, common_names=["blue", "green", "red", "nir"],
                     architecture=cfg.generator.to_dict(),
                     provenance={"trained": True, "pairs": "jobs/default-model/README.md", "pairs_count": len(windows.index),
                                 "run": f"gpu-sweep/{name}", "init_from": None, "config": cfg.to_dict(),
                                 "sweep": {"sigma_range": list(sigma_range), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                           "torch": torch.__version__, "seconds": round(time.monotonic() - t0)}})  # fmt: skip
    folder = Path(work) / name
    C.save_checkpoint(folder, card=card, generator=nets.G, generator_ema=nets.ema, discriminator=nets.D,
                      optimizer_g=nets.opt_g, optimizer_d=nets.opt_d, step=steps, phase=C.PHASE_PRETRAIN,
                      extra={"config": cfg.to_dict()})  # fmt: skip
    for f in folder.iterdir():  # export needs the card, the EMA weights and the state (8 runs fit in 16 MB)
        if f.name not in (C.CARD, C.GENERATOR_EMA, C.STATE):
            f.unlink()
    return {"name": name, "steps": steps, "sigma_range": list(sigma_range), "overrides": over, "curve": curve,
            "final": curve[-1], "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--eval-every", type=int, default=4000)
    p.add_argument("--variants", default=",".join(VARIANTS))
    a = p.parse_args()
    names = a.variants.split(",")
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
    summary = [{"name": r["name"], "steps": r["steps"], "mtf": r["final"]["mtf"]["delta_psnr"],
                "area": r["final"]["area"]["delta_psnr"]} for r in results]  # fmt: skip
    with tarfile.open(Path(a.out) / "checkpoints.tar", "w") as tar:
        tar.add(work, arcname="checkpoints")
    (Path(a.out) / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1))
    for s in sorted(summary, key=lambda s: -s["mtf"]):
        print(f"{s['name']:>14} {s['steps']:>7} steps  mtf {s['mtf']:+.3f} dB  area {s['area']:+.3f} dB")


if __name__ == "__main__":
    main()
