"""The WIDER FACE evaluation against hand-computed cases, the toolkit's own code and the real files.

Boxes are `x y w h`; the toolkit's corners are x2 = x + w, y2 = y + h and its overlap counts pixels
inclusively ("+1"): width min(x2) - max(x1) + 1, area (x2 - x1 + 1) * (y2 - y1 + 1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipeline.data.widerface.ground_truth import SETTINGS, WiderGroundTruth, load_ground_truth
from pipeline.data.widerface.predictions import read_prediction_dir, write_prediction_dir
from pipeline.widerface.protocol import box_overlap, evaluate, image_evaluation, image_pr_info, normalise_scores, sort_by_score, thresholds, voc_ap

WIDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "widerface"
GT_DIR = WIDER / "ground_truth"


def make_gt(boxes: list[list[list[float]]], keep: dict[str, list[list[int]]] | list[list[int]] | None = None, int32_boxes: bool = False) -> WiderGroundTruth:
    """A ground truth of images "e/0", "e/1", ...; `keep` 0-based, one list for all settings or per setting."""
    arrays = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
    if keep is None:
        keep = [list(range(len(a))) for a in arrays]
    per_setting = keep if isinstance(keep, dict) else dict.fromkeys(SETTINGS, keep)
    return WiderGroundTruth(
        images=[f"e/{i}" for i in range(len(arrays))],
        boxes=arrays,
        keep={s: [np.asarray(k, dtype=np.int64) for k in per_setting[s]] for s in SETTINGS},
        int32_boxes=int32_boxes,
    )


def det(*rows: list[float]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


# ----------------------------------------------------------------------------------------------------------------------
# boxoverlap.m


def test_box_overlap_plus_one_convention() -> None:
    gt = np.array([[0, 0, 9, 9], [0, 0, 10, 10]], dtype=float)
    # Identical boxes: 1.
    assert box_overlap(gt[:1], [0, 0, 9, 9]).tolist() == [1.0]
    # gt 0..9 (10 px), pred x 5..14: w = 9 - 5 + 1 = 5, h = 10, inter 50, areas 100 + 100 -> 50/150.
    # The plain IoU (corners without +1) is 4*9 / (81 + 81 - 36) = 36/126: the conventions differ.
    assert box_overlap(gt[:1], [5, 0, 9, 9])[0] == pytest.approx(1 / 3)
    assert 36 / 126 != pytest.approx(1 / 3)
    # gt 0..10, pred 10..20: they touch at x = 10, which the +1 rule counts as one pixel column:
    # w = 10 - 10 + 1 = 1, h = 11, inter 11, areas 121 + 121 -> 11/231 = 1/21 (plain IoU: 0).
    assert box_overlap(gt[1:], [10, 0, 10, 10])[0] == pytest.approx(1 / 21)
    # pred 11..21: w = 10 - 11 + 1 = 0 -> 0.
    assert box_overlap(gt[1:], [11, 0, 10, 10])[0] == 0.0
    # A score column is accepted and ignored; several faces at once.
    assert box_overlap(gt, [0, 0, 9, 9, 0.7]) == pytest.approx([1.0, 100 / 121])


def test_box_overlap_int32_arithmetic_of_the_official_files() -> None:
    gt = np.array([[0, 0, 9, 9]], dtype=float)
    # Float: pred x 3.4..12.4: w = 9 - 3.4 + 1 = 6.6, inter 66, union 200 - 66 = 134 -> 0.4925 < 0.5.
    assert box_overlap(gt, [3.4, 0, 9, 9])[0] == pytest.approx(66 / 134)
    # int32: x1 = max(0, round(3.4) = 3), x2 = min(9, round(12.4) = 12): w = 7, inter 70;
    # union = round(100 + 100.0) - 70 = 130; overlap = round(70/130 = 0.54) = 1 -> a hit.
    assert box_overlap(gt, [3.4, 0, 9, 9], int32_gt=True).tolist() == [1]
    # Half overlap 50/150 rounds to 0; identical boxes give 1.
    assert box_overlap(gt, [5, 0, 9, 9], int32_gt=True).tolist() == [0]
    assert box_overlap(gt, [0, 0, 9, 9], int32_gt=True).tolist() == [1]
    # Halves of the corners round away from zero: x1 = round(0.5) = 1, x2 = min(9, round(9.5) = 10) -> w = 9,
    # inter 90; barea = 10 * 10 = 100; union round(200) - 90 = 110 -> round(0.82) = 1.
    assert box_overlap(gt, [0.5, 0, 9, 9], int32_gt=True).tolist() == [1]
    # A sub-pixel detection: corners round(0.4) = 0 and round(0.4 + 0.2) = 1 -> w = h = 2, inter 4 on the face
    # 0..1 (x y w h = 0 0 1 1, area 4); barea = 1.2 * 1.2 = 1.44; union round(5.44) - 4 = 1 -> overlap 4.
    assert box_overlap(np.array([[0, 0, 1, 1]]), [0.4, 0.4, 0.2, 0.2], int32_gt=True).tolist() == [4]
    with pytest.raises(ValueError, match="integers"):
        box_overlap(np.array([[0.5, 0, 9, 9]]), [0, 0, 9, 9], int32_gt=True)


# ----------------------------------------------------------------------------------------------------------------------
# image_evaluation


def test_ignored_face_neither_true_nor_false_positive() -> None:
    gt = np.array([[0, 0, 9, 9], [100, 0, 9, 9]], dtype=float)
    keep = np.array([False, True])  # face 0 is outside the setting
    pred = det([0, 0, 9, 9, 0.95], [1, 0, 9, 9, 0.85], [100, 0, 9, 9, 0.75])
    pred_recall, proposals = image_evaluation(pred, gt, keep)
    # Both detections on face 0 are ignored (-1), also the second one: face 0 is never recalled.
    assert proposals.tolist() == [-1, -1, 1]
    assert pred_recall.tolist() == [0, 0, 1]
    # thresh_num 10: thresholds .9 (r = 0), .8 (r = 1), then r = 2 from .7 on.
    info = image_pr_info(10, pred, proposals, pred_recall)
    assert info[:, 0].tolist() == [0, 0] + [1] * 8  # the ignored detections are not proposals
    assert info[:, 1].tolist() == [0, 0] + [1] * 8


def test_duplicates_are_false_positives() -> None:
    gt = np.array([[0, 0, 9, 9]], dtype=float)
    pred = det([0, 0, 9, 9, 0.9], [0, 1, 9, 9, 0.8])
    pred_recall, proposals = image_evaluation(pred, gt, np.array([True]))
    assert proposals.tolist() == [1, 1] and pred_recall.tolist() == [1, 1]
    info = image_pr_info(1000, pred, proposals, pred_recall)
    assert info[-1].tolist() == [2, 1]  # 2 proposals, 1 face: one true and one false positive


def test_argmax_picks_the_ignored_face() -> None:
    # A (0..9, not kept) and B (3..12, kept). Pred 1..10: IoU with A = 90/110 = 0.82, with B = 80/120 = 0.67.
    gt = np.array([[0, 0, 9, 9], [3, 0, 9, 9]], dtype=float)
    pred = det([1, 0, 9, 9, 0.9])
    pred_recall, proposals = image_evaluation(pred, gt, np.array([False, True]))
    assert proposals.tolist() == [-1] and pred_recall.tolist() == [0]


def test_int32_matches_the_first_face_not_the_best() -> None:
    # g1 0..9, g2 2..11. A detection equal to g2 overlaps g1 by 80/120 = 0.67 and g2 by 1: in float the best (g2)
    # is taken, in int32 both overlaps are 1 and MATLAB's max takes the first, g1.
    gt = np.array([[0, 0, 9, 9], [2, 0, 9, 9]], dtype=float)
    pred = det([2, 0, 9, 9, 0.9], [0, 0, 9, 9, 0.8])
    keep = np.array([True, True])
    assert [a.tolist() for a in image_evaluation(pred, gt, keep)] == [[1, 2], [1, 1]]
    # int32: detection 1 finds g1, detection 2 (equal to g1) hits g1 again: a duplicate; g2 is never found.
    assert [a.tolist() for a in image_evaluation(pred, gt, keep, int32_gt=True)] == [[1, 1], [1, 1]]


def matlab_image_evaluation(pred: np.ndarray, gt: np.ndarray, keep: np.ndarray, thresh: float = 0.5):
    """evaluation.m's image_evaluation and boxoverlap.m transcribed line by line (float arithmetic)."""
    pred, gt = pred.copy(), gt.copy()
    pred_recall = np.zeros(len(pred), dtype=int)
    recall_list = np.zeros(len(gt), dtype=int)
    proposal_list = np.ones(len(pred), dtype=int)
    pred[:, 2] += pred[:, 0]
    pred[:, 3] += pred[:, 1]
    gt[:, 2] += gt[:, 0]
    gt[:, 3] += gt[:, 1]
    for h in range(len(pred)):
        b = pred[h]
        w = np.minimum(gt[:, 2], b[2]) - np.maximum(gt[:, 0], b[0]) + 1
        hh = np.minimum(gt[:, 3], b[3]) - np.maximum(gt[:, 1], b[1]) + 1
        inter = w * hh
        aarea = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
        barea = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        o = inter / (aarea + barea - inter)
        o[w <= 0] = 0
        o[hh <= 0] = 0
        idx = int(np.argmax(o))
        if o[idx] >= thresh:
            if not keep[idx]:
                recall_list[idx] = -1
                proposal_list[h] = -1
            elif recall_list[idx] == 0:
                recall_list[idx] = 1
        pred_recall[h] = int(np.sum(recall_list == 1))
    return pred_recall, proposal_list


