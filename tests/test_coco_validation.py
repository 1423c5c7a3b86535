"""Validation of COCO-format datasets on disk: each malformed case gives its clear error."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from core.io.coco import CocoCheckPolicy, CocoFormatError, load_json, validate_coco
from pipeline.data.index import read_index
from pipeline.data.stage import build_dataset


def _valid_dataset(root: Path) -> dict[str, Any]:
    """Three small JPEGs (one greyscale) and their annotations, one of them a crowd region."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = {1: (64, 48), 2: (80, 60), 3: (50, 50)}
    for image_id, (w, h) in sizes.items():
        pixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if image_id == 3 else image).save(root / f"{image_id:03d}.jpg")
    return {
        "images": [{"id": i, "file_name": f"{i:03d}.jpg", "width": w, "height": h} for i, (w, h) in sizes.items()],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 10], "area": 150.0, "iscrowd": 0, "segmentation": [[2, 3, 22, 3, 22, 13]]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [30, 20, 34, 28], "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0, 0, 80, 60], "area": 4800.0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog", "supercategory": "animal"}],
    }


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    return _valid_dataset(tmp_path / "images"), tmp_path / "images"


PATH = Path("instances_x.json")


def _check(data: dict[str, Any], root: Path, **policy: Any) -> tuple[dict[str, Any], Any]:
    return validate_coco(data, PATH, root, CocoCheckPolicy(**policy))


def test_valid_dataset_is_cleaned_not_changed(dataset: tuple[dict[str, Any], Path]) -> None:
    data, root = dataset
    clean, report = _check(data, root)
    assert (report.images, report.annotations, report.crowd, report.clipped_boxes, report.dropped_boxes) == (3, 3, 1, 0, 0)
    anns = {a["id"]: a for a in clean["annotations"]}
    assert anns[11]["iscrowd"] == 1 and anns[12]["iscrowd"] == 0  # crowd kept and flagged; missing -> 0
    assert anns[10]["area"] == 150.0  # COCO's area is kept (it ranks objects by size)
    assert anns[11]["area"] == 34 * 28  # missing area -> box area
    assert all("segmentation" not in a for a in clean["annotations"])
    assert data["annotations"][0]["segmentation"]  # the input is left alone


# Each case: a mutation of the valid dataset, and words the error must contain.
CASES: list[tuple[str, Any, list[str]]] = [
    ("missing top-level key", lambda d: d.pop("categories"), ["missing top-level key", "categories"]),
    ("image without file_name", lambda d: d["images"][1].pop("file_name"), ["images[1]", "file_name"]),
    ("width as text", lambda d: d["images"][0].update(width="64"), ["images[0].width"]),
    ("duplicate image id", lambda d: d["images"][1].update(id=1), ["duplicate images id", "1"]),
    ("duplicate annotation id", lambda d: d["annotations"][1].update(id=10), ["duplicate annotations id", "10"]),
    ("duplicate category id", lambda d: d["categories"][1].update(id=1), ["duplicate categories id"]),
    ("unknown category", lambda d: d["annotations"][0].update(category_id=99), ["unknown category_id", "10 -> category 99"]),
    ("unknown image", lambda d: d["annotations"][2].update(image_id=42), ["unknown image_id", "12"]),
    ("zero-width box", lambda d: d["annotations"][0].update(bbox=[2, 3, 0, 10]), ["invalid box", "annotation 10", "non-positive size"]),
    ("NaN in box", lambda d: d["annotations"][0].update(bbox=[2, float("nan"), 5, 10]), ["annotation 10", "not 4 finite numbers"]),
    ("box of 3 numbers", lambda d: d["annotations"][0].update(bbox=[2, 3, 5]), ["annotation 10", "not 4 finite numbers"]),
    ("box far outside", lambda d: d["annotations"][2].update(bbox=[10, 10, 80, 60]), ["annotation 12", "outside the 80x60 image"]),
    ("negative image size", lambda d: d["images"][2].update(width=0), ["non-positive width/height", "3"]),
]


