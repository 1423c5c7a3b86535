"""The official WIDER FACE evaluation protocol (validation set), reproduced from the MATLAB toolkit.

The reference is the toolkit shipped with the data set (`eval_tools`: wider_eval.m, read_pred.m,
norm_score.m, evaluation.m, boxoverlap.m and VOCap in the plot code), not the widely copied Python
port, which matches predictions in file order (wrong on unsorted files) and normalises differently.
Every rule below is the toolkit's, including the ones that look like accidents; where the toolkit's
behaviour depends on MATLAB's arithmetic this module reproduces that arithmetic.

The ground truth (`pipeline.data.widerface.ground_truth`) gives per image the faces and, per setting
(easy, medium, hard), the faces that count. This module is numpy only (no plotting: that is
`pipeline.widerface.report`).

Protocol, in the toolkit's order:

1. Reading (read_pred.m; the official layout is read by `pipeline.data.widerface.predictions`). Each
   image's detections are sorted by score, descending (MATLAB `sort(...,'descend')`, a stable sort).
2. Normalisation (norm_score.m): one min-max over all scores of all images read: max starts at
   single-precision `realmin`, min at single-precision `realmax`, and `(s - min) / (max - min)`.
   Because those start values are MATLAB `single`, MATLAB's mixed-class rules make min, max and
   the normalised scores single precision (the double scores are rounded to single first); this
   module computes them in float32 for that reason. Equal min and max raise (the toolkit divides
   by zero). Normalisation is monotone, so the sort of step 1 stays valid.
3. Matching, per image and setting (evaluation.m, `image_evaluation`): boxes become corners with
   `x2 = x + w`, `y2 = y + h`; for each detection in sorted order the overlaps with all faces are
   computed by boxoverlap.m (the "+1" pixel convention: `w = min(x2) - max(x1) + 1`, areas
   `(x2 - x1 + 1) * (y2 - y1 + 1)`, overlap 0 where w <= 0 or h <= 0). The face with the largest
   overlap (the first one on ties, MATLAB `max`) is taken; if that overlap >= 0.5: a face outside
   the setting marks the detection "ignored" (neither true nor false positive), a kept face not
   yet found becomes found; a detection on an already found face stays a proposal (a false
   positive). `pred_recall[h]` is the number of faces found by detections 0..h.
4. Curve per image (`image_pr_info`): for t = 1..1000, `thresh = 1 - t/1000`; r is the LAST
   detection with score >= thresh (`find(..., 1, 'last')`); the image adds the number of non-ignored
   detections among 0..r (proposals) and `pred_recall[r]` (recalled faces), or nothing if no
   detection reaches thresh.
5. Data set: every image adds its number of kept faces to the face count, before an image
   without faces or without detections is skipped. precision = recalled / proposals (NaN for 0/0),
   recall = recalled / faces (`dataset_pr_info`).
6. AP (VOCap): `mrec = [0, recall, 1]`, `mpre = [0, precision, 0]`, a running max from the end
   (MATLAB `max` ignores NaN, so the envelope is `np.fmax`), and the sum of
   `(mrec[i] - mrec[i-1]) * mpre[i]` over the indices where mrec changes.

The integer arithmetic of the official files. `face_bbx_list` is stored as int32, and MATLAB
keeps that class through `evaluation.m`: with an int32 first argument boxoverlap.m computes in int32
(a double meeting an int32 is rounded to the nearest integer, halves away from zero, and
saturates). So the detection's corners are rounded, the union is `round(aarea + barea) - inter`
and the overlap itself is the integer quotient `round(inter / union)`: 1 (or more, for sub-pixel
detections) when inter/union >= 0.5, else 0. Two consequences follow, and both are what the
published numbers were computed with: a detection is matched to the FIRST face (in file order)
whose rounded overlap is 1, not to the face it overlaps most, and the IoU threshold acts as 0.5
whatever its value in (0, 1]. `WiderGroundTruth.int32_boxes` records that the file stored
integers; `evaluate(..., int32_boxes=False)` gives the floating-point variant (real IoU and argmax)
for comparison with other implementations, which is not the official number.

`evaluate` also accepts a subset of the validation images (`image_keys`): the numbers are then not
official; the normalisation runs over the detections of the evaluated images, as the toolkit's
runs over the detections it read.

Checked against the toolkit's own .m files run under GNU Octave 7.3 (which follows MATLAB's
mixed-class rules): identical precision/recall curves, bit for bit, on the real ground truth with
synthetic detections (fractional, sub-pixel and duplicate boxes, quantised and tied scores,
unsorted files), in int32 and in float arithmetic.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, first_few
from pipeline.data.widerface.ground_truth import SETTINGS, WiderGroundTruth
from pipeline.data.widerface.predictions import Predictions, as_detections

log = logging.getLogger(__name__)

THRESH_NUM = 1000
IOU_THRESH = 0.5

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def sort_by_score(detections: np.ndarray) -> np.ndarray:
    """A copy sorted by score, descending; equal scores keep their order (MATLAB's sort is stable)."""
    return detections[np.argsort(-detections[:, 4], kind="stable")]


def normalise_scores(predictions: Mapping[str, np.ndarray]) -> Predictions:
    """norm_score.m: one min-max over all scores, in single precision (see the module docstring)."""
    scores = [np.asarray(p, dtype=np.float64)[:, 4] for p in predictions.values() if np.size(p)]
    if not scores:
        return {key: np.zeros((0, 5)) for key in predictions}
    all32 = np.concatenate(scores).astype(np.float32)
    max_score = max(np.finfo(np.float32).tiny, all32.max())  # realmin('single')
    min_score = min(np.finfo(np.float32).max, all32.min())  # realmax('single')
    if not max_score > min_score:
        raise InputError(f"cannot normalise scores: max {float(max_score)!r} <= min {float(min_score)!r} (all scores equal; the toolkit would divide by zero)")
    out: Predictions = {}
    for key, p in predictions.items():
        p = np.array(p, dtype=np.float64)
        if p.size == 0:
            out[key] = np.zeros((0, 5))
            continue
        p[:, 4] = (p[:, 4].astype(np.float32) - min_score) / (max_score - min_score)
        out[key] = p
    return out


def _round_to_int32(values: np.ndarray | float) -> np.ndarray:
    """MATLAB's conversion of a double to int32: nearest, halves away from zero, saturating, NaN -> 0."""
    v = np.asarray(values, dtype=np.float64)
    whole = np.trunc(v)
    with np.errstate(invalid="ignore"):
        frac = v - whole  # exact
        whole = whole + (frac >= 0.5) - (frac <= -0.5)
    whole = np.where(np.isnan(v), 0.0, whole)
    return np.clip(whole, _INT32_MIN, _INT32_MAX).astype(np.int64)


def _sat(values: np.ndarray) -> np.ndarray:
    """Saturate an int64 result of int32 arithmetic, as MATLAB does."""
    return np.clip(values, _INT32_MIN, _INT32_MAX)


def _corners(xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x1, y1 = xywh[..., 0], xywh[..., 1]
    return x1, y1, x1 + xywh[..., 2], y1 + xywh[..., 3]


def overlap_matrix(gt_xywh: np.ndarray, pred_xywh: np.ndarray, *, int32_gt: bool = False) -> np.ndarray:
    """boxoverlap.m of every prediction (rows, `x y w h [score]`) against every face (columns).

    Float64 unless `int32_gt`, which reproduces MATLAB's int32 arithmetic of the official files
    (module docstring); the result is then integer-valued.
    """
    gt = np.asarray(gt_xywh, dtype=np.float64).reshape(-1, 4)
    pred = np.asarray(pred_xywh, dtype=np.float64).reshape(-1, np.shape(pred_xywh)[-1])[:, :4]
    px1, py1, px2, py2 = (c[:, None] for c in _corners(pred))
    if not int32_gt:
        gx1, gy1, gx2, gy2 = (c[None, :] for c in _corners(gt))
        w = np.minimum(gx2, px2) - np.maximum(gx1, px1) + 1
        h = np.minimum(gy2, py2) - np.maximum(gy1, py1) + 1
        inter = w * h
        aarea = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
        barea = (px2 - px1 + 1) * (py2 - py1 + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            o = inter / (aarea + barea - inter)
        o[(w <= 0) | (h <= 0)] = 0.0
        return o
    if not np.array_equal(gt, np.round(gt)):
        raise ValueError("int32 overlap: ground-truth boxes must be integers")
    g = gt.astype(np.int64)
    gx1, gy1 = g[None, :, 0], g[None, :, 1]
    gx2, gy2 = _sat(gx1 + g[None, :, 2]), _sat(gy1 + g[None, :, 3])
    w = _sat(_sat(np.minimum(gx2, _round_to_int32(px2)) - np.maximum(gx1, _round_to_int32(px1))) + 1)
    h = _sat(_sat(np.minimum(gy2, _round_to_int32(py2)) - np.maximum(gy1, _round_to_int32(py1))) + 1)
    inter = _sat(w * h)
    aarea = _sat(_sat(_sat(gx2 - gx1) + 1) * _sat(_sat(gy2 - gy1) + 1))
    barea = (px2 - px1 + 1) * (py2 - py1 + 1)  # double, as the prediction is
    union = _sat(_round_to_int32(aarea + barea) - inter)  # int32 + double -> int32, then - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        o = _round_to_int32(inter / union)  # int32 ./ int32: rounded quotient; x/0 saturates, 0/0 -> 0
    o[(w <= 0) | (h <= 0)] = 0
    return o


def box_overlap(gt_xywh: np.ndarray, pred_xywh: np.ndarray, *, int32_gt: bool = False) -> np.ndarray:
    """boxoverlap.m of one prediction `x y w h [score]` against all faces `x y w h`: shape (n_faces,)."""
    return overlap_matrix(gt_xywh, np.asarray(pred_xywh, dtype=np.float64).reshape(1, -1), int32_gt=int32_gt)[0]


@dataclass(frozen=True)
class _Matches:
    """The setting-independent part of `image_evaluation`: each prediction's best face, if any."""

    face: np.ndarray  # (n_pred,) index of the face with the largest overlap (first on ties)
    hit: np.ndarray  # (n_pred,) bool: that overlap >= the IoU threshold


def _match(pred: np.ndarray, gt: np.ndarray, iou_thresh: float, int32_gt: bool) -> _Matches:
    n_pred = len(pred)
    if len(gt) == 0:
        return _Matches(np.zeros(n_pred, dtype=np.int64), np.zeros(n_pred, dtype=bool))
    o = overlap_matrix(gt, pred, int32_gt=int32_gt)
    if not int32_gt:
        o = np.where(np.isnan(o), -np.inf, o)  # MATLAB's max skips NaN (none arise for finite boxes)
    face = np.argmax(o, axis=1)  # the first maximum, like MATLAB's max
    best = o[np.arange(n_pred), face]
    return _Matches(face, best >= iou_thresh)


def _evaluate_matches(matches: _Matches, keep_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kept = keep_mask[matches.face]
    proposal_list = np.where(matches.hit & ~kept, -1, 1)
    found = np.zeros(len(proposal_list), dtype=np.int64)
    hits = np.flatnonzero(matches.hit & kept)
    # The first hit on a kept face finds it (recall_list 0 -> 1); later hits on it are proposals.
    _, first = np.unique(matches.face[hits], return_index=True)
    found[hits[first]] = 1
    return np.cumsum(found), proposal_list


def image_evaluation(
    pred: np.ndarray, gt: np.ndarray, keep_mask: np.ndarray, iou_thresh: float = IOU_THRESH, *, int32_gt: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """evaluation.m's image_evaluation on predictions in the given (sorted) order.

    Returns (pred_recall, proposal_list): faces of the setting found by predictions 0..h, and 1 for a
    proposal / -1 for a prediction ignored because its best face (overlap >= iou_thresh) is outside
    the setting. A face outside the setting is never recalled; a second prediction on a found face
    is a proposal that finds nothing (a false positive).
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 5)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    keep_mask = np.asarray(keep_mask, dtype=bool).reshape(-1)
    if len(keep_mask) != len(gt):
        raise ValueError(f"keep_mask has {len(keep_mask)} entries for {len(gt)} faces")
    return _evaluate_matches(_match(pred, gt, iou_thresh, int32_gt), keep_mask)


def thresholds(thresh_num: int = THRESH_NUM) -> np.ndarray:
    """The score thresholds `1 - t/thresh_num`, t = 1..thresh_num (decreasing)."""
    return 1 - np.arange(1, thresh_num + 1) / thresh_num


def image_pr_info(thresh_num: int, pred: np.ndarray, proposal_list: np.ndarray, pred_recall: np.ndarray) -> np.ndarray:
    """evaluation.m's image_pr_info: (thresh_num, 2) of [proposals, recalled faces] per threshold.

    For each threshold, r is the LAST prediction with score >= threshold in the given order
    (`find(..., 1, 'last')`), exactly also for unsorted input: r is the last index whose suffix
    maximum of the scores reaches the threshold, found for all thresholds at once by a binary search.
    """
    scores = np.asarray(pred, dtype=np.float64).reshape(-1, 5)[:, 4]
    out = np.zeros((thresh_num, 2))
    if scores.size == 0:
        return out
    suffix_max = np.maximum.accumulate(scores[::-1])[::-1]  # non-increasing
    count = np.searchsorted(-suffix_max, -thresholds(thresh_num), side="right")  # number of i with suffix_max >= t
    reached = count > 0
    r = count[reached] - 1
    proposals = np.cumsum(np.asarray(proposal_list) == 1)
    out[reached, 0] = proposals[r]
    out[reached, 1] = np.asarray(pred_recall)[r]
    return out


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOCap: area under the precision envelope at the points where recall changes.

    The envelope is a running max from the end that skips NaN (MATLAB's max; `np.fmax`). The
    appended final precision 0 is a number, so no NaN survives the envelope; a NaN recall (no face
    at all) gives a NaN AP, as in the toolkit.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    mpre = np.nan_to_num(mpre, nan=0.0)  # unreachable (see above); kept so a NaN can never leak in
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    terms = (mrec[i] - mrec[i - 1]) * mpre[i]
    return float(np.cumsum(terms)[-1]) if terms.size else 0.0  # summed left to right, as MATLAB's sum


@dataclass(frozen=True)
class SettingResult:
    """One setting's curve (thresh_num points, thresholds decreasing) and its AP."""

    ap: float
    precision: np.ndarray
    recall: np.ndarray
    faces: int


@dataclass(frozen=True)
class WiderResult:
    settings: dict[str, SettingResult]
    images_evaluated: int
    images_total: int
    images_without_predictions: int
    int32_boxes: bool
    thresh_num: int = THRESH_NUM
    iou_thresh: float = IOU_THRESH

    @property
    def ap(self) -> dict[str, float]:
        return {s: r.ap for s, r in self.settings.items()}

    @property
    def official(self) -> bool:
        """The whole validation set under the toolkit's arithmetic and parameters."""
        return self.images_evaluated == self.images_total and self.int32_boxes and self.thresh_num == THRESH_NUM and self.iou_thresh == IOU_THRESH


def _evaluated_keys(gt: WiderGroundTruth, image_keys: Collection[str] | None) -> list[str]:
    if image_keys is None:
        return list(gt.images)
    wanted = set(image_keys)
    unknown = sorted(k for k in wanted if k not in gt)
    if unknown:
        raise InputError(f"{len(unknown)} image keys are not in the ground truth, e.g. {first_few(unknown)}")
    return [k for k in gt.images if k in wanted]


def evaluate(
    gt: WiderGroundTruth,
    predictions: Mapping[str, np.ndarray],
    image_keys: Collection[str] | None = None,
    thresh_num: int = THRESH_NUM,
    iou_thresh: float = IOU_THRESH,
    *,
    int32_boxes: bool | None = None,
) -> WiderResult:
    """The toolkit's evaluation of `predictions` on the easy, medium and hard settings.

    image_keys: restrict to these ground-truth images (not the official number unless all).
    int32_boxes: None follows the ground truth (int32 for the official files); False forces the
    floating-point overlap. Predictions of images outside the evaluated set are ignored (counted in
    the log); an absent image has no detections. The caller's arrays are not modified.
    """
    keys = _evaluated_keys(gt, image_keys)
    use_int32 = gt.int32_boxes if int32_boxes is None else int32_boxes
    evaluated = set(keys)
    outside = sum(1 for k in predictions if k not in evaluated)
    if outside:
        log.info("evaluate: predictions of %d images outside the evaluated set are ignored", outside)
    if use_int32 and iou_thresh != IOU_THRESH:
        log.warning("evaluate: with int32 overlaps (0 or 1) any IoU threshold in (0, 1] acts as 0.5")

    ordered = {key: sort_by_score(as_detections(key, predictions[key])) for key in keys if key in predictions}
    normalised = normalise_scores(ordered)

    totals = {s: np.zeros((thresh_num, 2)) for s in SETTINGS}
    faces = dict.fromkeys(SETTINGS, 0)
    without = 0
    for key in keys:
        i = gt.index(key)
        boxes = gt.boxes[i]
        for s in SETTINGS:
            faces[s] += len(gt.keep[s][i])
        pred = normalised.get(key)
        if pred is None or len(pred) == 0:
            without += 1
            continue
        if len(boxes) == 0:
            continue
        matches = _match(pred, boxes, iou_thresh, use_int32)
        for s in SETTINGS:
            keep_mask = np.zeros(len(boxes), dtype=bool)
            keep_mask[gt.keep[s][i]] = True
            pred_recall, proposal_list = _evaluate_matches(matches, keep_mask)
            totals[s] += image_pr_info(thresh_num, pred, proposal_list, pred_recall)

    settings: dict[str, SettingResult] = {}
    for s in SETTINGS:
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = totals[s][:, 1] / totals[s][:, 0]
            recall = totals[s][:, 1] / faces[s] if faces[s] else np.full(thresh_num, np.nan)
        settings[s] = SettingResult(ap=voc_ap(recall, precision), precision=precision, recall=recall, faces=faces[s])
    result = WiderResult(
        settings=settings,
        images_evaluated=len(keys),
        images_total=len(gt),
        images_without_predictions=without,
        int32_boxes=use_int32,
        thresh_num=thresh_num,
        iou_thresh=iou_thresh,
    )
    log.info("WIDER FACE AP on %d/%d images: %s", len(keys), len(gt), ", ".join(f"{s} {r.ap:.4f}" for s, r in settings.items()))
    return result
