"""The real COCO sample (../shared/data/coco-mini: 80 train2017 JPEGs, greyscale ones and crowd
boxes among them) passes the data stage unchanged. Skipped where ../shared is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner
from PIL import Image
from pycocotools.coco import COCO

from pipeline.cli import cli
from pipeline.data.index import read_index

from conftest import REPO, snakemake


def _is_greyscale(path: Path) -> bool:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return im.mode == "L" or int(np.abs(np.diff(rgb, axis=2)).max()) < 8


def test_coco_mini_passes_the_data_stage(coco_mini: Path, tmp_path: Path) -> None:
    config = tmp_path / "coco-mini.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "name": "coco-mini",
                    "source": "coco",
                    "train_split": "train",
                    "test_split": "train",
                    "coco": {
                        "splits": {
                            "train": {"annotations": str(coco_mini / "annotations" / "instances_train2017.json"), "images": str(coco_mini / "train2017")}
                        }
                    },
                }
            }
        )
    )
    out = tmp_path / "data"
    result = CliRunner().invoke(cli, ["data", "--config", str(REPO / "config" / "default.yaml"), "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output

    split = read_index(out / "index.json")["train"]
    original = COCO(str(coco_mini / "annotations" / "instances_train2017.json"))
    cleaned = COCO(str(split.annotations))
    assert len(cleaned.getImgIds()) == 80
    assert len(cleaned.getAnnIds()) == len(original.getAnnIds()) == 739
    assert len(cleaned.getAnnIds(iscrowd=True)) == 8
    assert len(cleaned.getCatIds()) == 80
    for ann_id in original.getAnnIds():  # boxes and areas survive as they were
        assert cleaned.anns[ann_id]["bbox"] == original.anns[ann_id]["bbox"]
        assert cleaned.anns[ann_id]["area"] == original.anns[ann_id]["area"]
    grey = [im["file_name"] for im in cleaned.loadImgs(cleaned.getImgIds()) if _is_greyscale(split.image_root / im["file_name"])]
    assert grey, "the sample's greyscale photos are expected among the 80"

    stats = json.loads((out / "stats.json").read_text())["splits"]["train"]
    assert stats["by_size_class"] == {"small": 299, "medium": 282, "large": 150}
    assert stats["crowd_regions"] == 8
    assert (out / "preview.png").stat().st_size > 10_000


def test_coco_mini_detect_rois_and_score(coco_mini: Path, tmp_path: Path) -> None:
    """Real JPEGs (greyscale ones included) through the detector path, and jittered ground truth
    through the import path, the ROI labelling and pycocotools."""
    import torch

    from core.io.tables import DETECTIONS_SCHEMA, read_table
    from pipeline.detect import DetectSettings, import_detections, load_detector, results_records, run_detector
    from pipeline.rois import build_rois
    from pipeline.score import coco_bbox_eval

    coco = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    settings = DetectSettings(top_k=50, score_thresh=0.0, nms_thresh=0.5, min_size=160, max_size=200, batch_size=4, num_workers=0)
    few = {**coco, "images": coco["images"][:6]}
    torch.manual_seed(0)
    model, label_map = load_detector("torchvision", "fasterrcnn_small_cpu", "none", few, settings)
    assert run_detector(model, label_map, few, coco_mini / "train2017", settings, torch.device("cpu"), "torchvision", tmp_path / "few.parquet") > 0
    detections = read_table(tmp_path / "few.parquet", DETECTIONS_SCHEMA)
    widths = {im["id"]: im["width"] for im in few["images"]}
    t = detections.to_pydict()
    assert all(0 <= x2 <= widths[i] for i, x2 in zip(t["image_id"], t["x2"]))  # boxes back in original pixels

    rng = np.random.default_rng(0)
    records = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": float(rng.uniform(0.3, 1.0)),
            "bbox": [a["bbox"][0] + rng.normal(0, 1), a["bbox"][1] + rng.normal(0, 1), a["bbox"][2], a["bbox"][3]],
        }
        for a in coco["annotations"]
        if not a["iscrowd"]
    ]
    path = tmp_path / "jittered.json"
    path.write_text(json.dumps(records))
    import_detections(path, coco, 100, tmp_path / "imported.parquet")
    imported = read_table(tmp_path / "imported.parquet", DETECTIONS_SCHEMA)
    summary = build_rois(tmp_path / "imported.parquet", coco, False, 0.5, 0.35, tmp_path / "rois.parquet")
    positives = sum(summary["by_kind_and_size"]["positive"].values())
    assert positives > 0.8 * imported.num_rows
    assert sum(summary["by_kind_and_size"]["positive"][s] for s in ("small",)) > 100
    stats, _ = coco_bbox_eval(coco_mini / "annotations" / "instances_train2017.json", results_records(imported))
    assert stats["AP50"] > 0.8 and stats["images"] == 80
    # ... and their shards, from real JPEGs: greyscale photos come out as 3-channel crops.
    from core.io.shards import read_manifest
    from pipeline.audit import audit
    from pipeline.shards import ShardSettings, write_shards

    settings = ShardSettings(64, 4, 0.0, 256, 64, 2, "error", None)
    doc = read_manifest(write_shards(tmp_path / "rois.parquet", coco, coco_mini / "train2017", "train", settings, tmp_path / "shards", n_jobs=2))
    assert doc["num_rois"] == summary["total"]
    report, _ = audit(tmp_path / "shards")
    assert report.problems == []


def test_coco_mini_end_to_end_through_snakemake(coco_mini: Path, tmp_path: Path) -> None:
    """The whole pipeline on the real COCO sample with tiny presets, configured like config/coco.yaml
    (source coco; its one split serves as train and test), ending with the table."""
    import csv

    config = yaml.safe_load((REPO / "config" / "coco.yaml").read_text())
    split = {"annotations": str(coco_mini / "annotations" / "instances_train2017.json"), "images": str(coco_mini / "train2017")}
    config["data"].update({"name": "coco-mini", "train_split": "train", "test_split": "train"})
    config["data"]["coco"]["splits"] = {"train": split}
    config["detector"] = dict(source="train", arch="fasterrcnn_small_cpu", weights="none", batch_size=4, num_workers=0)
    config["detector"].update(top_k=20, min_size=256, max_size=320)
    config["train_baseline"] = {"iterations": 4, "batch_size": 2, "warmup_iterations": 1, "num_workers": 0}
    config["shards"] = {"rois_per_shard": 200, "block_size": 32, "num_chunks": 2}
    config["mtgan"] = {"preset": "tiny", "variants": ["mtgan", "sbu"]}
    config["scheduling"] = {"torch_threads": 1}  # as config/tiny.yaml: two tiny torch jobs at once
    path = tmp_path / "coco-mini.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "eval_coco", "--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "artifacts" / "coco-mini"
    with open(root / "eval" / "metrics.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["baseline", "sbu", "mtgan", "sbu_ensemble", "mtgan_ensemble", "mtgan-by_size", "mtgan-by_size_ensemble"]
    assert all(int(row["images"]) == 80 for row in rows.values())
    assert (root / "eval" / "per_class_ap.csv").read_text().count("\n") == 1 + 80
