"""Every knob of MTGAN training in one place: the presets, the ablation variants and the test-time
rules, each defined once (the config schema takes their names from here: `x-registry` in the schema).

A `Preset` holds the numbers of a training run; the config names one (`mtgan.preset`) and may
override single fields (`mtgan.overrides`). The `paper` presets follow the paper (its Section 4.2
and Table 1) exactly where it gives numbers; where it is silent the choice is ours and marked
"(ours)". The small presets name every departure from Table 1 in `departures`, which the training
log and the report print.

A `Variant` says what an ablation changes (paper Tables 3-5): whether a generator is trained,
which discriminator heads exist, which terms enter the generator's loss, and what D sees.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from core.errors import PipelineError


class PresetError(PipelineError):
    """A preset name or override that is not allowed; names the key."""


def _knob(default: Any, minimum: float | None = None, maximum: float | None = None, above: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A preset field with its allowed values (checked by `preset_problems`, at config validation)."""
    limits = {"min": minimum, "max": maximum, "above": above, "choices": choices}
    return field(default=default, metadata={k: v for k, v in limits.items() if v is not None})


D_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass(frozen=True)
class Preset:
    # Generator (Table 1: 64 channels, 5 residual blocks, 2 de-convs of 256).
    # (The maxima bound what a model file may ask to allocate: 16x the paper's sizes and more.)
    g_channels: int = _knob(64, minimum=1, maximum=1024)
    g_residual_blocks: int = _knob(5, minimum=0, maximum=64)
    g_upsample_channels: int = _knob(256, minimum=1, maximum=4096)
    # Discriminator backbone and its weights: none (random) or torchvision (ImageNet). Output stride
    # 16 as in Table 1 (no max-pool). Stem: Table 1's conv 3x3 stride 2, or torchvision's pretrained
    # conv 7x7 stride 2, which ImageNet weights need (with width 64). Width: channels of layer1
    # (64 in Table 1; each later layer doubles it).
    d_backbone: str = _knob("resnet50", choices=D_BACKBONES)
    d_weights: str = _knob("torchvision", choices=("none", "torchvision"))
    d_stem: str = _knob("7x7", choices=("3x3", "7x7"))
    d_width: int = _knob(64, minimum=4, maximum=256)
    # Initial std of the regression head's weights (paper: N(0, 0.1) for every fc head).
    reg_init_std: float = _knob(0.1, minimum=0)
    # Loss weights (paper Section 4.2).
    alpha: float = _knob(0.001, minimum=0)
    beta: float = _knob(0.01, minimum=0)
    gamma: float = _knob(0.01, minimum=0)
    # Optimisation. D: SGD lr 0.01, /10 every 40k mini-batches, 80k in all (paper). G: Adam.
    batch_size: int = _knob(128, minimum=1)  # (ours: Fast R-CNN's 128 ROIs per mini-batch)
    pretrain_iterations: int = _knob(10_000, minimum=0)  # MSE pre-training of G (ours: the paper gives no number)
    iterations: int = _knob(80_000, minimum=1)
    d_optimizer: str = _knob("sgd", choices=("sgd", "adamw"))  # paper: SGD
    d_lr: float = _knob(0.01, above=0)
    d_momentum: float = _knob(0.9, minimum=0, maximum=1)  # (ours)
    d_weight_decay: float = _knob(1e-4, minimum=0)  # (ours)
    d_lr_step: int = _knob(40_000, minimum=1)
    g_lr: float = _knob(1e-4, above=0)  # (ours: SRGAN's)
    # Per-batch share of positives (None: as sampled in the shards).
    positive_fraction: float | None = _knob(None, above=0, maximum=1)
    # A schedule in epochs over the training ROIs instead (WIDER FACE: 3 epochs at lr, 3 at lr/10):
    # when set, they replace `iterations` and `d_lr_step` once the shards' ROI count is known.
    epochs: float | None = _knob(None, above=0)
    d_lr_step_epochs: float | None = _knob(None, above=0)
    # D's batch norm: "joint" (ours): each D step is one forward pass over SR and HR together, and the
    # G step leaves D's running statistics untouched, so they describe the mix of SR and HR images D
    # sees at test time; "separate": SR and HR in separate passes and the G step updating the
    # statistics with SR alone (the statistics then drift from what inference sees).
    d_batchnorm: str = _knob("joint", choices=("joint", "separate"))
    # D's eval-mode accuracy on a fixed held-out slice of the training ROIs (the last
    # `holdout_blocks` blocks of the shards, never trained on), logged every `eval_every` steps
    # under every test-time rule that applies to the variant (jobs/mtgan/roi_input.py). The rule
    # itself is an inference setting (config `infer.rules`), not a training one.
    holdout_blocks: int = _knob(4, minimum=0)
    eval_every: int = _knob(500, minimum=1)
    # Bookkeeping.
    log_every: int = _knob(100, minimum=1)
    checkpoint_every: int = _knob(2_000, minimum=1)
    picture_every: int = _knob(5_000, minimum=1)
    # bf16 autocast where it pays (CUDA; CPUs with AMX: `jobs.common.bf16_fast`), fp32 elsewhere;
    # channels-last memory for G and D. Both are also what infer runs with. On a 2-core Xeon with
    # AMX together 2-3x faster per training step than fp32 (bench/README.md: 2.4x alone, 2.9x under
    # load), on one with AVX512-BF16 but no AMX bf16 was 0.75x; the `cpu` preset stays in fp32 until
    # the dev split's comparison over seeds is complete (docs/choices.md).
    amp: bool = True
    channels_last: bool = True
    departures: tuple[str, ...] = field(default_factory=tuple)


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _value_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is not allowed for the preset field `f` (None when it is)."""
    kinds = [k.strip() for k in str(f.type).split("|")]
    if value is None:
        return None if "None" in kinds else "must not be null"
    allowed = tuple(t for k in kinds for t in _TYPES.get(k, ()))
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        return f"must be {' or '.join(kinds)}, got {type(value).__name__} {value!r}"
    m = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if "choices" in m and value not in m["choices"]:
        return f"must be one of {list(m['choices'])}, got {value!r}"
    if "min" in m and value < m["min"]:
        return f"must be >= {m['min']}, got {value!r}"
    if "max" in m and value > m["max"]:
        return f"must be <= {m['max']}, got {value!r}"
    if "above" in m and value <= m["above"]:
        return f"must be > {m['above']}, got {value!r}"
    return None


def preset_problems(name: str, overrides: dict[str, Any] | None) -> list[str]:
    """Everything wrong with preset `name` changed by `overrides`, one line each naming the key
    (config validation reports these before any job runs)."""
    if name not in PRESETS:
        return [f"key 'mtgan.preset': unknown preset {name!r}; one of {sorted(PRESETS)}"]
    if not isinstance(overrides, dict):
        return [f"key 'mtgan.overrides': must be a mapping of preset fields, got {type(overrides).__name__}"]
    fields = {f.name: f for f in dataclasses.fields(Preset) if f.name != "departures"}
    problems = []
    for key, value in overrides.items():
        if key not in fields:
            problems.append(f"key 'mtgan.overrides.{key}': unknown preset field; fields: {', '.join(sorted(fields))}")
        elif (why := _value_problem(fields[key], value)) is not None:
            problems.append(f"key 'mtgan.overrides.{key}': {why}")
    if not problems:
        preset = dataclasses.replace(PRESETS[name], **overrides)
        if preset.d_weights == "torchvision" and (preset.d_stem, preset.d_width) != ("7x7", 64):
            problems.append(
                f"key 'mtgan.overrides': ImageNet weights (d_weights torchvision) need d_stem 7x7 and d_width 64, not {preset.d_stem} and {preset.d_width}"
            )
    return problems


# fmt: off
# (a table: each preset's fields grouped by what they set, G, D, optimisation, bookkeeping)
PRESETS: dict[str, Preset] = {
    "paper": Preset(),
    "paper-r101": Preset(d_backbone="resnet101"),
    # WIDER FACE (paper Section 4.2): D's learning rate 1e-4 for 3 epochs, then 1e-5 for 3 more.
    "paper-widerface": Preset(d_lr=1e-4, epochs=6, d_lr_step_epochs=3),
    # 2 CPU cores: about 90 pairs/s in GAN training in fp32 (de-convs of 32 channels: 1.75x the
    # 64 of before, within the seed spread on the dev split: docs/choices.md); every departure
    # from the paper is named. The held-out eval every 250 steps (7 points per run; every 100 gave
    # 16, each costing MTGAN's job 3-4 s): it reads the networks in eval mode and draws no random
    # numbers, so the models are the same bit for bit (all three variants' against 1d7dc77's).
    "cpu": Preset(
        g_channels=32, g_residual_blocks=2, g_upsample_channels=32,
        d_backbone="resnet18", d_weights="none", d_stem="3x3", d_width=16,
        batch_size=32, positive_fraction=0.5, pretrain_iterations=150, iterations=1500,
        d_optimizer="adamw", d_lr=2e-3, d_weight_decay=0.01, d_lr_step=1200, g_lr=1e-3,
        holdout_blocks=4, eval_every=250, log_every=20, checkpoint_every=100, picture_every=350,
        amp=False, channels_last=False,
        departures=(
            "G: 32 channels, 2 residual blocks, de-convs of 32 channels (Table 1: 64, 5, 256)",
            "D: ResNet-18 at a quarter of its width (layer1 16 channels; Table 1: ResNet-50/101 at 64, "
            "ImageNet-pretrained; no weights offline), from scratch, with Table 1's 3x3 stride-2 stem and output stride 16",
            "batch 32 with half positives (ours; the shards hold 25%), 150 MSE pre-training and 1500 GAN iterations, "
            "D lr /10 at 1200 (paper: 80k, /10 every 40k)",
            "D AdamW lr 2e-3, weight decay 0.01 (paper: SGD lr 0.01): SGD from scratch learned little in the CPU budget "
            "(bench/dev_sweep.py)",
            "G Adam lr 1e-3 (ours: 1e-4 for the paper presets)",
        ),
    ),
    # Tests: seconds on a CPU. D at a quarter width, as the `cpu` preset's: 0.64 GFLOP per
    # training pair against 9.0 at full width, about 5x the steps per second (bench/README.md).
    "tiny": Preset(
        g_channels=8, g_residual_blocks=1, g_upsample_channels=8, d_backbone="resnet18", d_weights="none", d_width=16,
        batch_size=8, pretrain_iterations=4, iterations=8, d_lr_step=6, g_lr=1e-3, holdout_blocks=2,
        log_every=2, checkpoint_every=4, picture_every=4,
        departures=("tiny G and D, a handful of iterations: for tests only",),
    ),
}
# fmt: on


# What every preset does where the paper is silent, or where it does otherwise (a preset's own
# departures are in its `departures`). The training log prints them; docs/choices.md has the whole
# list with the paper's lines.
READINGS: tuple[str, ...] = (
    "our reading: every ROI, whatever its size, is resized to the 64x64 HR crop and its LR image is that crop down-sampled 4x "
    "(16x16), and on the paper's path every test ROI reaches D through G from that 16x16 image; the paper gives D's 64x64 input "
    "(lines 1047-1048), the bicubic 4x LR of the training pairs (lines 781-783) and sends the test ROIs through G (lines "
    "1523-1538), but never says that a large ROI is shrunk to 16x16 first",
    "departure: the pixel-wise MSE is the mean over pixels and channels of the squared SR - HR difference; Eq 4 (lines 473-480) "
    "is the batch mean of each image's squared norm, 3 x 64 x 64 = 12,288 times larger, which sets what alpha, beta and gamma "
    "weigh against it",
    "our reading: each iteration steps D, then G, on the same SR images; the paper: 'alternately updated as in (Goodfellow et "
    "al., 2014)' (lines 769-770), whose Algorithm 1 updates D before G",
)


def stored_preset_problems(values: Any) -> list[str]:
    """Everything wrong with a preset read back from a file (a model's `preset` entry), checked
    field by field as the config's overrides are, one line each naming the field."""
    if not isinstance(values, dict):
        return [f"preset: must be a mapping of preset fields, got {type(values).__name__}"]
    fields = {f.name: f for f in dataclasses.fields(Preset) if f.name != "departures"}
    problems = [f"preset field {k!r}: unknown" for k in values if k not in fields and k != "departures"]
    problems += [f"preset field {k!r}: missing" for k in fields if k not in values]
    problems += [f"preset field {k!r}: {why}" for k, f in fields.items() if k in values and (why := _value_problem(f, values[k])) is not None]
    return problems


def resolve_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """Preset `name` with `overrides` applied (each checked: PresetError names the key)."""
    overrides = dict(overrides or {})
    problems = preset_problems(name, overrides)
    if problems:
        raise PresetError("\n  ".join(problems))
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
    """An ablation (paper Tables 3-5), defined once: what it trains, what D learns from, and how
    the table, the report and the CLI name and draw it (registry order = the table's order)."""

    name: str
    generator: str  # "learned" (MTGAN's G), "bilinear" (SBU) or "none" (D sees the HR crop: plain R-CNN)
    heads: tuple[str, ...]  # discriminator heads
    g_terms: tuple[str, ...]  # terms of the generator's loss besides MSE: adv, cls, reg
    d_inputs: tuple[str, ...]  # what D trains on: "sr" (the up-sampled LR images) and/or "hr" (the HR crops)
    label: str  # the table's row name
    color: str  # the report's colour (an ensemble is drawn darker)
    description: str


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # Table 3's control, "our discriminator network without adversarial branch": the paper feeds it
        # "the resized proposals (e.g. 224 x 224)" (paper lines 1037-1039); ours is the 64x64 HR crop.
        Variant(
            "d_no_adv",
            "none",
            ("cls", "reg"),
            (),
            ("hr",),
            "D w/o adv branch",
            "#2ca02c",
            "Table 3's control: D without the adversarial branch, trained on and fed the resized proposal (our 64x64 HR crop; the paper's is 224x224)",
        ),
        # Table 4's SBU: "We upsample the training ROIs 4 times (i.e. to 64x64) and train a detector with
        # both classification and regression branches" (paper lines 1056-1058): D sees up-sampled ROIs only.
        Variant(
            "sbu",
            "bilinear",
            ("cls", "reg"),
            (),
            ("sr",),
            "SBU (bilinear up-sampler as G)",
            "#1f77b4",
            "Table 4's SBU: G replaced by bilinear 4x up-sampling of the LR image; D with cls + reg heads, trained on and fed the up-sampled images only",
        ),
        Variant(
            "sbu_hr",
            "bilinear",
            ("cls", "reg"),
            (),
            ("sr", "hr"),
            "SBU, D also trained on HR crops (ours)",
            "#6baed6",
            "ours: SBU whose D trains on the up-sampled and the HR images, as MTGAN's D does",
        ),
        Variant("mtgan", "learned", ("gan", "cls", "reg"), ("adv", "cls", "reg"), ("sr", "hr"), "MTGAN", "#d62728", "the full method"),
        Variant(
            "no_reg_branch",
            "learned",
            ("gan", "cls"),
            ("adv", "cls"),
            ("sr", "hr"),
            "MTGAN w/o regression branch",
            "#9467bd",
            "D without the regression branch (Table 5)",
        ),
        Variant(
            "no_adv_loss",
            "learned",
            ("gan", "cls", "reg"),
            ("cls", "reg"),
            ("sr", "hr"),
            "MTGAN w/o adversarial loss in G",
            "#ff7f0e",
            "no adversarial term in G's loss (Table 5)",
        ),
        Variant(
            "no_cls_loss",
            "learned",
            ("gan", "cls", "reg"),
            ("adv", "reg"),
            ("sr", "hr"),
            "MTGAN w/o classification loss in G",
            "#e377c2",
            "no classification term in G's loss (Table 5)",
        ),
        Variant(
            "no_reg_loss",
            "learned",
            ("gan", "cls", "reg"),
            ("adv", "cls"),
            ("sr", "hr"),
            "MTGAN w/o regression loss in G",
            "#17becf",
            "no regression term in G's loss (Table 5)",
        ),
    )
}


