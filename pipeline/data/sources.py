"""The data sources the data stage reads, defined once (config `data.source`; the config schema
and the dataset index's take the names from DATA_SOURCES, `x-registry: data_sources`). A new dataset format is one entry here and its module:
how it builds each split's COCO JSON, which files it reads (a changed file reruns the data stage),
and, where the format has its own layout for detections, how a folder of them becomes COCO results
records (detect's `import_results`). The generic stages know only this registry (import-linter
keeps them off `pipeline.widerface`). Each source's code is imported when it is used: the config
validation that reads this registry stays light."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError

log = logging.getLogger(__name__)

# (split, COCO dict, image root, counts for stats.json) per split.
BuiltSplits = list[tuple[str, dict[str, Any], Path, dict[str, Any]]]


@dataclass(frozen=True)
class DataSource:
    name: str
    description: str
    build: Callable[[dict[str, Any], Path, int], BuiltSplits]  # (data section, temporary output folder, jobs)
    input_files: Callable[[dict[str, Any]], list[str]]  # (data section) -> files read
    prediction_folder: Callable[[Path, dict[str, Any]], list[dict[str, Any]]] | None = None  # (folder, split's COCO)


def _build_builtin(section: dict[str, Any], tmp: Path, n_jobs: int) -> BuiltSplits:
    from pipeline.data import builtin

    spec = builtin.BuiltinSpec.from_config(section["builtin"])
    out = []
    for split in spec.num_images:
        image_root = tmp / "images" / split
        coco, dropped = builtin.generate_split(spec, split, image_root, n_jobs=n_jobs)
        if split in section["builtin"]["unlabelled"]:  # written as an image list, as COCO test-dev is
            del coco["annotations"]
        out.append((split, coco, image_root, {"dropped_objects": dropped}))
    return out


def _build_coco(section: dict[str, Any], tmp: Path, n_jobs: int) -> BuiltSplits:
    from core.io.coco import CocoCheckPolicy, image_list, load_json, validate_coco

    cfg = section["coco"]
    if not cfg["splits"]:
        raise InputError("config data.coco.splits is empty: name each split's annotations and images")
    policy = CocoCheckPolicy(
        box_tolerance=cfg["box_tolerance"],
        invalid_boxes=cfg["invalid_boxes"],
        check_image_files=cfg["check_image_files"],
        check_image_sizes=cfg["check_image_sizes"],
    )
    out = []
    for split, files in cfg["splits"].items():
        image_root = Path(files["images"]).resolve()
        if "annotations" in files:
            path = Path(files["annotations"])
            data = load_json(path)
        else:  # a folder of images: an image list with the categories of another file
            path = Path(files.get("categories") or cfg["splits"][section["train_split"]]["annotations"])
            data = image_list(image_root, load_json(path)["categories"])
            log.info("split %s: %d images found under %s; categories from %s", split, len(data["images"]), image_root, path)
        log.info("validating split %s: %s (images under %s)", split, path, image_root)
        clean, report = validate_coco(data, path, image_root, policy)
        if not report.labelled:
            log.info("split %s has no annotations: it can be detected and re-scored (data.submit_split), not scored", split)
        log.info(
            "split %s: %d images, %d annotations (%d crowd), %d boxes clipped to their image, %d invalid boxes dropped",
            split,
            report.images,
            report.annotations,
            report.crowd,
            report.clipped_boxes,
            report.dropped_boxes,
        )
        for example in report.dropped_examples:
            log.info("  dropped: %s", example)
        out.append((split, clean, image_root, {"clipped_boxes": report.clipped_boxes, "dropped_boxes": report.dropped_boxes}))
    return out


def _annotation_files(name: str) -> Callable[[dict[str, Any]], list[str]]:
    def files(section: dict[str, Any]) -> list[str]:
        return [f["annotations"] for f in section[name]["splits"].values() if "annotations" in f]

    return files


def _build_widerface(section: dict[str, Any], tmp: Path, n_jobs: int) -> BuiltSplits:
    from pipeline.data.widerface.source import build_splits

    return build_splits(section, tmp, n_jobs)


def _widerface_predictions(folder: Path, coco: dict[str, Any]) -> list[dict[str, Any]]:
    from pipeline.data.widerface.source import prediction_folder_records

    return prediction_folder_records(folder, coco)


DATA_SOURCES: dict[str, DataSource] = {
    s.name: s
    for s in (
        DataSource("builtin", "the synthetic dataset, generated", _build_builtin, lambda section: []),
        DataSource("coco", "a COCO-format dataset on disk", _build_coco, _annotation_files("coco")),
        DataSource("widerface", "the official WIDER FACE files", _build_widerface, _annotation_files("widerface"), _widerface_predictions),
    )
}


def prediction_folder_records(source: str | None, folder: Path, coco: dict[str, Any]) -> list[dict[str, Any]]:
    """COCO results records from a folder of detections in data source `source`'s own layout."""
    reader = DATA_SOURCES[source].prediction_folder if source in DATA_SOURCES else None
    if reader is None:
        layouts = [name for name, s in DATA_SOURCES.items() if s.prediction_folder]
        raise InputError(
            f"{folder}: a folder of detections is read in a data source's own layout ({', '.join(layouts)}); "
            f"data source {source!r} has none: give a COCO results JSON file"
        )
    return reader(Path(folder), coco)
