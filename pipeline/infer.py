"""Stage 6, infer: a trained variant's G and D over the test split's shards.

Per ROI: D's K+1 class probabilities and its 4 box offsets (zeros for a variant without a
regression head), computed on what that variant's D was trained on: G(LR) (MTGAN and its loss
ablations), bilinear 4x up-sampling of LR (SBU) or the HR crop itself (plain R-CNN style
`d_no_adv`). Batched, under `torch.inference_mode`, on the GPU when present (bf16 autocast there).
Also D's classification accuracy on the positive, negative and all (non-ignored) test ROIs: the
paper's Table 9.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from jobs.mtgan.data import ShardBatches
from jobs.mtgan.engine import build_networks, to_model
from jobs.mtgan.settings import Preset, Variant
from jobs.weights import load_torch_file
from pipeline.errors import EmptyInputError
from pipeline.io.shards import read_manifest, verify_shards
from pipeline.io.tables import INFERENCE_SCHEMA, make_table

log = logging.getLogger(__name__)


def load_variant(model_path: Path, device: torch.device) -> tuple[Variant, torch.nn.Module | None, torch.nn.Module, dict[str, Any]]:
    state = load_torch_file(model_path, "MTGAN model")
    variant = Variant(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["variant"].items()})
    preset = Preset(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["preset"].items()})
    preset = Preset(**{**preset.__dict__, "d_weights": "none"})  # the weights come from the checkpoint
    g, d = build_networks(variant, preset, state["num_labels"], state["scale"])
    d.load_state_dict(state["d"])
    if "g" in state:
        g.load_state_dict(state["g"])
    g = g.to(device).eval() if g is not None else None
    return variant, g, d.to(device).eval(), state


@torch.inference_mode()
def infer(model_path: Path, manifest: Path, device: torch.device, batch_size: int = 256) -> tuple[pa.Table, dict[str, Any]]:
    """The per-ROI table of a variant on the shards of `manifest`, and its Table 9 accuracies."""
    variant, g, d, state = load_variant(model_path, device)
    doc = read_manifest(manifest)
    if doc["num_rois"] == 0:
        raise EmptyInputError(f"{manifest}: the test shards hold no ROIs: nothing to infer (did the detector find nothing?)")
    verify_shards(manifest, doc)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    loader = ShardBatches(manifest, batch_size=batch_size, shuffle=False, drop_ignored=False, fields=("lr", "hr", "label", "roi_id"))
    roi_ids, probs, offsets, labels = [], [], [], []
    for batch in tqdm(loader, desc=f"infer {variant.name}", unit="batch"):
        with autocast:
            if variant.generator == "none":
                images = to_model(batch["hr"], device)
            else:
                images = g(to_model(batch["lr"], device))
            out = d(images)
        probs.append(torch.softmax(out["cls"].float(), dim=1).cpu().numpy())
        offsets.append(out["reg"].float().cpu().numpy() if "reg" in out else np.zeros((len(images), 4), np.float32))
        roi_ids.append(batch["roi_id"].numpy())
        labels.append(batch["label"].numpy())
    roi_id, prob, offset, label = (np.concatenate(x) for x in (roi_ids, probs, offsets, labels))
    order = np.argsort(roi_id)
    columns = {"roi_id": roi_id[order], "probs": prob[order].astype(np.float32),
               **{k: offset[order, j].astype(np.float32) for j, k in enumerate(("dx", "dy", "dw", "dh"))}}
    table = make_table(columns, INFERENCE_SCHEMA, {"variant": variant.name, "category_ids": state["category_ids"]})
    predicted = prob.argmax(1)
    accuracy = {}
    for kind, mask in (("positive", label > 0), ("negative", label == 0), ("all", label >= 0)):
        accuracy[kind] = float((predicted[mask] == label[mask]).mean()) if mask.any() else None  # no such ROIs
        accuracy[f"{kind}_rois"] = int(mask.sum())
    log.info("variant %s: %d ROIs; classification accuracy %s", variant.name, len(roi_id), accuracy)
    return table, {"variant": variant.name, "accuracy": accuracy}
