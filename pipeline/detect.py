"""Stage 2, detect: the baseline detector's top-K detections per image, as a typed table.

Sources (config `detector.source`):
- `train`: the detector the `train_baseline` job trained on this dataset (its `model.pt`);
- `torchvision`: a torchvision detector (`detector.arch`) with `detector.weights` = `none`,
  `torchvision` (the builder's default COCO weights; its classes are matched to the dataset's
  categories by name) or a checkpoint path;
- `import`: a COCO results JSON per split written by any other detector (`detector.import_results`),
  or, for WIDER FACE, a folder in the official prediction layout (`<event>/<image>.txt`).

Every source gives the same table (`schemas/detections.schema.yaml`): per image at most `top_k`
detections, best first, each with its K+1 class-probability vector, in the split's image order,
streamed to disk in row groups (`core.io.tables.TableWriter`): nothing holds a Python object per
detection, so COCO train's 11.8M detections need the memory of one batch (a detector's) or of the
imported file's columns (48 bytes a record; the file itself is parsed in parts). The COCO results
JSON of a split that is scored or submitted is written from the table (`write_results_json`), also
in parts.

Imported detections are validated; what is wrong is either an error or a counted drop:
- error (the file does not belong to this dataset, or is not a results file): a record that is
  not an object with `image_id`, `category_id`, `bbox` (4 numbers) and `score`; an unknown image
  or category id; a non-finite number; a score outside [0, 1];
- counted, logged drop: a box of non-positive width or height, or one with no area inside its
  image; a box partly outside its image is clipped to it (counted);
- a record that repeats an earlier one exactly (image, class, box, score) is dropped before the
  top k (counted as `duplicates`);
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

from core.errors import EmptyInputError, InputError, MissingFileError, PipelineError, first_few
from core.io import atomic
from core.io.coco import ResultColumns, read_results
from core.io.images import ImageReadError
from core.io.tables import DETECTIONS_SCHEMA, ROW_GROUP_SIZE, TableWriter, iter_table
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
    out: Path,
    trained: Path | None = None,
    on_bad_image: str = "error",
    data_source: str | None = None,
) -> int:
    """Write the detections table of one split (`out`) from the configured source (config section
    `detector`): the imported results file of the split, or a detector run over its images. An
    image that cannot be decoded stops the stage naming it (`on_bad_image: error`, the shards
    stage's setting) or is skipped and counted (`skip`). `data_source`: the dataset's
    (`data.source`), whose own layout an imported folder of detections is read in. Returns the
    number of detections."""
    settings = DetectSettings.from_config(detector)
    if detector["source"] == "import":
        if split not in detector["import_results"]:
            raise PipelineError(f"detector.import_results has no file for split {split!r}")
        return import_detections(Path(detector["import_results"][split]), coco, settings.top_k, out, data_source)["written"]
    if detector["source"] == "train" and trained is None:
        raise PipelineError("detector.source is train: give the train_baseline job's model.pt (mtgan detect --model)")
    model, label_map = load_detector(detector["source"], detector["arch"], detector["weights"], coco, settings, trained)
    return run_detector(model, label_map, coco, image_root, settings, pick_device(detector["device"]), detector["source"], out, on_bad_image)


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


def _columns(
    image_ids: np.ndarray, rank: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, probs: np.ndarray, category_ids: list[int]
) -> dict[str, Any]:
    """The detections table's columns of some rows (boxes x1 y1 x2 y2; labels 1..K)."""
    ids = np.asarray([0, *category_ids], dtype=np.int64)
    return {
        "image_id": np.asarray(image_ids, np.int64),
        "rank": np.asarray(rank, np.int32),
        **{k: np.asarray(boxes[:, j], np.float32) for j, k in enumerate(("x1", "y1", "x2", "y2"))},
        "label": np.asarray(labels, np.int32),
        "category_id": ids[labels],
        "score": np.asarray(scores, np.float32),
        "probs": np.asarray(probs, np.float32).reshape(len(labels), len(category_ids) + 1),
    }


def run_detector(
    model: torch.nn.Module,
    label_map: LabelMap,
    coco: dict[str, Any],
    image_root: Path,
    settings: DetectSettings,
    device: torch.device,
    source: str,
    out: Path,
    on_bad_image: str = "error",
) -> int:
    """Run `model` over every image of the split, writing the detections table to `out` batch by
    batch (with the images skipped under `on_bad_image: skip` counted in its metadata); the
    number of detections."""
    model = model.to(device).eval()
    loader = DataLoader(CocoImages(coco, image_root), batch_size=settings.batch_size, num_workers=settings.num_workers, collate_fn=collate)
    category_ids = list(label_map.category_ids)
    skipped: list[str] = []
    with TableWriter(out, DETECTIONS_SCHEMA, {"category_ids": category_ids, "source": source}) as table:
        for images, image_ids, errors in tqdm(loader, desc="detect", unit="batch"):
            bad = [e for e in errors if e is not None]
            if bad and on_bad_image != "skip":
                raise ImageReadError(f"{bad[0]} (set shards.on_bad_image: skip to leave such images out, counted)")
            skipped += bad
            images, image_ids = [im for im in images if im is not None], [i for i, e in zip(image_ids, errors) if e is None]
            if not images:
                continue
            results = detect_batch(model, [im.to(device, non_blocking=True) for im in images], label_map)
            counts = [len(det["boxes"]) for det in results]
            table.write(
                _columns(
                    np.repeat(np.asarray(image_ids, np.int64), counts),
                    np.concatenate([np.arange(n) for n in counts]),
                    torch.cat([det["boxes"].float().cpu() for det in results]).numpy().reshape(-1, 4),
                    torch.cat([det["labels"].cpu() for det in results]).numpy(),
                    torch.cat([det["scores"].float().cpu() for det in results]).numpy(),
                    torch.cat([det["probs"].float().cpu() for det in results]).numpy(),
                    category_ids,
                )
            )
        if skipped:  # recorded in the table's metadata (the file is rewritten once to carry it)
            table.metadata = {**table.metadata, "skipped_images": len(skipped)}
            log.warning("detect: %d image(s) could not be decoded and were skipped (shards.on_bad_image: skip): %s", len(skipped), first_few(skipped))
    return table.rows


def import_detections(path: Path, coco: dict[str, Any], top_k: int, out: Path, data_source: str | None = None) -> dict[str, int]:
    """Validate a COCO results JSON (or a folder of detections in the layout of `data_source`, such
    as WIDER FACE's) against the split and write its detections table to `out`; the drop counts
    (and `written`). The file is parsed in parts into columns (`core.io.coco.read_results`)."""
    path = Path(path)
    records = prediction_folder_records(data_source, path, coco) if path.is_dir() else None
    found = read_results(path, coco, records)
    order, rank, counts = select_imported(found, coco, top_k)
    if not len(order):
        dropped = {k: v for k, v in counts.items() if k != "imported" and v}
        raise EmptyInputError(
            f"{path}: no usable detections for the {len(coco['images'])} images of this split "
            f"({counts['imported']} records; dropped: {dropped or 'none'}): MTGAN would have nothing to re-score"
        )
    category_ids = _categories(coco)
    image_ids = np.asarray([im["id"] for im in coco["images"]], np.int64)
    sizes = image_sizes(coco)
    with TableWriter(out, DETECTIONS_SCHEMA, {"category_ids": category_ids, "source": "import"}) as table:
        for start in range(0, len(order), ROW_GROUP_SIZE):
            rows = order[start : start + ROW_GROUP_SIZE]
            labels, score = found.label[rows], found.score[rows]
            probs = np.zeros((len(rows), len(category_ids) + 1), np.float32)
            probs[:, 0], probs[np.arange(len(rows)), labels] = 1.0 - score, score  # a score's own rounding to float32, as an array element
            boxes = _clip(found.boxes[rows], sizes[found.image[rows]])[0]
            table.write(_columns(image_ids[found.image[rows]], rank[start : start + ROW_GROUP_SIZE], boxes, labels, score, probs, category_ids))
    dropped = {k: v for k, v in counts.items() if k != "imported" and v}
    log.info("imported %d detections from %s; dropped or changed: %s", counts["imported"], path, dropped or "none")
    return {**counts, "written": table.rows}


def image_sizes(coco: dict[str, Any]) -> np.ndarray:
    """Width and height of each image of the split, in its order: (N, 2) float64."""
    return np.asarray([(im["width"], im["height"]) for im in coco["images"]], np.float64).reshape(-1, 2)


def _clip(boxes: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imported x y w h boxes as x1 y1 x2 y2 clipped to their images (`sizes`: each box's image's
    width and height): the boxes, whose size is not positive, and which have no area in the image.
    The arithmetic of `core.boxes.xywh_to_xyxy` and Python's max / min, in float64."""
    widths, heights = sizes.T
    x, y, w, h = boxes.T
    x2, y2 = x + w, y + h
    clipped = np.stack([np.where(x < 0.0, 0.0, x), np.where(y < 0.0, 0.0, y), np.where(widths < x2, widths, x2), np.where(heights < y2, heights, y2)], axis=1)
    non_positive = (w <= 0) | (h <= 0)
    outside = ~non_positive & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    return clipped, non_positive, outside


def repeated_records(found: ResultColumns) -> np.ndarray:
    """Which records repeat an earlier one of the file exactly (image, class, box and score): a
    copy says nothing new, and copies would crowd distinct detections out of an image's top k."""
    x, y, w, h = found.boxes.T
    order = np.lexsort((found.score, h, w, y, x, found.label, found.image))  # stable: the first copy first
    keys = (found.image, found.label, x, y, w, h, found.score)
    same = np.ones(max(len(order) - 1, 0), bool)
    for key in keys:
        ordered = key[order]
        same &= ordered[1:] == ordered[:-1]
    repeated = np.zeros(len(order), bool)
    repeated[order[1:][same]] = True
    return repeated


def select_imported(found: ResultColumns, coco: dict[str, Any], top_k: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """What an import keeps: the records (their positions in `found`) in the split's image order,
    best first within an image (ties in file order), at most `top_k` an image; each one's rank;
    the counts of what was dropped or changed. Boxes of non-positive size, boxes with no area
    inside their image and exact repeats of an earlier record are dropped before the top k;
    boxes partly outside are clipped (counted)."""
    boxes, non_positive, outside = _clip(found.boxes, image_sizes(coco)[found.image])
    duplicate = repeated_records(found)
    usable = np.flatnonzero(~non_positive & ~outside & ~duplicate)
    x, y, w, h = found.boxes[usable].T
    changed = boxes[usable] != np.stack([x, y, x + w, y + h], axis=1)
    order = usable[np.lexsort((-found.score[usable], found.image[usable]))]  # stable: ties keep the file's order
    image = found.image[order]
    rank = np.arange(len(order)) - np.searchsorted(image, image)
    counts = {
        "imported": len(found.score),
        "non_positive_size": int(non_positive.sum()),
        "outside_image": int(outside.sum()),
        "duplicates": int((duplicate & ~non_positive & ~outside).sum()),
        "clipped": int(changed.any(axis=1).sum()),
        "over_top_k": int((rank >= top_k).sum()),
    }
    return order[rank < top_k], rank[rank < top_k], counts


def results_records(detections: pa.Table) -> list[dict[str, Any]]:
    """COCO results records (bbox xywh, rounded as results files are) of some rows of a detections table."""
    x1, y1, x2, y2 = (detections.column(k).to_numpy().astype(np.float64) for k in ("x1", "y1", "x2", "y2"))
    columns = zip(
        detections.column("image_id").to_pylist(),
        detections.column("category_id").to_pylist(),
        x1.tolist(),
        y1.tolist(),
        (x2 - x1).tolist(),  # core.boxes.xyxy_to_xywh, in float64
        (y2 - y1).tolist(),
        detections.column("score").to_numpy().astype(np.float64).tolist(),
    )
    return [
        {"image_id": i, "category_id": c, "bbox": [round(x, 3), round(y, 3), round(w, 3), round(h, 3)], "score": round(s, 6)} for i, c, x, y, w, h, s in columns
    ]


RESULTS_COLUMNS = ["image_id", "category_id", "x1", "y1", "x2", "y2", "score"]


def write_results_json(detections: Path, out: Path) -> int:
    """The detections table as a COCO results JSON, one row group at a time; the records written."""
    return atomic.write_json_list(out, (results_records(part) for part in iter_table(detections, DETECTIONS_SCHEMA, RESULTS_COLUMNS)))
