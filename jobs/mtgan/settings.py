"""Every knob of MTGAN training in one place: the presets and the ablation variants.

A `Preset` holds the numbers of a training run; the config names one (`mtgan.preset`) and may
override single fields (`mtgan.overrides`). The `paper` presets follow the paper (Section 4.2 and
METHOD.md) exactly where it gives numbers; where it is silent the choice is ours and marked
"(ours)". The small presets name every departure from Table 1 in `departures`, which the training
log and the report print.

A `Variant` says what an ablation changes (paper Tables 3-5): whether a generator is trained,
which discriminator heads exist, which terms enter the generator's loss, and what D sees.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    # Generator (Table 1: 64 channels, 5 residual blocks, 2 de-convs of 256).
    g_channels: int = 64
    g_residual_blocks: int = 5
    g_upsample_channels: int = 256
    # Discriminator backbone and its weights: none (random) or torchvision (ImageNet).
    d_backbone: str = "resnet50"
    d_weights: str = "torchvision"
    # Loss weights (paper Section 4.2).
    alpha: float = 0.001
    beta: float = 0.01
    gamma: float = 0.01
    # Optimisation. D: SGD lr 0.01, /10 every 40k mini-batches, 80k in all (paper). G: Adam.
    batch_size: int = 128  # (ours: Fast R-CNN's 128 ROIs per mini-batch)
    pretrain_iterations: int = 10_000  # MSE pre-training of G (ours: the paper gives no number)
    iterations: int = 80_000
    d_lr: float = 0.01
    d_momentum: float = 0.9  # (ours)
    d_weight_decay: float = 1e-4  # (ours)
    d_lr_step: int = 40_000
    g_lr: float = 1e-4  # (ours: SRGAN's)
    positive_fraction: float | None = None  # per-batch share of positives (None: as sampled in the shards)
    # A schedule in epochs over the training ROIs instead (WIDER FACE: 3 epochs at lr, 3 at lr/10):
    # when set, they replace `iterations` and `d_lr_step` once the shards' ROI count is known.
    epochs: float | None = None
    d_lr_step_epochs: float | None = None
    # Bookkeeping.
    log_every: int = 100
    checkpoint_every: int = 2_000
    picture_every: int = 5_000
    amp: bool = True  # bf16 autocast on CUDA
    departures: tuple[str, ...] = field(default_factory=tuple)


PRESETS: dict[str, Preset] = {
    "paper": Preset(),
    "paper-r101": Preset(d_backbone="resnet101"),
    # WIDER FACE (paper Section 4.2): D's learning rate 1e-4 for 3 epochs, then 1e-5 for 3 more.
    "paper-widerface": Preset(d_lr=1e-4, epochs=6, d_lr_step_epochs=3),
    # 2 CPU cores: about 100 pairs/s pre-training G, 35 pairs/s in GAN training (about 5 minutes for
    # the mtgan variant, 2 for sbu); every departure from the paper is named.
    "cpu": Preset(
        g_channels=32, g_residual_blocks=2, g_upsample_channels=64, d_backbone="resnet18", d_weights="none",
        batch_size=32, pretrain_iterations=100, iterations=300, d_lr=1.0, d_lr_step=250, g_lr=1e-3,
        log_every=10, checkpoint_every=100, picture_every=200,
        departures=(
            "G: 32 channels, 2 residual blocks, de-convs of 64 channels (Table 1: 64, 5, 256)",
            "D: ResNet-18 from scratch (paper: ResNet-50/101 ImageNet-pretrained; no weights offline)",
            "batch 32, 100 MSE pre-training and 300 GAN iterations, D lr /10 at 250 (paper: 80k, /10 every 40k)",
            "D SGD lr 1.0 (paper 0.01): D starts from scratch and its cls/reg terms are weighted 0.01, so the "
            "effective learning rate of its classifier is 0.01",
            "G Adam lr 1e-3 (ours: 1e-4 for the paper presets)",
        ),
    ),
    # Tests: seconds on a CPU.
    "tiny": Preset(
        g_channels=8, g_residual_blocks=1, g_upsample_channels=8, d_backbone="resnet18", d_weights="none",
        batch_size=8, pretrain_iterations=4, iterations=8, d_lr_step=6, g_lr=1e-3,
        log_every=2, checkpoint_every=4, picture_every=4,
        departures=("tiny G and D, a handful of iterations: for tests only",),
    ),
}


def resolve_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown MTGAN preset {name!r}: one of {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(Preset)} - {"departures"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"mtgan.overrides: unknown field(s) {unknown}; fields: {sorted(known)}")
    preset = dataclasses.replace(PRESETS[name], **overrides)
    if overrides:
        changed = ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
        preset = dataclasses.replace(preset, departures=(*preset.departures, f"overridden: {changed}"))
    return preset


def schedule_in_iterations(preset: Preset, num_rois: int) -> Preset:
    """`preset` with an epoch schedule turned into iterations over `num_rois` training ROIs."""
    if preset.epochs is None and preset.d_lr_step_epochs is None:
        return preset
    per_epoch = max(1, num_rois // preset.batch_size)
    iterations = round(preset.epochs * per_epoch) if preset.epochs is not None else preset.iterations
    step = round(preset.d_lr_step_epochs * per_epoch) if preset.d_lr_step_epochs is not None else preset.d_lr_step
    return dataclasses.replace(preset, iterations=max(1, iterations), d_lr_step=max(1, step))


@dataclass(frozen=True)
class Variant:
    name: str
    generator: str  # "learned" (MTGAN's G), "bilinear" (SBU) or "none" (D sees the HR crop: plain R-CNN)
    heads: tuple[str, ...]  # discriminator heads
    g_terms: tuple[str, ...]  # terms of the generator's loss besides MSE: adv, cls, reg
    description: str


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("mtgan", "learned", ("gan", "cls", "reg"), ("adv", "cls", "reg"), "the full method"),
    Variant("sbu", "bilinear", ("cls", "reg"), (), "G replaced by bilinear 4x up-sampling; D with cls + reg (Table 4)"),
    Variant("d_no_adv", "none", ("cls", "reg"), (), "plain R-CNN style: D without the adversarial branch on the HR crops (Table 3)"),
    Variant("no_reg_branch", "learned", ("gan", "cls"), ("adv", "cls"), "D without the regression branch (Table 5)"),
    Variant("no_adv_loss", "learned", ("gan", "cls", "reg"), ("cls", "reg"), "no adversarial term in G's loss (Table 5)"),
    Variant("no_cls_loss", "learned", ("gan", "cls", "reg"), ("adv", "reg"), "no classification term in G's loss (Table 5)"),
    Variant("no_reg_loss", "learned", ("gan", "cls", "reg"), ("adv", "cls"), "no regression term in G's loss (Table 5)"),
)}
