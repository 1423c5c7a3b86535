"""MTGAN's losses (paper Eqs 4-11) as plain functions returning dicts of `g_loss_*` (G's) and `d_loss_*` (D's) terms.

N is the batch size; every term is a mean over the N samples of the batch (the regression term
too: summed over the positives and divided by N, as Fast R-CNN and torchvision do), so that the
gradients of a DistributedDataParallel job equal those of one process on the global batch.

- pixel-wise MSE (Eq 4): mean of the squared SR - HR differences;
- adversarial (Eq 5) for G: the non-saturating form -log D(G(LR)) (the paper's log(1 - D(G(LR)))
  saturates while D wins; the non-saturating form has the same fixed point), i.e. binary
  cross-entropy of D's logit on SR against "real";
- GAN loss for D: binary cross-entropy of real HR against "real" plus SR against "fake";
- classification (Eq 6): cross-entropy of the K+1 logits against the label u (0 = background);
- regression (Eqs 7-8): smooth L1 (threshold 1) of t - v, summed over the 4 offsets, positives
  only (u >= 1).
Generator step (Eq 10): alpha * adv + beta * cls(SR) + gamma * reg(SR) + MSE.
Discriminator step (Eq 11): alpha * GAN + beta * (cls(SR) + cls(HR)) + gamma * (reg(SR) + reg(HR)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(sr, hr)


def adversarial_for_g(logit_sr: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit_sr, torch.ones_like(logit_sr))


def gan_for_d(logit_hr: torch.Tensor, logit_sr: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit_hr, torch.ones_like(logit_hr)) + F.binary_cross_entropy_with_logits(logit_sr, torch.zeros_like(logit_sr))


def classification(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def regression(offsets: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    positive = (labels > 0).to(offsets.dtype)[:, None]
    per_offset = F.smooth_l1_loss(offsets, targets, beta=1.0, reduction="none")
    return (per_offset * positive).sum() / labels.numel()


def generator_losses(
    out_sr: dict[str, torch.Tensor],
    sr: torch.Tensor,
    hr: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    terms: tuple[str, ...],
    alpha: float,
    beta: float,
    gamma: float,
) -> dict[str, torch.Tensor]:
    """Eq 10: the weighted terms of the generator's loss (the ones in `terms`, plus MSE)."""
    losses = {"g_loss_mse": mse(sr, hr)}
    if "adv" in terms:
        losses["g_loss_adv"] = alpha * adversarial_for_g(out_sr["gan"])
    if "cls" in terms:
        losses["g_loss_cls"] = beta * classification(out_sr["cls"], labels)
    if "reg" in terms and "reg" in out_sr:
        losses["g_loss_reg"] = gamma * regression(out_sr["reg"], targets, labels)
    return losses


def discriminator_losses(
    out_sr: dict[str, torch.Tensor] | None,
    out_hr: dict[str, torch.Tensor] | None,
    labels: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
) -> dict[str, torch.Tensor]:
    """Eq 11 over the images D sees (SR and/or HR; None when D does not see that kind)."""
    outs = [o for o in (out_sr, out_hr) if o is not None]
    losses = {"d_loss_cls": beta * sum(classification(o["cls"], labels) for o in outs)}
    if "reg" in outs[0]:
        losses["d_loss_reg"] = gamma * sum(regression(o["reg"], targets, labels) for o in outs)
    if out_sr is not None and out_hr is not None and "gan" in out_sr:
        losses["d_loss_gan"] = alpha * gan_for_d(out_hr["gan"], out_sr["gan"])
    return losses
