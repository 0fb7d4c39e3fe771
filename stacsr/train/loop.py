"""The per-worker training loop of the SRGAN (Ray Train V2): :func:`train_loop_per_worker`.

Every worker builds the same generator G (seeded), an EMA copy of G, the MSG-GAN discriminator D and one Adam
per network, wraps G and D for data-parallel training (``ray.train.torch.prepare_model``: DDP, gloo on CPU,
NCCL on GPU; bf16 autocast on GPU only), and reads its shard of the ``"train"`` dataset epoch after epoch until
``steps`` optimiser steps are done. Every worker does exactly the same number of steps (the shards are equal),
so the collective calls (DDP all-reduce, ``ray.train.report``, a barrier) line up.

Wald pairs under the ``mixed`` degradation come with ``degrade_in_loop``: the worker remakes each batch's LR
from its HR (:func:`stacsr.train.degrade.mixed_batch`, a fresh blur σ per sample at every step, drawn from
the worker's seeded generator), so a patch is seen under many blurs over the epochs, not under one.

A step: ``pretrain`` phase (``step < pretrain_steps``): G on the content loss only (L1/L2/VGG on every scale of
the pyramid). ``gan`` phase: one D step (``discriminator_loss``: WGAN-GP with penalty and drift, LSGAN or
RaGAN) on the real pyramid and the detached fake one, then one G step on content + ``gan`` × adversarial loss
(through the unwrapped D, whose parameters are frozen for that step). Then the EMA of G is updated.

Resuming: ``ray.train.get_checkpoint()`` (Ray gives the run's latest when the same name and storage are used
again) restores G, EMA, D, both optimisers and the step counter, which continues exactly from the saved step;
a run whose ``steps`` are already reached does no training. Every ``checkpoint_every`` steps (and at the last
step) all workers call ``ray.train.report`` (a barrier); rank 0 writes the checkpoint folder
(:mod:`stacsr.train.checkpoint`) into a temporary directory that Ray uploads, the others pass ``None``.

TensorBoard (rank 0 only) goes to ``<storage>/<name>/tensorboard``. For a remote storage (``s3://…``) the
event files are written to a local temporary folder on rank 0's node and copied to
``<storage>/<name>/tensorboard`` at every checkpoint and at the end (a run that is killed loses at most the
events since its last checkpoint). Tags: ``loss/<term>`` (l1, l2, vgg, content, adv, g_total, d_loss, gp,
drift, wasserstein, d_real, d_fake), ``lr/generator``, ``lr/discriminator``, and the image
``preview/lr_sr_hr`` (LR nearest-upsampled | SR of the EMA generator | HR, RGB = B04, B03, B02, 2–98 % stretch
of the HR patch per channel) every ``preview_every`` steps.
"""

from __future__ import annotations

import copy
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stacsr.model.discriminator import Discriminator
from stacsr.model.generator import Generator
from stacsr.model.losses import (
    LossWeights,
    content_losses,
    discriminator_loss,
    generator_adv_loss,
    hr_pyramid,
    interior,
    perceptual_network,
)
from stacsr.model.package import ModelCard, from_bytes
from stacsr.plumbing import figures
from stacsr.train.checkpoint import PHASE_GAN, PHASE_PRETRAIN, load_checkpoint, save_checkpoint
from stacsr.train.config import TrainConfig, from_dict
from stacsr.train.degrade import mixed_batch

TB_FOLDER = "tensorboard"
PREVIEW_TAG = "preview/lr_sr_hr"


