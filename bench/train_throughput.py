"""MTGAN training throughput per preset (pairs/s) and the FLOPs each training pair costs.

For each preset: median time of a stage-2 iteration (one D step + one G step, `train_step`) on
random 16x16 / 64x64 batches of the preset's batch size, as pairs/s; and the FLOPs of that
iteration per pair, counted by torch's FlopCounterMode (forward and backward of G and D), so
throughput on any device can be set against that device's peak FLOP/s. D weights are random
(no download); the numbers do not depend on them.

    python bench/train_throughput.py                     # CPU, presets tiny and cpu
    python bench/train_throughput.py --presets cpu,paper --steps 3
    python bench/train_throughput.py --device cuda --presets paper,paper-r101
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.mtgan.engine import build_networks, train_step
from jobs.mtgan.settings import VARIANTS, resolve_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,cpu")
    parser.add_argument("--variant", default="mtgan")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=8, help="K + 1")
    parser.add_argument("--overrides", default="{}", help='preset fields to change, as JSON: \'{"d_width": 32}\'')
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    variant = VARIANTS[args.variant]
    print(f"variant {variant.name}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'preset':<11} {'G':>14} {'D':>18} {'batch':>5} {'pairs/s':>8} {'GFLOP/pair':>11}")
    for name in args.presets.split(","):
        preset = resolve_preset(name, {"d_weights": "none", **json.loads(args.overrides)})
        torch.manual_seed(0)
        g, d = build_networks(variant, preset, args.classes, 4)
        g, d = (g.to(device) if g is not None else None), d.to(device)
        d_opt = (torch.optim.SGD(d.parameters(), lr=preset.d_lr, momentum=preset.d_momentum) if preset.d_optimizer == "sgd"
                 else torch.optim.AdamW(d.parameters(), lr=preset.d_lr))
        g_opt = torch.optim.Adam(g.parameters(), lr=preset.g_lr) if variant.generator == "learned" else None
        n = preset.batch_size
        lr, hr = torch.rand(n, 3, 16, 16, device=device) * 2 - 1, torch.rand(n, 3, 64, 64, device=device) * 2 - 1
        labels, targets = torch.randint(0, args.classes, (n,), device=device), torch.randn(n, 4, device=device)
        amp = preset.amp and device.type == "cuda"

        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()

        def step() -> None:
            train_step(g, d, d_opt, g_opt, lr, hr, labels, targets, variant, preset, autocast)

        step()  # warm-up
        with FlopCounterMode(display=False) as counter:
            step()
        times = []
        for _ in range(args.steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        g_desc = f"{preset.g_channels}ch x{preset.g_residual_blocks} /{preset.g_upsample_channels}" if g_opt else variant.generator
        d_desc = f"{preset.d_backbone} w{preset.d_width} {preset.d_stem}"
        print(f"{name:<11} {g_desc:>14} {d_desc:>18} {n:>5} {n / statistics.median(times):>8.1f} "
              f"{counter.get_total_flops() / n / 1e9:>11.2f}")


if __name__ == "__main__":
    main()
