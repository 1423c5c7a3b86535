"""The built-in synthetic dataset: small objects that differ in fine detail, in COCO format.

Each image is a textured background with clutter (distractor shapes that are not objects) and a few
to a couple of dozen objects of seven classes that differ only in an inner pattern (see
`shapes.CLASS_NAMES`). Object sizes are drawn so that their shares follow COCO's: about 40% small
(area < 32**2), 35% medium, 25% large. Objects are placed largest first; a later object may cover
at most `max_occlusion` of an earlier object's box, so there is some occlusion but every object
stays recognisable. An object that finds no place in `PLACEMENT_TRIES` attempts is left out and
counted (`dropped_objects` in the stats).

Boxes are the tight boxes of the object's pixels that are at least 25% opaque; `area` is the box
area (the objects have no segmentation). Every box lies inside its image.

Determinism: image `i` of split `s` is drawn from `numpy.random.default_rng([seed, s, i])`, so the
output does not depend on the number of worker processes, and a rerun gives identical bytes
(JPEG encoding included, for a given Pillow version).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from PIL import Image
from tqdm import tqdm

from core.sizes import MEDIUM_MAX_AREA, SMALL_MAX_AREA
from pipeline.data import shapes

log = logging.getLogger(__name__)

PLACEMENT_TRIES = 40
# Split order fixes each split's random stream: adding a split never changes another split's images.
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2, "dev": 3}


@dataclass(frozen=True)
class BuiltinSpec:
    """What to generate: the `data.builtin` section of the config (its schema holds the defaults)."""

    seed: int
    image_size: int
    num_images: dict[str, int]
    objects_per_image: tuple[int, int]
    distractors_per_image: tuple[int, int]
    size_shares: tuple[float, float, float]
    min_side: float
    max_side: float
    max_occlusion: float
    jpeg_quality: int

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> BuiltinSpec:
        return cls(
            seed=int(section["seed"]),
            image_size=int(section["image_size"]),
            num_images={str(k): int(v) for k, v in section["num_images"].items()},
            objects_per_image=tuple(section["objects_per_image"]),  # type: ignore[arg-type]
            distractors_per_image=tuple(section["distractors_per_image"]),  # type: ignore[arg-type]
            size_shares=tuple(section["size_shares"]),  # type: ignore[arg-type]
            min_side=float(section["min_side"]),
            max_side=float(section["max_side"]),
            max_occlusion=float(section["max_occlusion"]),
            jpeg_quality=int(section["jpeg_quality"]),
        )

    def __post_init__(self) -> None:
        if abs(sum(self.size_shares) - 1.0) > 1e-6:
            raise ValueError(f"size_shares must sum to 1, got {self.size_shares}")
        if not self.min_side < math.sqrt(SMALL_MAX_AREA) < math.sqrt(MEDIUM_MAX_AREA) < self.max_side:
            raise ValueError(f"need min_side < 32 < 96 < max_side, got {self.min_side}, {self.max_side}")
        if self.max_side > 0.75 * self.image_size:
            raise ValueError(f"max_side {self.max_side} is too large for {self.image_size}-px images (max 75%)")
        unknown = set(self.num_images) - set(SPLIT_STREAM)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use {sorted(SPLIT_STREAM)}")


def categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": name, "supercategory": shapes.SUPERCATEGORIES[name]} for i, name in enumerate(shapes.CLASS_NAMES)]


def _sample_side(rng: np.random.Generator, spec: BuiltinSpec) -> float:
    """Square root of a box area, log-uniform inside a size class picked with `size_shares`."""
    ranges = [(spec.min_side, 32.0), (32.0, 96.0), (96.0, spec.max_side)]
    lo, hi = ranges[int(rng.choice(3, p=spec.size_shares))]
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _covered_fraction(new: tuple[int, int, int, int], old: tuple[int, int, int, int]) -> float:
    """Fraction of box `old` (xyxy) covered by box `new`."""
    iw = min(new[2], old[2]) - max(new[0], old[0])
    ih = min(new[3], old[3]) - max(new[1], old[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((old[2] - old[0]) * (old[3] - old[1]))


def _paste_distractors(canvas: Image.Image, rng: np.random.Generator, spec: BuiltinSpec) -> None:
    size = spec.image_size
    for _ in range(int(rng.integers(spec.distractors_per_image[0], spec.distractors_per_image[1] + 1))):
        side = float(math.exp(rng.uniform(math.log(spec.min_side), math.log(spec.max_side * 0.6))))
        sprite = shapes.render_distractor(rng, render_size=int(min(400, max(48, 3 * side))), aspect=rng.uniform(0.5, 2.0), angle=rng.uniform(0, 360))
        sprite = shapes.fit_sprite(sprite, side)
        w, h = sprite.size
        if w >= size or h >= size:
            continue
        x, y = int(rng.integers(-w // 3, size - 2 * w // 3)), int(rng.integers(-h // 3, size - 2 * h // 3))
        canvas.paste(sprite, (x, y), sprite)


def generate_image(spec: BuiltinSpec, split: str, index: int) -> tuple[Image.Image, list[dict[str, Any]], int]:
    """Draw image `index` of `split`: the image, its annotations (no ids yet), objects dropped."""
    rng = np.random.default_rng([spec.seed, SPLIT_STREAM[split], index])
    size = spec.image_size
    canvas = shapes.render_background(rng, (size, size))
    _paste_distractors(canvas, rng, spec)

    n_objects = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    sides = sorted((_sample_side(rng, spec) for _ in range(n_objects)), reverse=True)
    placed: list[tuple[int, int, int, int]] = []
    annotations: list[dict[str, Any]] = []
    dropped = 0
    for side in sides:
        class_id = int(rng.integers(len(shapes.CLASS_NAMES)))
        sprite = shapes.render_object(
            shapes.CLASS_NAMES[class_id],
            rng,
            render_size=int(min(400, max(48, 3 * side))),
            aspect=float(math.exp(rng.uniform(math.log(0.5), math.log(2.0)))),
            angle=float(rng.uniform(0, 360)),
        )
        sprite = shapes.fit_sprite(sprite, side)
        box = shapes.visible_box(sprite)
        if box is None or sprite.width > size or sprite.height > size:
            dropped += 1
            continue
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, size - sprite.width + 1)), int(rng.integers(0, size - sprite.height + 1))
            xyxy = (x + box[0], y + box[1], x + box[2], y + box[3])
            if all(_covered_fraction(xyxy, old) <= spec.max_occlusion for old in placed):
                break
        else:
            dropped += 1
            continue
        canvas.paste(sprite, (x, y), sprite)
        placed.append(xyxy)
        w, h = xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]
        annotations.append({"category_id": class_id + 1, "bbox": [float(xyxy[0]), float(xyxy[1]), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    return canvas, annotations, dropped


def _write_image(spec: BuiltinSpec, split: str, index: int, image_dir: Path) -> tuple[list[dict[str, Any]], int]:
    image, annotations, dropped = generate_image(spec, split, index)
    image.save(image_dir / f"{index + 1:06d}.jpg", "JPEG", quality=spec.jpeg_quality, subsampling=0)
    return annotations, dropped


def generate_split(spec: BuiltinSpec, split: str, image_dir: Path, n_jobs: int = 1) -> tuple[dict[str, Any], int]:
    """Write the split's JPEGs into `image_dir`; return its COCO dict and the count of dropped objects."""
    image_dir.mkdir(parents=True, exist_ok=True)
    count = spec.num_images[split]
    tasks = (delayed(_write_image)(spec, split, i, image_dir) for i in range(count))
    results = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=8)(tasks)
    images, annotations, dropped = [], [], 0
    for i, (anns, n_dropped) in enumerate(tqdm(results, total=count, desc=f"builtin {split}", unit="img")):
        image_id = i + 1
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": spec.image_size, "height": spec.image_size})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        dropped += n_dropped
    coco = {
        "info": {"description": f"MTGAN built-in synthetic dataset, split {split}", "seed": spec.seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    if dropped:
        log.info("split %s: %d objects found no place and were left out", split, dropped)
    return coco, dropped
