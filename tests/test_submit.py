"""Images without ground truth: unlabelled splits in the data stage, the submit_coco target's results
files (the tiny pipeline's split `test`), and `mtgan rescore` reproducing the pipeline's own merge
output for the same ROIs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from core.io.coco import results_problems
from pipeline.cli import cli
from pipeline.data.index import read_index
from pipeline.data.stage import build_dataset

from conftest import REPO, tiny_config

IMAGES = [{"id": i, "file_name": f"{i}.jpg", "width": 50, "height": 40} for i in (1, 2, 3)]
CATEGORIES = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
GOOD = {"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 5.0], "score": 0.5}


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ([GOOD, GOOD | {"image_id": 3, "category_id": 7}], None),
        ({"detections": []}, "JSON list"),
        ([GOOD | {"image_id": 9}], "unknown image_id"),
        ([GOOD | {"category_id": 1}], "unknown category_id"),
        ([GOOD | {"bbox": [1, 2, 3]}], "are not {image_id, category_id, bbox: [x, y, w, h], score} records (index): #0"),
        ([GOOD | {"bbox": [1, 2, 0, 5]}], "w or h <= 0"),
        ([GOOD | {"bbox": [1, 2, float("nan"), 5]}], "non-finite box or score"),
        ([GOOD | {"score": float("inf")}], "non-finite box or score"),
        ([GOOD | {"score": 1.5}], "score outside [0, 1]: #0 score 1.5"),
        ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.1}], "not {image_id"),
        ([GOOD] * 4, "more than 3 detections"),
    ],
)
def test_results_files_are_checked_against_the_image_list(records: Any, words: str | None) -> None:
    problems = results_problems(records, {"images": IMAGES, "categories": CATEGORIES}, max_per_image=3)
    assert (problems == []) if words is None else any(words in p for p in problems), problems


def test_builtin_split_written_without_annotations(tmp_path: Path) -> None:
    config = tiny_config()["data"]
    config["builtin"] |= {"num_images": {"train": 2, "val": 2, "test": 3}, "unlabelled": ["test"]}
    splits = build_dataset(config, tmp_path / "data")
    assert splits["test"].labelled is False and splits["val"].labelled is True
    test = json.loads(splits["test"].annotations.read_text())
    assert "annotations" not in test and len(test["images"]) == 3 and test["categories"]
    assert read_index(tmp_path / "data" / "index.json")["test"].num_annotations == 0


def _image_folder(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True)
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((30 + i, 40, 3), 100, np.uint8)).save(root / name)


def test_coco_image_info_and_image_folders_are_unlabelled_splits(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train", ["a.jpg"])
    (tmp_path / "train.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}],
                "categories": CATEGORIES,
            }
        )
    )
    _image_folder(tmp_path / "info", ["x.jpg"])
    (tmp_path / "info.json").write_text(
        json.dumps(
            {  # COCO test-dev's image_info layout: no annotations
                "images": [{"id": 7, "file_name": "x.jpg", "width": 40, "height": 30}],
                "categories": CATEGORIES,
            }
        )
    )
    _image_folder(tmp_path / "mine", ["b.png", "a.jpg", "sub/c.jpg"])
    splits = {
        "train": {"annotations": str(tmp_path / "train.json"), "images": str(tmp_path / "train")},
        "val": {"annotations": str(tmp_path / "train.json"), "images": str(tmp_path / "train")},
        "info": {"annotations": str(tmp_path / "info.json"), "images": str(tmp_path / "info")},
        "mine": {"images": str(tmp_path / "mine")},
    }
    config = yaml.safe_dump({"data": {"name": "x", "source": "coco", "coco": {"splits": splits}}})
    (tmp_path / "config.yaml").write_text(config)
    result = CliRunner().invoke(
        cli, ["data", "--config", str(REPO / "config" / "default.yaml"), "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    index = read_index(tmp_path / "out" / "index.json")
    assert [index[s].labelled for s in ("train", "info", "mine")] == [True, False, False]
    mine = json.loads(index["mine"].annotations.read_text())
    assert [(im["id"], im["file_name"], im["height"]) for im in mine["images"]] == [(1, "a.jpg", 31), (2, "b.png", 30), (3, "sub/c.jpg", 32)]
    assert mine["categories"] == CATEGORIES and "annotations" not in mine


def test_submit_coco_writes_a_valid_results_file_per_method(tiny_run: Path) -> None:
    """config/tiny.yaml writes its split `test` without annotations and names it data.submit_split."""
    root = tiny_run / "artifacts" / "tiny"
    coco = json.loads((root / "data" / "test.json").read_text())
    assert "annotations" not in coco
    files = sorted(p.name for p in (root / "submit").glob("detections_*_results.json"))
    methods = ("baseline", "d_no_adv", "sbu", "sbu_hr", "mtgan", "sbu_hr-by_size", "mtgan-by_size")
    assert files == sorted(f"detections_test_{m}{e}_results.json" for m in methods for e in ("", "_ensemble") if m + e != "baseline_ensemble")
    for name in files:
        records = json.loads((root / "submit" / name).read_text())
        assert records and results_problems(records, coco, 100) == []
    assert not list((root / "score").glob("*test*"))  # an unlabelled split is never scored

    # One `mtgan submission` writes a variant alone and its ensemble; an ensemble's name, or no method's, is refused.
    args = ["submission", "--config", str(REPO / "config" / "default.yaml"), "--config", str(REPO / "config" / "tiny.yaml")]
    args += ["--data-index", str(root / "data" / "index.json"), "--split", "test"]
    args += ["--rois", str(root / "rois" / "submit.parquet"), "--inference", str(root / "submit" / "infer" / "paper" / "mtgan.parquet")]
    out = tiny_run.parent / "submission_mtgan_ensemble.json"
    refused = CliRunner().invoke(cli, [*args, "--method", "mtgan_ensemble", "--out", str(out)])
    assert refused.exit_code != 0 and "name the method alone (mtgan)" in refused.output and not out.exists()
    unknown = CliRunner().invoke(cli, [*args, "--method", "mtgan-nonsense", "--out", str(out)])
    assert unknown.exit_code != 0 and "unknown method 'mtgan-nonsense'" in unknown.output and not out.exists()


@pytest.mark.parametrize("method", ["mtgan", "mtgan_ensemble", "mtgan-by_size"])
def test_rescore_reproduces_the_pipelines_merge(tiny_run: Path, method: str) -> None:
    """The tiny pipeline's model over its own baseline detections of val (the detect stage's table):
    exactly the detections of its merge stage, on the paper's path and under our by_size rule."""
    root = tiny_run / "artifacts" / "tiny"
    out = tiny_run.parent / f"rescored_{method}.json"
    args = [
        "rescore",
        "--model",
        str(root / "mtgan" / "mtgan" / "model.pt"),
        "--images",
        str(root / "data" / "val.json"),
        "--image-root",
        str(root / "data" / "images" / "val"),
        "--detections",
        str(root / "detect" / "val.parquet"),
        "--out",
        str(out),
        "--device",
        "cpu",
    ] + (["--ensemble"] if method.endswith("_ensemble") else [])
    args += ["--rule", "by_size"] if "-by_size" in method else []
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rescored = json.loads(out.read_text())
    assert rescored and rescored == json.loads((root / "merge" / f"{method}.json").read_text())


