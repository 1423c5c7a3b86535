"""The official WIDER FACE validation ground truth (the toolkit's `eval_tools/ground_truth` folder).

`wider_face_val.mat` holds per event (61) the image names and the face boxes `x y w h` (all 39708
faces); `wider_{easy,medium,hard}_val.mat` hold, per image, the 1-based indices of the faces that
count in that setting (`gt_list`). A face outside the setting is not a miss when undetected, and a
detection on it is not a false positive (see the matching in `pipeline.widerface.protocol`).

`face_bbx_list` is stored as int32 in the official file, which makes MATLAB evaluate in int32
arithmetic (`pipeline.widerface.protocol`); `WiderGroundTruth.int32_boxes` records it.

The file names (`WIDERFACE_GROUND_TRUTH`) are defined here only; the Snakefile asks `ground_truth_files`
for them, so this module stays cheap to import: scipy is imported when a file is read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError, MissingFileError

log = logging.getLogger(__name__)

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
GT_FILE = "wider_face_val.mat"
SETTING_FILES: dict[str, str] = {s: f"wider_{s}_val.mat" for s in SETTINGS}
WIDERFACE_GROUND_TRUTH: tuple[str, ...] = (GT_FILE, *SETTING_FILES.values())
"""Every file `load_ground_truth` reads, the main file first."""


@dataclass(frozen=True)
class WiderGroundTruth:
    """The validation ground truth: per image its key, its face boxes and the faces of each setting.

    images: keys "event/image name" (name without .jpg), in the order of the official file.
    boxes: per image (n, 4) float64 `x y w h` as stored (integers in the official file).
    keep: per setting, per image, the 0-based indices of the faces that count in that setting.
    int32_boxes: whether the file stored the boxes as integers (MATLAB then evaluates in int32).
    """

    images: list[str]
    boxes: list[np.ndarray]
    keep: dict[str, list[np.ndarray]]
    int32_boxes: bool = False
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {key: i for i, key in enumerate(self.images)}
        if len(index) != len(self.images):
            raise InputError("WIDER ground truth: duplicate image keys")
        if len(self.boxes) != len(self.images):
            raise InputError(f"WIDER ground truth: {len(self.images)} images but {len(self.boxes)} box arrays")
        if set(self.keep) != set(SETTINGS):
            raise InputError(f"WIDER ground truth: keep has settings {sorted(self.keep)}, expected {list(SETTINGS)}")
        for setting, lists in self.keep.items():
            if len(lists) != len(self.images):
                raise InputError(f"WIDER ground truth: setting {setting!r} has {len(lists)} images, expected {len(self.images)}")
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.images)

    def index(self, key: str) -> int:
        return self._index[key]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    @property
    def faces(self) -> int:
        return sum(len(b) for b in self.boxes)

    def kept_faces(self, setting: str) -> int:
        return sum(len(k) for k in self.keep[setting])


def _cell_column(mat: Mapping[str, Any], key: str, path: Path) -> list[Any]:
    """The elements of a MATLAB cell column (loaded as an (n, 1) object array)."""
    if key not in mat:
        raise InputError(f"{path}: no variable {key!r}")
    value = mat[key]
    if not isinstance(value, np.ndarray) or value.dtype != object:
        raise InputError(f"{path}: {key!r} is not a cell array")
    return list(value.reshape(-1))


def _cell_string(value: Any, path: Path, what: str) -> str:
    array = np.asarray(value).reshape(-1)
    if array.size != 1 or not isinstance(array[0], str):
        raise InputError(f"{path}: {what} is not a string")
    return str(array[0])


def _names(mat: Mapping[str, Any], path: Path) -> tuple[list[str], list[list[str]]]:
    events = [_cell_string(e, path, "an event_list entry") for e in _cell_column(mat, "event_list", path)]
    files = _cell_column(mat, "file_list", path)
    if len(files) != len(events):
        raise InputError(f"{path}: {len(events)} events but {len(files)} file_list entries")
    names = [[_cell_string(f, path, f"a file_list entry of event {event}") for f in np.asarray(cell).reshape(-1)] for event, cell in zip(events, files)]
    return events, names


def _load_mat(path: Path) -> dict[str, Any]:
    import scipy.io  # here, not at the top: pipeline.workflow (the Snakefile) imports this module

    try:
        return scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt or non-MAT file
        raise InputError(f"{path}: cannot be read as a MATLAB file ({exc})") from exc


def _per_image(cell: Any, event_names: list[str], path: Path, what: str) -> list[Any]:
    """One event's cell of a .mat list, as one entry per image of the event."""
    per_image = list(np.asarray(cell).reshape(-1))
    if len(per_image) != len(event_names):
        raise InputError(f"{path}: {what} has {len(per_image)} entries for {len(event_names)} images")
    return per_image


