"""Reading and validating COCO-format detection datasets (COCO itself or any dataset in its format).

`validate_coco` checks a dataset before any work is done and returns a cleaned copy:

- required keys and types: `images` (id, file_name, width, height), `annotations` (id, image_id,
  category_id, bbox), `categories` (id, name) -> error;
- duplicate image, annotation or category ids, ids outside 0 .. 2^63 - 1 (they travel in int64
  columns), one name given to two categories (the tables and reports name classes by it);
  annotations naming an unknown image or category -> error;
- boxes: `bbox` must be 4 finite numbers. A box that sticks out of its image by at most
  `box_tolerance` pixels is clipped to the image (COCO has such boxes, off by rounding); one that
  sticks out further, or whose width or height is not positive (after clipping), is invalid:
  `invalid_boxes: error` (the default) stops with an error listing them, `invalid_boxes: drop` drops
  them and counts them in the report;
- images: every `file_name` must exist under the image root; all missing files are reported in one
  error (the count and the first few). With `check_image_sizes`, each image's header is read and its
  size compared with the JSON's width/height.

Crowd annotations (`iscrowd: 1`) are kept and flagged (`iscrowd` is set to 0 where missing). The
cleaned copy keeps `area` as given (COCO's evaluation ranks objects small/medium/large by it; it is
set to the box area where missing) and drops `segmentation`: the pipeline is box-only, and this
makes COCO's annotation files several times smaller.

Every error names the file and the problem.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.boxes import xywh_to_xyxy, xyxy_to_xywh
from core.errors import FIRST_FEW, MissingFileError, PipelineError, first_few


class CocoFormatError(PipelineError, ValueError):
    """A COCO-format file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class CocoCheckPolicy:
    box_tolerance: float = 1.0
    invalid_boxes: str = "error"  # "error" or "drop"
    check_image_files: bool = True
    check_image_sizes: bool = True


@dataclass
class CocoReport:
    """What validation changed: counts a user should see in the log."""

    images: int = 0
    annotations: int = 0
    crowd: int = 0
    clipped_boxes: int = 0
    dropped_boxes: int = 0
    dropped_examples: list[str] = field(default_factory=list)
    labelled: bool = True  # False: the file is an image list without annotations (COCO test-dev's image_info)


def read_json(path: Path) -> Any:
    """A JSON file's contents; a missing or malformed file is a CocoFormatError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e})") from None


def load_json(path: Path) -> dict[str, Any]:
    """A COCO dataset file (a JSON object)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: expected a JSON object with images/annotations/categories, got {type(data).__name__}")
    return data


