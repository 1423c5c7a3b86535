"""One MTGAN training step at a time: build the networks of a variant, pre-train G, step D, step G.

The steps read top to bottom like BasicSR's SRGAN model: the discriminator step sees a detached
super-resolved batch, so it cannot move G; the generator step freezes D's parameters, so it cannot
move D; the generator step back-propagates D's classification and regression losses on the SR
images into G and then steps G's optimiser (tested: a G step driven by those losses alone changes
G's weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from jobs.mtgan import losses
from jobs.mtgan.models import BilinearUpsampler, Discriminator, Generator, resnet_backbone
from jobs.mtgan.settings import Preset, Variant


def build_networks(variant: Variant, preset: Preset, num_classes: int, scale: int) -> tuple[nn.Module | None, Discriminator]:
    """The generator (None when the variant has none) and the discriminator."""
    g: nn.Module | None = None
    if variant.generator == "learned":
        layers = {2: 1, 4: 2, 8: 3}.get(scale)
        if layers is None:
            raise ValueError(f"the generator up-samples by 2, 4 or 8, not {scale}")
        g = Generator(preset.g_channels, preset.g_residual_blocks, preset.g_upsample_channels, layers)
    elif variant.generator == "bilinear":
        g = BilinearUpsampler(scale)
    backbone, features = resnet_backbone(preset.d_backbone, None if preset.d_weights == "none" else preset.d_weights)
    return g, Discriminator(backbone, features, num_classes, variant.heads)


def to_model(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No gradients for `module`'s parameters inside the block."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _finite(total: torch.Tensor, terms: dict[str, torch.Tensor], where: str) -> None:
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite {where} loss: {({k: float(v.detach()) for k, v in terms.items()})}")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def pretrain_step(g: nn.Module, g_opt: torch.optim.Optimizer, lr: torch.Tensor, hr: torch.Tensor, autocast: Any) -> dict[str, float]:
    """Stage 1: the generator as a plain super-resolution network (MSE only)."""
    with autocast():
        loss = losses.mse(g(lr), hr)
    _finite(loss, {"loss_mse": loss}, "pre-training")
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    return {"loss_mse": float(loss.detach())}


def discriminator_step(
    d: nn.Module, d_opt: torch.optim.Optimizer, sr: torch.Tensor | None, hr: torch.Tensor, labels: torch.Tensor,
    targets: torch.Tensor, variant: Variant, preset: Preset, autocast: Any,
) -> dict[str, float]:
    """Eq 11 with G fixed: D on the super-resolved images (detached: nothing here reaches G) and,
    unless the variant trains on up-sampled images only (SBU), on the real HR images."""
    sr = sr.detach() if sr is not None else None
    with autocast():
        out_sr = d(sr) if sr is not None else None
        out_hr = d(hr) if variant.generator in ("learned", "none") else None
        terms = losses.discriminator_losses(out_sr, out_hr, labels, targets, preset.alpha, preset.beta, preset.gamma)
        total = sum(terms.values())
    _finite(total, terms, "discriminator")
    d_opt.zero_grad(set_to_none=True)
    total.backward()
    d_opt.step()
    metrics = {k: float(v.detach()) for k, v in terms.items()}
    if out_sr is not None:
        metrics["acc_sr"] = _accuracy(out_sr["cls"].detach(), labels)
        if "gan" in out_sr:
            metrics["d_sr"] = float(torch.sigmoid(out_sr["gan"].detach().float()).mean())
    if out_hr is not None:
        metrics["acc_hr"] = _accuracy(out_hr["cls"].detach(), labels)
        if "gan" in out_hr:
            metrics["d_real"] = float(torch.sigmoid(out_hr["gan"].detach().float()).mean())
    return metrics


def generator_step(
    d: nn.Module, g_opt: torch.optim.Optimizer, sr: torch.Tensor, hr: torch.Tensor, labels: torch.Tensor,
    targets: torch.Tensor, terms: tuple[str, ...], preset: Preset, autocast: Any, mse_weight: float = 1.0,
) -> dict[str, float]:
    """Eq 10 with D fixed: `sr` = G(LR) with its graph; D's (frozen) losses on it flow back into G,
    and G's optimiser steps. Pass D unwrapped from DistributedDataParallel: only G's gradients are
    synchronised here."""
    with frozen(d), autocast():
        parts = losses.generator_losses(d(sr), sr, hr, labels, targets, terms, preset.alpha, preset.beta, preset.gamma)
        parts["loss_mse"] = mse_weight * parts["loss_mse"]
        total = sum(parts.values())
    _finite(total, parts, "generator")
    g_opt.zero_grad(set_to_none=True)
    total.backward()
    g_opt.step()
    return {f"g_{k}": float(v.detach()) for k, v in parts.items()}


def train_step(
    g: nn.Module | None, d: nn.Module, d_opt: torch.optim.Optimizer, g_opt: torch.optim.Optimizer | None,
    lr: torch.Tensor, hr: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, variant: Variant, preset: Preset,
    autocast: Any, d_plain: nn.Module | None = None,
) -> dict[str, float]:
    """One stage-2 iteration: G super-resolves the batch once; one D step; one G step."""
    learned = variant.generator == "learned"
    with autocast(), (contextlib.nullcontext() if learned else torch.no_grad()):
        sr = g(lr) if g is not None else None
    metrics = discriminator_step(d, d_opt, sr, hr, labels, targets, variant, preset, autocast)
    if learned:
        metrics |= generator_step(d_plain or d, g_opt, sr, hr, labels, targets, variant.g_terms, preset, autocast)
    return metrics