def load_ground_truth(gt_dir: Path) -> WiderGroundTruth:
    """Read the official validation ground truth from `gt_dir` (the toolkit's ground_truth folder)."""
    gt_dir = Path(gt_dir)
    paths = {"": gt_dir / GT_FILE} | {s: gt_dir / name for s, name in SETTING_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise MissingFileError(f"WIDER FACE ground truth file is missing: {path}")

    main_path = paths[""]
    main = _load_mat(main_path)
    events, names = _names(main, main_path)
    box_cells = _cell_column(main, "face_bbx_list", main_path)
    if len(box_cells) != len(events):
        raise InputError(f"{main_path}: {len(events)} events but {len(box_cells)} face_bbx_list entries")

    images: list[str] = []
    boxes: list[np.ndarray] = []
    integer_classes: set[bool] = set()
    for event, event_names, cell in zip(events, names, box_cells):
        for name, b in zip(event_names, _per_image(cell, event_names, main_path, f"face_bbx_list of event {event}")):
            b = np.asarray(b)
            if b.size == 0:
                b = np.zeros((0, 4), dtype=b.dtype)
            if b.ndim != 2 or b.shape[1] != 4:
                raise InputError(f"{main_path}: boxes of {event}/{name} have shape {b.shape}, expected (n, 4)")
            if not np.issubdtype(b.dtype, np.number):
                raise InputError(f"{main_path}: boxes of {event}/{name} are not numeric ({b.dtype})")
            integer_classes.add(bool(np.issubdtype(b.dtype, np.integer)))
            images.append(f"{event}/{name}")
            boxes.append(b.astype(np.float64))
    if len(integer_classes) > 1:
        raise InputError(f"{main_path}: face_bbx_list mixes integer and floating-point arrays")

    keep: dict[str, list[np.ndarray]] = {}
    for setting in SETTINGS:
        path = paths[setting]
        mat = _load_mat(path)
        s_events, s_names = _names(mat, path)
        if s_events != events:
            raise InputError(f"{path}: event_list differs from {main_path.name}")
        if s_names != names:
            bad = next(e for e, a, b in zip(events, s_names, names) if a != b)
            raise InputError(f"{path}: file_list of event {bad} differs from {main_path.name}")
        gt_cells = _cell_column(mat, "gt_list", path)
        if len(gt_cells) != len(events):
            raise InputError(f"{path}: {len(events)} events but {len(gt_cells)} gt_list entries")
        lists: list[np.ndarray] = []
        for event, event_names, cell in zip(events, names, gt_cells):
            for name, indices in zip(event_names, _per_image(cell, event_names, path, f"gt_list of event {event}")):
                n_faces = len(boxes[len(lists)])
                one_based = np.asarray(indices).reshape(-1).astype(np.int64)
                if one_based.size and (one_based.min() < 1 or one_based.max() > n_faces):
                    raise InputError(f"{path}: gt_list of {event}/{name} has indices outside 1..{n_faces}")
                lists.append(one_based - 1)
        keep[setting] = lists

    gt = WiderGroundTruth(images=images, boxes=boxes, keep=keep, int32_boxes=integer_classes == {True})
    log.info(
        "WIDER FACE ground truth: %d events, %d images, %d faces (%s)", len(events), len(gt), gt.faces, ", ".join(f"{s} {gt.kept_faces(s)}" for s in SETTINGS)
    )
    return gt


def ground_truth_files(config: dict[str, Any]) -> list[str]:
    """The official evaluation files eval_widerface needs; a clear error where they cannot be."""
    data = config["data"]
    if data["source"] != "widerface":
        raise InputError(
            f"eval_widerface needs data.source: widerface (this config has {data['source']!r}); "
            "run: snakemake --cores 8 --configfile config/widerface.yaml eval_widerface"
        )
    folder = data["widerface"]["ground_truth"]
    if not folder:
        raise InputError(
            "eval_widerface needs data.widerface.ground_truth: the folder of wider_face_val.mat and "
            "wider_{easy,medium,hard}_val.mat (eval_tools/ground_truth of the official toolkit)"
        )
    return [os.path.join(folder, name) for name in WIDERFACE_GROUND_TRUTH]
