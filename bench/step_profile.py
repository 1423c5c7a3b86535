"""Where one MTGAN training iteration spends its time: torch.profiler over `train_step` (one D
step + one G step) of a preset, on random batches laid out as the training job lays out its
crops (`train_throughput.training_setup`); the operators with the most self time, grouped by input shapes, per iteration.

    python bench/step_profile.py                          # the cpu preset, mtgan
    python bench/step_profile.py --variant sbu --top 15
    python bench/step_profile.py --overrides '{"g_upsample_channels": 32}'
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch
from torch.profiler import ProfilerActivity, profile

from jobs.mtgan.engine import train_step
from jobs.mtgan.settings import VARIANTS, resolve_preset

from train_throughput import training_setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--variant", default="mtgan")
    parser.add_argument("--overrides", default="{}", help="preset fields to change, as JSON")
    parser.add_argument("--steps", type=int, default=5, help="profiled iterations (after 3 warm-up ones)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--classes", type=int, default=8, help="K + 1")
    args = parser.parse_args()
    variant = VARIANTS[args.variant]
    preset = resolve_preset(args.preset, {"d_weights": "none", "amp": False, **json.loads(args.overrides)})
    g, d, d_opt, g_opt, batch = training_setup(variant, preset, torch.device("cpu"), args.classes)
    n = preset.batch_size
    for _ in range(3):
        train_step(g, d, d_opt, g_opt, batch, variant, preset, contextlib.nullcontext)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            train_step(g, d, d_opt, g_opt, batch, variant, preset, contextlib.nullcontext)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / args.steps / 1000
    print(f"{args.preset} preset, {variant.name}, batch {n}, torch threads {torch.get_num_threads()}: {total:.0f} ms of operator self time per iteration")
    print(f"{'ms/iter':>8} {'share':>6}  {'operator':<34} input shapes")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        ms = e.self_cpu_time_total / args.steps / 1000
        shapes = ", ".join(str(s) for s in e.input_shapes if s)
        print(f"{ms:>8.1f} {ms / total:>6.1%}  {e.key:<34} {shapes[:90]}")


if __name__ == "__main__":
    main()
