"""Checks of the GPU paths of training and inference, for a machine with a CUDA GPU (CI has none).

Run from the repository root: ``python tests/device/gpu_check.py``. It needs only PyTorch, safetensors, numpy
and PyYAML (not Ray or the geospatial stack), so it runs on a bare GPU image. Each check prints one
``PASS``/``FAIL`` line; the exit status is the number of failures.

What ``stacsr train --gpu`` does on each Ray Train worker, rebuilt without Ray: G and D wrapped in
``DistributedDataParallel`` over an NCCL process group (what ``ray.train.torch.prepare_model`` does on a GPU
worker; one rank, as there is one GPU), :func:`stacsr.train.loop.train_step` under bf16 autocast (WGAN-GP:
the gradient penalty's double backward runs under autocast too), a checkpoint written from the CUDA networks
and read back on the CPU, and the inference :class:`~stacsr.model.package.Predictor` on CUDA against the CPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stacsr.model import package as P  # noqa: E402
from stacsr.model.discriminator import Discriminator  # noqa: E402
from stacsr.model.generator import Generator  # noqa: E402
from stacsr.train import checkpoint as C  # noqa: E402
from stacsr.train.config import TrainConfig, from_dict, load_config  # noqa: E402
from stacsr.train.loop import Nets, augment, build_nets, set_learning_rates, train_step, wrap_nets  # noqa: E402

DEV = torch.device(os.environ.get("STACSR_CHECK_DEVICE", "cuda"))  # "cpu": a dry run of the script itself
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def wrap(fn: Callable[[], str]) -> Callable[[], str]:
        try:
            RESULTS.append((name, True, fn()))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            RESULTS.append((name, False, f"{type(e).__name__}: {e}"))
        print(("PASS " if RESULTS[-1][1] else "FAIL ") + name + ": " + RESULTS[-1][2], flush=True)
        return fn

    return wrap


def tiny_config(**losses: float) -> TrainConfig:
    d = load_config(ROOT / "jobs" / "examples" / "train.yaml").to_dict()
    d["generator"].update(features=16, blocks=2)
    d["discriminator"].update(features=16, max_features=64)
    d["losses"].update(l1=1.0, **losses)
    d.update(batch_size=8, steps=400)
    return from_dict(d)


def smooth_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Reflectance-like (bands 4, DN 300–4000) images with structure at every scale."""
    x = torch.rand(n, 4, size // 8, size // 8, generator=gen)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.2 * torch.rand(n, 4, size, size, generator=gen)
    return (300 + 3000 * x.clamp(0, 1.2)).to(DEV)


def build(cfg: TrainConfig) -> Nets:
    ids = [0] if DEV.type == "cuda" else None
    return wrap_nets(build_nets(cfg, DEV), lambda m: DDP(m, device_ids=ids))


def run(cfg: TrainConfig, nets: Nets, steps: int, gan: bool, seed: int = 0) -> list[dict[str, float]]:
    gen = torch.Generator().manual_seed(seed)
    amp = torch.autocast(DEV.type, dtype=torch.bfloat16)
    w, levels = cfg.losses.weights(), cfg.generator.n_upsample + 1
    out = []
    for step in range(steps):
        hr = smooth_images(cfg.batch_size, 48, gen)
        lr = F.avg_pool2d(hr, cfg.generator.scale)
        lr, hr = augment(lr, hr, True, 0.2)
        set_learning_rates(nets, cfg.optimiser, step, steps)
        m = train_step(nets, lr, hr, w, None, levels, cfg.generator.norm_scale, gan, amp, cfg.ema)
        out.append({k: float(v.detach().float()) for k, v in m.items()})
    return out


def trained(steps: int, gan_phase: bool, **losses: float) -> tuple[TrainConfig, Nets, list[dict[str, float]]]:
    """A tiny configuration (``losses`` weights), its networks (DDP) and the metrics of ``steps`` steps."""
    cfg = tiny_config(**losses)
    nets = build(cfg)
    return cfg, nets, run(cfg, nets, steps, gan_phase)


def main() -> int:
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("FAIL no CUDA device")
        return 1
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (dry run)"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    backend = "nccl" if DEV.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)

    @check(f"bf16 + DDP/{backend}, content phase learns")
    def _() -> str:
        _, _, m = trained(300, False, l2=0.0, gan=0.0)
        first, last = np.mean([x["l1"] for x in m[:20]]), np.mean([x["l1"] for x in m[-20:]])
        assert all(np.isfinite(v) for x in m for v in x.values()), "a loss is not finite"
        assert last < 0.5 * first, f"L1 {first:.5f} → {last:.5f}: not learning"
        return f"L1 {first:.5f} → {last:.5f} in 300 steps"

    @check(f"bf16 + DDP/{backend}, WGAN-GP phase (penalty's double backward under autocast)")
    def _() -> str:
        cfg = tiny_config(gan=1.0)
        nets = build(cfg)
        d0 = [p.detach().clone() for p in nets.D.parameters()]
        m = run(cfg, nets, 60, gan=True)  # D before training is kept: not through trained()
        keys = {"d_loss", "gp", "drift", "adv", "g_total", "content"}
        assert keys <= set(m[-1]), f"missing terms {keys - set(m[-1])}"
        assert all(np.isfinite(x[k]) for x in m for k in keys), "a loss is not finite"
        assert any(x["gp"] > 0 for x in m), "the gradient penalty is always 0"
        assert any(not torch.equal(a, b) for a, b in zip(d0, nets.D.parameters())), "D did not change"
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in nets.G.parameters())
        return f"60 steps; last d_loss {m[-1]['d_loss']:.4f}, gp {m[-1]['gp']:.4f}, adv {m[-1]['adv']:.4f}"

    @check("bf16 autocast output close to fp32")
    def _() -> str:
        _, nets, _ = trained(50, False)
        x = F.avg_pool2d(smooth_images(4, 64, torch.Generator().manual_seed(3)), 4)
        with torch.no_grad():
            ref = nets.G(x)
            with torch.autocast(DEV.type, dtype=torch.bfloat16):
                low = nets.G(x).float()
        rel = float((low - ref).abs().max() / ref.abs().max())
        assert rel < 0.02, f"relative difference {rel:.4f}"
        return f"max relative difference {rel:.5f}"

    @check("checkpoint from CUDA/DDP networks reads back on the CPU, export package equal")
    def _() -> str:
        cfg, nets, _ = trained(20, True)
        card = P.ModelCard(
            name="gpu-check",
            version="0.1.0",
            bands=["B02", "B03", "B04", "B08"],
            common_names=["blue", "green", "red", "nir"],
            architecture=cfg.generator.to_dict(),
        )
        with tempfile.TemporaryDirectory() as tmp:
            C.save_checkpoint(
                tmp,
                card=card,
                generator=nets.Gp,
                generator_ema=nets.ema,
                discriminator=nets.Dp,
                optimizer_g=nets.opt_g,
                optimizer_d=nets.opt_d,
                step=20,
                phase=C.PHASE_GAN,
            )
            G, E, D = Generator(cfg.generator), Generator(cfg.generator), Discriminator(cfg.discriminator_config)
            og, od = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
            state = C.load_checkpoint(
                tmp, generator=G, generator_ema=E, discriminator=D, optimizer_g=og, optimizer_d=od
            )
            assert state.step == 20
            for a, b in zip(E.state_dict().values(), nets.ema.state_dict().values()):
                assert torch.equal(a, b.cpu()), "EMA weights differ after the round trip"
            pkg = P.save(card, E, Path(tmp) / "pkg")
            for a, b in zip(pkg.generator.state_dict().values(), nets.ema.state_dict().values()):
                assert torch.equal(a, b.cpu()), "package weights differ"
        return "step, EMA, G, D and both optimisers restored; package bit-equal"

    @check("Predictor on CUDA vs CPU (the tile actors' inference)")
    def _() -> str:
        pkg = P.load("default")
        x = np.random.default_rng(0).integers(200, 4000, (2, 4, 96, 96)).astype(np.uint16)
        cpu = P.Predictor(pkg, device="cpu")(x).astype(np.int64)
        predict = P.Predictor(pkg, device=DEV.type)  # fp32: the Predictor turns TF32 convolutions off
        exact = predict(x).astype(np.int64)
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, for the record
        tf32 = predict(x).astype(np.int64)
        torch.backends.cudnn.allow_tf32 = False
        d_exact, d_tf32 = int(np.abs(exact - cpu).max()), int(np.abs(tf32 - cpu).max())
        assert d_exact <= 1, f"fp32 CUDA differs from CPU by {d_exact} DN"
        return (
            f"default model, 2×4×96² input: max |CUDA − CPU| {d_exact} DN (fp32), {d_tf32} DN (TF32, "
            f"mean {np.abs(tf32 - cpu).mean():.3f})"
        )

    @check("Predictor: 16-bit transfers, queued batches, half precision (the GPU path of a whole tile)")
    def _() -> str:
        pkg = P.load("default")
        x = np.random.default_rng(1).integers(200, 4000, (2, 4, 96, 96)).astype(np.uint16)
        x[:, :, 40:60, 40:60] = 50000  # above 32767: the int16 wrap on the way in and out must be exact
        cpu = P.Predictor(pkg, device="cpu")(x).astype(np.int64)
        predict = P.Predictor(pkg, device=DEV.type)
        first, second = predict.launch(x), predict.launch(x[::-1].copy())  # two batches in flight
        a, b = first().astype(np.int64), second().astype(np.int64)
        da, db = int(np.abs(a - cpu).max()), int(np.abs(b - cpu[::-1]).max())
        assert da <= 1 and db <= 1, f"queued batches differ from CPU by {da} and {db} DN"
        figures = []
        # random noise beside a saturated block: harsher than a landscape (README's figures); on this input a
        # CPU gives fp16 mean 0.27 / max 28 DN, bf16 2.1 / 213 DN
        for precision, mean_dn, max_dn in (("fp16", 0.5, 64), ("bf16", 4.0, 512)):
            half = P.Predictor(pkg, device=DEV.type, precision=precision)(x).astype(np.int64)
            d = np.abs(half - cpu)
            blocks = half.reshape(2, 4, 96, 4, 96, 4).mean(axis=(3, 5))
            assert np.abs(blocks - x).max() <= 1.0, f"{precision}: a block mean is off its input"
            assert d.mean() <= mean_dn and d.max() <= max_dn, f"{precision}: mean {d.mean():.2f}, max {d.max()} DN"
            figures.append(f"{precision} mean {d.mean():.3f} / max {d.max()} DN")
        return "uint16 round trip exact (50000 DN), queued batches equal; vs CPU fp32: " + ", ".join(figures)

    torch.distributed.destroy_process_group()
    failed = sum(not ok for _, ok, _ in RESULTS)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(main())
