"""COCO error analysis (pipeline.report.coco_errors) on hand-made cases where each error type is known.

Categories: cat (1) and dog (2) share the supercategory "animal", car (3) is a "vehicle". Hand values
use pycocotools' 101 recall thresholds 0, .01, ..., 1 and its interpolated precision (the maximum
precision at any recall >= the threshold; 0 beyond the highest recall reached). pycocotools computes
precision as tp / (tp + fp + eps), so a "1" is 1 - 2e-16: compare with pytest.approx.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.report.coco_errors import ERROR_TYPES, ErrorAnalysis, analyze_errors, error_table, error_table_markdown, plot_error_analysis

CAT, DOG, CAR, BUS = 1, 2, 3, 4
CATEGORIES = [
    {"id": CAT, "name": "cat", "supercategory": "animal"},
    {"id": DOG, "name": "dog", "supercategory": "animal"},
    {"id": CAR, "name": "car", "supercategory": "vehicle"},
]
BOX = [0.0, 0.0, 100.0, 100.0]  # area 10000: "large"
# Recall reached .5 with precision 1 up to it: thresholds 0, .01, ..., .50 -> 51 of the 101 points.
HALF = 51 / 101


def make_gt(objects: list[tuple[int, int, list[float]]], n_images: int, categories: list[dict[str, Any]] = CATEGORIES) -> COCO:
    """Ground truth from (image_id, category_id, [x, y, w, h]) triples; images 1..n_images."""
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, n_images + 1)]
    annotations = [
        {"id": j + 1, "image_id": img, "category_id": c, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0} for j, (img, c, b) in enumerate(objects)
    ]
    coco = COCO()
    coco.dataset = {"images": images, "categories": copy.deepcopy(categories), "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def det(image_id: int, category_id: int, box: list[float], score: float) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


def aps(analysis: ErrorAnalysis, area: str = "all", category_id: int | None = None) -> list[float]:
    return [analysis.ap(t, area, category_id) for t in ERROR_TYPES]


def test_perfect_detections_give_ap_one_everywhere() -> None:
    objects = [(1, CAT, BOX), (1, DOG, [200, 200, 40, 50]), (2, CAR, [5, 5, 20, 20]), (3, CAT, [50, 60, 150, 120])]
    gt = make_gt(objects, 3)
    results = [det(img, c, b, 0.9) for img, c, b in objects]
    a = analyze_errors(gt, results)
    assert a.precision.shape == (7, 101, 3, 4)
    assert a.category_ids == [CAT, DOG, CAR] and a.area_names == ("all", "small", "medium", "large")
    for area in ("all", "small", "medium", "large"):
        assert aps(a, area) == pytest.approx([1.0] * 7)
        for t in ERROR_TYPES:
            assert a.curve(t, area) == pytest.approx(np.ones(101))


def test_iou_06_detection_missed_at_c75_found_at_c50() -> None:
    gt = make_gt([(1, CAT, BOX), (2, CAT, BOX)], 2)
    # image 1: exact (IoU 1, score .9); image 2: [0, 0, 60, 100] -> IoU 6000 / 10000 = .6 (score .8)
    a = analyze_errors(gt, [det(1, CAT, BOX, 0.9), det(2, CAT, [0, 0, 60, 100], 0.8)])
    # C75: TP (rc .5, pr 1) then FP (rc .5, pr .5); precision 1 at recall thresholds 0..0.50 -> 51/101.
    # C50 on: both TP -> 1.  Dog and car have no gt: -1, left out of the means.
    assert aps(a) == pytest.approx([HALF, 1, 1, 1, 1, 1, 1])
    assert np.all(a.precision[:, :, 1:, :] == -1)
    assert a.curve("C75") == pytest.approx([1.0] * 51 + [0.0] * 50)


def test_iou_02_detection_counted_from_loc_on() -> None:
    gt = make_gt([(1, CAT, BOX), (2, CAT, BOX)], 2)
    # image 2: [0, 0, 20, 100] -> IoU 2000 / 10000 = .2: FP at .75 and .5, TP at .1
    a = analyze_errors(gt, [det(1, CAT, BOX, 0.9), det(2, CAT, [0, 0, 20, 100], 0.8)])
    assert aps(a) == pytest.approx([HALF, HALF, 1, 1, 1, 1, 1])


def test_duplicate_detection_stays_fp_until_bg() -> None:
    gt = make_gt([(1, CAT, BOX), (2, CAT, BOX)], 2)
    a = analyze_errors(gt, [det(1, CAT, BOX, 0.9), det(1, CAT, BOX, 0.8), det(2, CAT, BOX, 0.7)])
    # TP, duplicate FP, TP: rc .5 .5 1, pr 1 .5 .667 -> interpolated 1 for r <= .5 (51 points),
    # 2/3 for r in .51..1 (50 points). Loc ignores localisation only, so duplicates stay FP until BG.
    dup = (51 + 50 * 2 / 3) / 101
    assert aps(a) == pytest.approx([dup, dup, dup, dup, dup, 1, 1])


def test_same_supercategory_confusion_removed_from_sim_on() -> None:
    # image 3: a cat (detected as cat) and a higher-scored dog detection on it
    gt = make_gt([(1, CAT, BOX), (2, DOG, BOX), (3, CAT, BOX)], 3)
    results = [det(1, CAT, BOX, 0.9), det(2, DOG, BOX, 0.9), det(3, CAT, BOX, 0.9), det(3, DOG, BOX, 0.95)]
    a = analyze_errors(gt, results)
    # dog: FP (.95) then TP (.9): rc 0, 1 and pr 0, .5 -> interpolated .5 at every threshold -> AP .5.
    # From Sim on the dog-on-cat detection matches an ignored (relabelled) cat and drops out -> 1.
    assert aps(a, category_id=DOG) == pytest.approx([0.5, 0.5, 0.5, 1, 1, 1, 1])
    assert aps(a, category_id=CAT) == pytest.approx([1.0] * 7)
    assert aps(a) == pytest.approx([0.75, 0.75, 0.75, 1, 1, 1, 1])  # mean over cat, dog (car: no gt)


def test_other_supercategory_confusion_removed_only_from_oth_on() -> None:
    gt = make_gt([(1, CAT, BOX), (2, CAR, BOX), (3, CAT, BOX)], 3)
    results = [det(1, CAT, BOX, 0.9), det(2, CAR, BOX, 0.9), det(3, CAT, BOX, 0.9), det(3, CAR, BOX, 0.95)]
    a = analyze_errors(gt, results)
    assert aps(a, category_id=CAR) == pytest.approx([0.5, 0.5, 0.5, 0.5, 1, 1, 1])
    assert aps(a) == pytest.approx([0.75, 0.75, 0.75, 0.75, 1, 1, 1])


def test_missing_supercategory_makes_each_category_its_own() -> None:
    categories = [{k: v for k, v in c.items() if k != "supercategory"} for c in CATEGORIES]
    gt = make_gt([(1, CAT, BOX), (2, DOG, BOX), (3, CAT, BOX)], 3, categories)
    results = [det(1, CAT, BOX, 0.9), det(2, DOG, BOX, 0.9), det(3, CAT, BOX, 0.9), det(3, DOG, BOX, 0.95)]
    a = analyze_errors(gt, results)
    assert aps(a, category_id=DOG) == pytest.approx([0.5, 0.5, 0.5, 0.5, 1, 1, 1])  # Sim == Loc


def test_background_detection_removed_only_at_bg() -> None:
    gt = make_gt([(1, CAT, BOX)], 2)
    a = analyze_errors(gt, [det(1, CAT, BOX, 0.9), det(2, CAT, [300, 300, 50, 50], 0.95)])
    # FP then TP: rc 0, 1 and pr 0, .5 -> .5 everywhere; BG: precision 1 wherever Oth > 0 -> 1
    assert aps(a) == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5, 1, 1])


def test_undetected_gt_only_fn_reaches_one() -> None:
    gt = make_gt([(1, CAT, BOX), (2, CAT, BOX)], 3)
    a = analyze_errors(gt, [det(1, CAT, BOX, 0.9), det(3, CAT, [300, 300, 50, 50], 0.95)])
    # Background FP (.95) then TP (.9), 2 gts: rc 0, .5 and pr 0, .5 -> .5 at r <= .5, 0 beyond:
    # AP 51 * .5 / 101. BG = 1 where the Oth curve is > 0, i.e. up to the recall reached (.5) -> 51/101.
    # Only FN closes the missed-object gap.
    quarter = 51 * 0.5 / 101
    assert aps(a) == pytest.approx([quarter] * 5 + [HALF, 1])
    assert a.curve("Oth") == pytest.approx([0.5] * 51 + [0.0] * 50)
    assert np.array_equal(a.curve("BG"), [1.0] * 51 + [0.0] * 50)  # exactly 1: set, not computed
    assert np.all(a.curve("FN") == 1.0)


def test_small_objects_go_to_small_curves_only() -> None:
    # image 1: a small cat (20x20 = 400 < 32^2) found; image 2: a large cat missed;
    # image 3: a large background cat detection (100x100, score .95)
    gt = make_gt([(1, CAT, [10, 10, 20, 20]), (2, CAT, BOX)], 3)
    a = analyze_errors(gt, [det(1, CAT, [10, 10, 20, 20], 0.9), det(3, CAT, [300, 300, 100, 100], 0.95)])
    # small: the large gt and the unmatched large detection are outside the range (ignored) -> 1
    assert aps(a, "small") == pytest.approx([1.0] * 7)
    # all: FP, TP over 2 gts -> .5 up to recall .5 -> 51 * .5 / 101; BG 51 / 101
    assert aps(a, "all") == pytest.approx([51 * 0.5 / 101] * 5 + [HALF, 1])
    # large: the only large gt is missed, the large FP stays (the small TP matches an out-of-range gt: ignored)
    assert aps(a, "large") == pytest.approx([0, 0, 0, 0, 0, 0, 1])
    # medium: no gt at all -> undefined (-1) in every setting, 0.0 as a mean, zero curve
    medium = a.area_names.index("medium")
    assert np.all(a.precision[..., medium] == -1)
    assert aps(a, "medium") == [0.0] * 7 and np.all(a.curve("C50", "medium") == 0.0)


def random_case(seed: int = 0, n_images: int = 40) -> tuple[COCO, list[dict[str, Any]]]:
    """Random boxes of all sizes, jittered detections with some label swaps, duplicates, background."""
    rng = np.random.default_rng(seed)
    categories = CATEGORIES + [{"id": BUS, "name": "bus", "supercategory": "vehicle"}]
    cat_ids = [c["id"] for c in categories]
    objects, results = [], []
    for img in range(1, n_images + 1):
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(8, 200, size=2)
            x, y = rng.uniform(0, 440, size=2)
            c = int(rng.choice(cat_ids))
            objects.append((img, c, [float(x), float(y), float(w), float(h)]))
            for _ in range(rng.choice([0, 1, 1, 1, 2])):
                label = c if rng.random() < 0.7 else int(rng.choice(cat_ids))
                jitter = rng.normal(0, 0.15, size=4) * [w, h, w, h]
                box = [float(x + jitter[0]), float(y + jitter[1]), float(max(2.0, w + jitter[2])), float(max(2.0, h + jitter[3]))]
                results.append(det(img, label, box, float(rng.random())))
        for _ in range(rng.integers(0, 3)):
            w, h = rng.uniform(8, 150, size=2)
            x, y = rng.uniform(0, 480, size=2)
            results.append(det(img, int(rng.choice(cat_ids)), [float(x), float(y), float(w), float(h)], float(rng.random())))
    return make_gt(objects, n_images, categories), results


def test_ap_non_decreasing_over_error_types() -> None:
    gt, results = random_case(seed=1)
    a = analyze_errors(gt, results)
    for area in a.area_names:
        for category_id in [None, *a.category_ids]:
            values = aps(a, area, category_id)
            assert all(lo <= hi + 1e-12 for lo, hi in itertools.pairwise(values)), (area, category_id, values)
        # removing false positives can only raise the (interpolated) precision, point by point
        curves = [a.curve(t, area) for t in ERROR_TYPES[2:]]
        assert all(np.all(lo <= hi + 1e-12) for lo, hi in itertools.pairwise(curves))
    assert a.ap("C75") < a.ap("C50") < a.ap("Loc") < a.ap("Oth") < a.ap("BG") < 1.0  # the case has each error


def test_c50_c75_equal_plain_cocoeval() -> None:
    gt, results = random_case(seed=2)
    a = analyze_errors(gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert a.ap("C50") == pytest.approx(ev.stats[1], abs=1e-12)
    assert a.ap("C75") == pytest.approx(ev.stats[2], abs=1e-12)
    precision = ev.eval["precision"][..., -1]  # (10 IoUs, R, K, 4 areas) at maxDets 100
    np.testing.assert_array_equal(a.precision[0], precision[5])  # IoU .75
    np.testing.assert_array_equal(a.precision[1], precision[0])  # IoU .50


def test_inputs_are_not_modified() -> None:
    gt, results = random_case(seed=3, n_images=10)
    gt_before, results_before = copy.deepcopy(gt.dataset), copy.deepcopy(results)
    analyze_errors(gt, results)
    assert gt.dataset == gt_before and results == results_before


def test_empty_results() -> None:
    gt = make_gt([(1, CAT, BOX), (2, DOG, [0, 0, 10, 10])], 2)
    a = analyze_errors(gt, [])
    for t in ERROR_TYPES[:-1]:
        for area in a.area_names:
            assert a.ap(t, area) == 0.0 and np.all(a.curve(t, area) == 0.0)
    assert a.ap("FN") == 1.0  # FN is 1 for every category with gt, detections or not


def test_plot_and_tables(tmp_path: Path) -> None:
    gt, results = random_case(seed=4, n_images=15)
    a = analyze_errors(gt, results, area_ranges=("all", "small"))
    out = plot_error_analysis(a, "small", tmp_path / "fig" / "errors_small.png", "method X, small objects")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    rows = error_table({"X": a, "Y": analyze_errors(gt, [])}, areas=("all", "small"))
    assert [(r["method"], r["area"]) for r in rows] == [("X", "all"), ("X", "small"), ("Y", "all"), ("Y", "small")]
    assert rows[0]["C50"] == a.ap("C50") and rows[2]["C75"] == 0.0
    table = error_table_markdown(rows)
    assert table.splitlines()[0] == "| method | area | C75 | C50 | Loc | Sim | Oth | BG | FN |"
    assert len(table.splitlines()) == 6 and f"| X | small | {a.ap('C75', 'small'):.3f} |" in table
    with pytest.raises(ValueError):
        a.ap("C50", "large")
