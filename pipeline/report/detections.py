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

The pictures draw only what changed (`object_changes`): the objects one method found and the
other missed, and the false positives one of them has and the other does not (a false positive
"matches" one of the other method's when their IoU is at least 0.5), with a zoomed inset of each
small one (area < 32^2) under its image; boxes both methods got right or wrong alike are left out.
"""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from core.io import atomic
from pipeline.report.style import label, method_color, plt, save

IOU = 0.5
TIGHTER = 0.05
SMALL_AREA = 32**2
# What changed for one object between the baseline and the method, in the order the insets take
# them, and how it is drawn: (colour role, line style, inset title). The colour role "method" is
# the method's colour, "baseline" the baseline's.
CHANGES = {
    "found by the method only": ("method", "-", "found"),
    "found by the baseline only": ("baseline", "-", "lost"),
    "false positive added": ("method", ":", "FP added"),
    "false positive removed": ("baseline", ":", "FP removed"),
}


@dataclass(frozen=True)
class ObjectChange:
    kind: str  # a key of CHANGES
    bbox: list[float]  # xywh, image pixels

    @property
    def small(self) -> bool:
        return self.bbox[2] * self.bbox[3] < SMALL_AREA


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
    """IoU of two COCO boxes, as COCO's evaluation computes it (pycocotools, float64)."""
    return float(mask_utils.iou([a], [b], [0])[0, 0])


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
        found = [(g, int(d)) for g, d, ign in zip(e["gtIds"], matched_by, gt_ignored) if not ign and d > 0 and score_of[int(d)] >= threshold]
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


def kept_matches(gt: COCO, evaluator: COCOeval | None, dt: COCO | None, threshold: float) -> tuple[dict[int, set[int]], dict[int, list[list[float]]]]:
    """Per image, at `threshold`: the ids of the objects found (IoU 0.5) and the boxes of the false
    positives (crowd regions ignored, as pycocotools does)."""
    found: dict[int, set[int]] = {i: set() for i in gt.getImgIds()}
    false_positives: dict[int, list[list[float]]] = {i: [] for i in gt.getImgIds()}
    if evaluator is None:
        return found, false_positives
    for e in evaluator.evalImgs:
        if e is None or e["aRng"] != evaluator.params.areaRng[0]:
            continue
        for d, m, ign, score in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], e["dtScores"]):
            if ign or score < threshold:
                continue
            if m > 0:
                found[e["image_id"]].add(int(m))
            else:
                false_positives[e["image_id"]].append(list(dt.anns[d]["bbox"]))
    return found, false_positives


def _unmatched(boxes: list[list[float]], others: list[list[float]]) -> list[list[float]]:
    """The boxes of `boxes` that overlap none of `others` by IoU 0.5 or more."""
    return [b for b in boxes if all(_iou_xywh(b, o) < IOU for o in others)]


def object_changes(gt: COCO, baseline: list[dict[str, Any]], other: list[dict[str, Any]], thresholds: dict[str, float]) -> dict[int, list[ObjectChange]]:
    """Per image, every object or false positive whose outcome differs between the baseline and
    the method, each at its threshold (see the module's docstring)."""
    kept = {}
    for name, results in (("baseline", baseline), ("other", other)):
        evaluator, dt = _evaluate_images(gt, results)
        kept[name] = kept_matches(gt, evaluator, dt, thresholds[name])
    (base_found, base_fp), (new_found, new_fp) = kept["baseline"], kept["other"]
    out = {}
    for image_id in gt.getImgIds():
        changes = [ObjectChange("found by the method only", gt.anns[g]["bbox"]) for g in sorted(new_found[image_id] - base_found[image_id])]
        changes += [ObjectChange("found by the baseline only", gt.anns[g]["bbox"]) for g in sorted(base_found[image_id] - new_found[image_id])]
        changes += [ObjectChange("false positive removed", b) for b in _unmatched(base_fp[image_id], new_fp[image_id])]
        changes += [ObjectChange("false positive added", b) for b in _unmatched(new_fp[image_id], base_fp[image_id])]
        out[image_id] = changes
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
    return 2 * (other.small_tp - base.small_tp) + (other.tp - base.tp) - 0.5 * (other.fp - base.fp) + 5 * (other.mean_iou - base.mean_iou)


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
        row: dict[str, Any] = {
            "image_id": image_id,
            "file_name": gt.imgs[image_id]["file_name"],
            "change": change_kind(base, new),
            "change_score": round(change_score(base, new), 3),
        }
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