# What a test-time rule sends to D for each ROI (TestTimeRule.routing; jobs/mtgan/roi_input.py):
UP_SAMPLED = "up-sampled"  # every ROI's LR image through the variant's up-sampler (G, or bilinear for SBU)
UP_SAMPLED_UP_TO_G_MAX_SIDE = "up-sampled up to g_max_side"  # that for crops up to g_max_side px, the HR crop above
HR_CROP = "HR crop"  # every ROI as its HR crop
ROUTINGS = (UP_SAMPLED, UP_SAMPLED_UP_TO_G_MAX_SIDE, HR_CROP)


@dataclass(frozen=True)
class TestTimeRule:
    """A test-time rule, defined once: what D sees for each ROI (an inference setting, config
    `infer.rules`; the rules' names are this registry's keys and appear nowhere else)."""

    label: str  # what the table's row names say about the path
    description: str
    routing: str  # one of ROUTINGS
    # Whether a variant without an up-sampler or whose D never trains on HR crops has a row of its
    # own under this rule (False: the rule feeds D HR crops, a variant's D must know them).
    every_variant: bool

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise ValueError(f"test-time rule routing {self.routing!r}: one of {list(ROUTINGS)}")

    @property
    def reads_g_max_side(self) -> bool:
        """Whether the rule's routing depends on `infer.g_max_side` (a change reruns its jobs only)."""
        return self.routing == UP_SAMPLED_UP_TO_G_MAX_SIDE


