"""WIDER FACE's official annotation files -> COCO-format JSON (one category, `face`).

The official `wider_face_split/wider_face_{train,val}_bbx_gt.txt` lists, per image: its path under
`WIDER_<split>/images/` (`<event>/<name>.jpg`), the face count, then one line per face:
`x y w h blur expression illumination invalid occlusion pose`. An image without faces has a count of
0 followed by one all-zero line.

Conversion (every count goes to the data stage's log and `stats.json`):

- each face becomes a COCO annotation with `bbox [x, y, w, h]` and its six attributes kept under
  `attributes` (blur 0/1/2 clear/normal/heavy, expression 0/1, illumination 0/1, invalid 0/1,
  occlusion 0/1/2, pose 0/1);
- `invalid` faces (the annotators' "invalid image/face" flag) are kept as ignore regions: `iscrowd 1`,
  so that COCO's evaluation and ROI labelling neither reward nor punish detections on them (the
  official evaluation ignores them too: they are in no setting's `gt_list`);
- faces of zero width or height (a few dozen in the train file) are not regions at all: they are
  dropped and counted (`zero_size_faces`);
- the images' sizes are read from their JPEG headers; a missing or unreadable image is an error
  listing them. Boxes that stick out of their image are then handled by `core.io.coco`'s
  validation (clipped within `box_tolerance`, otherwise dropped with a count, per the config).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from core.errors import first_few
from core.io.coco import CocoFormatError

log = logging.getLogger(__name__)

ATTRIBUTES: tuple[str, ...] = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
FACE_CATEGORY: dict[str, Any] = {"id": 1, "name": "face", "supercategory": "face"}


@dataclass(frozen=True)
class WiderImage:
    """One image of a `*_bbx_gt.txt` file: its path under the image root and its face lines."""

    file_name: str
    faces: list[tuple[float, ...]]  # x y w h + the six attributes, as in the file


def read_bbx_gt(path: Path) -> list[WiderImage]:
    """Parse an official `wider_face_<split>_bbx_gt.txt`; errors name the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: file not found") from None
    images: list[WiderImage] = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:  # blank lines between or after records
            i += 1
            continue
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            raise CocoFormatError(f"{path}:{i + 1}: expected an image path, got {name!r}")
        if i + 1 >= len(lines):
            raise CocoFormatError(f"{path}:{i + 2}: the file ends before the face count of {name}")
        try:
            count = int(lines[i + 1].strip())
        except ValueError:
            raise CocoFormatError(f"{path}:{i + 2}: face count of {name} is not an integer: {lines[i + 1]!r}") from None
        if count < 0:
            raise CocoFormatError(f"{path}:{i + 2}: negative face count {count} for {name}")
        face_lines = max(count, 1)  # a count of 0 is followed by one all-zero line
        if i + 2 + face_lines > len(lines):
            raise CocoFormatError(f"{path}:{len(lines)}: the file ends inside the {count} face line(s) of {name}")
        faces = []
        for k in range(face_lines):
            line_no = i + 3 + k
            faces.append(_face_line(path, line_no, lines[line_no - 1]))
        images.append(WiderImage(name, faces if count else []))
        i += 2 + face_lines
    return images


def _face_line(path: Path, line_no: int, line: str) -> tuple[float, ...]:
    fields = line.split()
    try:
        values = tuple(float(v) for v in fields)
    except ValueError:
        raise CocoFormatError(f"{path}:{line_no}: a face line holds numbers only, got {line.strip()!r}") from None
    if len(values) != 4 + len(ATTRIBUTES) or not all(math.isfinite(v) for v in values):
        raise CocoFormatError(f"{path}:{line_no}: a face line is 'x y w h {' '.join(ATTRIBUTES)}' (10 finite numbers), got {line.strip()!r}")
    return values


def write_bbx_gt(images: list[WiderImage], path: Path) -> None:
    """Write the official layout (the inverse of `read_bbx_gt`; tests build their files with it)."""
    out = []
    for image in images:
        out += [image.file_name, str(len(image.faces))]
        rows = image.faces or [(0.0,) * (4 + len(ATTRIBUTES))]
        out += [" ".join(f"{v:g}" for v in face) + " " for face in rows]  # the official files end lines with a space
    Path(path).write_text("\n".join(out) + "\n", encoding="utf-8")


def _image_size(path: Path) -> tuple[int, int] | str:
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # PIL raises several types for undecodable files
        return f"{type(e).__name__}: {e}"


def to_coco(images: list[WiderImage], image_root: Path, source: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A COCO dataset dict of the parsed file `source` (images under `image_root`) and its counts."""
    image_root = Path(image_root)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(lambda im: _image_size(image_root / im.file_name), images))
    bad = [f"{im.file_name} ({s})" for im, s in zip(images, sizes) if isinstance(s, str)]
    if bad:
        raise CocoFormatError(f"{source}: {len(bad)} of {len(images)} image(s) under {image_root} missing or unreadable: {first_few(bad)}")

    counts = {"images": len(images), "faces": 0, "invalid_faces": 0, "zero_size_faces": 0, "images_without_faces": 0}
    coco_images, annotations = [], []
    for image_id, (image, size) in enumerate(zip(images, sizes), start=1):
        assert not isinstance(size, str)
        coco_images.append({"id": image_id, "file_name": image.file_name, "width": size[0], "height": size[1]})
        counts["images_without_faces"] += not image.faces
        for face in image.faces:
            x, y, w, h = face[:4]
            if w <= 0 or h <= 0:
                counts["zero_size_faces"] += 1
                continue
            attributes = {name: int(v) for name, v in zip(ATTRIBUTES, face[4:])}
            invalid = attributes["invalid"] == 1
            counts["faces"] += 1
            counts["invalid_faces"] += invalid
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": FACE_CATEGORY["id"],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(invalid),
                    "attributes": attributes,
                }
            )
    log.info(
        "%s: %d images (%d without faces), %d faces kept (%d invalid -> ignore regions), %d zero-size faces dropped",
        source,
        counts["images"],
        counts["images_without_faces"],
        counts["faces"],
        counts["invalid_faces"],
        counts["zero_size_faces"],
    )
    coco = {
        "info": {"description": f"WIDER FACE, converted from {Path(source).name}"},
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": [dict(FACE_CATEGORY)],
    }
    return coco, counts


def image_keys(coco: dict[str, Any]) -> dict[int, str]:
    """COCO image id -> the ground truth's image key (`<event>/<name>`, no extension)."""
    return {im["id"]: im["file_name"].rsplit(".", 1)[0] for im in coco["images"]}
