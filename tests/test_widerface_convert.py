"""WIDER FACE conversion: the official bbx_gt.txt -> COCO JSON, through the data stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core.io.coco import CocoFormatError
from pipeline.config import validate_config
from pipeline.data.stage import build_dataset
from pipeline.data.widerface.convert import WiderImage, read_bbx_gt, to_coco, write_bbx_gt

# The official layout, as in wider_face_train_bbx_gt.txt (lines end with a space there).
OFFICIAL = """0--Parade/0_Parade_marchingband_1_849.jpg
1
449 330 122 149 0 0 0 0 0 0
0--Parade/0_Parade_Parade_0_904.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/1_Handshaking_1_1.jpg
4
10 20 30 40 2 1 1 0 2 1
5 5 0 12 0 0 0 0 0 0
50 60 8 9 1 0 0 1 0 0
90 2 20 20 0 0 0 0 0 0
"""


def _images(root: Path, names: list[str], size: tuple[int, int] = (100, 80)) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (120, 90, 60)).save(root / name)


def test_parse_the_official_layout(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text(OFFICIAL)
    images = read_bbx_gt(path)
    assert [im.file_name for im in images] == [
        "0--Parade/0_Parade_marchingband_1_849.jpg",
        "0--Parade/0_Parade_Parade_0_904.jpg",
        "1--Handshaking/1_Handshaking_1_1.jpg",
    ]
    assert images[0].faces == [(449, 330, 122, 149, 0, 0, 0, 0, 0, 0)]
    assert images[1].faces == []  # count 0: the all-zero line is not a face
    assert len(images[2].faces) == 4 and images[2].faces[0] == (10, 20, 30, 40, 2, 1, 1, 0, 2, 1)
    write_bbx_gt(images, tmp_path / "again.txt")
    assert read_bbx_gt(tmp_path / "again.txt") == images


def test_conversion_keeps_attributes_flags_invalid_and_counts_zero_size(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text(OFFICIAL)
    images = read_bbx_gt(path)
    _images(tmp_path / "images", [im.file_name for im in images])
    coco, counts = to_coco(images, tmp_path / "images", path)
    assert counts == {"images": 3, "faces": 4, "invalid_faces": 1, "zero_size_faces": 1, "images_without_faces": 1}
    assert coco["categories"] == [{"id": 1, "name": "face", "supercategory": "face"}]
    assert [im["width"] for im in coco["images"]] == [100, 100, 100] and coco["images"][0]["height"] == 80
    anns = coco["annotations"]
    assert [a["bbox"] for a in anns] == [[449, 330, 122, 149], [10, 20, 30, 40], [50, 60, 8, 9], [90, 2, 20, 20]]
    assert anns[1]["attributes"] == {"blur": 2, "expression": 1, "illumination": 1, "invalid": 0, "occlusion": 2, "pose": 1}
    assert [a["iscrowd"] for a in anns] == [0, 0, 1, 0]  # the invalid face is an ignore region
    assert [a["image_id"] for a in anns] == [1, 3, 3, 3]
    assert anns[2]["area"] == 72


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.jpg\nx\n", r"gt.txt:2: face count of a.jpg is not an integer"),
        ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", r"gt.txt:3: the file ends inside the 2 face line\(s\) of a.jpg"),
        ("a.jpg\n1\n1 2 3 4 0 0\n", r"gt.txt:3: a face line is 'x y w h blur"),
        ("a.jpg\n1\n1 2 3 four 0 0 0 0 0 0\n", r"gt.txt:3: a face line holds numbers only"),
        ("1\na.jpg\n", r"gt.txt:1: expected an image path"),
    ],
)
def test_malformed_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "gt.txt").write_text(text)
    with pytest.raises(CocoFormatError, match=message):
        read_bbx_gt(tmp_path / "gt.txt")


def test_missing_images_are_listed_in_one_error(tmp_path: Path) -> None:
    images = [WiderImage(f"0--Parade/{i}.jpg", []) for i in range(3)]
    _images(tmp_path, [images[0].file_name])
    with pytest.raises(CocoFormatError, match=r"gt.txt: 2 of 3 image\(s\) under .* missing or unreadable: 0--Parade/1.jpg"):
        to_coco(images, tmp_path, Path("gt.txt"))


def test_data_stage_converts_and_clips_or_drops_faces_outside_the_image(tmp_path: Path) -> None:
    faces = [
        (90, 10, 15, 10, 0, 0, 0, 0, 0, 0),  # 5 px out on the right: clipped to 10 wide
        (150, 10, 10, 10, 0, 0, 0, 0, 0, 0),
    ]  # wholly outside: dropped and counted
    images = [WiderImage("3--Riot/a.jpg", faces), WiderImage("3--Riot/b.jpg", [(1, 1, 5, 5, 0, 0, 0, 1, 0, 0)])]
    write_bbx_gt(images, tmp_path / "val.txt")
    _images(tmp_path / "WIDER_val" / "images", [im.file_name for im in images])
    config = validate_config(
        {
            "data": {
                "name": "wf",
                "source": "widerface",
                "train_split": "val",
                "widerface": {"splits": {"val": {"annotations": str(tmp_path / "val.txt"), "images": str(tmp_path / "WIDER_val" / "images")}}},
            }
        }
    )
    splits = build_dataset(config["data"], tmp_path / "out")
    coco = json.loads(splits["val"].annotations.read_text())
    assert [a["bbox"] for a in coco["annotations"]] == [[90.0, 10.0, 10.0, 10.0], [1.0, 1.0, 5.0, 5.0]]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["splits"]["val"]
    assert (stats["clipped_boxes"], stats["dropped_boxes"], stats["invalid_faces"], stats["crowd_regions"]) == (1, 1, 1, 1)
    assert "invalid faces (kept as ignore regions) | 1" in (tmp_path / "out" / "stats.md").read_text()
