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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from core.errors import InputError
from core.io import atomic
from core.io.shards import check_shards, read_manifest
from jobs.common import CHECKPOINT_FORMAT, autocast_factory, pick_device, restore_rng_state, resumable_checkpoint, rng_state, save_checkpoint
from jobs.mtgan.data import ShardBatches, read_holdout
from jobs.mtgan.engine import Batch, build_networks, evaluate_holdout, pretrain_step, rule_key, to_model, train_step
from jobs.mtgan.model_file import save_model
from jobs.mtgan.settings import PAPER_RULE, READINGS, RULES, Preset, Variant, applies, schedule_in_iterations

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
    held_out = ("eval_acc_pos", "eval_acc_neg", "eval_acc_pos_small", *(rule_key("eval_acc_pos", r) for r in RULES if r != PAPER_RULE))
    for key in ("d_real", "d_sr", "acc_sr", "acc_hr", *held_out):
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


@dataclass
class Networks:
    """G (None without a learned generator) and D with their optimisers and D's schedule, each
    wrapped for DistributedDataParallel when several processes train."""

    g: nn.Module | None
    d: nn.Module
    d_opt: torch.optim.Optimizer
    d_sched: torch.optim.lr_scheduler.LRScheduler
    g_opt: torch.optim.Optimizer | None

    def d_state(self) -> dict[str, Any]:
        """D's part of a checkpoint: weights, optimiser, schedule."""
        return {"d": _unwrap(self.d).state_dict(), "d_opt": self.d_opt.state_dict(), "d_sched": self.d_sched.state_dict()}

    def g_state(self) -> dict[str, Any]:
        """G's part of a checkpoint (none without a learned generator)."""
        return {"g": _unwrap(self.g).state_dict(), "g_opt": self.g_opt.state_dict()} if self.g_opt is not None else {}

    def load(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint's `d_state()` and `g_state()` parts."""
        _unwrap(self.d).load_state_dict(state["d"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.d_sched.load_state_dict(state["d_sched"])
        if self.g_opt is not None:
            _unwrap(self.g).load_state_dict(state["g"])
            self.g_opt.load_state_dict(state["g_opt"])


def build_training(variant: Variant, preset: Preset, doc: dict[str, Any], device: torch.device, world: int) -> Networks:
    """G and D for the shards of `doc` on `device` (seeded by the caller), their optimisers (D: the
    preset's, with a step decay; G: Adam)."""
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
    return Networks(g, d, d_opt, d_sched, g_opt)


def run_settings(variant: Variant, preset: Preset, seed: int, world: int, doc: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the variant, preset, seed, processes and shards."""
    settings = {
        "variant": dataclasses.asdict(variant),
        "preset": dataclasses.asdict(preset),
        "seed": seed,
        "world_size": world,
        "category_ids": doc["category_ids"],
        "shards_sha256": [s["sha256"] for s in doc["shards"]],
    }
    return json.loads(json.dumps(settings))  # tuples -> lists, as they come back from a checkpoint


def log_departures(preset: Preset, doc: dict[str, Any]) -> None:
    """The preset's departures from the paper, every preset's readings, and the ground-truth boxes
    among the training ROIs."""
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


Batches = Iterator[dict[str, torch.Tensor]]


def training_data(manifest: Path, variant: Variant, preset: Preset, seed: int, rank: int, world: int) -> tuple[Batches, dict[str, Any]]:
    """The endless stream of this process's training batches and the held-out ROIs."""
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
    return _batches(loader), holdout


class MetricsLog:
    """The metrics.jsonl rows: each logged term averaged over `log_every` steps, with the learning
    rates and the training pairs/s (held-out evaluation excluded)."""

    def __init__(self, rows: list[dict[str, Any]], world: int) -> None:
        self.rows, self.world = rows, world
        self.window: dict[str, list[float]] = {}
        self.clock, self.pairs = time.perf_counter(), 0

    def add(self, metrics: dict[str, float], batch_size: int) -> None:
        self.pairs += batch_size * self.world
        for k, v in metrics.items():
            self.window.setdefault(k, []).append(v)

    def flush(self, step: int, stage: str, nets: Networks) -> dict[str, Any]:
        row = {
            "step": step,
            "stage": stage,
            **{k: float(np.mean(v)) for k, v in self.window.items()},
            "d_lr": nets.d_opt.param_groups[0]["lr"],
            "g_lr": nets.g_opt.param_groups[0]["lr"] if nets.g_opt else 0.0,
            "pairs_per_s": self.pairs / (time.perf_counter() - self.clock),
        }
        self.rows.append(row)
        self.window, self.clock, self.pairs = {}, time.perf_counter(), 0
        return row

    def add_eval(self, step: int, scores: dict[str, float], seconds: float) -> None:
        """A held-out evaluation's row; its `seconds` are left out of the pairs/s."""
        self.rows.append({"step": step, "stage": "eval", **scores})
        self.clock += seconds


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
    check_shards(manifest, doc)  # before any work: files, places and sizes; every byte read is checked by its checksum
    preset = schedule_in_iterations(preset, doc["num_rois"] - doc["histograms"]["label"].get("-1", 0))
    if preset.epochs is not None:
        log.info("%g epochs = %d iterations, D lr / 10 every %d", preset.epochs, preset.iterations, preset.d_lr_step)
    torch.manual_seed(seed)
    nets = build_training(variant, preset, doc, device, world)
    settings = run_settings(variant, preset, seed, world, doc)
    last = out_dir / "checkpoints" / "last.pt"
    start, rows = 0, []
    state = resumable_checkpoint(last, {"format_version": CHECKPOINT_FORMAT, "settings": settings})
    if state is not None:
        nets.load(state)
        restore_rng_state(state["rng"])
        start, rows = state["step"], state["metrics"]
        log.info("resuming from %s at step %d", last, start)
    log_departures(preset, doc)
    batches, holdout = training_data(manifest, variant, preset, seed, rank, world)
    for _ in range(start):  # the same batches as an uninterrupted run
        next(batches)

    def save(step: int) -> None:
        """`last.pt` at `step`: the networks, the random state, the settings and the metrics so far."""
        state = {"format_version": CHECKPOINT_FORMAT, **nets.d_state(), "step": step, "rng": rng_state(), "settings": settings, "metrics": rows}
        save_checkpoint(last, state | nets.g_state())

    total = train_steps(nets, batches, holdout, variant, preset, doc["margin"], device, start, MetricsLog(rows, world), rank, out_dir, save)
    model_path = out_dir / "model.pt"
    if rank == 0:
        save(total)
        with atomic.atomic_path(out_dir / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if rows:
            _plot(rows, out_dir / "losses.png", f"MTGAN variant {variant.name}")
        learned = variant.generator == "learned"
        save_model(model_path, _unwrap(nets.g) if learned else None, _unwrap(nets.d), variant, preset, seed, total, doc, config)
        log.info("variant %s: %d steps; model written to %s", variant.name, total, model_path)
    if world > 1:
        dist.barrier()
    return model_path


def train_steps(
    nets: Networks,
    batches: Batches,
    holdout: dict[str, Any],
    variant: Variant,
    preset: Preset,
    margin: float,
    device: torch.device,
    start: int,
    metrics_log: MetricsLog,
    rank: int,
    out_dir: Path,
    save: Callable[[int], None],
) -> int:
    """Steps `start` .. the end: MSE pre-training of G, then one D and one G step per batch; logs,
    held-out evaluations, pictures (into `out_dir`) and checkpoints (`save(step)`) on their
    schedules. Returns the last step."""
    learned = variant.generator == "learned"
    autocast = autocast_factory(device, preset.amp)
    pretrain = preset.pretrain_iterations if learned else 0
    total = pretrain + preset.iterations
    g, d = nets.g, nets.d
    d.train()
    if g is not None:
        g.train()
    progress = tqdm(range(start, total), desc=f"train_mtgan {variant.name}", unit="step", disable=rank != 0)
    for step in progress:
        batch = next(batches)
        lr, hr = to_model(batch["lr"], device), to_model(batch["hr"], device)
        labels, targets = batch["label"].to(device).long(), batch["target"].to(device).float()
        if step < pretrain:
            metrics = pretrain_step(g, nets.g_opt, Batch(lr, hr, labels, targets), autocast)
        else:
            metrics = train_step(g, d, nets.d_opt, nets.g_opt, Batch(lr, hr, labels, targets), variant, preset, autocast, d_plain=_unwrap(d))
            nets.d_sched.step()
        metrics_log.add(metrics, len(labels))
        done = step + 1
        if done % preset.log_every == 0 or done == total:
            row = metrics_log.flush(done, "pretrain" if step < pretrain else "gan", nets)
            progress.set_postfix({k: f"{row[k]:.3f}" for k in ("g_loss_mse", "d_loss_cls", "acc_sr", "acc_hr") if k in row})
        if holdout and step >= pretrain and (done % preset.eval_every == 0 or done == total):
            started = time.perf_counter()
            scores = evaluate_holdout(_unwrap(g), _unwrap(d), holdout, variant, margin, device, autocast)
            metrics_log.add_eval(done, scores, time.perf_counter() - started)  # pairs/s counts training only
            log.info("step %d: eval-mode accuracy on held-out ROIs %s", done, {k: round(v, 3) for k, v in scores.items()})
        if rank == 0 and (done % preset.picture_every == 0 or done == total):
            _pictures(_unwrap(g), lr, hr, out_dir / "pictures" / f"step-{done:06d}.png", f"{variant.name}, step {done}")
        if rank == 0 and done % preset.checkpoint_every == 0 and done < total:
            save(done)
    return total
