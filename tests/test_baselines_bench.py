"""bench/baselines.py: the ladder of detector budgets (the strong one chosen on dev by its rule), the
headroom ceilings computed by the project's own merge and scorer, the hypotheses' tests, and a
smoke run of both phases on the session's tiny run."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.detect import import_detections
from pipeline.rois import build_rois

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import baselines  # noqa: E402


def test_the_strong_budget_is_the_first_whose_doubling_adds_less_than_one_ap() -> None:
    candidates = (600, 1200, 2400, 4800)
    assert baselines.strong_budget({300: 10.0, 600: 19.7, 1200: 40.0, 2400: 45.0, 4800: 45.5}, 300, candidates) == 2400
    assert baselines.strong_budget({300: 10.0, 600: 10.5}, 300, candidates) == 300
    assert baselines.strong_budget({300: 10.0, 600: 19.7, 1200: 40.0, 2400: 45.0, 4800: 47.0}, 300, candidates) == 4800  # 16x at most
    assert baselines.strong_budget({300: 10.0, 600: 19.7}, 300, candidates) is None  # 1200 not trained yet: undecided


def _split(tmp_path: Path, shift: float = 0.0) -> tuple[dict[str, Any], Path]:
    """A split of 6 images whose ROIs cover every object (its ground truth, moved right by `shift`
    of its width) among random negatives."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 160} for i in range(1, 7)]
    annotations = []
    for im in images:
        for _ in range(int(rng.integers(1, 6))):
            w, h = (float(v) for v in rng.uniform(6, 60, 2))
            x, y = float(rng.uniform(0, 200 - w)), float(rng.uniform(0, 160 - h))
            category = int(rng.choice([2, 5]))
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"], "category_id": category, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    records = [  # a class, right or wrong
        {"image_id": a["image_id"], "category_id": 2, "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]], "score": 0.3} for a in annotations
    ]
    for im in images:  # negatives
        records += [{"image_id": im["id"], "category_id": 5, "bbox": [*(float(v) for v in rng.uniform(0, 100, 2)), 20.0, 20.0], "score": 0.2} for _ in range(5)]
    (tmp_path / "r.json").write_text(json.dumps(records))
    import_detections(tmp_path / "r.json", coco, 100, tmp_path / "d.parquet")
    build_rois(tmp_path / "d.parquet", coco, False, 0.5, 0.35, tmp_path / "rois.parquet")
    return coco, tmp_path / "rois.parquet"


def _run(tmp_path: Path, shift: float) -> Path:
    """A run folder (`rois/test.parquet`, `data/val.json`) for `ceilings`."""
    root = tmp_path / f"run{shift}"
    (root / "rois").mkdir(parents=True)
    (root / "data").mkdir()
    _, rois = _split(tmp_path, shift)
    shutil.copy(rois, root / "rois" / "test.parquet")
    shutil.copy(tmp_path / "val.json", root / "data" / "val.json")
    return root


def test_the_label_ceiling_reaches_100_ap_where_the_rois_cover_every_object(tmp_path: Path) -> None:
    config = {"data": {"test_split": "val"}, "merge": {"nms_iou": 0.5, "score_floor": 0.001, "max_per_image": 100}}
    found = baselines.ceilings(_run(tmp_path, 0.0), config)
    assert found["label"]["AP"] == 1.0 and found["label"]["APS"] == 1.0  # the true label, ranked by IoU, boxes unchanged
    assert found["label+box"]["AP"] == 1.0
    # Boxes a fifth of their width off their objects (IoU 2/3: matched at 0.50-0.65, missed above):
    # the label ceiling stays low, the box ceiling moves them back by their regression targets.
    moved = baselines.ceilings(_run(tmp_path, 0.2), config)
    assert moved["label"]["AP"] < 0.5 and moved["label+box"]["AP"] > 0.99


def test_the_hypotheses_follow_their_registered_tests() -> None:
    def rows(detector: dict[int, float], ensemble: dict[int, list[float]]) -> list[dict[str, Any]]:
        out = [{"budget": b, "arm": "detector", "method": "baseline", "seed": 0, "AP": v / 100, "APS": v / 100} for b, v in detector.items()]
        out += [
            {"budget": b, "arm": "retrained", "method": "mtgan_ensemble", "seed": s, "AP": v / 100, "APS": v / 100}
            for b, values in ensemble.items()
            for s, v in enumerate(values)
        ]
        return out

    shrinking = rows({300: 10, 1125: 30, 2400: 45}, {300: [20, 21, 22], 1125: [34, 35, 36], 2400: [46, 46.5, 47.2]})
    found = {(v["hypothesis"][:2], v["metric"]): v for v in baselines.verdicts(shrinking, (300, 1125, 2400), 300, 1125, 2400)}
    assert found["H1", "APS"]["verdict"] == "held" and found["H1", "APS"]["p"] < 0.05  # +1.2 over the strong baseline
    assert found["H2", "APS"]["verdict"] == "held"  # 11 -> 5 -> 1.2, and Welch's p of 11 > 1.2
    assert found["H3", "AP"]["verdict"] == "not held" and found["H3", "AP"]["values"] == pytest.approx([-10.0, -9.0, -8.0])  # below the compute-matched 30
    flat = rows({300: 10, 1125: 30, 2400: 45}, {300: [11, 12, 13], 1125: [34, 35, 36], 2400: [44, 46, 46]})
    found = {(v["hypothesis"][:2], v["metric"]): v for v in baselines.verdicts(flat, (300, 1125, 2400), 300, 1125, 2400)}
    assert found["H1", "APS"]["verdict"] == "not held" and found["H2", "APS"]["verdict"] == "not held"  # 2 -> 5: not shrinking


