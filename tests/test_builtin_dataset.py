"""The built-in synthetic dataset: determinism, COCO validity, size shares, fine-detail classes."""

from __future__ import annotations

import filecmp
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from core.sizes import size_class
from pipeline.config import load_config_files, validate_config
from pipeline.data import shapes
from pipeline.data.builtin import BuiltinSpec, generate_image
from pipeline.data.index import read_index
from pipeline.data.stage import build_dataset

from conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def tiny_dataset(tiny_data: Path) -> Path:
    return tiny_data


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tiny_dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "data"
    build_dataset(tiny_config()["data"], again, n_jobs=2)
    for name in ("train.json", "val.json", "index.json", "stats.json"):
        assert (tiny_dataset / name).read_bytes() == (again / name).read_bytes(), name
    for split in ("train", "val"):
        files = sorted(p.name for p in (tiny_dataset / "images" / split).iterdir())
        assert files == sorted(p.name for p in (again / "images" / split).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(tiny_dataset / "images" / split, again / "images" / split, files, shallow=False)
        assert not mismatch and not errors and len(match) == len(files) > 0


def test_another_seed_gives_other_images(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = BuiltinSpec.from_config(tiny_config(seed=1)["data"]["builtin"])
    image, _, _ = generate_image(spec, "train", 0)
    with Image.open(tiny_dataset / "images" / "train" / "000001.jpg") as seed0:
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(seed0, dtype=int)).mean() > 10


def test_a_split_never_changes_another_splits_images(tiny_dataset: Path) -> None:
    """Each split draws from its own random stream: adding the dev split (or resizing any split)
    leaves train and val byte-identical, so the reported test split stays the same instrument."""
    without_dev = BuiltinSpec.from_config({**tiny_config()["data"]["builtin"], "num_images": {"train": 2, "val": 2}})
    for split in ("train", "val"):
        image, annotations, _ = generate_image(without_dev, split, 1)
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", quality=without_dev.jpeg_quality, subsampling=0)
        assert encoded.getvalue() == (tiny_dataset / "images" / split / "000002.jpg").read_bytes()
        coco = COCO(str(tiny_dataset / f"{split}.json"))
        assert [a["bbox"] for a in annotations] == [a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[2]))]


def test_pycocotools_loads_it_and_every_box_is_inside_its_image(tiny_dataset: Path) -> None:
    splits = read_index(tiny_dataset / "index.json")
    assert set(splits) == {"train", "dev", "val", "test"} and not splits["test"].labelled  # test: written without annotations
    for split in splits.values():
        coco = COCO(str(split.annotations))
        assert len(coco.getImgIds()) == split.num_images == tiny_config()["data"]["builtin"]["num_images"][split.name]
        if not split.labelled:
            assert "annotations" not in coco.dataset and split.num_annotations == 0
            continue
        assert len(coco.getAnnIds()) == split.num_annotations > 0
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(shapes.CLASS_NAMES)
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] == pytest.approx(w * h)
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(split.image_root / img["file_name"]) as pil:
                assert pil.mode == "RGB" and pil.size == (img["width"], img["height"])


def test_data_stage_writes_stats_and_preview(tiny_dataset: Path) -> None:
    import json

    stats = json.loads((tiny_dataset / "stats.json").read_text())["splits"]
    coco = json.loads((tiny_dataset / "val.json").read_text())
    assert stats["val"]["objects"] == len(coco["annotations"])
    assert sum(stats["val"]["by_size_class"].values()) == stats["val"]["objects"]
    assert sum(stats["val"]["by_class"].values()) == stats["val"]["objects"]
    assert "small objects" in (tiny_dataset / "stats.md").read_text()
    with Image.open(tiny_dataset / "preview.png") as preview:
        assert preview.width > 300 and preview.height > 200
    assert not list(tiny_dataset.parent.glob(".tmp-*")), "temporary folders left behind"


def test_default_preset_size_shares_follow_coco() -> None:
    """40 images of the default preset: small/medium/large within 5 points of 40/35/25 %."""
    config = validate_config(load_config_files([REPO / "config" / "default.yaml"]))
    spec = BuiltinSpec.from_config(config["data"]["builtin"])
    sizes = [size_class(a["area"]) for i in range(40) for a in generate_image(spec, "train", i)[1]]
    shares = [sizes.count(s) / len(sizes) for s in ("small", "medium", "large")]
    assert len(sizes) > 300
    assert shares == pytest.approx([0.40, 0.35, 0.25], abs=0.05)


def _class_sprite(name: str, side: int) -> np.ndarray:
    """Class `name` with the colours and silhouette every class gets from seed 7, at side x side."""
    sprite = shapes.render_object(name, np.random.default_rng(7), render_size=256, aspect=1.0, angle=0.0)
    rgba = np.asarray(sprite.resize((side, side), Image.Resampling.BOX), dtype=np.float64) / 255.0
    return rgba[..., :3] * rgba[..., 3:]  # composited over black


def test_classes_differ_in_fine_detail_that_vanishes_when_small() -> None:
    """Pairs of classes differ clearly at 64 px and much less at 8 px (same colours and outline)."""
    names = shapes.CLASS_NAMES
    assert len(names) >= 6

    def distances(side: int) -> list[float]:
        sprites = {n: _class_sprite(n, side) for n in names}
        return [float(np.abs(sprites[a] - sprites[b]).mean()) for i, a in enumerate(names) for b in names[i + 1 :]]

    large, small = distances(64), distances(8)
    assert min(large) > 0.03, "two classes look alike even at 64 px"
    assert float(np.median(small)) < 0.5 * float(np.median(large))


def test_shapes_are_anti_aliased() -> None:
    """Edges carry intermediate alpha values, not just 0 and 255."""
    sprite = shapes.fit_sprite(shapes.render_object("stripes", np.random.default_rng(0), render_size=96, aspect=1.3, angle=30.0), 20)
    alpha = np.asarray(sprite.getchannel("A"))
    partial = np.count_nonzero((alpha > 20) & (alpha < 235))
    assert partial >= 0.5 * math.sqrt(alpha.size)
