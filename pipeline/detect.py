"""Stage 2, detect: the baseline detector's top-K detections per image, as a typed table.

Sources (config `detector.source`):
- `train`: the detector the `train_baseline` job trained on this dataset (its `model.pt`);
- `torchvision`: a torchvision detector (`detector.arch`) with `detector.weights` = `none`,
  `torchvision` (the builder's default COCO weights; its classes are matched to the dataset's
  categories by name) or a checkpoint path;
- `import`: a COCO results JSON per split written by any other detector (`detector.import_results`),
  or, for WIDER FACE, a folder in the official prediction layout (`<event>/<image>.txt`).

Every source gives the same table (`schemas/detections.schema.yaml`): per image at most `top_k`
detections, best first, each with its K+1 class-probability vector, plus a COCO results JSON.

Imported detections are validated; what is wrong is either an error or a counted drop:
- error (the file does not belong to this dataset, or is not a results file): a record that is
  not an object with `image_id`, `category_id`, `bbox` (4 numbers) and `score`; an unknown image
  or category id; a non-finite number; a score outside [0, 1];
- counted, logged drop: a box of non-positive width or height, or one with no area inside its
  image; a box partly outside its image is clipped to it (counted);
- beyond `top_k` detections of an image, the lowest-scoring ones are left out (counted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.boxes import xywh_to_xyxy, xyxy_to_xywh
from core.errors import EmptyInputError, InputError, MissingFileError, PipelineError, first_few
from core.io import atomic
from core.io.coco import CocoFormatError, read_json, results_problems
from core.io.images import ImageReadError
from core.io.tables import DETECTIONS_SCHEMA, make_table
from core.sections import section_fields
from jobs.baseline.data import CocoImages, collate
from jobs.baseline.models import DetectorSettings, build_detector, num_classes_of, state_dict_of, torchvision_categories
from jobs.baseline.predict import LabelMap, detect_batch
from jobs.common import pick_device
from jobs.weights import load_torch_file
from pipeline.data.sources import prediction_folder_records

log = logging.getLogger(__name__)

COCO_NUM_CLASSES = 91  # torchvision's COCO label space: background + 90 category ids


@dataclass(frozen=True)
class DetectSettings:
    top_k: int
    score_thresh: float
    nms_thresh: float
    min_size: int
    max_size: int
    batch_size: int
    num_workers: int

    @classmethod
    def from_config(cls, detector: dict[str, Any]) -> DetectSettings:
        """From the config's `detector` section."""
        return cls(**section_fields(cls, detector))


def detect_split(
    detector: dict[str, Any],
    coco: dict[str, Any],
    image_root: Path,
    split: str,
    trained: Path | None = None,
    on_bad_image: str = "error",
    data_source: str | None = None,
) -> pa.Table:
    """The detections table of one split from the configured source (config section `detector`):
    the imported results file of the split, or a detector run over its images. An image that
    cannot be decoded stops the stage naming it (`on_bad_image: error`, the shards stage's setting)
    or is skipped and counted (`skip`). `data_source`: the dataset's (`data.source`), whose own
    layout an imported folder of detections is read in."""
    settings = DetectSettings.from_config(detector)
    if detector["source"] == "import":
        if split not in detector["import_results"]:
            raise PipelineError(f"detector.import_results has no file for split {split!r}")
        table, _ = import_detections(Path(detector["import_results"][split]), coco, settings.top_k, data_source)
        return table
    if detector["source"] == "train" and trained is None:
        raise PipelineError("detector.source is train: give the train_baseline job's model.pt (mtgan detect --model)")
    model, label_map = load_detector(detector["source"], detector["arch"], detector["weights"], coco, settings, trained)
    return run_detector(model, label_map, coco, image_root, settings, pick_device(detector["device"]), detector["source"], on_bad_image)


def _categories(coco: dict[str, Any]) -> list[int]:
    return sorted(c["id"] for c in coco["categories"])