def matlab_image_pr_info(thresh_num: int, pred: np.ndarray, proposal_list: np.ndarray, pred_recall: np.ndarray):
    out = np.zeros((thresh_num, 2))
    for t in range(1, thresh_num + 1):
        hits = np.flatnonzero(pred[:, 4] >= 1 - t / thresh_num)
        if hits.size:
            r = hits[-1]
            out[t - 1] = [np.sum(proposal_list[: r + 1] == 1), pred_recall[r]]
    return out


def test_vectorised_matching_equals_the_toolkit_loop() -> None:
    rs = np.random.RandomState(3)
    for _ in range(60):
        n_gt, n_pred = rs.randint(1, 12), rs.randint(1, 30)
        gt = np.column_stack([rs.randint(0, 60, (n_gt, 2)), rs.randint(1, 25, (n_gt, 2))]).astype(float)
        pick = gt[rs.randint(0, n_gt, n_pred)]
        pred = np.column_stack([pick + rs.normal(0, 3, (n_pred, 4)), rs.uniform(0, 1, n_pred).round(2)])
        keep = rs.rand(n_gt) < 0.6
        expected = matlab_image_evaluation(pred, gt, keep)
        got = image_evaluation(pred, gt, keep)
        assert [a.tolist() for a in got] == [a.tolist() for a in expected]
        # image_pr_info, also on unsorted detections (find(..., 'last') in the given order).
        expected_info = matlab_image_pr_info(200, pred, expected[1], expected[0])
        assert np.array_equal(image_pr_info(200, pred, got[1], got[0]), expected_info)