class PyramidG(nn.Module):
    """G whose ``forward`` is ``forward_pyramid``: DDP only synchronises what goes through ``forward``."""

    def __init__(self, g: Generator) -> None:
        super().__init__()
        self.g = g

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.g.forward_pyramid(x)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP (and inside :class:`PyramidG`)."""
    model = getattr(model, "module", model)
    return getattr(model, "g", model)


# ------------------------------------------------------------------ previews


def preview_image(lr: Tensor, sr: Tensor, hr: Tensor, bands: Sequence[str]) -> np.ndarray:
    """``(3, H, 3W)`` float32 in [0, 1]: LR (nearest) | SR | HR of one sample ``(bands, …)``, RGB, stretched
    per channel by the figure renderer on the HR patch."""
    lr_up = F.interpolate(lr[None].float(), size=tuple(hr.shape[-2:]), mode="nearest")[0]
    panels = [t.detach().float().cpu().numpy() for t in (lr_up, sr, hr)]
    return np.concatenate(figures.stretch(panels, bands, reference=-1, per_channel=True), axis=2)


# ------------------------------------------------------------------ TensorBoard


class Board:
    """Rank 0's SummaryWriter; with a remote storage, a local folder mirrored to the storage on :meth:`sync`."""

    def __init__(self, storage: str, name: str, filesystem: Any = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.remote = None
        if "://" in storage:
            from stacsr.train.checkpoint import storage_fs

            fs_, root, _ = storage_fs(storage, filesystem)
            self.remote = (fs_, f"{root}/{name}/{TB_FOLDER}")
            self.folder = tempfile.mkdtemp(prefix="stacsr-tb-")
        else:
            self.folder = os.path.join(storage, name, TB_FOLDER)
        self.writer = SummaryWriter(self.folder)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def sync(self) -> None:
        self.writer.flush()
        if self.remote is not None:
            from pyarrow import fs

            fs_, target = self.remote
            fs_.create_dir(target, recursive=True)
            fs.copy_files(self.folder, target, source_filesystem=fs.LocalFileSystem(), destination_filesystem=fs_)

    def close(self) -> None:
        self.sync()
        self.writer.close()


# ------------------------------------------------------------------ the loop


def _batches(shard: Any, batch_size: int, rank: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(lr, hr)`` float32 batches of the worker's shard, epoch after epoch, forever."""
    epoch = 0
    while True:
        n = 0
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, dtypes=torch.float32):
            n += 1
            yield batch["lr"], batch["hr"]
        if n == 0:
            raise ValueError(
                f"worker {rank} got no full batch of {batch_size} pairs in epoch {epoch}: "
                "the manifest has too few pairs for this batch size and number of workers"
            )
        epoch += 1


def augment(lr: Tensor, hr: Tensor, dihedral: bool, gain: float) -> tuple[Tensor, Tensor]:
    """One of the 8 rotations/flips for the whole batch, and a per-pair gain in [1 − gain, 1 + gain] (the
    same for LR and HR; nodata 0 stays 0). Draws from torch's global generator (seeded per worker)."""
    if dihedral:
        k = int(torch.randint(4, (1,)))
        lr, hr = torch.rot90(lr, k, (-2, -1)), torch.rot90(hr, k, (-2, -1))
        if bool(torch.randint(2, (1,))):
            lr, hr = lr.flip(-1), hr.flip(-1)
    if gain:
        g = 1 + gain * (2 * torch.rand(lr.shape[0], 1, 1, 1, device=lr.device) - 1)
        lr, hr = lr * g, hr * g
    return lr, hr


def worker_lr(lr: Tensor, hr: Tensor, config: TrainConfig, degrade_in_loop: bool) -> Tensor:
    """The batch's LR: ``lr`` as read, or with ``degrade_in_loop`` remade from ``hr`` by the config's mixed
    degradation (a fresh σ per sample, from torch's global generator)."""
    if not degrade_in_loop:
        return lr
    Dg = config.degradation
    return mixed_batch(hr, config.generator.scale, Dg.sigma, Dg.noise_std, sigma_min=Dg.sigma_min)


def set_learning_rates(nets: "Nets", optimiser: Any, step: int, steps: int) -> None:
    """Both optimisers' learning rates for ``step`` (0-based) from the schedule of ``optimiser``."""
    f = optimiser.factor(step, steps)
    for opt, base in ((nets.opt_g, optimiser.lr_g), (nets.opt_d, optimiser.lr_d)):
        for group in opt.param_groups:
            group["lr"] = base * f


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _floats(d: dict[str, Tensor | float]) -> dict[str, float]:
    return {k: float(v.detach().float().item() if isinstance(v, Tensor) else v) for k, v in d.items()}


@dataclass
class Nets:
    """What one training step updates: G and D (raw and as wrapped for DDP), the EMA of G, the optimisers."""

    G: Generator
    Gp: nn.Module  # PyramidG(G) under DDP
    D: Discriminator
    Dp: nn.Module  # D under DDP
    ema: Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def build_nets(config: TrainConfig, device: torch.device | str, init: Generator | None = None) -> Nets:
    """G (with ``init``'s weights when given), D, the EMA of G and one Adam each, on ``device``, seeded by
    ``config.seed`` (every worker starts from the same networks). ``Gp``/``Dp`` are not wrapped yet: load a
    checkpoint first, then wrap them for DDP (:func:`wrap_nets`)."""
    torch.manual_seed(config.seed)
    G, D = Generator(config.generator), Discriminator(config.discriminator_config)
    if init is not None:
        G.load_state_dict(init.state_dict())
    G.to(device)
    D.to(device)
    ema = copy.deepcopy(G).requires_grad_(False).eval()
    opt = config.optimiser
    opt_g = torch.optim.Adam(G.parameters(), lr=opt.lr_g, betas=opt.betas, eps=opt.eps)
    opt_d = torch.optim.Adam(D.parameters(), lr=opt.lr_d, betas=opt.betas, eps=opt.eps)
    return Nets(G, PyramidG(G), D, D, ema, opt_g, opt_d)


def wrap_nets(nets: Nets, wrap: Any) -> Nets:
    """``nets`` whose ``Gp`` and ``Dp`` go through ``wrap`` (``ray.train.torch.prepare_model``, or DDP)."""
    return replace(nets, Gp=wrap(nets.Gp), Dp=wrap(nets.D))


def train_step(
    nets: Nets,
    lr: Tensor,
    hr: Tensor,
    weights: LossWeights,
    vgg: nn.Module | None,
    levels: int,
    norm: float,
    gan: bool,
    amp: Any,
    ema_decay: float,
    border: int = 0,
) -> dict[str, Tensor]:
    """One optimiser step: a D step (when ``gan``), a G step on content (+ adversarial) loss, the EMA update.

    Returns every loss term of the step (``d_loss``, ``gp``… only when ``gan``).
    """
    hr_pyr = hr_pyramid(hr, levels)
    with amp:
        sr_pyr = [y.float() for y in nets.Gp(lr)]
    metrics: dict[str, Tensor] = {}
    gan = gan and weights.gan > 0
    if gan:
        nets.opt_d.zero_grad(set_to_none=True)
        with amp:
            d_terms = discriminator_loss(weights.gan_kind, nets.Dp, hr_pyr, sr_pyr, weights.gp, weights.drift, norm)
        d_terms["d_loss"].float().backward()
        nets.opt_d.step()
        metrics.update(d_terms)
    nets.opt_g.zero_grad(set_to_none=True)
    with amp:
        terms = content_losses(interior(sr_pyr, border), interior(hr_pyr, border), weights, vgg, norm)
        g_total = terms["content"]
        if gan:
            nets.D.requires_grad_(False)  # the raw D: its gradients are not wanted, DDP not involved
            adv = generator_adv_loss(weights.gan_kind, nets.D, hr_pyr, sr_pyr)
            nets.D.requires_grad_(True)
            g_total = g_total + weights.gan * adv
            metrics["adv"] = adv
    g_total.float().backward()
    nets.opt_g.step()
    ema_update(nets.ema, nets.G, ema_decay)
    metrics.update(terms, g_total=g_total)
    return metrics


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function. ``loop_config`` (built by :func:`stacsr.train.trainer.train`):

    ``config`` (TrainConfig dict), ``card`` (ModelCard dict of the generator being trained), ``storage``,
    ``name``, ``storage_filesystem`` (pyarrow, or None), ``init_weights`` (safetensors bytes of a package's
    generator, or None: used only when the run has no checkpoint yet), ``degrade_in_loop`` (remake LR from HR
    with the config's mixed degradation at every step).
    """
    import ray.train
    import ray.train.torch

    config: TrainConfig = from_dict(loop_config["config"])
    card = ModelCard.from_dict(loop_config["card"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    weights = config.losses.weights()
    norm = config.generator.norm_scale
    levels = config.generator.n_upsample + 1

    init = None
    if loop_config.get("init_weights") is not None:
        init = from_bytes(loop_config["init_card"], loop_config["init_weights"], source="--init-from").generator
    nets = build_nets(config, device, init)
    G, D, ema, opt_g, opt_d, opt = nets.G, nets.D, nets.ema, nets.opt_g, nets.opt_d, config.optimiser

    start = 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            start = load_checkpoint(
                folder, generator=G, generator_ema=ema, discriminator=D, optimizer_g=opt_g, optimizer_d=opt_d
            ).step
    if start >= config.steps:
        return  # already trained this far: nothing to do (no report, no new checkpoint)

    vgg = perceptual_network(weights, config.losses.vgg_weights, config.losses.vgg_layer)
    if vgg is not None:
        vgg.to(device)
    nets = wrap_nets(nets, ray.train.torch.prepare_model)
    torch.manual_seed(config.seed * 7919 + 1000 * rank + start)  # GP mixing, per worker and session

    board = (
        Board(loop_config["storage"], loop_config["name"], loop_config.get("storage_filesystem")) if rank == 0 else None
    )
    shard = ray.train.get_dataset_shard("train")
    step = start
    extra = {"discriminator": config.discriminator_config.to_dict(), "config": config.to_dict(), "world_size": world}
    try:
        for lr, hr in _batches(shard, config.batch_size, rank):
            lr, hr = lr.to(device), hr.to(device)
            lr = worker_lr(lr, hr, config, bool(loop_config.get("degrade_in_loop")))
            lr, hr = augment(lr, hr, config.augment.dihedral, config.augment.gain)
            set_learning_rates(nets, opt, step, config.steps)
            phase = PHASE_PRETRAIN if step < config.pretrain_steps else PHASE_GAN
            metrics = train_step(
                nets, lr, hr, weights, vgg, levels, norm, phase == PHASE_GAN, amp, config.ema, config.losses.border
            )
            step += 1

            if board is not None and (step % config.log_every == 0 or step == config.steps or step == start + 1):
                board.scalars({f"loss/{k}": v for k, v in _floats(metrics).items()}, step)
                board.scalars(
                    {"lr/generator": opt_g.param_groups[0]["lr"], "lr/discriminator": opt_d.param_groups[0]["lr"]}, step
                )
            if board is not None and (step % config.preview_every == 0 or step == config.steps):
                with torch.no_grad():
                    sr = ema(lr[:1].float())[0]
                board.image(PREVIEW_TAG, preview_image(lr[0], sr, hr[0], card.bands), step)
            if step % config.checkpoint_every == 0 or step == config.steps:
                report = {"step": step, "phase": phase, **_floats(metrics)}
                if rank == 0:
                    board.sync()
                    with tempfile.TemporaryDirectory(prefix="stacsr-ckpt-") as folder:
                        save_checkpoint(
                            folder,
                            card=card,
                            generator=G,
                            generator_ema=ema,
                            discriminator=D,
                            optimizer_g=opt_g,
                            optimizer_d=opt_d,
                            step=step,
                            phase=phase,
                            extra=extra,
                        )
                        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
                else:
                    ray.train.report(report, checkpoint=None)
            if step >= config.steps:
                break
    finally:
        if board is not None:
            board.close()