def test_rescore_takes_any_detectors_results_json_on_an_image_folder(tiny_run: Path, tmp_path: Path) -> None:
    root = tiny_run / "artifacts" / "tiny"
    shutil.copytree(root / "data" / "images" / "test", tmp_path / "images")
    test = json.loads((root / "data" / "test.json").read_text())  # ids 1..N in file-name order, as the folder gives
    records = [
        {"image_id": im["id"], "category_id": 1 + k % 7, "bbox": [10.0 + 20 * k, 12.0, 24.0, 20.0], "score": 0.5} for im in test["images"] for k in range(5)
    ]
    (tmp_path / "dets.json").write_text(json.dumps(records))
    result = CliRunner().invoke(
        cli,
        [
            "rescore",
            "--model",
            str(root / "mtgan" / "mtgan" / "model.pt"),
            "--images",
            str(tmp_path / "images"),
            "--detections",
            str(tmp_path / "dets.json"),
            "--out",
            str(tmp_path / "out.json"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "out.json").read_text())
    assert out and results_problems(out, {"images": test["images"], "categories": test["categories"]}, 100) == []


def test_rescore_refuses_other_categories_and_old_models(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    root = tiny_run / "artifacts" / "tiny"
    val = json.loads((root / "data" / "val.json").read_text())
    other = {**val, "categories": [{"id": 100 + c["id"], "name": c["name"]} for c in val["categories"]]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    base = [
        "rescore",
        "--model",
        str(root / "mtgan" / "mtgan" / "model.pt"),
        "--image-root",
        str(root / "data" / "images" / "val"),
        "--detections",
        str(root / "detect" / "val_results.json"),
        "--out",
        str(tmp_path / "out.json"),
    ]
    result = CliRunner().invoke(cli, [*base, "--images", str(tmp_path / "other.json")])
    assert result.exit_code == 1 and "are not the model's" in result.output
    state = torch.load(root / "mtgan" / "mtgan" / "model.pt", weights_only=True)
    del state["format_version"], state["categories"]
    torch.save(state, tmp_path / "old.pt")
    base[2] = str(tmp_path / "old.pt")
    result = CliRunner().invoke(cli, [*base, "--images", str(root / "data" / "val.json")])
    assert result.exit_code == 1 and "retrain it" in result.output and not (tmp_path / "out.json").exists()


def test_a_model_describes_itself(tiny_run: Path) -> None:
    import torch

    state = torch.load(tiny_run / "artifacts" / "tiny" / "mtgan" / "mtgan" / "model.pt", weights_only=True)
    assert state["format_version"] == 4 and [c["name"] for c in state["categories"]][:2] == ["stripes", "checks"]
    assert (state["hr_size"], state["scale"], state["margin"]) == (64, 4, 0.0)
    assert state["variant"]["d_inputs"] == ["sr", "hr"] and state["config"]["mtgan"]["preset"] == "tiny"
    assert "roi_input" not in state["preset"]  # the test-time rule is an inference setting, not the model's


def test_rescore_never_overwrites_and_refuses_detections_of_other_images(tiny_run: Path, tmp_path: Path) -> None:
    """A folder's images are ids 1..N in file-name order: val's detections (12 images) on the train
    folder (24) would crop the wrong pictures; and an existing --out is the user's, never replaced."""
    root = tiny_run / "artifacts" / "tiny"
    base = ["rescore", "--model", str(root / "mtgan" / "mtgan" / "model.pt"), "--device", "cpu"]
    val_detections = str(root / "detect" / "val_results.json")
    wrong = CliRunner().invoke(
        cli, [*base, "--images", str(root / "data" / "images" / "train"), "--detections", val_detections, "--out", str(tmp_path / "o.json")]
    )
    assert wrong.exit_code == 1 and "names 12 of the 24 images" in wrong.output and "made on other images?" in wrong.output
    assert not (tmp_path / "o.json").exists()
    (tmp_path / "mine.json").write_text("my results")
    kept = CliRunner().invoke(
        cli, [*base, "--images", str(root / "data" / "val.json"), "--detections", str(root / "detect" / "val.parquet"), "--out", str(tmp_path / "mine.json")]
    )
    assert kept.exit_code == 2 and "never overwrites a file" in kept.output and (tmp_path / "mine.json").read_text() == "my results"