@pytest.mark.parametrize(("case", "mutate", "words"), CASES, ids=[c[0] for c in CASES])
def test_malformed_annotations_give_a_clear_error(dataset: tuple[dict[str, Any], Path], case: str, mutate: Any, words: list[str]) -> None:
    data, root = dataset
    data = copy.deepcopy(data)
    mutate(data)
    with pytest.raises(CocoFormatError) as err:
        _check(data, root)
    message = str(err.value)
    assert message.startswith(str(PATH))
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_invalid_boxes_can_be_dropped_with_a_count(dataset: tuple[dict[str, Any], Path]) -> None:
    data, root = dataset
    data["annotations"][0]["bbox"] = [2, 3, -1, 10]
    data["annotations"][2]["bbox"] = [10, 10, 80, 60]
    clean, report = _check(data, root, invalid_boxes="drop")
    assert report.dropped_boxes == 2 and report.annotations == 1
    assert [a["id"] for a in clean["annotations"]] == [11]
    assert "annotation 10" in report.dropped_examples[0]


def test_boxes_slightly_outside_are_clipped(dataset: tuple[dict[str, Any], Path]) -> None:
    data, root = dataset
    data["annotations"][2]["bbox"] = [-0.5, 0.0, 80.8, 60.0]  # 0.5 px left, 0.3 px right: within 1 px
    clean, report = _check(data, root)
    assert report.clipped_boxes == 1
    assert clean["annotations"][2]["bbox"] == pytest.approx([0.0, 0.0, 80.0, 60.0])
    with pytest.raises(CocoFormatError, match="outside"):
        _check(data, root, box_tolerance=0.25)


def test_missing_image_files_are_listed_in_one_error(dataset: tuple[dict[str, Any], Path]) -> None:
    data, root = dataset
    for i in range(4, 12):
        data["images"].append({"id": i, "file_name": f"gone/{i:03d}.jpg", "width": 10, "height": 10})
    with pytest.raises(CocoFormatError) as err:
        _check(data, root)
    message = str(err.value)
    assert "8 of 11 image file(s) missing" in message
    assert "gone/004.jpg" in message and "gone/008.jpg" in message and "gone/011.jpg" not in message
    assert "..." in message
    _check(data, root, check_image_files=False)  # the check can be switched off


def test_image_size_must_match_the_file(dataset: tuple[dict[str, Any], Path]) -> None:
    data, root = dataset
    data["images"][1]["width"] = 81
    with pytest.raises(CocoFormatError, match="002.jpg is 80x60, JSON says 81x60"):
        _check(data, root)


def test_undecodable_image_is_named(dataset: tuple[dict[str, Any], Path]) -> None:
    data, root = dataset
    (root / "002.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CocoFormatError, match="cannot be read: 002.jpg"):
        _check(data, root)


def test_unreadable_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="broken.json: not valid JSON"):
        load_json(path)
    with pytest.raises(CocoFormatError, match="nothere.json: file not found"):
        load_json(tmp_path / "nothere.json")


def _coco_section(data: dict[str, Any], root: Path, tmp_path: Path) -> dict[str, Any]:
    """The data section of a config pointing at `data` (written to tmp_path) as its one split."""
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return {
        "name": "mine",
        "source": "coco",
        "train_split": "train",
        "test_split": "train",
        "coco": {
            "splits": {"train": {"annotations": str(ann), "images": str(root)}},
            "box_tolerance": 1.0,
            "invalid_boxes": "error",
            "check_image_files": True,
            "check_image_sizes": True,
        },
    }


def test_data_stage_on_a_coco_dataset_on_disk(dataset: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    data, root = dataset
    section = _coco_section(data, root, tmp_path)
    splits = read_index(build_dataset(section, tmp_path / "out")["train"].annotations.parent / "index.json")
    assert splits["train"].image_root == root.resolve()
    coco = COCO(str(splits["train"].annotations))
    assert len(coco.getAnnIds()) == 3 and len(coco.getAnnIds(iscrowd=True)) == 1
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["splits"]["train"]
    assert stats["objects"] == 2 and stats["crowd_regions"] == 1
    assert (tmp_path / "out" / "preview.png").is_file()


def test_failed_data_stage_leaves_nothing_that_looks_complete(dataset: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    data, root = dataset
    data["annotations"][0]["category_id"] = 7
    section = _coco_section(data, root, tmp_path)
    with pytest.raises(CocoFormatError, match="instances.json"):
        build_dataset(section, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".tmp-*"))
