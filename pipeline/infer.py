"""Stage 6, infer: a trained variant's G and D over the test split's shards.

Per ROI: D's K+1 class probabilities and its 4 box offsets (zeros for a variant without a
regression head), computed on what D sees for that ROI under one test-time rule
(`jobs/mtgan/roi_input.py`; an inference setting, so changing it never retrains): on the paper's
path the up-sampled LR image of every ROI (G(LR) for MTGAN and its loss ablations, bilinear for
SBU; the HR crop for Table 3's `d_no_adv`); under our `by_size` rule G(LR) for a small ROI and the
HR crop for the others. Batched, under `torch.inference_mode`, on the GPU when present, with the
model's precision and memory layout (bf16 autocast where native and `preset.amp`; model_file.py).
Also D's classification accuracy on the positive, negative and all (non-ignored) test ROIs, and
on positives by size: the paper's Table 9.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from core.crops import crop_sides
from core.errors import EmptyInputError, InputError
from core.io import atomic
from core.io.shards import check_shards, read_manifest
from core.io.tables import INFERENCE_SCHEMA, TableWriter, make_table
from core.sections import section_fields
from core.sizes import SIDE_BIN_EDGES, SIDE_BINS, SIZE_CLASSES
from jobs.common import autocast_factory, bounded_host_heap, pick_device
from jobs.mtgan.data import ShardBatches
from jobs.mtgan.engine import to_model
from jobs.mtgan.model_file import LoadedModel, load_model
from jobs.mtgan.roi_input import discriminator_images, through_generator
from jobs.mtgan.settings import DEFAULT_G_MAX_SIDE, PAPER_RULE, RULES, applies
from pipeline.methods import method_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferSettings:
    batch_size: int
    device: str  # auto, cpu, cuda, cuda:N
    g_max_side: float = DEFAULT_G_MAX_SIDE  # the by_size rule's threshold (crop side, image pixels)

    @classmethod
    def from_config(cls, infer: dict[str, Any]) -> InferSettings:
        """From the config's `infer` section."""
        return cls(**section_fields(cls, infer))


def write_inference(settings: InferSettings, rule: str, model_path: Path, manifest: Path, out_table: Path, out_accuracy: Path) -> dict[str, Any]:
    """Stage 6 for one variant under one test-time rule: the per-ROI table (written as the batches
    come) and the Table 9 accuracies (returned too)."""
    _, accuracy = infer(model_path, manifest, pick_device(settings.device), settings.batch_size, rule, settings.g_max_side, out_table)
    atomic.write_json(out_accuracy, accuracy, indent=2)
    return accuracy


PREDICTIONS = ("roi_id", "probs", "offsets", "label", "size_class", "box", "image_size", "through_g")