# ----------------------------------------------------------------------------------------------------------------------
# Scores, thresholds and AP


def test_normalise_scores_is_min_max_in_single_precision() -> None:
    out = normalise_scores({"a": det([0, 0, 1, 1, 3.0], [0, 0, 1, 1, 4.0]), "b": det([0, 0, 1, 1, 2.0]), "c": det()})
    assert out["a"][:, 4].tolist() == [0.5, 1.0] and out["b"][:, 4].tolist() == [0.0] and out["c"].shape == (0, 5)
    # All negative: max starts at realmin('single') > every score, so the top score is not 1:
    # (-1 - -3) / (realmin - -3) = 2/3 in float32 = 0.6666667.
    neg = normalise_scores({"a": det([0, 0, 1, 1, -3.0], [0, 0, 1, 1, -1.0])})["a"][:, 4]
    assert neg.tolist() == [0.0, float(np.float32(2) / np.float32(3))]
    # float32: 0.997 becomes 0.99699998, below the threshold 1 - 3/1000 = 0.997 (float64 would reach it).
    s = normalise_scores({"a": det([0, 0, 1, 1, 0.0], [0, 0, 1, 1, 0.997], [0, 0, 1, 1, 1.0])})["a"][:, 4]
    assert s[1] == float(np.float32(0.997)) < thresholds()[2] == 0.997
    with pytest.raises(ValueError, match="all scores equal"):
        normalise_scores({"a": det([0, 0, 1, 1, 0.3]), "b": det([5, 5, 1, 1, 0.3])})


