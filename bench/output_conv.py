"""G's 9x9 output convolution (to RGB) on the CPU: `jobs.mtgan.models.FewOutputConv` (the transposed
convolution with the flipped kernel, what G uses) against `nn.Conv2d` with the same weights, and
the whole MTGAN training step (`train_step`, one D step and one G step) with each, alternately in
the same run; medians and their ratios.

The layer alone: forward and backward of a batch laid out as in the training job (channels-last
activations of the `cpu` preset: 32 crops, 32 channels at 64x64 -> 3). The step: the `cpu`
preset's G and D on random batches (`train_throughput.training_setup`), G's output conv swapped.

    python bench/output_conv.py
    python bench/output_conv.py --rounds 8 --steps 12
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from jobs.mtgan.engine import train_step
from jobs.mtgan.models import FewOutputConv
from jobs.mtgan.settings import VARIANTS, resolve_preset

from train_throughput import training_setup


def layer_seconds(conv: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Forward and backward wall time of one call."""
    x = x.detach().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = conv(x)
    mid = time.perf_counter()
    out.backward(torch.ones_like(out))
    return mid - start, time.perf_counter() - mid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="alternations of the two convs")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per conv and round (after 2 warm-up ones)")
    args = parser.parse_args()
    torch.manual_seed(0)

    ours = FewOutputConv(32, 3, 9, padding=4)
    plain = nn.Conv2d(32, 3, 9, padding=4)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(32, 32, 64, 64).contiguous(memory_format=torch.channels_last)
    layer: dict[str, list[tuple[float, float]]] = {"nn.Conv2d": [], "FewOutputConv": []}
    for _ in range(args.rounds):
        for name, conv in (("nn.Conv2d", plain), ("FewOutputConv", ours)):
            layer_seconds(conv, x)
            layer[name] += [layer_seconds(conv, x) for _ in range(5)]
    print(f"G's output conv, 32 x (32 -> 3 channels) at 64x64, channels-last, torch threads {torch.get_num_threads()}:")
    for name, times in layer.items():
        forward, backward = (statistics.median(t[i] for t in times) * 1e3 for i in (0, 1))
        print(f"  {name:14s} forward {forward:6.1f} ms  backward {backward:6.1f} ms")

    variant = VARIANTS["mtgan"]
    preset = resolve_preset("cpu", {"d_weights": "none", "amp": False})
    setups = {}
    for name, conv_type in (("nn.Conv2d", nn.Conv2d), ("FewOutputConv", FewOutputConv)):
        g, d, d_opt, _, batch = training_setup(variant, preset, torch.device("cpu"), 8)
        tail = conv_type(g.tail.in_channels, g.tail.out_channels, g.tail.kernel_size[0], padding=g.tail.padding[0])
        tail.load_state_dict(g.tail.state_dict())
        g.tail = tail
        setups[name] = (g, d, d_opt, torch.optim.Adam(g.parameters(), lr=preset.g_lr), batch)
    steps: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, (g, d, d_opt, g_opt, batch) in setups.items():
            for i in range(args.steps + 2):
                start = time.perf_counter()
                train_step(g, d, d_opt, g_opt, batch, variant, preset, contextlib.nullcontext)
                if i >= 2:
                    steps[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times) for name, times in steps.items()}
    print(f"MTGAN training step, cpu preset, batch {preset.batch_size}:")
    for name, seconds in medians.items():
        print(f"  {name:14s} {seconds * 1e3:6.1f} ms")
    print(f"  ratio nn.Conv2d / FewOutputConv: {medians['nn.Conv2d'] / medians['FewOutputConv']:.2f}x")


if __name__ == "__main__":
    main()