def is_number(x: Any) -> bool:
    """A JSON number (an int or a float, numpy's too; not a bool)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_id(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


JSON_KINDS = {"{": "dict", '"': "str", "t": "bool", "f": "bool", "n": "NoneType"}
STREAM_CHARS = 1 << 23  # characters read at a time by `iter_json_array`


def iter_json_array(path: Path, what: str, batch: int = 65536) -> Iterator[list[Any]]:
    """The elements of a file holding one JSON array, `batch` at a time, parsed as they are read:
    the memory of one batch whatever the file's size (a COCO train results file is over a GB).
    CocoFormatError names the file: a missing file, invalid JSON (with its character offset) or a
    file that is not an array (`what`: what it should be, e.g. "a COCO results file is a JSON list
    of detections")."""
    decoder = json.JSONDecoder()
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: file not found") from None
    with f:
        text, at, offset, eof = "", 0, 0, False

        def more() -> bool:  # read on (what was parsed is dropped: positions move); False at the end of the file
            nonlocal text, at, offset, eof
            chunk = "" if eof else f.read(STREAM_CHARS)
            if not chunk:
                eof = True
                return False
            offset, text, at = offset + at, text[at:] + chunk, 0
            return True

        def skip_space() -> str:  # the next character that is not white space ("" at the end)
            nonlocal at
            while True:
                while at < len(text) and text[at] in " \t\n\r":
                    at += 1
                if at < len(text) or not more():
                    return text[at : at + 1]

        def invalid(message: str) -> CocoFormatError:
            return CocoFormatError(f"{path}: not valid JSON ({message} at char {offset + at})")

        first = skip_space()
        while len(text) - at < 64 and more():
            pass
        if first != "[":
            raise _not_an_array(path, what, text[at : at + 64]) or invalid("Expecting value")
        at += 1
        items: list[Any] = []
        if skip_space() == "]":
            at += 1
        else:
            while True:
                skip_space()
                while True:  # one element, read on while it may go on past what was read
                    try:
                        item, end = decoder.raw_decode(text, at)
                    except json.JSONDecodeError as e:
                        if more():
                            continue
                        at = max(at, e.pos)
                        raise invalid(e.msg) from None
                    # a number cut by the end of what was read parses short ("1.5" of "1.5e-7"): its
                    # valid part ends at most 2 characters before the cut
                    cut = end + (2 if isinstance(item, (int, float)) and not isinstance(item, bool) else 0) >= len(text)
                    if not cut or not more():
                        break
                items.append(item)
                at = end
                if len(items) == batch:
                    yield items
                    items = []
                separator = skip_space()
                at += 1
                if separator == "]":
                    break
                if separator != ",":
                    at -= 1
                    raise invalid("Expecting ',' delimiter")
        if skip_space():
            raise invalid("Extra data")
        if items:
            yield items


def _not_an_array(path: Path, what: str, start: str) -> CocoFormatError | None:
    """The error for a file whose JSON value (beginning with `start`) is valid so far but not an
    array; None where it is not valid JSON at all."""
    body = start[1:].lstrip()
    if start.startswith("{") and (body[:1] in ('"', "}") or not body):
        kind = "dict"
    elif start[:1] == '"':
        kind = "str"
    elif any(start.startswith(word) for word in ("true", "false")):
        kind = "bool"
    elif start.startswith("null"):
        kind = "NoneType"
    elif start[:1].isdigit() or start[:1] == "-":
        kind = "number"
    else:
        return None
    return CocoFormatError(f"{path}: {what}, got {kind}")


@dataclass
class ResultColumns:
    """Records of a COCO results file as columns: where each one's image stands in the split's
    `images` (int32), its contiguous label 1..K (int32), its box as the file's x y w h (float64)
    and its score (float64); 48 bytes a record, in file order."""

    image: np.ndarray
    label: np.ndarray
    boxes: np.ndarray
    score: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[ResultColumns]) -> ResultColumns:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 4)), np.zeros(0))
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("image", "label", "boxes", "score")))


def _as_float(v: Any) -> bool:
    """A JSON number that converts to a float (an integer of over 1023 bits does not)."""
    return is_number(v) and (not isinstance(v, int) or abs(v) < 2**1023)


def _record_ok(r: Any) -> bool:
    return (
        isinstance(r, dict)
        and is_id(r.get("image_id"))
        and is_id(r.get("category_id"))
        and isinstance(r.get("bbox"), list)
        and len(r["bbox"]) == 4
        and all(_as_float(v) for v in r["bbox"])
        and _as_float(r.get("score"))
    )


def _int64(value: int) -> int:
    """An id as int64; one beyond 64 bits (no image or category has one) as -1, which none has either."""
    return value if -(2**63) <= value < 2**63 else -1


