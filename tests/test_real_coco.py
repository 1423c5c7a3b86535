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

from conftest import REPO


def _is_greyscale(path: Path) -> bool:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return im.mode == "L" or int(np.abs(np.diff(rgb, axis=2)).max()) < 8


def test_coco_mini_passes_the_data_stage(coco_mini: Path, tmp_path: Path) -> None:
    config = tmp_path / "coco-mini.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "name": "coco-mini", "source": "coco", "train_split": "train", "test_split": "train",
        "coco": {"splits": {"train": {
            "annotations": str(coco_mini / "annotations" / "instances_train2017.json"),
            "images": str(coco_mini / "train2017"),
        }}},
    }}))
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
    assert stats["by_size"] == {"small": 299, "medium": 282, "large": 150}
    assert stats["crowd_regions"] == 8
    assert (out / "preview.png").stat().st_size > 10_000