INSETS = 4  # zoomed insets of small changed objects under each picture


def _inset_window(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A square window around a small box: three times its longer side, at least 24 px, in the image."""
    x, y, w, h = box
    side = max(24.0, 3 * max(w, h))
    x0 = int(max(0, min(width - side, x + w / 2 - side / 2)))
    y0 = int(max(0, min(height - side, y + h / 2 - side / 2)))
    return x0, y0, int(min(width, x0 + side)), int(min(height, y0 + side))


def _draw_changes(ax: Any, changes: list[ObjectChange], method: str, offset: tuple[float, float] = (0, 0), lw: float = 2.0) -> None:
    for change in changes:
        role, style, _ = CHANGES[change.kind]
        x, y, w, h = change.bbox
        ax.add_patch(
            plt.Rectangle(
                (x - offset[0], y - offset[1]),
                w,
                h,
                fill=False,
                linestyle=style,
                linewidth=lw,
                edgecolor=method_color(method) if role == "method" else method_color("baseline"),
            )
        )


def plot_examples(
    rows: list[dict[str, Any]],
    gt: COCO,
    image_root: Path,
    baseline: list[dict[str, Any]],
    other: list[dict[str, Any]],
    method: str,
    thresholds: dict[str, float],
    out_png: Path,
    title: str,
    n: int = 6,
) -> None:
    """The images of `rows` (at most `n`), each with only what changed between the baseline and
    `method` at their thresholds, and zoomed insets of the small changes under it."""
    changes = object_changes(gt, baseline, other, thresholds)
    shown = rows[:n]
    cols = min(3, max(1, len(shown)))
    n_rows = max(1, -(-len(shown) // cols))
    fig = plt.figure(figsize=(5 * cols, 6.0 * n_rows + 0.9))
    grid = fig.add_gridspec(2 * n_rows, cols * INSETS, height_ratios=[4, 1] * n_rows, hspace=0.3, wspace=0.08, top=0.92, bottom=0.07)
    if not shown:
        ax = fig.add_subplot(grid[0, :])
        ax.axis("off")
        ax.text(0.5, 0.5, "no such image in the test split", ha="center", va="center", transform=ax.transAxes)
    for k, row in enumerate(shown):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(grid[2 * r, c * INSETS : (c + 1) * INSETS])
        with Image.open(Path(image_root) / row["file_name"]) as im:
            image = np.asarray(im.convert("RGB"))
        ax.imshow(image)
        ax.axis("off")
        here = changes[row["image_id"]]
        _draw_changes(ax, here, method)
        counts = {kind: sum(ch.kind == kind for ch in here) for kind in CHANGES}
        ax.set_title(
            f"{row['file_name']} ({row['change']})\n" + ", ".join(f"{CHANGES[kind][2]} {count}" for kind, count in counts.items() if count), fontsize=8
        )
        small = sorted((ch for ch in here if ch.small), key=lambda ch: list(CHANGES).index(ch.kind))[:INSETS]
        for j in range(INSETS):
            inset = fig.add_subplot(grid[2 * r + 1, c * INSETS + j])
            inset.axis("off")
            if j < len(small):
                x0, y0, x1, y1 = _inset_window(small[j].bbox, image.shape[1], image.shape[0])
                inset.imshow(image[y0:y1, x0:x1], interpolation="nearest")
                _draw_changes(inset, [small[j]], method, offset=(x0, y0), lw=1.5)
                inset.set_title(CHANGES[small[j].kind][2], fontsize=7)
    handles = [
        plt.Line2D(
            [],
            [],
            color=method_color(method) if role == "method" else method_color("baseline"),
            ls=style,
            lw=2,
            label=kind.replace("the method", label(method)),
        )
        for kind, (role, style, _) in CHANGES.items()
    ]
    handles.append(
        plt.Line2D(
            [],
            [],
            color="none",
            label=f"at the scores of best F1: baseline >= {thresholds['baseline']:.2f}, "
            f"method >= {thresholds['other']:.2f}; under each image: small changes, zoomed",
        )
    )
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(title, fontsize=11)
    save(fig, out_png, dpi=90)
