"""WIDER FACE predictions: the official text layout, and conversion from COCO results.

The official layout (read by the toolkit's read_pred.m): one text file per image,
`<pred_dir>/<event>/<image>.txt`: line 1 the image name, line 2 the number of detections, then one
`x y w h score` line each. In memory, predictions are `Predictions`: image key -> (n, 5) array.

Reading is stricter than read_pred.m, which prints a warning and goes on with no detections for
the image when a file is missing or malformed (and takes the first 5 numbers of a longer line):
`read_prediction_dir` raises instead. The toolkit's behaviour for an image without a file is what
`evaluate` (`pipeline.widerface.protocol`) does for an image absent from the predictions: no
detections, its faces still counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError, MissingFileError, first_few

log = logging.getLogger(__name__)

Predictions = dict[str, np.ndarray]
"""Image key ("event/image name", as in `WiderGroundTruth.images`) -> (n, 5) float64 `x y w h score`."""

"""How many missing files or unknown keys an error message names."""


def _prediction_path(pred_dir: Path, key: str) -> Path:
    event, _, name = key.partition("/")
    if not event or not name:
        raise InputError(f"image key {key!r} is not of the form 'event/image name'")
    return pred_dir / event / f"{name}.txt"


def _parse_prediction_file(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    if not lines:
        raise InputError(f"{path}: empty file (expected the image name on line 1)")
    if len(lines) < 2 or not lines[1].strip():
        raise InputError(f"{path}: line 2: missing the number of detections")
    try:
        count = int(lines[1].strip())
    except ValueError:
        raise InputError(f"{path}: line 2: the number of detections {lines[1].strip()!r} is not an integer") from None
    if count < 0:
        raise InputError(f"{path}: line 2: negative number of detections {count}")
    rows = [line.split() for line in lines[2 : 2 + count]]
    if len(rows) < count:
        raise InputError(f"{path}: line 2 announces {count} detections but the file has {len(rows)} detection lines")
    for k, row in enumerate(rows):
        if len(row) != 5:
            raise InputError(f"{path}: line {k + 3}: expected 5 numbers 'x y w h score', got {len(row)} fields")
    extra = [line for line in lines[2 + count :] if line.strip()]
    if extra:
        log.warning("%s: %d non-empty lines after the %d announced detections are ignored (as by the toolkit)", path, len(extra), count)
    if count == 0:
        return np.zeros((0, 5))
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        for k, row in enumerate(rows):
            try:
                [float(v) for v in row]
            except ValueError:
                raise InputError(f"{path}: line {k + 3}: not a number in {' '.join(row)!r}") from None
        raise
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise InputError(f"{path}: line {int(np.flatnonzero(bad)[0]) + 3}: a value is not finite")
    return values


def read_prediction_dir(pred_dir: Path, image_keys: Iterable[str]) -> Predictions:
    """Read the official layout `<pred_dir>/<event>/<image name>.txt`, one file for each of `image_keys`.

    The detections are returned as in the files (not sorted; `evaluate` sorts). Files of other images
    are ignored (their number is logged).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise MissingFileError(f"prediction folder not found: {pred_dir}")
    keys = list(image_keys)
    paths = {key: _prediction_path(pred_dir, key) for key in keys}
    missing = [path for path in paths.values() if not path.is_file()]
    if missing:
        raise MissingFileError(f"{pred_dir}: {len(missing)} of {len(keys)} prediction files are missing, e.g. {first_few(missing)}")
    predictions = {key: _parse_prediction_file(path) for key, path in paths.items()}
    expected = {p.resolve() for p in paths.values()}
    extra = sum(1 for p in pred_dir.glob("*/*.txt") if p.resolve() not in expected)
    if extra:
        log.info("%s: %d prediction files of images outside the evaluated set were ignored", pred_dir, extra)
    return predictions


def as_detections(key: str, value: Any) -> np.ndarray:
    """One image's detections as a (n, 5) float64 array `x y w h score`, checked (finite values)."""
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 5))
    if array.ndim != 2 or array.shape[1] != 5:
        raise InputError(f"predictions of {key}: shape {array.shape}, expected (n, 5) 'x y w h score'")
    if not np.isfinite(array).all():
        raise InputError(f"predictions of {key}: values must be finite")
    return array


def write_prediction_dir(predictions: Mapping[str, np.ndarray], out_dir: Path, image_keys: Iterable[str]) -> None:
    """Write the official layout: one file per image key (also for 0 detections), numbers round-trip exact."""
    out_dir = Path(out_dir)
    keys = list(image_keys)
    outside = len(set(predictions) - set(keys))
    if outside:
        log.warning("write_prediction_dir: %d images with predictions are not among the image keys and are not written", outside)
    for key in keys:
        path = _prediction_path(out_dir, key)
        detections = as_detections(key, predictions.get(key, np.zeros((0, 5))))
        name = key.partition("/")[2]
        body = "".join(" ".join(map(repr, row)) + "\n" for row in detections.tolist())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}.jpg\n{len(detections)}\n{body}")


def predictions_from_coco_results(results: Iterable[Mapping[str, Any]], image_key_by_id: Mapping[int, str], category_id: int | None = None) -> Predictions:
    """Group COCO results records (image_id, category_id, bbox [x, y, w, h], score) by image key.

    Every image of `image_key_by_id` gets an entry (empty without detections). `category_id`, when
    given, keeps only that category's records.
    """
    rows: dict[str, list[list[float]]] = {key: [] for key in image_key_by_id.values()}
    for record in results:
        if category_id is not None and record.get("category_id") != category_id:
            continue
        image_id = record["image_id"]
        if image_id not in image_key_by_id:
            raise InputError(f"COCO results: image_id {image_id} is not a known WIDER FACE image")
        x, y, w, h = record["bbox"]
        rows[image_key_by_id[image_id]].append([x, y, w, h, record["score"]])
    return {key: as_detections(key, r) for key, r in rows.items()}