def load_detector(
    source: str, arch: str, weights: str, coco: dict[str, Any], settings: DetectSettings, trained: Path | None = None
) -> tuple[torch.nn.Module, LabelMap]:
    """The detector to run and how its classes map onto the dataset's categories."""
    category_ids = _categories(coco)
    detector_settings = DetectorSettings(settings.min_size, settings.max_size, settings.score_thresh, settings.nms_thresh, settings.top_k)
    if source == "train" or (source == "torchvision" and weights not in ("none", "torchvision")):
        path = Path(trained if source == "train" else weights)  # type: ignore[arg-type]
        if not path.is_file():
            raise MissingFileError(f"detector checkpoint {path} not found")
        checkpoint = load_torch_file(path, "detector checkpoint")
        state = state_dict_of(checkpoint)
        arch = checkpoint.get("arch", arch) if isinstance(checkpoint, dict) else arch
        n = num_classes_of(state)
        if isinstance(checkpoint, dict) and "category_ids" in checkpoint:
            if list(checkpoint["category_ids"]) != category_ids:
                raise InputError(f"{path} was trained on categories {checkpoint['category_ids'][:10]}..., not this dataset's")
            label_map = LabelMap.identity(category_ids)
        elif n == len(category_ids) + 1:
            label_map = LabelMap.identity(category_ids)
        elif n == COCO_NUM_CLASSES:
            label_map = LabelMap.by_name(torchvision_categories(arch), coco["categories"])
        else:
            raise InputError(f"{path} has {n} classes; the dataset has {len(category_ids)} (+ background)")
        model = build_detector(arch, n, detector_settings)
        model.load_state_dict(state)
        return model, label_map
    if source == "torchvision" and weights == "torchvision":
        model = build_detector(arch, COCO_NUM_CLASSES, detector_settings, pretrained=True)
        return model, LabelMap.by_name(torchvision_categories(arch), coco["categories"])
    if source == "torchvision" and weights == "none":
        log.warning("detector weights 'none': a randomly initialised detector (useful for tests only)")
        return build_detector(arch, len(category_ids) + 1, detector_settings), LabelMap.identity(category_ids)
    raise ValueError(f"detector source {source!r} does not run a model")


def _table(rows: dict[str, list[Any]], category_ids: list[int], source: str, skipped_images: int = 0) -> pa.Table:
    labels = np.asarray(rows["label"], dtype=np.int64)
    ids = np.asarray([0, *category_ids], dtype=np.int64)
    columns = {**rows, "category_id": ids[labels] if len(labels) else np.zeros(0, np.int64)}
    probs = rows["probs"]
    columns["probs"] = np.stack(probs).astype(np.float32) if probs else np.zeros((0, len(category_ids) + 1), np.float32)
    metadata = {"category_ids": category_ids, "source": source} | ({"skipped_images": skipped_images} if skipped_images else {})
    return make_table(columns, DETECTIONS_SCHEMA, metadata)


def _empty_rows() -> dict[str, list[Any]]:
    return {k: [] for k in ("image_id", "rank", "x1", "y1", "x2", "y2", "label", "score", "probs")}


def run_detector(
    model: torch.nn.Module,
    label_map: LabelMap,
    coco: dict[str, Any],
    image_root: Path,
    settings: DetectSettings,
    device: torch.device,
    source: str,
    on_bad_image: str = "error",
) -> pa.Table:
    """Run `model` over every image of the split; the detections table (with the images skipped
    under `on_bad_image: skip` counted in its metadata)."""
    model = model.to(device).eval()
    loader = DataLoader(CocoImages(coco, image_root), batch_size=settings.batch_size, num_workers=settings.num_workers, collate_fn=collate)
    rows, skipped = _empty_rows(), []
    for images, image_ids, errors in tqdm(loader, desc="detect", unit="batch"):
        bad = [e for e in errors if e is not None]
        if bad and on_bad_image != "skip":
            raise ImageReadError(f"{bad[0]} (set shards.on_bad_image: skip to leave such images out, counted)")
        skipped += bad
        images, image_ids = [im for im in images if im is not None], [i for i, e in zip(image_ids, errors) if e is None]
        if not images:
            continue
        results = detect_batch(model, [im.to(device, non_blocking=True) for im in images], label_map)
        for image_id, det in zip(image_ids, results):
            boxes = det["boxes"].float().cpu().numpy()
            n = len(boxes)
            rows["image_id"] += [image_id] * n
            rows["rank"] += list(range(n))
            for j, key in enumerate(("x1", "y1", "x2", "y2")):
                rows[key] += boxes[:, j].tolist()
            rows["label"] += det["labels"].cpu().tolist()
            rows["score"] += det["scores"].float().cpu().tolist()
            rows["probs"] += list(det["probs"].float().cpu().numpy())
    if skipped:
        log.warning("detect: %d image(s) could not be decoded and were skipped (shards.on_bad_image: skip): %s", len(skipped), first_few(skipped))
    return _table(rows, list(label_map.category_ids), source, len(skipped))