# The registry's first rule is the paper's path: a method under it is named by its variant alone.
RULES: dict[str, TestTimeRule] = {
    "paper": TestTimeRule("paper's path", "every ROI's LR image up-sampled 4x (the paper's path)", UP_SAMPLED, every_variant=True),
    "by_size": TestTimeRule(
        "G for small crops, HR crop above (ours)",
        "G(LR) for crops up to g_max_side px, the HR crop above (ours)",
        UP_SAMPLED_UP_TO_G_MAX_SIDE,
        every_variant=False,
    ),
    "all_hr": TestTimeRule("HR crop for every ROI (ours)", "the HR crop for every ROI (ours)", HR_CROP, every_variant=False),
}
PAPER_RULE = next(iter(RULES))
# The by_size threshold of the training job's held-out check (infer has its own setting,
# `infer.g_max_side`).
DEFAULT_G_MAX_SIDE = 16.0


def applies(rule: str, variant: Variant) -> bool:
    """Whether scoring `variant` under `rule` is a row of its own: a rule that feeds D HR crops
    applies only to a variant whose D trains on HR crops and has an up-sampler (for `d_no_adv` it
    would repeat the paper's row). The routing itself: jobs/mtgan/roi_input.py."""
    if rule not in RULES:
        raise ValueError(f"unknown test-time rule {rule!r}: one of {list(RULES)}")
    return RULES[rule].every_variant or (variant.generator != "none" and "hr" in variant.d_inputs)