def test_normalisation_is_invariant_to_affine_scores() -> None:
    gt = make_gt([[[0, 0, 9, 9], [50, 0, 9, 9], [100, 0, 9, 9]]])
    boxes = [[0, 0, 9, 9], [200, 0, 9, 9], [50, 0, 9, 9], [100, 0, 9, 9]]
    raw = np.array([4.0, 3.4567, 2.5123, 2.0])  # normalised 1, 0.728, 0.256, 0: no value near a threshold
    ap_big = evaluate(gt, {"e/0": np.column_stack([boxes, raw])}).ap
    ap_small = evaluate(gt, {"e/0": np.column_stack([boxes, raw / 10])}).ap
    assert ap_big == ap_small
    # By score: TP, FP, TP, TP on 3 faces -> (P, R) = (1, 1/3), (1/2, 1/3), (2/3, 2/3), (3/4, 1); the envelope
    # is 1 up to recall 1/3 and max(2/3, 3/4) = 3/4 after: AP = 1/3 + 2/3 * 3/4.
    assert ap_big["easy"] == pytest.approx(1 / 3 + 2 / 3 * 3 / 4)


def test_thresholds_and_hand_computed_curve() -> None:
    assert thresholds()[0] == 0.999 and thresholds()[499] == 0.5 and thresholds()[-1] == 0.0
    # One image, two faces; detections by score: TP (1.0), FP (0.5), TP (0.0). Normalised: 1, 0.5, 0.
    gt = make_gt([[[0, 0, 9, 9], [50, 0, 9, 9]]])
    pred = {"e/0": det([200, 0, 9, 9, 0.5], [0, 0, 9, 9, 1.0], [50, 0, 9, 9, 0.0])}  # unsorted on purpose
    r = evaluate(gt, pred).settings["easy"]
    # t = 1..499 (thresh 0.999..0.501): only the TP -> P 1, R 0.5; t = 500..999 (thresh 0.5..0.001): TP + FP ->
    # P 0.5, R 0.5; t = 1000 (thresh 0): all three -> P 2/3, R 1.
    assert r.precision.tolist() == [1.0] * 499 + [0.5] * 500 + [2 / 3]
    assert r.recall.tolist() == [0.5] * 999 + [1.0]
    # Envelope: 1 up to recall 0.5, then max(0.5, 2/3) = 2/3 up to recall 1: AP = 0.5 * 1 + 0.5 * 2/3.
    assert r.ap == pytest.approx(0.5 + 1 / 3)
    assert r.faces == 2


def test_voc_ap_hand_case_with_nan_precision() -> None:
    # mrec [0, 0, 0, .5, .5, 1, 1], mpre [0, nan, nan, 1, .5, .5, 0] -> envelope [1, 1, 1, 1, .5, .5, 0];
    # recall changes at 3 (0 -> .5) and 5 (.5 -> 1): AP = .5 * 1 + .5 * .5 = 0.75.
    assert voc_ap(np.array([0, 0, 0.5, 0.5, 1]), np.array([np.nan, np.nan, 1, 0.5, 0.5])) == 0.75
    assert voc_ap(np.zeros(5), np.full(5, np.nan)) == 0.0  # no detection at all
    assert voc_ap(np.array([0.25, 0.5]), np.array([1.0, 0.5])) == 0.25 * 1 + 0.25 * 0.5


