"""WIDER FACE's files: ground truth and prediction folders read and written, the reports, and the
evaluation on the real validation ground truth (split from test_widerface_eval.py, whose helpers
these tests share)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.widerface.ground_truth import SETTINGS, WiderGroundTruth, load_ground_truth
from pipeline.data.widerface.predictions import predictions_from_coco_results, read_prediction_dir, write_prediction_dir
from pipeline.widerface.protocol import WiderResult, evaluate
from pipeline.widerface.report import plot_pr_curves, result_to_json, results_markdown

from test_widerface_eval import GT_DIR, det, make_gt, synthetic_case, write_ground_truth

# ----------------------------------------------------------------------------------------------------------------------
# Files


def test_load_ground_truth_checks(tmp_path: Path) -> None:
    events, _ = synthetic_case()
    write_ground_truth(tmp_path, events)
    (tmp_path / "wider_medium_val.mat").unlink()
    with pytest.raises(FileNotFoundError, match="wider_medium_val.mat"):
        load_ground_truth(tmp_path)
    renamed = dict(events)
    renamed["2--Event2"] = [("other", *rest) for _, *rest in events["2--Event2"]]
    write_ground_truth(tmp_path / "bad", events)
    write_ground_truth(tmp_path / "renamed", renamed)
    (tmp_path / "renamed" / "wider_hard_val.mat").replace(tmp_path / "bad" / "wider_hard_val.mat")
    with pytest.raises(ValueError, match=r"wider_hard_val.mat: file_list of event 2--Event2 differs"):
        load_ground_truth(tmp_path / "bad")


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_prediction_dir_tolerates_whitespace(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_text(tmp_path / "ev" / "a.txt", "a.jpg\n 2 \n1 2 3 4 0.5   \n\t5\t6 7 8 0.25\n\n\n")
    write_text(tmp_path / "ev" / "b.txt", "b.jpg\n0\n")
    write_text(tmp_path / "ev" / "c.txt", "c.jpg\n1\n1 1 1 1 1\n")  # not asked for
    with caplog.at_level(logging.INFO):
        preds = read_prediction_dir(tmp_path, ["ev/a", "ev/b"])
    assert preds["ev/a"].tolist() == [[1, 2, 3, 4, 0.5], [5, 6, 7, 8, 0.25]]
    assert preds["ev/b"].shape == (0, 5)
    assert "1 prediction files of images outside the evaluated set" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.jpg\ntwo\n", r"a.txt: line 2: .*'two' is not an integer"),
        ("a.jpg\n3\n1 2 3 4 0.5\n1 2 3 4 0.5\n", r"a.txt: line 2 announces 3 detections .* 2 detection lines"),
        ("a.jpg\n2\n1 2 3 4 0.5\n1 2 3 4\n", r"a.txt: line 4: expected 5 numbers"),
        ("a.jpg\n1\n1 2 x 4 0.5\n", r"a.txt: line 3: not a number"),
        ("a.jpg\n1\n1 2 3 4 nan\n", r"a.txt: line 3: a value is not finite"),
        ("a.jpg\n", r"a.txt: line 2: missing"),
        ("", r"a.txt: empty file"),
    ],
)
def test_read_prediction_dir_errors(tmp_path: Path, text: str, message: str) -> None:
    write_text(tmp_path / "ev" / "a.txt", text)
    with pytest.raises(ValueError, match=message):
        read_prediction_dir(tmp_path, ["ev/a"])


def test_missing_prediction_files_in_one_error(tmp_path: Path) -> None:
    write_text(tmp_path / "ev" / "a.txt", "a.jpg\n0\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 3 prediction files are missing, e.g. .*ev/b.txt, .*ev/c.txt"):
        read_prediction_dir(tmp_path, ["ev/a", "ev/b", "ev/c"])


def test_write_read_round_trip_exact(tmp_path: Path) -> None:
    rs = np.random.RandomState(1)
    preds = {"e1/x": np.column_stack([rs.uniform(-5, 2000, (7, 4)), rs.uniform(0, 1, 7)]), "e1/y": det()}
    write_prediction_dir(preds, tmp_path, ["e1/x", "e1/y", "e2/z"])
    lines = (tmp_path / "e1" / "x.txt").read_text().splitlines()
    assert lines[0] == "x.jpg" and lines[1] == "7"
    assert (tmp_path / "e2" / "z.txt").read_text() == "z.jpg\n0\n"
    back = read_prediction_dir(tmp_path, ["e1/x", "e1/y", "e2/z"])
    assert np.array_equal(back["e1/x"], preds["e1/x"]) and back["e1/y"].shape == back["e2/z"].shape == (0, 5)


def test_predictions_from_coco_results() -> None:
    results = [
        {"image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 2, "category_id": 1, "bbox": [5, 6, 7, 8], "score": 0.9},
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.1},
    ]
    preds = predictions_from_coco_results(results, {1: "e/a", 2: "e/b"}, category_id=1)
    assert preds["e/b"].tolist() == [[1, 2, 3, 4, 0.5], [5, 6, 7, 8, 0.9]] and preds["e/a"].shape == (0, 5)
    assert len(predictions_from_coco_results(results, {1: "e/a", 2: "e/b"})["e/b"]) == 3
    with pytest.raises(ValueError, match="image_id 9"):
        predictions_from_coco_results([results[0] | {"image_id": 9}], {1: "e/a"})


def test_reports(tmp_path: Path) -> None:
    gt = make_gt([[[0, 0, 9, 9], [50, 0, 9, 9]], [[0, 0, 9, 9]]])
    preds = {"e/0": det([0, 0, 9, 9, 0.9], [200, 0, 9, 9, 0.5]), "e/1": det([0, 0, 9, 9, 0.7], [90, 0, 9, 9, 0.1])}
    results: dict[str, WiderResult] = {"ours": evaluate(gt, preds), "half": evaluate(gt, preds, image_keys=["e/1"])}
    assert results_markdown(results) == (
        "| method | Easy | Medium | Hard | images |\n|---|---:|---:|---:|---:|\n"
        "| ours | 0.667 | 0.667 | 0.667 | 2 |\n| half | 1.000 | 1.000 | 1.000 | 1 of 2 |\n"
    )
    data = result_to_json(results["ours"])
    assert data["ap"]["easy"] == pytest.approx(2 / 3) and data["faces"]["hard"] == 3 and data["images_total"] == 2
    json.dumps(data, allow_nan=False)
    plot_pr_curves(results, tmp_path / "pr.png", "WIDER FACE val", colors={"ours": "tab:red"})
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------------------------
# The real validation ground truth


@pytest.fixture(scope="module")
def real_gt() -> WiderGroundTruth:
    if not (GT_DIR / "wider_face_val.mat").is_file():
        pytest.skip("WIDER FACE ground truth ../shared/data/widerface/ground_truth is absent")
    return load_ground_truth(GT_DIR)


def perfect(gt: WiderGroundTruth, keys: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for key in keys:
        boxes = gt.boxes[gt.index(key)]
        out[key] = np.column_stack([boxes, np.linspace(1.0, 0.5, len(boxes))])
    return out


def test_real_ground_truth(real_gt: WiderGroundTruth) -> None:
    assert len({k.split("/")[0] for k in real_gt.images}) == 61
    assert len(real_gt) == 3226 and real_gt.faces == 39708 and real_gt.int32_boxes
    assert "22--Picnic/22_Picnic_Picnic_22_10" in real_gt
    kept = [real_gt.kept_faces(s) for s in SETTINGS]
    assert kept[0] < kept[1] < kept[2] <= 39708
    for s in SETTINGS:  # 0-based, in range
        assert all(k.size == 0 or (k.min() >= 0 and k.max() < len(b)) for k, b in zip(real_gt.keep[s], real_gt.boxes))


def test_real_perfect_and_jittered_predictors(real_gt: WiderGroundTruth) -> None:
    picnic = [k for k in real_gt.images if k.startswith("22--Picnic/")]
    assert len(picnic) == 24
    result = evaluate(real_gt, perfect(real_gt, picnic), image_keys=picnic)
    assert result.images_evaluated == 24 and not result.official
    assert all(ap > 0.99 for ap in result.ap.values())
    everything = perfect(real_gt, real_gt.images)
    full = evaluate(real_gt, everything)
    assert full.official and all(ap > 0.99 for ap in full.ap.values())
    rs = np.random.RandomState(0)
    jittered = {k: np.column_stack([v[:, :4] + rs.normal(0, 0.15, (len(v), 4)) * v[:, [2, 3, 2, 3]], v[:, 4]]) for k, v in everything.items()}
    assert all(ap < 1 for ap in evaluate(real_gt, jittered).ap.values())
