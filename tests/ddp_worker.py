"""Run by tests/test_mtgan_train.py in spawned processes: MTGAN steps under DistributedDataParallel."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from jobs.mtgan.engine import Batch, build_networks, train_step
from jobs.mtgan.settings import PRESETS, VARIANTS

STEPS = 3


def fixed_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    lr = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    hr = torch.rand(8, 3, 64, 64, generator=g) * 2 - 1
    return lr, hr, torch.tensor([1, 0, 2, 3, 0, 1, 0, 2]), torch.randn(8, 4, generator=g)


def run_steps(rank: int, world: int, out: Path) -> None:
    """STEPS iterations of train_step on this rank's share of the fixed global batch of 8.

    BatchNorm is frozen (eval mode) so that every rank's forward equals the single process's on
    the same samples (SyncBatchNorm is GPU-only); what is compared is DDP's gradient averaging
    against one process on the whole batch.
    """
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    torch.manual_seed(0)
    variant, preset = VARIANTS["mtgan"], PRESETS["tiny"]
    g, d = build_networks(variant, preset, num_classes=4, scale=4)
    # float64: the sums of one process over 8 samples and of two over 4 each then averaged differ
    # only in rounding, which in float32 reached 2% of a bias's movement (G's output conv, whose
    # gradient sums 32k terms that nearly cancel) and so hid what the test is for.
    g, d = g.double(), d.double()
    g.eval()
    d.eval()
    d_opt = torch.optim.SGD(d.parameters(), lr=0.5)
    g_opt = torch.optim.SGD(g.parameters(), lr=0.1)  # not Adam: its first step is sign(gradient), ill-conditioned to compare
    plain_d = d
    initial = {"g": {k: v.clone() for k, v in g.state_dict().items()}, "d": {k: v.clone() for k, v in d.state_dict().items()}}
    if world > 1:
        g, d = nn.parallel.DistributedDataParallel(g), nn.parallel.DistributedDataParallel(d)
    lr, hr, labels, targets = (t.double() if t.is_floating_point() else t for t in fixed_batch())
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    for _ in range(STEPS):
        train_step(g, d, d_opt, g_opt, Batch(lr[share], hr[share], labels[share], targets[share]), variant, preset, contextlib.nullcontext, d_plain=plain_d)
    state = {"g": (g.module if world > 1 else g).state_dict(), "d": plain_d.state_dict(), "initial": initial}
    torch.save(state, out / f"world{world}-rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()
