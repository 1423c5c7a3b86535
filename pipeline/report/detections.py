"""Detection pictures (the paper's Figs 7-8): test images where a method changed the outcome
against the baseline, chosen automatically, with the list of every image as CSV.

Matching is pycocotools' own (COCOeval.evaluateImg at IoU 0.5, maxDets 100, crowd regions
ignored); each method is looked at through one operating point, the score threshold that maximises
its F1 over the whole test split, so that the pictures show the boxes a user would keep. Per image
and method: true positives, false positives, missed objects, small objects found, and the mean IoU
of the true positives. An image is listed as

- `small found`: more small objects found than the baseline;
- `fewer false positives`: fewer false positives, no fewer true positives;
- `tighter boxes`: the same true positives with a mean IoU higher by at least 0.05;
- `worse`: fewer true positives or more false positives than the baseline (and none of the above);
- `same` otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from pipeline.boxes import xywh_to_xyxy
from pipeline.io import atomic
from pipeline.report.style import GROUND_TRUTH_COLOR, label, method_color, plt, save

IOU = 0.5
TIGHTER = 0.05


@dataclass
class ImageOutcome:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    small_tp: int = 0
    iou_sum: float = 0.0

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0


def _iou_xywh(a: list[float], b: list[float]) -> float:
    boxes = xywh_to_xyxy(torch.tensor([a, b], dtype=torch.float64))
    return float(box_iou(boxes[:1], boxes[1:])[0, 0])


def _evaluate_images(gt: COCO, results: list[dict[str, Any]]) -> tuple[COCOeval | None, Any]:
    if not results:
        return None, None
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.iouThrs = np.array([IOU])
        evaluator.params.maxDets = [100]
        evaluator.evaluate()
    return evaluator, dt


def f1_threshold(evaluator: COCOeval | None) -> float:
    """The score at which the method's F1 (IoU 0.5, all areas) over the split is highest."""
    if evaluator is None:
        return 1.0
    scores, hits, n_gt = [], [], 0
    for e in evaluator.evalImgs:
        if e is None or e["aRng"] != evaluator.params.areaRng[0]:
            continue
        keep = ~np.asarray(e["dtIgnore"][0], bool)
        scores += list(np.asarray(e["dtScores"])[keep])
        hits += list(np.asarray(e["dtMatches"][0])[keep] > 0)
        n_gt += int((~np.asarray(e["gtIgnore"], bool)).sum())
    if not scores:
        return 1.0
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    tp = np.cumsum(np.asarray(hits)[order])
    f1 = 2 * tp / (np.arange(1, len(order) + 1) + n_gt)
    return float(np.asarray(scores)[order][int(np.argmax(f1))])


def image_outcomes(gt: COCO, evaluator: COCOeval | None, dt: COCO | None, threshold: float) -> dict[int, ImageOutcome]:
    """Per image: the method's outcome at `threshold` (see the module docstring)."""
    out = {i: ImageOutcome() for i in gt.getImgIds()}
    if evaluator is None:
        for a in gt.dataset["annotations"]:
            out[a["image_id"]].fn += not a.get("iscrowd", 0)
        return out
    all_range, small_range = evaluator.params.areaRng[0], evaluator.params.areaRng[1]
    for e in evaluator.evalImgs:
        if e is None or e["aRng"] not in (all_range, small_range):
            continue
        score_of = dict(zip(e["dtIds"], e["dtScores"]))
        gt_ignored = np.asarray(e["gtIgnore"], bool)
        matched_by = np.asarray(e["gtMatches"][0])
        found = [(g, int(d)) for g, d, ign in zip(e["gtIds"], matched_by, gt_ignored)
                 if not ign and d > 0 and score_of[int(d)] >= threshold]
        o = out[e["image_id"]]
        if e["aRng"] == small_range:
            o.small_tp += len(found)
            continue
        o.fn += int((~gt_ignored).sum()) - len(found)
        for d, m, ign, s in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], e["dtScores"]):
            if ign or s < threshold:
                continue
            if m > 0:
                o.tp += 1
                o.iou_sum += _iou_xywh(dt.anns[d]["bbox"], gt.anns[int(m)]["bbox"])
            else:
                o.fp += 1
    return out