def test_sort_matters_and_shuffling_does_not() -> None:
    rs = np.random.RandomState(7)
    boxes = [np.column_stack([rs.randint(0, 300, (8, 2)), rs.randint(5, 30, (8, 2))]) for _ in range(6)]
    gt = make_gt([b.tolist() for b in boxes], keep=[list(range(0, 8, 2))] * 6)
    preds = {}
    for i, b in enumerate(boxes):
        jitter = np.vstack([b, b[:3]]) + rs.normal(0, 2, (11, 4))
        preds[f"e/{i}"] = np.column_stack([jitter, rs.permutation(11) / 10 + i])  # unique scores
    base = evaluate(gt, preds).ap
    shuffled = {k: v[rs.permutation(len(v))] for k, v in preds.items()}
    assert evaluate(gt, shuffled).ap == base
    # The toolkit's find(..., 'last') on detections in file order (no sort) gives another curve.
    keep = np.isin(np.arange(8), gt.keep["easy"][0])
    ordered = sort_by_score(preds["e/0"])
    unsorted = ordered[::-1]
    sorted_info = image_pr_info(1000, ordered, *image_evaluation(ordered, gt.boxes[0], keep)[::-1])
    unsorted_info = image_pr_info(1000, unsorted, *image_evaluation(unsorted, gt.boxes[0], keep)[::-1])
    assert not np.array_equal(unsorted_info, sorted_info)


# ----------------------------------------------------------------------------------------------------------------------
# evaluate


def test_skipped_images_still_count_their_faces(caplog: pytest.LogCaptureFixture) -> None:
    # Image 0: two faces, no detection (skipped, faces counted). Image 1: one face found.
    # Image 2: no face, one detection (skipped, contributes nothing).
    gt = make_gt([[[0, 0, 9, 9], [50, 0, 9, 9]], [[0, 0, 9, 9]], []])
    preds = {"e/1": det([0, 0, 9, 9, 0.9]), "e/2": det([0, 0, 9, 9, 0.1]), "other/x": det([0, 0, 1, 1, 0.5])}
    before = {k: v.copy() for k, v in preds.items()}
    with caplog.at_level(logging.INFO):
        result = evaluate(gt, preds)
    assert "predictions of 1 images outside the evaluated set" in caplog.text
    r = result.settings["hard"]
    assert r.faces == 3
    assert np.nanmax(r.recall) == pytest.approx(1 / 3) and np.nanmin(r.precision) == 1.0
    assert r.ap == pytest.approx(1 / 3)  # precision 1 up to recall 1/3, then 0
    assert (result.images_evaluated, result.images_total, result.images_without_predictions) == (3, 3, 1)
    assert all(np.array_equal(before[k], preds[k]) for k in preds)  # caller's arrays untouched


def test_setting_dependent_ignore() -> None:
    # Face 0 counts only in hard; face 1 in every setting. One detection on each.
    gt = make_gt([[[0, 0, 9, 9], [50, 0, 9, 9]]], keep={"easy": [[1]], "medium": [[1]], "hard": [[0, 1]]})
    result = evaluate(gt, {"e/0": det([0, 0, 9, 9, 0.9], [50, 0, 9, 9, 0.1])})
    # easy: the detection on face 0 (score 1 after normalisation) is ignored, the other finds face 1 at t = 1000.
    assert result.settings["easy"].faces == 1 and result.settings["easy"].ap == 1.0
    assert np.isnan(result.settings["easy"].precision[0])  # 0 proposals at the top thresholds: 0/0
    assert result.settings["hard"].faces == 2 and result.settings["hard"].ap == 1.0


def test_image_keys_subset_and_errors() -> None:
    gt = make_gt([[[0, 0, 9, 9]], [[0, 0, 9, 9]]])
    preds = {"e/0": det([0, 0, 9, 9, 0.9], [30, 0, 9, 9, 0.2]), "e/1": det([0, 0, 9, 9, 0.5])}
    sub = evaluate(gt, preds, image_keys=["e/0"])
    assert sub.images_evaluated == 1 and sub.settings["easy"].faces == 1 and sub.ap["easy"] == 1.0
    assert not sub.official
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate(gt, preds, image_keys=["e/0", "nope/1"])
    with pytest.raises(ValueError, match="e/1"):
        evaluate(gt, {"e/0": det([0, 0, 9, 9, 0.9]), "e/1": np.zeros((2, 4))})


