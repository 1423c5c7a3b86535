"""WIDER FACE through the pipeline on the 24 real val images of event 22--Picnic: the official
bbx_gt.txt layout (written by the test from the official .mat ground truth) -> data stage -> the
official evaluation, detections imported from the official prediction layout, and eval_widerface
through Snakemake. Skips where ../shared is absent."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.io.tables import DETECTIONS_SCHEMA, read_table
from pipeline.config import validate_config
from pipeline.data.stage import build_dataset
from pipeline.data.widerface.convert import WiderImage, image_keys, write_bbx_gt
from pipeline.data.widerface.ground_truth import load_ground_truth
from pipeline.data.widerface.predictions import write_prediction_dir
from pipeline.detect import import_detections, results_records
from pipeline.widerface.score import score_widerface

from conftest import REPO, SHARED_DATA, snakemake

WIDER = SHARED_DATA / "widerface"
EVENT = "22--Picnic"


@pytest.fixture(scope="module")
def picnic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A WIDER FACE tree of the 24 Picnic images: images, wider_face_val_bbx_gt.txt, ground truth."""
    if not (WIDER / "ground_truth" / "wider_face_val.mat").is_file() or not (WIDER / "WIDER_val" / "images" / EVENT).is_dir():
        pytest.skip("WIDER FACE sample ../shared/data/widerface is absent")
    gt = load_ground_truth(WIDER / "ground_truth")
    root = tmp_path_factory.mktemp("widerface")
    images = []
    for path in sorted((WIDER / "WIDER_val" / "images" / EVENT).glob("*.jpg")):
        i = gt.index(f"{EVENT}/{path.stem}")
        hard = set(gt.keep["hard"][i].tolist())
        # The .mat files hold no attributes: faces outside every setting are written as invalid.
        faces = [(*box, 0, 0, 0, int(k not in hard), 0, 0) for k, box in enumerate(gt.boxes[i].tolist())]
        images.append(WiderImage(f"{EVENT}/{path.name}", faces))
    (root / "wider_face_split").mkdir()
    write_bbx_gt(images, root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    return {
        "root": root,
        "txt": root / "wider_face_split" / "wider_face_val_bbx_gt.txt",
        "images": WIDER / "WIDER_val" / "images",
        "ground_truth": WIDER / "ground_truth",
    }


def _data_config(picnic: dict[str, Path]) -> dict:
    return {
        "name": "picnic",
        "source": "widerface",
        "train_split": "val",
        "test_split": "val",
        "widerface": {"splits": {"val": {"annotations": str(picnic["txt"]), "images": str(picnic["images"])}}, "ground_truth": str(picnic["ground_truth"])},
    }


def test_picnic_converts_and_scores_like_the_toolkit(picnic: dict[str, Path], tmp_path: Path) -> None:
    config = validate_config({"data": _data_config(picnic)})
    splits = build_dataset(config["data"], tmp_path / "data")
    coco = json.loads(splits["val"].annotations.read_text())
    gt = load_ground_truth(picnic["ground_truth"])
    keys = [f"{EVENT}/{p.stem}" for p in sorted((picnic["images"] / EVENT).glob("*.jpg"))]
    faces = sum(len(gt.boxes[gt.index(k)]) for k in keys)
    invalid = sum(len(gt.boxes[gt.index(k)]) - len(gt.keep["hard"][gt.index(k)]) for k in keys)
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())["splits"]["val"]
    assert len(coco["images"]) == 24 and stats["invalid_faces"] == invalid
    assert stats["objects"] + stats["crowd_regions"] + stats["dropped_boxes"] == faces - stats["zero_size_faces"]
    assert all(im["width"] == 1024 for im in coco["images"])  # read from the real JPEG headers

    # The ground truth itself, as detections, is perfect on every setting of these 24 images.
    scores = np.linspace(1.0, 0.5, len(coco["annotations"]))
    results = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": float(s)} for a, s in zip(coco["annotations"], scores)]
    result, predictions = score_widerface(coco, results, picnic["ground_truth"], "val")
    assert result.images_evaluated == 24 and result.images_total == 3226 and not result.official
    assert all(result.settings[s].ap > 0.99 for s in ("easy", "medium", "hard"))
    assert result.settings["easy"].faces < result.settings["hard"].faces

    # Detections in the official prediction layout import like a results JSON.
    write_prediction_dir(predictions, tmp_path / "pred", image_keys(coco).values())
    counts = import_detections(tmp_path / "pred", coco, 1000, tmp_path / "pred.parquet", data_source="widerface")
    table = read_table(tmp_path / "pred.parquet", DETECTIONS_SCHEMA)
    assert counts["imported"] == len(results) and table.num_rows == len(results)
    again = score_widerface(coco, results_records(table), picnic["ground_truth"], "val")[0]
    assert again.ap == pytest.approx(result.ap, abs=1e-3)


