"""MTGAN training throughput per preset and numeric mode (pairs/s), and the FLOPs of a training pair.

For each preset and each mode: median time of a stage-2 iteration (one D step + one G step,
`train_step`) on random 16x16 / 64x64 batches of the preset's batch size, laid out in memory as
the training job lays out its crops, as pairs/s, and its ratio to fp32 (weights in contiguous
memory) measured in the same run; and the FLOPs of that iteration per pair,
counted by torch's FlopCounterMode (forward and backward of G and D), so throughput on any device
can be set against that device's peak FLOP/s. D weights are random (no download); the numbers do
not depend on them. Modes: fp32; channels-last; bf16 autocast (wherever torch has bf16 kernels:
CUDA, CPUs with AVX512-BF16 or AMX; elsewhere the row says so; the first line says whether the
jobs would use it here, `jobs.common.bf16_fast`); both (the presets' default,
`amp` and `channels_last`); with `--compile`, fp32 and both with `torch.compile` of G and D (the
warm-up, which compiles, is timed and printed apart).

    python bench/train_throughput.py                     # CPU, presets tiny and cpu
    python bench/train_throughput.py --presets cpu --steps 15 --compile
    python bench/train_throughput.py --device cuda --presets paper,paper-r101
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.common import bf16_fast
from jobs.mtgan.engine import Batch, build_networks, to_model, train_step
from jobs.mtgan.settings import VARIANTS, Preset, Variant, resolve_preset

from timing import median_seconds


def bf16_kernels(device: torch.device) -> bool:
    """Whether torch runs bf16 on `device` at all (CUDA, or a CPU whose oneDNN has bf16 kernels)."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


MODES = {"fp32": (False, False), "channels-last": (False, True), "bf16": (True, False), "bf16 + channels-last": (True, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,cpu")
    parser.add_argument("--variant", default="mtgan")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=8, help="K + 1")
    parser.add_argument("--compile", action="store_true", help="also fp32, and bf16 + channels-last, with torch.compile of G and D")
    parser.add_argument("--overrides", default="{}", help="preset fields to change, as JSON: '{\"d_width\": 32}'")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    variant = VARIANTS[args.variant]
    print(f"variant {variant.name}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"bf16 kernels: {bf16_kernels(device)}; bf16 used by the training and infer jobs here: {bf16_fast(device)}")
    print(f"{'preset':<7} {'mode':<32} {'G':>14} {'D':>18} {'batch':>5} {'pairs/s':>8} {'x fp32':>6} {'GFLOP/pair':>10}")
    modes = [(name, amp, last, False) for name, (amp, last) in MODES.items()]
    if args.compile:
        modes += [("compile", False, False, True), ("bf16 + channels-last + compile", True, True, True)]
    for name in args.presets.split(","):
        fp32 = None
        for mode, amp, last, compiled in modes:
            if amp and not bf16_kernels(device):
                print(f"{name:<7} {mode:<32} no bf16 kernels here: not measured")
                continue
            preset = resolve_preset(name, {"d_weights": "none", **json.loads(args.overrides), "amp": amp, "channels_last": last})
            rate, flops, desc, warmup = measure(variant, preset, device, args.classes, args.steps, compiled, sync)
            fp32 = rate if fp32 is None else fp32
            extra = f"  (compiling warm-up {warmup:.0f} s)" if compiled else ""
            print(f"{name:<7} {mode:<32} {desc} {preset.batch_size:>5} {rate:>8.1f} {rate / fp32:>6.2f} {flops:>10.2f}{extra}", flush=True)


def training_setup(variant: Variant, preset: Preset, device: torch.device, classes: int) -> tuple[Any, ...]:
    """G (None without one), D, their optimisers and a random batch of the preset's size, laid out
    as the training job lays out its crops: uint8 (N, H, W, 3) through `to_model`, whose permuted
    view keeps the channels innermost, so every mode's activations are channels-last in memory (the
    mode's channels-last converts the weights too). D's weights are random (no download)."""
    torch.manual_seed(0)
    g, d = build_networks(variant, preset, classes, 4)
    layout = torch.channels_last if preset.channels_last else torch.contiguous_format
    g, d = (g.to(device, memory_format=layout) if g is not None else None), d.to(device, memory_format=layout)
    d_opt = (
        torch.optim.SGD(d.parameters(), lr=preset.d_lr, momentum=preset.d_momentum)
        if preset.d_optimizer == "sgd"
        else torch.optim.AdamW(d.parameters(), lr=preset.d_lr)
    )
    g_opt = torch.optim.Adam(g.parameters(), lr=preset.g_lr) if variant.generator == "learned" else None
    n = preset.batch_size
    lr = to_model(torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8), device)
    hr = to_model(torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8), device)
    labels, targets = torch.randint(0, classes, (n,), device=device), torch.randn(n, 4, device=device)
    return g, d, d_opt, g_opt, Batch(lr, hr, labels, targets)


def measure(
    variant: Variant, preset: Preset, device: torch.device, classes: int, steps: int, compiled: bool, sync: Callable[[], None]
) -> tuple[float, float, str, float]:
    """pairs/s (median over `steps`), GFLOP per pair, a description of G and D, warm-up seconds."""
    g, d, d_opt, g_opt, batch = training_setup(variant, preset, device, classes)
    if compiled:
        g, d = (torch.compile(g) if g is not None else None), torch.compile(d)
    n = preset.batch_size
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if preset.amp else contextlib.nullcontext

    def step() -> None:
        train_step(g, d, d_opt, g_opt, batch, variant, preset, autocast)

    start = time.perf_counter()
    step()  # warm-up (compiles, with --compile)
    step()
    warmup = time.perf_counter() - start
    flops = 0.0
    if not compiled:
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops() / n / 1e9
    seconds = median_seconds(step, steps, sync)
    g_desc = f"{preset.g_channels}ch x{preset.g_residual_blocks} /{preset.g_upsample_channels}" if g_opt else variant.generator
    d_desc = f"{preset.d_backbone} w{preset.d_width} {preset.d_stem}"
    return n / seconds, flops, f"{g_desc:>14} {d_desc:>18}", warmup


if __name__ == "__main__":
    main()