@torch.inference_mode()
def predict_batches(model: LoadedModel, manifest: Path, use_g: Any, device: torch.device, batch_size: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """D's class probabilities and offsets for the ROIs of the shards, a batch at a time, in shard
    order (with each ROI's id, label, size class, box, image size and whether D saw G(LR)).
    `use_g(batch)` says per ROI whether D sees G(LR) (True) or the HR crop (False)."""
    g, d, autocast = model.g, model.d, autocast_factory(device, model.preset.amp)
    with bounded_host_heap():  # memory flat over the ROIs, not growing with them (jobs.common)
        loader = ShardBatches(
            manifest, batch_size=batch_size, shuffle=False, drop_ignored=False, fields=("lr", "hr", "label", "roi_id", "box", "image_size", "size_class")
        )
        try:
            for batch in tqdm(loader, desc="infer", unit="batch", mininterval=10):
                through = torch.from_numpy(np.asarray(use_g(batch), bool))
                with autocast():
                    images = discriminator_images(g, to_model(batch["lr"], device), to_model(batch["hr"], device), through.to(device))
                    result = d(images)
                found = {
                    "probs": torch.softmax(result["cls"].float(), dim=1).cpu().numpy(),
                    "offsets": result["reg"].float().cpu().numpy() if "reg" in result else np.zeros((len(images), 4), np.float32),
                    "through_g": through.numpy(),
                }
                yield found | {k: batch[k].numpy() for k in ("roi_id", "label", "size_class", "box", "image_size")}
        finally:
            loader.close()


def predict(model: LoadedModel, manifest: Path, use_g: Any, device: torch.device, batch_size: int = 256) -> dict[str, np.ndarray]:
    """`predict_batches` of every ROI, concatenated (a split's dev shards: bench/dev_sweep.py)."""
    parts = list(predict_batches(model, manifest, use_g, device, batch_size))
    return {k: np.concatenate([p[k] for p in parts]) for k in PREDICTIONS}


def table9_accuracy(predicted: np.ndarray, label: np.ndarray, size_class: np.ndarray, sides: np.ndarray | None = None) -> dict[str, Any]:
    """D's classification accuracy on positive, negative and all (non-ignored) ROIs (paper Table 9),
    on positives and on negatives by size class (a negative's is its ROI box's) and, given the
    crops' longer sides (`core.crops.crop_sides`), on positives and on negatives by side
    (`positive_by_side`, `negative_by_side`: one entry per bin of `core.sizes.SIDE_BINS`). The
    negatives by size show whether D reads a small crop as background whatever it holds.
    `predicted`: D's class per ROI (the argmax of its probabilities)."""
    correct = predicted == label
    kinds = {"positive": label > 0, "negative": label == 0}
    groups = {**kinds, "all": label >= 0}
    groups |= {f"{kind}_{name}": mask & (size_class == code) for kind, mask in kinds.items() for code, name in enumerate(SIZE_CLASSES)}
    accuracy: dict[str, Any] = {}
    for kind, mask in groups.items():
        accuracy[kind] = float(correct[mask].mean()) if mask.any() else None  # no such ROIs
        accuracy[f"{kind}_rois"] = int(mask.sum())
    if sides is not None:
        bins = np.searchsorted(np.asarray(SIDE_BIN_EDGES, np.float64), np.asarray(sides, np.float64), side="left")  # core.sizes.side_bin, per ROI
        for kind, kind_mask in kinds.items():
            masks = [kind_mask & (bins == k) for k in range(len(SIDE_BINS))]
            accuracy[f"{kind}_by_side"] = [
                {"side": name, "rois": int(m.sum()), "accuracy": float(correct[m].mean()) if m.any() else None} for name, m in zip(SIDE_BINS, masks)
            ]
    return accuracy


def infer(
    model_path: Path,
    manifest: Path,
    device: torch.device,
    batch_size: int = 256,
    rule: str = PAPER_RULE,
    g_max_side: float = DEFAULT_G_MAX_SIDE,
    out: Path | None = None,
) -> tuple[pa.Table | None, dict[str, Any]]:
    """The per-ROI table of a variant on the shards of `manifest` under test-time rule `rule` (with
    `out`, written there as the batches come, and None returned: the memory of a batch and 16
    bytes a ROI for the accuracies, whatever the split), and its Table 9 accuracies. The shards
    hold their ROIs in the ROI table's order (the shards stage writes them so); another order is
    an InputError."""
    model = load_model(model_path, device)
    variant, state = model.variant, model.state
    if not applies(rule, variant):
        raise InputError(
            f"{model_path}: test-time rule {rule!r} does not apply to variant {variant.name!r} (its D trains on {list(variant.d_inputs)}; rules: {list(RULES)})"
        )
    doc = read_manifest(manifest)
    if doc["num_rois"] == 0:
        raise EmptyInputError(f"{manifest}: the test shards hold no ROIs: nothing to infer (did the detector find nothing?)")
    check_compatible(state, doc, model_path, manifest)
    check_shards(manifest, doc)

    def use_g(batch: dict[str, torch.Tensor]) -> np.ndarray:
        return through_generator(batch["box"].numpy(), batch["image_size"].numpy(), doc["margin"], rule, g_max_side, variant)

    metadata = {"variant": variant.name, "rule": rule, "category_ids": state["category_ids"]}
    kept: dict[str, list[np.ndarray]] = {k: [] for k in ("predicted", "label", "size_class", "side", "through_g")}
    parts: list[pa.Table] = []
    last = -1
    with TableWriter(out, INFERENCE_SCHEMA, metadata) if out else contextlib.nullcontext() as writer:
        for p in predict_batches(model, manifest, use_g, device, batch_size):
            if len(p["roi_id"]) and (p["roi_id"][0] <= last or (np.diff(p["roi_id"]) <= 0).any()):
                raise InputError(f"{manifest}: its shards do not hold the ROIs in the ROI table's order; rerun the shards stage")
            last = int(p["roi_id"][-1]) if len(p["roi_id"]) else last
            columns = {
                "roi_id": p["roi_id"],
                "probs": p["probs"].astype(np.float32),
                **{k: p["offsets"][:, j].astype(np.float32) for j, k in enumerate(("dx", "dy", "dw", "dh"))},
                "through_g": p["through_g"].astype(np.int32),
            }
            if writer is not None:
                writer.write(columns)
            else:
                parts.append(make_table(columns, INFERENCE_SCHEMA))
            for k, v in (("predicted", p["probs"].argmax(1).astype(np.int16)), ("label", p["label"]), ("size_class", p["size_class"])):
                kept[k].append(v)
            kept["side"].append(np.asarray(crop_sides(p["box"], p["image_size"], doc["margin"]), np.float64))
            kept["through_g"].append(p["through_g"])
    table = None if out else pa.concat_tables(parts).combine_chunks().replace_schema_metadata({"mtgan": json.dumps(metadata)})
    found = {k: np.concatenate(v) for k, v in kept.items()}
    accuracy = table9_accuracy(found["predicted"], found["label"], found["size_class"], found["side"])
    threshold = g_max_side if RULES[rule].reads_g_max_side else None
    through_g = int(found["through_g"].sum())
    log.info(
        "variant %s, rule %s: %d ROIs, %d seen through the up-sampler (g_max_side %s); classification accuracy %s",
        variant.name,
        rule,
        len(found["label"]),
        through_g,
        threshold,
        accuracy,
    )
    method = method_name(variant.name, rule)
    return table, {"variant": variant.name, "rule": rule, "method": method, "g_max_side": threshold, "through_g": through_g, "accuracy": accuracy}


def check_compatible(state: dict[str, Any], doc: dict[str, Any], model_path: Path, manifest: Path) -> None:
    """The model was trained on crops made like these: same categories, HR size, scale and margin."""
    for key in ("category_ids", "hr_size", "scale", "margin"):
        if key in state and state[key] != doc[key]:
            raise InputError(f"{model_path}: trained with {key} {state[key]}, but {manifest} has {doc[key]}")