def change_kind(base: ImageOutcome, other: ImageOutcome) -> str:
    if other.small_tp > base.small_tp:
        return "small found"
    if other.fp < base.fp and other.tp >= base.tp:
        return "fewer false positives"
    if other.tp == base.tp and other.tp and other.mean_iou >= base.mean_iou + TIGHTER:
        return "tighter boxes"
    if other.tp < base.tp or other.fp > base.fp:
        return "worse"
    return "same"


def change_score(base: ImageOutcome, other: ImageOutcome) -> float:
    """How much better (positive) or worse (negative) the image got: ranks the pictures."""
    return (2 * (other.small_tp - base.small_tp) + (other.tp - base.tp) - 0.5 * (other.fp - base.fp)
            + 5 * (other.mean_iou - base.mean_iou))


def load_gt(gt_json: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(gt_json))


def compare(gt: COCO, baseline: list[dict[str, Any]], other: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One row per test image comparing `other` with the baseline, best change first; the thresholds."""
    rows, thresholds = [], {}
    outcomes = []
    for name, results in (("baseline", baseline), ("other", other)):
        evaluator, dt = _evaluate_images(gt, results)
        thresholds[name] = f1_threshold(evaluator)
        outcomes.append(image_outcomes(gt, evaluator, dt, thresholds[name]))
    for image_id, base in outcomes[0].items():
        new = outcomes[1][image_id]
        row: dict[str, Any] = {"image_id": image_id, "file_name": gt.imgs[image_id]["file_name"],
                               "change": change_kind(base, new), "change_score": round(change_score(base, new), 3)}
        for prefix, o in (("baseline", base), ("method", new)):
            row |= {f"{prefix}_{k}": v for k, v in asdict(o).items() if k != "iou_sum"}
            row[f"{prefix}_mean_iou"] = round(o.mean_iou, 3)
        rows.append(row)
    rows.sort(key=lambda r: -r["change_score"])
    return rows, thresholds


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["image_id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def _draw(ax: Any, image_path: Path, boxes: list[tuple[list[float], str, str, float]]) -> None:
    with Image.open(image_path) as im:
        ax.imshow(im.convert("RGB"))
    for (x, y, w, h), color, style, lw in boxes:
        ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor=color, linestyle=style, linewidth=lw))
    ax.axis("off")


def plot_examples(rows: list[dict[str, Any]], gt: COCO, image_root: Path, baseline: list[dict[str, Any]],
                  other: list[dict[str, Any]], method: str, thresholds: dict[str, float], out_png: Path, title: str,
                  n: int = 6) -> None:
    """The images of `rows` (at most `n`): ground truth, baseline and `method` boxes kept at each one's threshold."""
    by_image: dict[str, dict[int, list[dict[str, Any]]]] = {"baseline": {}, "other": {}}
    for name, results in (("baseline", baseline), ("other", other)):
        for r in results:
            if r["score"] >= thresholds[name]:
                by_image[name].setdefault(r["image_id"], []).append(r)
    shown = rows[:n]
    cols = min(3, max(1, len(shown)))
    n_rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(5 * cols, 5.4 * n_rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, shown):
        image_id = row["image_id"]
        boxes = [(a["bbox"], GROUND_TRUTH_COLOR, "-", 2.2) for a in gt.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes += [(d["bbox"], method_color("baseline"), "--", 1.3) for d in by_image["baseline"].get(image_id, [])]
        boxes += [(d["bbox"], method_color(method), "-", 1.3) for d in by_image["other"].get(image_id, [])]
        _draw(ax, Path(image_root) / row["file_name"], boxes)
        ax.set_title(
            f"{row['file_name']} ({row['change']})\nsmall found {row['baseline_small_tp']} -> {row['method_small_tp']}, "
            f"TP {row['baseline_tp']} -> {row['method_tp']}, FP {row['baseline_fp']} -> {row['method_fp']}", fontsize=8)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no such image in the test split", ha="center", va="center", transform=axes[0, 0].transAxes)
    handles = [plt.Line2D([], [], color=GROUND_TRUTH_COLOR, lw=2.2, label="ground truth"),
               plt.Line2D([], [], color=method_color("baseline"), ls="--", label=f"baseline (score >= {thresholds['baseline']:.2f})"),
               plt.Line2D([], [], color=method_color(method), label=f"{label(method)} (score >= {thresholds['other']:.2f})")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    save(fig, out_png, dpi=90)
