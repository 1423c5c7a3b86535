"""The `train_baseline` job: train a torchvision detector on the dataset's training split.

Reads top to bottom like torchvision's reference script: build data, model, optimiser; resume if
a checkpoint of the same settings exists; train for a fixed number of iterations with AdamW, a
linear warm-up and a cosine decay; log every loss term; checkpoint; write the final model.

Outputs in `out_dir`: `model.pt` (the final checkpoint, what the detect stage loads),
`checkpoints/last.pt` (for resuming), `metrics.jsonl` (every `log_every` steps: each loss term,
learning rate, images/s) and `losses.png`, named as the MTGAN job names its own. A non-finite loss stops training with a message; the last
good checkpoint stays.

Checkpoints are plain dicts of tensors and Python values, loadable with
`torch.load(weights_only=True)`: model and optimiser state, scheduler state, step, RNG
states, the settings and the category ids.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.errors import InputError, TrainingDiverged
from core.io import atomic
from core.sections import section_fields
from jobs.baseline.data import CocoDetectionTrain, SeededBatches, collate, load_coco
from jobs.baseline.models import DetectorSettings, build_detector, replace_box_predictor
from jobs.common import CHECKPOINT_FORMAT, pick_device, restore_rng_state, resumable_checkpoint, rng_state, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    arch: str
    iterations: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_iterations: int
    final_lr_fraction: float
    checkpoint_every: int
    log_every: int
    seed: int
    hflip: bool
    num_workers: int
    min_size: int
    max_size: int
    amp: bool
    init: str = "none"  # none: random; torchvision: the builder's COCO weights, box predictor replaced

    @classmethod
    def from_config(cls, detector: dict[str, Any], train_baseline: dict[str, Any]) -> TrainSettings:
        """From the config's `detector` (architecture, image size) and `train_baseline` sections."""
        return cls(**section_fields(cls, train_baseline, **{k: detector[k] for k in ("arch", "min_size", "max_size")}))


def lr_factor(iteration: int, settings: TrainSettings) -> float:
    """Linear warm-up from 1% to 100%, then cosine decay to `final_lr_fraction`."""
    if iteration < settings.warmup_iterations:
        return 0.01 + 0.99 * iteration / settings.warmup_iterations
    span = max(1, settings.iterations - settings.warmup_iterations)
    progress = min(1.0, (iteration - settings.warmup_iterations) / span)
    return settings.final_lr_fraction + (1 - settings.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def _plot_losses(rows: list[dict[str, float]], path: Path) -> None:
    from core.plots import plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over the logging interval)")
    ax.set_yscale("log")
    ax.set_title("Baseline detector training")
    ax.legend()
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=100)


def build_model(settings: TrainSettings, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The detector to train (seeded by the caller): random, or torchvision's COCO weights with a
    new box predictor for `num_classes`."""
    detector_settings = DetectorSettings(settings.min_size, settings.max_size, 0.05, 0.5, 100)
    if settings.init == "torchvision":
        model = build_detector(settings.arch, num_classes, detector_settings, pretrained=True)
        return replace_box_predictor(model, num_classes).to(device)
    if settings.init == "none":
        return build_detector(settings.arch, num_classes, detector_settings).to(device)
    raise InputError(f"train_baseline.init must be none or torchvision, got {settings.init!r}")


def train_baseline(coco_json: Path, image_root: Path, settings: TrainSettings, out_dir: Path, device_name: str = "auto", threads: int | None = None) -> Path:
    """Train; return the path of `model.pt`."""
    out_dir = Path(out_dir)
    atomic.claim_dir(out_dir)  # a user's folder is refused before anything is written
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device_name)
    coco = load_coco(coco_json)
    category_ids = sorted(c["id"] for c in coco["categories"])
    dataset = CocoDetectionTrain(coco, image_root, category_ids)
    if len(dataset) == 0:
        raise InputError(f"{coco_json}: the training split has no images")

    torch.manual_seed(settings.seed)
    model = build_model(settings, len(category_ids) + 1, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, settings))

    settings_dict = dataclasses.asdict(settings)
    last = out_dir / "checkpoints" / "last.pt"
    start, rows = 0, []
    state = resumable_checkpoint(last, {"format_version": CHECKPOINT_FORMAT, "settings": settings_dict, "category_ids": category_ids})
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        start, rows = state["step"], state["metrics"]
        log.info("resuming from %s at step %d", last, start)

    batches = SeededBatches(len(dataset), settings.batch_size, settings.seed, settings.hflip, start, settings.iterations)
    # The loader gets its own generator: drawing its workers' base seed must not move the global RNG
    # (the detector's proposal sampling uses it), or a resumed run would diverge from a straight one.
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=settings.num_workers, generator=torch.Generator().manual_seed(settings.seed)
    )

    def checkpoint(step: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "format_version": CHECKPOINT_FORMAT,
            "step": step,
            "rng": rng_state(),
            "settings": settings_dict,
            "arch": settings.arch,
            "num_classes": len(category_ids) + 1,
            "category_ids": category_ids,
            "metrics": rows,
        }

    progress = tqdm(loader, total=len(batches), initial=0, desc=f"train_baseline (from {start})", unit="it")
    train_steps(model, optimizer, scheduler, progress, start, settings, device, rows, lambda step: save_checkpoint(last, checkpoint(step)), last)
    final = checkpoint(settings.iterations)
    save_checkpoint(last, final)
    with atomic.atomic_path(out_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if rows:
        _plot_losses(rows, out_dir / "losses.png")
    model_path = out_dir / "model.pt"
    save_checkpoint(model_path, {k: final[k] for k in ("model", "arch", "num_classes", "category_ids", "settings", "step")})
    log.info("trained %d iterations; model written to %s", settings.iterations, model_path)
    return model_path


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: tqdm,
    start: int,
    settings: TrainSettings,
    device: torch.device,
    rows: list[dict[str, Any]],
    save: Callable[[int], None],
    last: Path,
) -> None:
    """Steps `start` .. `settings.iterations` over the batches of `progress` (the loader in a
    progress bar): every loss term logged into `rows` (means over `log_every` steps), a checkpoint
    every `checkpoint_every` (`save(step)`); a non-finite loss stops with a message naming the last
    good checkpoint `last`."""
    use_amp = settings.amp and device.type == "cuda"
    model.train()
    window: dict[str, float] = {}
    window_n, window_start = 0, time.perf_counter()
    for step, (images, targets) in enumerate(progress, start=start):
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            terms = {k: float(v) for k, v in losses.items()}
            raise TrainingDiverged(
                f"non-finite loss at step {step}: {terms}. Training stopped; the last good checkpoint "
                f"is {last if last.is_file() else 'none (none was written yet)'}. Lower train_baseline.lr?"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        for k, v in {"loss": loss, **losses}.items():
            window[k] = window.get(k, 0.0) + float(v.detach())
        window_n += 1
        done = step + 1
        if done % settings.log_every == 0 or done == settings.iterations:
            elapsed = time.perf_counter() - window_start
            row = {
                "step": done,
                **{k: v / window_n for k, v in window.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": window_n * settings.batch_size / elapsed,
            }
            rows.append(row)
            progress.set_postfix(loss=f"{row['loss']:.3f}")
            window, window_n, window_start = {}, 0, time.perf_counter()
        if done % settings.checkpoint_every == 0 and done < settings.iterations:
            save(done)