class ResultsCheck:
    """Why records are not a COCO results file for the images and categories of `coco`, over the
    records in parts (`add`, in file order): the first kind of problem found, in one line with its
    first few records (`problems`; empty: they are). In order: each record {image_id, category_id,
    bbox: 4 numbers, score}, known image and category ids, a finite box and score, a score in
    [0, 1]. With `max_per_image` (a file to submit, as an evaluation server takes it): also boxes
    with w, h > 0 and at most that many detections per image (an import drops and counts such
    boxes instead). Each check counts only records that passed the ones before."""

    CHECKS = (
        "are not {image_id, category_id, bbox: [x, y, w, h], score} records (index)",
        "name an unknown image_id",
        "name an unknown category_id",
        "have a non-finite box or score",
        "have a score outside [0, 1]",
        "have a box with w or h <= 0",
    )

    def __init__(self, coco: dict[str, Any], max_per_image: int | None = None) -> None:
        self.image_ids = np.asarray([im["id"] for im in coco["images"]], np.int64)
        self.image_order = np.argsort(self.image_ids, kind="stable")
        self.category_ids = np.asarray(sorted(c["id"] for c in coco["categories"]), np.int64)
        self.max_per_image = max_per_image
        self.records = 0
        self.bad: dict[str, tuple[int, list[str]]] = {}
        self.per_image = np.zeros(len(self.image_ids), np.int64)

    def _count(self, what: str, failed: np.ndarray, describe: Any) -> None:
        """Count the records `failed` (positions in the part) of check `what`, naming the first few."""
        n, first = self.bad.get(what, (0, []))
        self.bad[what] = (n + len(failed), first + [describe(int(i)) for i in failed[: max(0, FIRST_FEW - len(first))]])

    def _position(self, ids: np.ndarray, known: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each id stands in `known` (sorted by `order`), and whether it is there at all."""
        at = np.searchsorted(known[order], ids).clip(0, max(0, len(known) - 1))
        found = known[order][at] == ids if len(known) else np.zeros(len(ids), bool)
        return order[at] if len(known) else at, found

    def add(self, records: list[Any]) -> ResultColumns:
        """Check the next records of the file; the columns of those that pass every check."""
        index = np.arange(self.records, self.records + len(records))
        self.records += len(records)
        ok = np.fromiter((_record_ok(r) for r in records), bool, len(records))
        self._count(self.CHECKS[0], np.flatnonzero(~ok), lambda i: f"#{index[i]}")
        good = [r for r, g in zip(records, ok) if g]
        index = index[ok]
        image_ids = np.fromiter((_int64(r["image_id"]) for r in good), np.int64, len(good))
        category_ids = np.fromiter((_int64(r["category_id"]) for r in good), np.int64, len(good))
        boxes = np.asarray([r["bbox"] for r in good], np.float64).reshape(-1, 4)
        score = np.fromiter((r["score"] for r in good), np.float64, len(good))
        image, image_known = self._position(image_ids, self.image_ids, self.image_order)
        label, category_known = self._position(category_ids, self.category_ids, np.arange(len(self.category_ids)))
        checks = [
            (image_known, lambda i: f"#{index[i]} image {good[i]['image_id']}"),
            (category_known, lambda i: f"#{index[i]} category {good[i]['category_id']}"),
            (np.isfinite(boxes).all(1) & np.isfinite(score), lambda i: f"#{index[i]}"),
            ((score >= 0.0) & (score <= 1.0), lambda i: f"#{index[i]} score {good[i]['score']}"),
        ]
        if self.max_per_image is not None:
            checks.append(((boxes[:, 2] > 0) & (boxes[:, 3] > 0), lambda i: f"#{index[i]}"))
        passed = np.ones(len(good), bool)
        for what, (check, describe) in zip(self.CHECKS[1:], checks):
            self._count(what, np.flatnonzero(passed & ~check), describe)
            passed &= check
        np.add.at(self.per_image, image[passed], 1)
        return ResultColumns(image[passed].astype(np.int32), (label[passed] + 1).astype(np.int32), boxes[passed], score[passed])

    def problems(self) -> list[str]:
        for what in self.CHECKS:
            n, first = self.bad.get(what, (0, []))
            if n:
                return [f"{n} detection(s) {what}: {', '.join(first)}{', ...' if n > len(first) else ''}"]
        if self.max_per_image is not None:
            crowded = np.sort(self.image_ids[self.per_image > self.max_per_image])
            if crowded.size:
                return [f"{crowded.size} image(s) with more than {self.max_per_image} detections (image ids {first_few(crowded.tolist())})"]
        return []


def results_problems(records: Any, coco: dict[str, Any], max_per_image: int | None = None) -> list[str]:
    """`ResultsCheck` of a whole list of records (a file to submit, a folder read into records)."""
    if not isinstance(records, list):
        return [f"a COCO results file is a JSON list of detections, got {type(records).__name__}"]
    check = ResultsCheck(coco, max_per_image)
    check.add(records)
    return check.problems()


RESULTS_FILE = "a COCO results file is a JSON list of detections"


def read_results(path: Path, coco: dict[str, Any], records: list[Any] | None = None) -> ResultColumns:
    """A COCO results file (or `records` read from elsewhere) checked against the split (every
    problem of `ResultsCheck` is a CocoFormatError naming the file), as columns, parsed in parts."""
    check = ResultsCheck(coco)
    if records is not None:
        if problems := results_problems(records, coco):
            raise CocoFormatError(f"{path}: {problems[0]}")
        return check.add(records)
    parts = [check.add(batch) for batch in iter_json_array(path, RESULTS_FILE)]
    if problems := check.problems():
        raise CocoFormatError(f"{path}: {problems[0]}")
    return ResultColumns.concatenate(parts)


_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "images": {"id": (int,), "file_name": (str,), "width": (int,), "height": (int,)},
    "annotations": {"id": (int,), "image_id": (int,), "category_id": (int,), "bbox": (list,)},
    "categories": {"id": (int,), "name": (str,)},
}


def _check_structure(data: dict[str, Any], path: Path) -> None:
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CocoFormatError(f"{path}: missing top-level key(s) {missing}")
    for section, keys in _REQUIRED.items():
        records = data[section]
        if not isinstance(records, list):
            raise CocoFormatError(f"{path}: '{section}' must be a list, got {type(records).__name__}")
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise CocoFormatError(f"{path}: {section}[{i}] is not an object")
            for key, types in keys.items():
                if key not in rec:
                    raise CocoFormatError(f"{path}: {section}[{i}] has no '{key}'")
                value = rec[key]
                if isinstance(value, bool) or not isinstance(value, types):
                    raise CocoFormatError(f"{path}: {section}[{i}].{key} must be {types[0].__name__}, got {value!r}")
    if not data["categories"]:
        raise CocoFormatError(f"{path}: 'categories' is empty: a detection dataset needs at least one category")
    bad_crowd = [a["id"] for a in data["annotations"] if "iscrowd" in a and a["iscrowd"] not in (0, 1)]
    if bad_crowd:
        shown = [f"{i}: {a!r}" for i, a in ((a["id"], a["iscrowd"]) for a in data["annotations"] if a["id"] in set(bad_crowd))]
        raise CocoFormatError(f"{path}: {len(bad_crowd)} annotation(s) whose iscrowd is not 0 or 1: {first_few(shown)}")
    bad_size = [im["id"] for im in data["images"] if im["width"] <= 0 or im["height"] <= 0]
    if bad_size:
        raise CocoFormatError(f"{path}: {len(bad_size)} image(s) with non-positive width/height: ids {first_few(bad_size)}")


MAX_ID = 2**63 - 1  # ids travel in int64 columns (the tables, the shards)


def _check_unique(data: dict[str, Any], path: Path) -> None:
    for section in _REQUIRED:
        counts = Counter(rec["id"] for rec in data[section])
        dups = sorted(i for i, n in counts.items() if n > 1)
        if dups:
            raise CocoFormatError(f"{path}: {len(dups)} duplicate {section} id(s): {first_few(dups)}")
        huge = sorted(i for i in counts if not 0 <= i <= MAX_ID)
        if huge:
            raise CocoFormatError(f"{path}: {len(huge)} {section} id(s) outside 0 .. 2^63 - 1 (64-bit ids): {first_few(huge)}")
    names = Counter(c["name"] for c in data["categories"])
    if same := sorted(n for n, k in names.items() if k > 1):
        shown = [f"{n!r}: ids {[c['id'] for c in data['categories'] if c['name'] == n]}" for n in same]
        raise CocoFormatError(f"{path}: {len(same)} category name(s) given to more than one category ({first_few(shown)}): the tables name classes by them")


def _check_references(data: dict[str, Any], path: Path) -> None:
    image_ids = {im["id"] for im in data["images"]}
    category_ids = {c["id"] for c in data["categories"]}
    bad_img = [a["id"] for a in data["annotations"] if a["image_id"] not in image_ids]
    if bad_img:
        raise CocoFormatError(f"{path}: {len(bad_img)} annotation(s) name an unknown image_id: annotation ids {first_few(bad_img)}")
    bad_cat = [(a["id"], a["category_id"]) for a in data["annotations"] if a["category_id"] not in category_ids]
    if bad_cat:
        shown = [f"{a} -> category {c}" for a, c in bad_cat]
        raise CocoFormatError(f"{path}: {len(bad_cat)} annotation(s) name an unknown category_id: {first_few(shown)}")


def _clean_box(ann: dict[str, Any], image: dict[str, Any], tolerance: float) -> tuple[list[float] | None, bool, str]:
    """Return (clipped xywh or None if invalid, whether it was clipped, reason if invalid)."""
    bbox = ann["bbox"]
    if len(bbox) != 4 or not all(is_number(v) and math.isfinite(v) for v in bbox):
        return None, False, f"bbox {bbox!r} is not 4 finite numbers"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None, False, f"bbox {bbox!r} has non-positive size"
    W, H = image["width"], image["height"]
    x0, y0, x1, y1 = xywh_to_xyxy([x, y, w, h])
    outside = max(-x0, -y0, x1 - W, y1 - H, 0.0)
    if outside > tolerance:
        return None, False, f"bbox {bbox!r} extends {outside:.2f} px outside the {W}x{H} image (tolerance {tolerance})"
    if outside == 0.0:
        return [x, y, w, h], False, ""
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(W)), min(y1, float(H))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None, False, f"bbox {bbox!r} has no area inside the image"
    return xyxy_to_xywh([x0, y0, x1, y1]), True, ""


def _missing_files(data: dict[str, Any], image_root: Path) -> list[str]:
    return [im["file_name"] for im in data["images"] if not (image_root / im["file_name"]).is_file()]


def _header_size(path: Path) -> tuple[int, int] | str:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # PIL raises several types for undecodable files
        return f"{type(e).__name__}: {e}"


def _check_image_headers(data: dict[str, Any], image_root: Path, path: Path) -> None:
    images = data["images"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(lambda im: _header_size(image_root / im["file_name"]), images))
    unreadable = [f"{im['file_name']} ({s})" for im, s in zip(images, sizes) if isinstance(s, str)]
    if unreadable:
        raise CocoFormatError(f"{path}: {len(unreadable)} image file(s) under {image_root} cannot be read: {first_few(unreadable)}")
    wrong = [
        f"{im['file_name']} is {s[0]}x{s[1]}, JSON says {im['width']}x{im['height']}" for im, s in zip(images, sizes) if tuple(s) != (im["width"], im["height"])
    ]
    if wrong:
        raise CocoFormatError(f"{path}: {len(wrong)} image(s) whose size differs from the JSON: {first_few(wrong)}")


def validate_coco(data: dict[str, Any], path: Path, image_root: Path, policy: CocoCheckPolicy = CocoCheckPolicy()) -> tuple[dict[str, Any], CocoReport]:
    """Check a loaded COCO dict (read from `path`, images under `image_root`); return a cleaned copy.

    A file without `annotations` (an image list such as COCO test-dev's `image_info_*.json`) is an
    unlabelled split: images and categories are checked as usual, and the cleaned copy has no
    `annotations` either (`report.labelled` is False)."""
    if policy.invalid_boxes not in ("error", "drop"):
        raise ValueError(f"invalid_boxes must be 'error' or 'drop', got {policy.invalid_boxes!r}")
    labelled = "annotations" in data
    data = data if labelled else {**data, "annotations": []}
    _check_structure(data, path)
    _check_unique(data, path)
    _check_references(data, path)

    images = {im["id"]: im for im in data["images"]}
    report = CocoReport(images=len(images), labelled=labelled)
    invalid: list[str] = []
    annotations = []
    for ann in data["annotations"]:
        box, clipped, reason = _clean_box(ann, images[ann["image_id"]], policy.box_tolerance)
        if box is None:
            invalid.append(f"annotation {ann['id']} (image {ann['image_id']}): {reason}")
            continue
        report.clipped_boxes += clipped
        clean = {k: v for k, v in ann.items() if k != "segmentation"}
        clean["bbox"] = box
        clean["iscrowd"] = int(ann.get("iscrowd", 0))
        area = ann.get("area")
        clean["area"] = float(area) if is_number(area) and math.isfinite(area) and area > 0 else box[2] * box[3]
        report.crowd += clean["iscrowd"]
        annotations.append(clean)
    if invalid and policy.invalid_boxes == "error":
        raise CocoFormatError(f"{path}: {len(invalid)} invalid box(es): {first_few(invalid)} (set invalid_boxes: drop to drop them with a count instead)")
    report.dropped_boxes = len(invalid)
    report.dropped_examples = invalid[:FIRST_FEW]
    report.annotations = len(annotations)

    if policy.check_image_files:
        missing = _missing_files(data, image_root)
        if missing:
            raise CocoFormatError(f"{path}: {len(missing)} of {len(images)} image file(s) missing under {image_root}: {first_few(missing)}")
        if policy.check_image_sizes:
            _check_image_headers(data, image_root, path)

    clean_data = {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": [{k: im[k] for k in ("id", "file_name", "width", "height") if k in im} for im in data["images"]],
        "annotations": annotations,
        "categories": data["categories"],
    }
    if not labelled:
        del clean_data["annotations"]
    return clean_data, report


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_list(folder: Path, categories: list[dict[str, Any]]) -> dict[str, Any]:
    """An unlabelled COCO dict of the images in `folder` (and its subfolders): ids 1..N in sorted
    file-name order, sizes from the image headers, the given categories."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CocoFormatError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    images = []
    for image_id, path in enumerate(files, start=1):
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, ValueError) as e:
            raise CocoFormatError(f"{path}: cannot read the image header ({e})") from None
        images.append({"id": image_id, "file_name": str(path.relative_to(folder)), "width": width, "height": height})
    return {"info": {"description": f"images of {folder}"}, "images": images, "categories": categories}
