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
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from core.errors import InputError, TrainingDiverged
from core.sizes import SIZE_CLASSES
from jobs.mtgan import losses
from jobs.mtgan.models import BilinearUpsampler, Discriminator, Generator, resnet_backbone
from jobs.mtgan.roi_input import through_generator
from jobs.mtgan.settings import DEFAULT_G_MAX_SIDE, PAPER_RULE, RULES, Preset, Variant, applies


def build_networks(variant: Variant, preset: Preset, num_classes: int, scale: int) -> tuple[nn.Module | None, Discriminator]:
    """The generator (None when the variant has none) and the discriminator."""
    g: nn.Module | None = None
    if variant.generator == "learned":
        layers = {2: 1, 4: 2, 8: 3}.get(scale)
        if layers is None:
            raise InputError(f"the generator up-samples by 2, 4 or 8, not {scale}")
        g = Generator(preset.g_channels, preset.g_residual_blocks, preset.g_upsample_channels, layers)
    elif variant.generator == "bilinear":
        g = BilinearUpsampler(scale)
    weights = None if preset.d_weights == "none" else preset.d_weights
    backbone, features = resnet_backbone(preset.d_backbone, weights, preset.d_width, preset.d_stem)
    return g, Discriminator(backbone, features, num_classes, variant.heads, preset.reg_init_std)


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
        values = {k: round(float(v.detach()), 4) for k, v in terms.items()}
        raise TrainingDiverged(f"non-finite {where} loss {values}: training stopped, its last checkpoint stays (a lower learning rate may help)")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


class Batch(NamedTuple):
    """A mini-batch of training pairs on the device: LR and HR crops in [-1, 1], class labels
    (0: background) and box-regression targets."""

    lr: torch.Tensor
    hr: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor


def pretrain_step(g: nn.Module, g_opt: torch.optim.Optimizer, batch: Batch, autocast: Any) -> dict[str, float]:
    """Stage 1: the generator as a plain super-resolution network (MSE only)."""
    with autocast():
        loss = losses.mse(g(batch.lr), batch.hr)
    _finite(loss, {"g_loss_mse": loss}, "pre-training")
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    return {"g_loss_mse": float(loss.detach())}


def discriminator_step(
    d: nn.Module, d_opt: torch.optim.Optimizer, sr: torch.Tensor | None, batch: Batch, variant: Variant, preset: Preset, autocast: Any
) -> dict[str, float]:
    """Eq 11 with G fixed: D on the super-resolved images (detached: nothing here reaches G) and on
    the real HR images, each where the variant's D trains on it (`variant.d_inputs`: the paper's
    SBU sees up-sampled images only, `d_no_adv` HR crops only). With `d_batchnorm: joint` both go
    through D in one forward pass, so its batch-norm statistics are those of the mix of SR and HR
    images it sees at test time."""
    labels = batch.labels
    sr = sr.detach() if sr is not None and "sr" in variant.d_inputs else None
    hr = batch.hr if "hr" in variant.d_inputs else None
    with autocast():
        if sr is None or hr is None:
            out_sr, out_hr = (None, d(hr)) if sr is None else (d(sr), None)
        elif preset.d_batchnorm == "joint":
            out = d(torch.cat([sr, hr]))
            out_sr, out_hr = ({k: v[: len(sr)] for k, v in out.items()}, {k: v[len(sr) :] for k, v in out.items()})
        else:
            out_sr, out_hr = d(sr), d(hr)
        terms = losses.discriminator_losses(out_sr, out_hr, labels, batch.targets, preset.alpha, preset.beta, preset.gamma)
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
    if out_hr is not None and "gan" in out_hr:
        metrics["d_real"] = float(torch.sigmoid(out_hr["gan"].detach().float()).mean())
    return metrics


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Batch norm layers of `module` normalise with batch statistics but do not update their running
    statistics inside the block (train mode is kept)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats] if enabled else []
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