def test_a_split_outside_val_is_an_error(picnic: dict[str, Path], tmp_path: Path) -> None:
    config = validate_config({"data": _data_config(picnic)})
    coco = json.loads(build_dataset(config["data"], tmp_path / "data")["val"].annotations.read_text())
    coco["images"][0]["file_name"] = "99--Elsewhere/x.jpg"
    with pytest.raises(ValueError, match=r"1 of 24 image\(s\) are not in the official ground truth .*99--Elsewhere/x"):
        score_widerface(coco, [], picnic["ground_truth"], "val")


def test_eval_widerface_end_to_end_through_snakemake(picnic: dict[str, Path], tmp_path: Path) -> None:
    """config/widerface.yaml with tiny presets on the Picnic images (one split as train and test)."""
    config = yaml.safe_load((REPO / "config" / "widerface.yaml").read_text())
    config["data"] = _data_config(picnic)
    config["detector"] = dict(source="train", arch="fasterrcnn_small_cpu", weights="none", batch_size=4, num_workers=0)
    config["detector"].update(top_k=60, min_size=320, max_size=320)
    config["train_baseline"] = {"iterations": 4, "batch_size": 2, "warmup_iterations": 1, "num_workers": 0}
    config["shards"] = {"rois_per_shard": 300, "block_size": 32, "num_chunks": 2}
    config["mtgan"] = {"preset": "tiny", "variants": ["mtgan"]}
    config["scheduling"] = {"torch_threads": 1}  # as config/tiny.yaml: two tiny torch jobs at once
    path = tmp_path / "picnic.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "eval_widerface", "--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "artifacts" / "picnic"
    with open(root / "eval" / "widerface.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["baseline", "mtgan", "mtgan_ensemble", "mtgan-by_size", "mtgan-by_size_ensemble"]
    assert all(row["images_evaluated"] == "24" and row["official"] == "False" for row in rows.values())
    assert all(0.0 <= float(row[s]) <= 1.0 for row in rows.values() for s in ("easy", "medium", "hard"))
    assert "| 24 of 3226 |" in (root / "eval" / "widerface.md").read_text()
    assert (root / "eval" / "widerface_pr.png").stat().st_size > 10_000
    assert len(list((root / "widerface" / "mtgan_predictions" / EVENT).glob("*.txt"))) == 24
    assert (root / "eval" / "metrics.csv").is_file() and (root / "report" / "roi_grid.png").is_file()


def test_standalone_evaluation_of_another_detectors_output(picnic: dict[str, Path], tmp_path: Path) -> None:
    """`mtgan widerface-eval`: a COCO results JSON with its COCO JSON, or the official txt layout
    (which must cover all of val, as in the toolkit)."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    config = validate_config({"data": _data_config(picnic)})
    coco_path = build_dataset(config["data"], tmp_path / "data")["val"].annotations
    coco = json.loads(coco_path.read_text())
    results = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9 - 0.001 * k} for k, a in enumerate(coco["annotations"])]
    (tmp_path / "results.json").write_text(json.dumps(results))
    runner = CliRunner()
    out = runner.invoke(
        cli,
        [
            "widerface-eval",
            "--ground-truth",
            str(picnic["ground_truth"]),
            "--coco",
            str(coco_path),
            "--out-json",
            str(tmp_path / "ap.json"),
            "--out-png",
            str(tmp_path / "pr.png"),
            str(tmp_path / "results.json"),
        ],
    )
    assert out.exit_code == 0, out.output
    doc = json.loads((tmp_path / "ap.json").read_text())
    assert doc["images_evaluated"] == 24 and not doc["official"] and min(doc["ap"].values()) > 0.99
    assert "| results.json | 1.000 | 1.000 | 1.000 | 24 of 3226 |" in out.output
    assert (tmp_path / "pr.png").stat().st_size > 10_000

    write_prediction_dir(score_widerface(coco, results, picnic["ground_truth"], "val")[1], tmp_path / "pred", image_keys(coco).values())
    out = runner.invoke(cli, ["widerface-eval", "--ground-truth", str(picnic["ground_truth"]), str(tmp_path / "pred")])
    assert out.exit_code == 1 and "3202 of 3226 prediction files are missing" in out.output