def test_the_second_detector_follows_the_70_minute_rule_or_the_choice(tmp_path: Path) -> None:
    (tmp_path / "benchmarks").mkdir()
    bench = tmp_path / "benchmarks" / "train_baseline.tsv"
    assert not baselines.second_detector_wanted("auto", tmp_path)  # no measured training: not trained
    bench.write_text("s\th:m:s\tmax_rss\n4199.5\t1:09:59\t900\n")
    assert baselines.second_detector_wanted("auto", tmp_path)
    bench.write_text("s\th:m:s\tmax_rss\n6436.0\t1:47:16\t900\n")
    assert not baselines.second_detector_wanted("auto", tmp_path) and baselines.second_detector_wanted("yes", tmp_path)
    assert not baselines.second_detector_wanted("no", tmp_path)
    # its run has its own dataset name, so its artifacts are its own, and sets the seed
    overlay = baselines.budget_config([], "builtin", 4800, 300, tmp_path, detector_seed=1)[-1]
    assert yaml.safe_load(overlay.read_text()) == {"data": {"name": "builtin-b4800-detector-seed1"}, "train_baseline": {"iterations": 4800, "seed": 1}}
    assert baselines.budget_config([], "builtin", 300, 300, tmp_path) == []  # the default run's own config


def _run_bench(tiny_run: Path, tmp_path: Path, *args: str) -> Path:
    """bench/baselines.py on a copy of the session's tiny run (the script writes beside the run)."""
    shutil.copytree(tiny_run / "artifacts", tmp_path / "artifacts")
    command = [sys.executable, str(REPO / "bench" / "baselines.py"), "--config", str(REPO / "config" / "tiny.yaml"), *args, "--threads", "1", "--cores", "2"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path / "artifacts" / "tiny" / "baselines"


def test_the_dev_phase_runs_on_the_tiny_config(tiny_run: Path, tmp_path: Path) -> None:
    out = _run_bench(tiny_run, tmp_path, "--budgets", "12", "--phase", "dev")
    dev = list(csv.DictReader(open(out / "dev.csv")))
    assert [int(r["budget"]) for r in dev] == [6, 12] and all(0 <= float(r["AP"]) <= 1 for r in dev)
    assert float(dev[0]["train_seconds"]) > 0 and "The strong budget" in (out / "dev.md").read_text()


@pytest.mark.slow  # two pipeline runs and 12 trainings: about 6 minutes on 2 cores
def test_the_test_phase_runs_on_the_tiny_config(tiny_run: Path, tmp_path: Path) -> None:
    # tiny's detector at 12 iterations scores every box below the default floor of 0.001: keep them all
    overlay = tmp_path / "floor.yaml"
    overlay.write_text("detector:\n  score_thresh: 0.0\n")
    out = _run_bench(tiny_run, tmp_path, "--config", str(overlay), "--budgets", "12,24", "--phase", "test", "--matched", "12", "--seeds", "0,1")
    rows = list(csv.DictReader(open(out / "baselines.csv")))
    budgets = sorted({int(r["budget"]) for r in rows})
    assert 12 in budgets and 6 in budgets  # the default (tiny: 6 iterations) and the compute-matched
    for budget in budgets:  # each budget's detector, its two ceilings, and every method per seed
        arms = {(r["arm"], r["method"], r["seed"]) for r in rows if int(r["budget"]) == budget}
        assert {("detector", "baseline", "0"), ("ceiling", "label", "0"), ("ceiling", "label+box", "0")} <= arms
        expected = {("retrained", m, s) for m in ("mtgan", "mtgan_ensemble", "sbu", "d_no_adv") for s in "01"}
        assert {(a, m, s) for a, m, s in arms if a == "retrained"} >= expected
    assert any(r["arm"] == "transfer" and int(r["budget"]) == 12 for r in rows)  # the default's models on the stronger detector's ROIs
    text = (out / "baselines.md").read_text()
    assert "H1: MTGAN x baseline > its baseline" in text and "H3: default x MTGAN > compute-matched baseline" in text
    # the strong budget's detector trained again with the next seed (tiny's training takes seconds: auto trains it)
    detectors = list(csv.DictReader(open(out / "detectors.csv")))
    assert sorted((r["detector_seed"], r["split"]) for r in detectors) == [("0", "dev"), ("0", "val"), ("1", "dev"), ("1", "val")]
    strong = int(detectors[0]["budget"])  # two different detectors (tiny's score 0 AP both: compare their weights)
    first, second = (tmp_path / "artifacts" / baselines.budget_name("tiny", strong, 6, seed) / "baseline" / "model.pt" for seed in (None, 1))
    assert first.read_bytes() != second.read_bytes()
    assert "The strong budget's detector trained twice" in text and "the second detector differs from the first by" in text
    with Image.open(out / "baselines.png") as im:
        assert im.format == "PNG" and min(im.size) > 300
