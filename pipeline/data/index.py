"""The dataset index: the data stage's contract with every later stage.

`artifacts/<dataset>/data/index.json` lists each split's COCO JSON and image root (relative paths
are relative to the index's folder; a dataset on disk elsewhere keeps absolute ones). Its layout is
`schemas/dataset_index.schema.yaml`; it is validated on write and on read. The index is written
last, so its presence means the data stage finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError, PipelineError
from core.io import atomic
from core.schema import validate_document
from pipeline.data.sources import DATA_SOURCES

REGISTRIES = {"data_sources": list(DATA_SOURCES)}  # the names the index schema takes from the code

LAYOUT_VERSION = 1
INDEX_NAME = "index.json"
STATS_NAMES = ("stats.json", "stats.md")
PREVIEW_NAME = "preview.png"
# The data folder's own files, beside each split's `<split>.json`: no split may be named after one.
RESERVED_SPLIT_NAMES = tuple(name.rsplit(".", 1)[0] for name in (INDEX_NAME, *STATS_NAMES, PREVIEW_NAME))


@dataclass(frozen=True)
class SplitFiles:
    name: str
    annotations: Path
    image_root: Path
    num_images: int
    num_annotations: int
    labelled: bool = True  # False: images without annotations (detected and re-scored, never scored)


def write_index(path: Path, dataset: str, source: str, splits: list[SplitFiles]) -> None:
    base = path.parent.resolve()

    def rel(p: Path) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    doc: dict[str, Any] = {
        "layout_version": LAYOUT_VERSION,
        "dataset": dataset,
        "source": source,
        "splits": {
            s.name: {
                "annotations": rel(s.annotations),
                "image_root": rel(s.image_root),
                "num_images": s.num_images,
                "num_annotations": s.num_annotations,
                "labelled": s.labelled,
            }
            for s in splits
        },
    }
    validate_document(doc, "dataset_index.schema.yaml", str(path), registries=REGISTRIES)
    atomic.write_json(path, doc, indent=2)


def split_coco(index: Path, split: str) -> tuple[dict[str, Any], Path, Path]:
    """The COCO dict of `split`, its JSON path and its image root, from the data stage's index."""
    from core.io.coco import load_json

    splits = read_index(index)
    if split not in splits:
        raise PipelineError(f"{index}: no split {split!r} (splits: {sorted(splits)})")
    return load_json(splits[split].annotations), splits[split].annotations, splits[split].image_root


def _read(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return validate_document(doc, "dataset_index.schema.yaml", str(path), registries=REGISTRIES)


def data_source(path: Path) -> str:
    """The data source (`data.source`) a finished data stage was built from."""
    return _read(Path(path))["source"]


def read_index(path: Path) -> dict[str, SplitFiles]:
    """The splits of a finished data stage, with absolute paths."""
    path = Path(path)
    doc = _read(path)
    if doc["layout_version"] != LAYOUT_VERSION:
        raise InputError(f"{path}: layout_version {doc['layout_version']}, this code reads {LAYOUT_VERSION}; rerun the data stage")
    base = path.parent.resolve()
    return {
        name: SplitFiles(name, base / s["annotations"], base / s["image_root"], s["num_images"], s["num_annotations"], s.get("labelled", True))
        for name, s in doc["splits"].items()
    }
