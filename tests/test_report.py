"""The report's own logic on constructed cases: which images count as changed, the operating point,
the curves read from COCOeval arrays. (Every figure is drawn from a real run in test_workflow.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.report import detections, figures
from pipeline.score import coco_bbox_eval

from conftest import REPO

CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"}]


def _gt(path: Path) -> Path:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in (1, 2, 3)]
    boxes = {
        1: [[10, 10, 60, 60], [150, 150, 20, 20]],  # a large and a small cat
        2: [[20, 20, 80, 80]],
        3: [[30, 30, 50, 50]],
    }
    anns = [
        {"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0} for i, bs in boxes.items() for k, b in enumerate(bs)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


def _det(image_id: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score}


def test_changed_images_are_found_and_named(tmp_path: Path) -> None:
    gt = _gt(tmp_path / "gt.json")
    baseline = [_det(1, [10, 10, 60, 60], 0.9), _det(2, [20, 20, 80, 80], 0.9), _det(2, [120, 120, 40, 40], 0.95), _det(3, [30, 30, 50, 50], 0.9)]
    method = [
        _det(1, [10, 10, 60, 60], 0.9),
        _det(1, [151, 151, 20, 20], 0.85),  # the small cat found
        _det(2, [20, 20, 80, 80], 0.9),  # the false positive gone
        _det(3, [100, 100, 50, 50], 0.9),
    ]  # the cat lost, a false positive instead
    rows, thresholds = detections.compare(detections.load_gt(gt), baseline, method)
    by_image = {r["image_id"]: r for r in rows}
    assert by_image[1]["change"] == "small found"
    assert (by_image[1]["baseline_small_tp"], by_image[1]["method_small_tp"]) == (0, 1)
    assert (by_image[1]["baseline_fn"], by_image[1]["method_fn"]) == (1, 0)
    assert by_image[2]["change"] == "fewer false positives" and (by_image[2]["baseline_fp"], by_image[2]["method_fp"]) == (1, 0)
    assert by_image[3]["change"] == "worse" and (by_image[3]["method_tp"], by_image[3]["method_fp"]) == (0, 1)
    assert [r["image_id"] for r in rows] == [1, 2, 3]  # best change first
    # Baseline: scores .95 (FP) .9 (TP) .9 (TP) .9 (TP) over 4 objects: F1 0 at .95, 6/8 at .9.
    assert thresholds["baseline"] == pytest.approx(0.9)
    assert by_image[1]["method_mean_iou"] == pytest.approx((1 + 19 * 19 / (400 + 400 - 361)) / 2, abs=1e-3)

    changes = detections.object_changes(detections.load_gt(gt), baseline, method, thresholds)  # what the pictures draw
    assert [(c.kind, c.bbox, c.small) for c in changes[1]] == [("found by the method only", [150, 150, 20, 20], True)]
    assert [(c.kind, c.bbox) for c in changes[2]] == [("false positive removed", [120, 120, 40, 40])]
    assert [(c.kind, c.bbox) for c in changes[3]] == [("found by the baseline only", [30, 30, 50, 50]), ("false positive added", [100, 100, 50, 50])]
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        Image.new("RGB", (200, 200), "white").save(tmp_path / name)
    better = [r for r in rows if r["change"] not in ("worse", "same")]
    detections.plot_examples(better, detections.load_gt(gt), tmp_path, baseline, method, "mtgan", thresholds, tmp_path / "better.png", "better")
    with Image.open(tmp_path / "better.png") as im:
        assert im.format == "PNG"


def test_tighter_boxes_and_no_change() -> None:
    base = detections.ImageOutcome(tp=2, fp=1, fn=0, small_tp=0, iou_sum=1.2)
    assert detections.change_kind(base, detections.ImageOutcome(2, 1, 0, 0, 1.5)) == "tighter boxes"
    assert detections.change_kind(base, detections.ImageOutcome(2, 1, 0, 0, 1.25)) == "same"
    assert detections.change_kind(base, detections.ImageOutcome(2, 2, 0, 0, 1.2)) == "worse"


def test_pr_curve_means_skip_classes_without_ground_truth(tmp_path: Path) -> None:
    gt = _gt(tmp_path / "gt.json")
    _, evaluator = coco_bbox_eval(gt, [_det(1, [10, 10, 60, 60], 0.9), _det(2, [20, 20, 80, 80], 0.8)])
    precision = evaluator.eval["precision"]
    curve = figures.mean_precision(precision, 0.5, "all")
    # 2 of 4 cats found, both before any false positive: precision 1 up to recall 0.5, then nothing.
    assert curve[:51].tolist() == [1.0] * 51 and curve[51:].tolist() == [0.0] * 50
    assert curve.mean() == pytest.approx(evaluator.stats[1])  # = COCOeval's AP50
    assert figures.mean_precision(np.full((10, 101, 1, 4, 3), -1.0), 0.5, "small").tolist() == [0.0] * 101


def test_the_run_profile_lists_every_job_with_its_benchmark(tiny_run: Path) -> None:
    """report/profile.{md,csv,png}: one row per eval_coco job, its figures those of Snakemake's own
    benchmark file, and the per-stage sums in the markdown equal to the csv's rows summed."""
    import csv

    from pipeline.config import load_config_files, validate_config
    from pipeline.workflow import eval_benchmarks

    root = tiny_run / "artifacts" / "tiny"
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", REPO / "config" / "tiny.yaml"]))
    expected = eval_benchmarks(config, str(root / "benchmarks"))
    rows = list(csv.DictReader(open(root / "report" / "profile.csv")))
    assert sorted(r["job"] for r in rows) == sorted(expected)
    walls = [float(r["wall_s"]) for r in rows]
    assert walls == sorted(walls, reverse=True) and all(w > 0 for w in walls)
    for r in rows:  # straight from the TSV Snakemake wrote
        tsv = list(csv.DictReader(open(expected[r["job"]]), delimiter="\t"))[-1]
        assert float(r["wall_s"]) == pytest.approx(float(tsv["s"]), abs=1e-3) and float(r["cpu_s"]) == pytest.approx(float(tsv["cpu_time"]), abs=1e-3)
    training = sum(float(r["wall_s"]) for r in rows if r["stage"] == "train_mtgan")
    line = next(line for line in (root / "report" / "profile.md").read_text().splitlines() if line.startswith("| train_mtgan |"))
    assert line.split("|")[2].strip() == "4" and float(line.split("|")[3]) == pytest.approx(training, abs=0.6)
    assert (root / "report" / "profile.png").stat().st_size > 5000