# A synthetic set with int32 boxes in crowds, jittered detections with fractional corners, duplicates, quantised
# scores (ties, threshold hits) and unsorted files. The numbers below were computed by the toolkit's own code
# (read_pred.m, norm_score.m, evaluation.m, boxoverlap.m, VOCap; only the event count and the file output adapted)
# under GNU Octave 7.3 on these files, written by `write_ground_truth` and `write_prediction_dir`.
OCTAVE_AP_INT32 = {"easy": 0.51060268112979934, "medium": 0.55299930187973489, "hard": 0.56263566722690195}
OCTAVE_AP_FLOAT = {"easy": 0.48454805281242641, "medium": 0.51701075624370663, "hard": 0.53754525308748924}


Events = dict[str, list[tuple[str, np.ndarray, dict[str, list[int]]]]]  # event -> (image name, boxes, keep)


def synthetic_case(seed: int = 0) -> tuple[Events, dict[str, np.ndarray]]:
    rs = np.random.RandomState(seed)
    events: Events = {}
    predictions: dict[str, np.ndarray] = {}
    for e in range(3):
        event = f"{e}--Event{e}"
        events[event] = []
        for j in range(6):
            name = f"{e}_Event{e}_{j}"
            n = rs.randint(1, 14)
            xy = rs.randint(0, 150, 2) + rs.randint(-25, 25, (n, 2))
            boxes = np.column_stack([xy, rs.randint(2, 40, (n, 2))]).astype(np.int32)
            hard = [i for i in range(n) if rs.rand() < 0.8]
            medium = [i for i in hard if rs.rand() < 0.6]
            easy = [i for i in medium if rs.rand() < 0.5]
            events[event].append((name, boxes, {"easy": easy, "medium": medium, "hard": hard}))
            found = boxes[rs.rand(n) < 0.8].astype(float)
            found += rs.normal(0, 0.12, found.shape) * np.maximum(found[:, [2, 3, 2, 3]], 1)
            dup = boxes[rs.rand(n) < 0.25].astype(float) + rs.uniform(-1, 1, (1, 4))
            noise = np.column_stack([rs.uniform(0, 200, (2, 2)), rs.uniform(2, 40, (2, 2))])
            dets = np.vstack([found, dup, noise])
            scores = rs.uniform(-1, 3, len(dets)).round(2)
            if e == 1 and j == 2:
                dets, scores = dets[:0], scores[:0]
            predictions[f"{event}/{name}"] = np.column_stack([dets, scores])[rs.permutation(len(dets))]
    return events, predictions


def write_ground_truth(gt_dir: Path, events: Events) -> None:
    """The four official .mat files (cells of strings, int32 boxes, 1-based gt_list) for a synthetic set."""

    def cells(items: list) -> np.ndarray:
        out = np.empty((len(items), 1), dtype=object)
        for i, item in enumerate(items):
            out[i, 0] = item
        return out

    gt_dir.mkdir(parents=True, exist_ok=True)
    base = {
        "event_list": cells([np.array([e]) for e in events]),
        "file_list": cells([cells([np.array([name]) for name, _, _ in images]) for images in events.values()]),
        "face_bbx_list": cells([cells([b for _, b, _ in images]) for images in events.values()]),
    }
    scipy.io.savemat(gt_dir / "wider_face_val.mat", base)
    for s in SETTINGS:
        gt_list = cells([cells([np.asarray(k[s], dtype=np.float64).reshape(-1, 1) + 1 for _, _, k in images]) for images in events.values()])
        scipy.io.savemat(gt_dir / f"wider_{s}_val.mat", base | {"gt_list": gt_list})


def test_matches_the_toolkit_run_under_octave(tmp_path: Path) -> None:
    events, predictions = synthetic_case()
    write_ground_truth(tmp_path / "gt", events)
    gt = load_ground_truth(tmp_path / "gt")
    assert gt.int32_boxes and len(gt) == 18 and gt.keep["hard"][0].tolist() == events["0--Event0"][0][2]["hard"]
    write_prediction_dir(predictions, tmp_path / "pred", gt.images)
    read = read_prediction_dir(tmp_path / "pred", gt.images)
    official = evaluate(gt, read)
    assert official.ap == pytest.approx(OCTAVE_AP_INT32, abs=1e-12)
    assert official.official and official.images_without_predictions == 1
    assert evaluate(gt, read, int32_boxes=False).ap == pytest.approx(OCTAVE_AP_FLOAT, abs=1e-12)
