"""The `train_mtgan` job: one variant, from the training split's shards to `model.pt`.

Stage 1 pre-trains the generator with the MSE loss alone (`preset.pretrain_iterations`); stage 2
alternates one discriminator step and one generator step per mini-batch (`preset.iterations`),
D with the preset's optimiser (SGD in the paper presets, AdamW in `cpu`) and a step decay, G with
Adam. Variants without a learned generator skip stage 1 and the G steps.

Outputs in `out_dir`: `model.pt` (G and D weights, variant, preset, categories), `checkpoints/last.pt`
(everything needed to resume exactly: models, optimisers, schedulers, step, RNG states, settings),
`metrics.jsonl` (every `log_every` steps: each loss term, D(real), D(SR), train-mode cls accuracy
on the SR and HR training batches, learning rates, pairs/s; every `eval_every` steps a row with
stage "eval": D's eval-mode accuracy on a held-out slice of the training ROIs under each test-time
rule that applies (`jobs/mtgan/roi_input.py`; `eval_acc_*` on the paper's path, `eval_acc_*-<rule>`
under ours), on positives, negatives and positives by size), `losses.png`, and `pictures/step-*.png` (LR / bicubic / SR / HR, the
paper's Fig 3). A non-finite loss stops training with a message; the last checkpoint stays.
Checkpoints load with `torch.load(weights_only=True)`.

Several GPUs or processes: `torchrun --nproc_per_node N -m pipeline.cli train-mtgan ...` runs
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); each rank reads a disjoint part of the shards
and takes batch_size / N of the global batch; BatchNorm is synchronised across ranks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from core.errors import InputError
from core.io import atomic
from core.io.shards import read_manifest, verify_shards
from jobs.common import CHECKPOINT_FORMAT, autocast_factory, pick_device, restore_rng_state, resumable_checkpoint, rng_state, save_checkpoint
from jobs.mtgan.data import ShardBatches, read_holdout
from jobs.mtgan.engine import Batch, build_networks, evaluate_holdout, pretrain_step, to_model, train_step
from jobs.mtgan.model_file import save_model
from jobs.mtgan.settings import READINGS, RULES, Preset, Variant, applies, schedule_in_iterations

log = logging.getLogger(__name__)


def _unwrap(module: nn.Module | None) -> nn.Module | None:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _batches(loader: ShardBatches, start_epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    epoch = start_epoch
    while True:
        loader.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise InputError("the training shards yield no batch: too few ROIs for the batch size?")
        epoch += 1


def _pictures(g: nn.Module | None, lr: torch.Tensor, hr: torch.Tensor, path: Path, title: str) -> None:
    """LR (nearest) / bicubic / SR / HR rows for a few samples: the paper's Fig 3."""
    import torch.nn.functional as F

    from core.plots import plt

    n = min(8, len(lr))
    with torch.no_grad():
        x = lr[:n]
        scale = hr.shape[-1] // x.shape[-1]
        rows = {
            "LR (nearest)": F.interpolate(x, scale_factor=scale, mode="nearest"),
            "bicubic": F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1),
        }
        if g is not None:
            was_training = g.training
            g.eval()
            rows["SR (G)"] = g(x).clamp(-1, 1)
            g.train(was_training)
        rows["HR"] = hr[:n]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n):
            axes[r, c].imshow(((images[c].float().cpu().permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
            axes[r, c].axis("off")
        axes[r, 0].set_title(name, fontsize=7, loc="left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=100)


def _plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    from core.plots import plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    keys = sorted({k for r in rows for k in r if k.startswith(("g_loss", "d_loss"))})
    right.set_title("train-mode on training batches; eval_*: eval mode on held-out ROIs", fontsize=8)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        left.plot(*zip(*pts), label=key)
    left.set_yscale("log")
    left.set_xlabel("step (pre-training, then GAN training)")
    left.set_ylabel("weighted loss term")
    left.legend(fontsize=7)
    for key in ("d_real", "d_sr", "acc_sr", "acc_hr", "eval_acc_pos", "eval_acc_neg", "eval_acc_pos_small", "eval_acc_pos-by_size"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            right.plot(*zip(*pts), label=key, marker="o" if key.startswith("eval") else None, markersize=3)
    right.set_xlabel("step")
    right.set_ylabel("probability / accuracy")
    right.set_ylim(0, 1)
    right.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=100)


def _setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return rank, world, device


def train_mtgan(
    manifest: Path,
    variant: Variant,
    preset: Preset,
    out_dir: Path,
    device_name: str = "auto",
    threads: int | None = None,
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> Path:
    """Train one variant on the shards of `manifest`; return the path of `model.pt`. `config`: the
    config section the run was asked with, recorded in the model as it is."""
    out_dir = Path(out_dir)
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    if rank_zero:
        atomic.claim_dir(out_dir)  # a user's folder is refused before anything is written
    if threads:
        torch.set_num_threads(threads)
    rank, world, device = _setup_distributed(device_name)
    if preset.batch_size % world:
        raise InputError(f"batch_size {preset.batch_size} is not divisible by the {world} processes")
    doc = read_manifest(manifest)
    verify_shards(manifest, doc)  # once per job: every byte trained on matches the manifest's sha256
    preset = schedule_in_iterations(preset, doc["num_rois"] - doc["histograms"]["label"].get("-1", 0))
    if preset.epochs is not None:
        log.info("%g epochs = %d iterations, D lr / 10 every %d", preset.epochs, preset.iterations, preset.d_lr_step)
    torch.manual_seed(seed)
    g, d = build_networks(variant, preset, doc["num_labels"], doc["scale"])
    layout = torch.channels_last if preset.channels_last else torch.contiguous_format
    g = g.to(device, memory_format=layout) if g is not None else None
    d = d.to(device, memory_format=layout)
    learned = variant.generator == "learned"
    if world > 1:
        d = nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(d))
        if learned:
            g = nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(g))
    if preset.d_optimizer == "sgd":
        d_opt = torch.optim.SGD(d.parameters(), lr=preset.d_lr, momentum=preset.d_momentum, weight_decay=preset.d_weight_decay)
    else:
        d_opt = torch.optim.AdamW(d.parameters(), lr=preset.d_lr, weight_decay=preset.d_weight_decay)
    d_sched = torch.optim.lr_scheduler.StepLR(d_opt, step_size=preset.d_lr_step, gamma=0.1)
    g_opt = torch.optim.Adam(g.parameters(), lr=preset.g_lr) if learned else None

    settings = {
        "variant": dataclasses.asdict(variant),
        "preset": dataclasses.asdict(preset),
        "seed": seed,
        "world_size": world,
        "category_ids": doc["category_ids"],
        "shards_sha256": [s["sha256"] for s in doc["shards"]],
    }
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from a checkpoint
    last = out_dir / "checkpoints" / "last.pt"
    start, rows = 0, []
    state = resumable_checkpoint(last, {"format_version": CHECKPOINT_FORMAT, "settings": settings})
    if state is not None:
        _unwrap(d).load_state_dict(state["d"])
        d_opt.load_state_dict(state["d_opt"])
        d_sched.load_state_dict(state["d_sched"])
        if learned:
            _unwrap(g).load_state_dict(state["g"])
            g_opt.load_state_dict(state["g_opt"])
        restore_rng_state(state["rng"])
        start, rows = state["step"], state["metrics"]
        log.info("resuming from %s at step %d", last, start)
    for line in preset.departures:
        log.info("departure from the paper: %s", line)
    for line in READINGS:
        log.info("every preset, %s", line)
    if added := doc["histograms"]["origin"].get("gt", 0):
        log.info(
            "departure from the paper: %d ground-truth boxes among the training ROIs (rois.add_gt_to_train); the paper trains on "
            "'positive and negative ROI examples' cropped 'with our baseline detectors' (lines 779-781)",
            added,
        )

    loader = ShardBatches(
        manifest,
        batch_size=preset.batch_size // world,
        seed=seed,
        fields=("lr", "hr", "label", "target"),
        positive_fraction=preset.positive_fraction,
        drop_last=True,
        rank=rank,
        world_size=world,
        holdout_blocks=preset.holdout_blocks,
    )
    holdout = read_holdout(manifest, preset.holdout_blocks, ("lr", "hr", "label", "size_class", "box", "image_size"))
    if holdout:
        log.info(
            "held out for eval-mode accuracy: %d ROIs (%d positive), under the test-time rules %s",
            len(holdout["label"]),
            int((holdout["label"] > 0).sum()),
            [r for r in RULES if applies(r, variant)],
        )
    batches = _batches(loader)
    for _ in range(start):  # the same batches as an uninterrupted run
        next(batches)
    autocast = autocast_factory(device, preset.amp)

    pretrain = preset.pretrain_iterations if learned else 0
    total = pretrain + preset.iterations

    def checkpoint(step: int) -> dict[str, Any]:
        state = {
            "format_version": CHECKPOINT_FORMAT,
            "d": _unwrap(d).state_dict(),
            "d_opt": d_opt.state_dict(),
            "d_sched": d_sched.state_dict(),
            "step": step,
            "rng": rng_state(),
            "settings": settings,
            "metrics": rows,
        }
        if learned:
            state |= {"g": _unwrap(g).state_dict(), "g_opt": g_opt.state_dict()}
        return state

    d.train()
    if g is not None:
        g.train()
    window: dict[str, list[float]] = {}
    clock, pairs = time.perf_counter(), 0
    progress = tqdm(range(start, total), desc=f"train_mtgan {variant.name}", unit="step", disable=rank != 0)
    for step in progress:
        batch = next(batches)
        lr, hr = to_model(batch["lr"], device), to_model(batch["hr"], device)
        labels, targets = batch["label"].to(device).long(), batch["target"].to(device).float()
        if step < pretrain:
            metrics = pretrain_step(g, g_opt, Batch(lr, hr, labels, targets), autocast)
        else:
            metrics = train_step(g, d, d_opt, g_opt, Batch(lr, hr, labels, targets), variant, preset, autocast, d_plain=_unwrap(d))
            d_sched.step()
        pairs += len(labels) * world
        for k, v in metrics.items():
            window.setdefault(k, []).append(v)
        done = step + 1
        if done % preset.log_every == 0 or done == total:
            row = {
                "step": done,
                "stage": "pretrain" if step < pretrain else "gan",
                **{k: float(np.mean(v)) for k, v in window.items()},
                "d_lr": d_opt.param_groups[0]["lr"],
                "g_lr": g_opt.param_groups[0]["lr"] if g_opt else 0.0,
                "pairs_per_s": pairs / (time.perf_counter() - clock),
            }
            rows.append(row)
            progress.set_postfix({k: f"{row[k]:.3f}" for k in ("g_loss_mse", "d_loss_cls", "acc_sr", "acc_hr") if k in row})
            window, clock, pairs = {}, time.perf_counter(), 0
        if holdout and step >= pretrain and (done % preset.eval_every == 0 or done == total):
            started = time.perf_counter()
            scores = evaluate_holdout(_unwrap(g), _unwrap(d), holdout, variant, doc["margin"], device, autocast)
            clock += time.perf_counter() - started  # pairs/s counts training only
            rows.append({"step": done, "stage": "eval", **scores})
            log.info("step %d: eval-mode accuracy on held-out ROIs %s", done, {k: round(v, 3) for k, v in scores.items()})
        if rank == 0 and (done % preset.picture_every == 0 or done == total):
            _pictures(_unwrap(g), lr, hr, out_dir / "pictures" / f"step-{done:06d}.png", f"{variant.name}, step {done}")
        if rank == 0 and done % preset.checkpoint_every == 0 and done < total:
            save_checkpoint(last, checkpoint(done))

    model_path = out_dir / "model.pt"
    if rank == 0:
        save_checkpoint(last, checkpoint(total))
        with atomic.atomic_path(out_dir / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if rows:
            _plot(rows, out_dir / "losses.png", f"MTGAN variant {variant.name}")
        save_model(model_path, _unwrap(g) if learned else None, _unwrap(d), variant, preset, seed, total, doc, config)
        log.info("variant %s: %d steps; model written to %s", variant.name, total, model_path)
    if world > 1:
        dist.barrier()
    return model_path