def import_detections(path: Path, coco: dict[str, Any], top_k: int, data_source: str | None = None) -> tuple[pa.Table, dict[str, int]]:
    """Validate a COCO results JSON (or a folder of detections in the layout of `data_source`, such
    as WIDER FACE's) against the split; the detections table and the drop counts."""
    records = prediction_folder_records(data_source, Path(path), coco) if Path(path).is_dir() else read_json(path)
    problems = results_problems(records, coco)
    if problems:
        raise CocoFormatError(f"{path}: {problems[0]}")
    images = {im["id"]: im for im in coco["images"]}
    category_ids = _categories(coco)
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}

    counts = {"imported": len(records), "non_positive_size": 0, "outside_image": 0, "clipped": 0, "over_top_k": 0}
    per_image: dict[int, list[tuple[float, list[float], int]]] = {}
    for r in records:
        x, y, w, h = (float(v) for v in r["bbox"])
        if w <= 0 or h <= 0:
            counts["non_positive_size"] += 1
            continue
        im = images[r["image_id"]]
        xyxy = xywh_to_xyxy([x, y, w, h])
        box = [max(xyxy[0], 0.0), max(xyxy[1], 0.0), min(xyxy[2], float(im["width"])), min(xyxy[3], float(im["height"]))]
        if box[2] <= box[0] or box[3] <= box[1]:
            counts["outside_image"] += 1
            continue
        counts["clipped"] += box != xyxy
        per_image.setdefault(r["image_id"], []).append((float(r["score"]), box, label_of[r["category_id"]]))

    rows = _empty_rows()
    k1 = len(category_ids) + 1
    for image_id in images:
        dets = sorted(per_image.get(image_id, []), key=lambda d: -d[0])
        counts["over_top_k"] += max(0, len(dets) - top_k)
        for rank, (score, box, label) in enumerate(dets[:top_k]):
            probs = np.zeros(k1, np.float32)
            probs[0], probs[label] = 1.0 - score, score
            for key, value in zip(("image_id", "rank", "x1", "y1", "x2", "y2", "label", "score", "probs"), (image_id, rank, *box, label, score, probs)):
                rows[key].append(value)
    dropped = {k: v for k, v in counts.items() if k != "imported" and v}
    if not rows["image_id"]:
        raise EmptyInputError(
            f"{path}: no usable detections for the {len(images)} images of this split "
            f"({counts['imported']} records; dropped: {dropped or 'none'}): MTGAN would have nothing to re-score"
        )
    log.info("imported %d detections from %s; dropped or changed: %s", counts["imported"], path, dropped or "none")
    return _table(rows, category_ids, "import"), counts


def results_json(table: pa.Table) -> list[dict[str, Any]]:
    """COCO results records (bbox xywh) of a detections table."""
    t = table.to_pydict()
    return [
        {"image_id": i, "category_id": c, "bbox": [round(v, 3) for v in xyxy_to_xywh([x1, y1, x2, y2])], "score": round(s, 6)}
        for i, c, x1, y1, x2, y2, s in zip(t["image_id"], t["category_id"], t["x1"], t["y1"], t["x2"], t["y2"], t["score"])
    ]


def write_results_json(table: pa.Table, path: Path) -> None:
    atomic.write_json(path, results_json(table))