@contextlib.contextmanager
def eval_mode(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """`module` in eval mode inside the block (batch norm uses and keeps its running statistics)."""
    was_training = module.training
    if enabled:
        module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def generator_step(
    d: nn.Module, g_opt: torch.optim.Optimizer, sr: torch.Tensor, batch: Batch, terms: tuple[str, ...], preset: Preset, autocast: Any, mse_weight: float = 1.0
) -> dict[str, float]:
    """Eq 10 with D fixed: `sr` = G(LR) with its graph; D's (frozen) losses on it flow back into G,
    and G's optimiser steps. With `d_batchnorm: joint`, D's batch norm normalises with the batch's
    statistics but leaves its running statistics untouched (an SR-only batch must not move what
    inference uses; eval mode here was measured to blow up G's cls/reg gradients early on, while
    the running statistics lag D's weights). Pass D unwrapped from DistributedDataParallel: only
    G's gradients are synchronised here."""
    with frozen(d), running_stats_frozen(d, preset.d_batchnorm == "joint"), autocast():
        parts = losses.generator_losses(d(sr), sr, batch.hr, batch.labels, batch.targets, terms, preset.alpha, preset.beta, preset.gamma)
        parts["g_loss_mse"] = mse_weight * parts["g_loss_mse"]
        total = sum(parts.values())
    _finite(total, parts, "generator")
    g_opt.zero_grad(set_to_none=True)
    total.backward()
    g_opt.step()
    return {k: float(v.detach()) for k, v in parts.items()}


def train_step(
    g: nn.Module | None,
    d: nn.Module,
    d_opt: torch.optim.Optimizer,
    g_opt: torch.optim.Optimizer | None,
    batch: Batch,
    variant: Variant,
    preset: Preset,
    autocast: Any,
    d_plain: nn.Module | None = None,
) -> dict[str, float]:
    """One stage-2 iteration: G super-resolves the batch once; one D step; one G step."""
    learned = variant.generator == "learned"
    with autocast(), contextlib.nullcontext() if learned else torch.no_grad():
        sr = g(batch.lr) if g is not None else None  # SBU: bilinear up-sampling; plain R-CNN style D: none
    metrics = discriminator_step(d, d_opt, sr, batch, variant, preset, autocast)
    if learned:
        metrics |= generator_step(d_plain if d_plain is not None else d, g_opt, sr, batch, variant.g_terms, preset, autocast)
    return metrics


def rule_key(key: str, rule: str) -> str:
    """A metric's name under a test-time rule: as it is for the paper's path, `<key>-<rule>` else."""
    return key if rule == PAPER_RULE else f"{key}-{rule}"


@torch.inference_mode()
def evaluate_holdout(
    g: nn.Module | None, d: nn.Module, holdout: dict[str, Any], variant: Variant, margin: float, device: torch.device, autocast: Any, batch_size: int = 256
) -> dict[str, float]:
    """D's eval-mode classification accuracy on held-out ROIs under every test-time rule that
    applies to `variant` (`by_size` at DEFAULT_G_MAX_SIDE): on positives and negatives, and on
    positives by size class; keys `eval_acc_*` for the paper's path, `eval_acc_*-<rule>` for the
    others. D in eval mode treats each ROI on its own, so one pass over the up-sampled images and
    one over the HR crops give every rule's predictions. `holdout`: uint8 lr / hr, label,
    size_class, box, image_size arrays (numpy)."""
    rules = [r for r in RULES if applies(r, variant)]
    use_g = {r: through_generator(holdout["box"], holdout["image_size"], margin, r, DEFAULT_G_MAX_SIDE, variant) for r in rules}
    needs_sr, needs_hr = any(u.any() for u in use_g.values()), any((~u).any() for u in use_g.values())
    predicted: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    with eval_mode(d), eval_mode(g) if g is not None else contextlib.nullcontext():
        for start in range(0, len(holdout["label"]), batch_size):
            rows = slice(start, start + batch_size)
            hr = to_model(torch.from_numpy(holdout["hr"][rows]), device)
            with autocast():
                if needs_sr:
                    sr = g(to_model(torch.from_numpy(holdout["lr"][rows]), device))
                    predicted[True].append(d(sr)["cls"].float().argmax(1).cpu())
                if needs_hr:
                    predicted[False].append(d(hr)["cls"].float().argmax(1).cpu())
    label, size = holdout["label"], holdout["size_class"]
    right = {seen: torch.cat(p).numpy() == label for seen, p in predicted.items() if p}
    groups = {"eval_acc_pos": label > 0, "eval_acc_neg": label == 0}
    groups |= {f"eval_acc_pos_{name}": (label > 0) & (size == code) for code, name in enumerate(SIZE_CLASSES)}
    scores = {}
    for rule, through in use_g.items():
        correct = np.where(through, right.get(True, False), right.get(False, False))
        scores |= {rule_key(name, rule): float(correct[mask].mean()) for name, mask in groups.items() if mask.any()}
    return scores
