"""The data stage: make a dataset available as COCO JSON per split plus an image root.

Output folder `artifacts/<dataset>/data/`:

- `<split>.json`   COCO-format annotations of each split (validated; see `pipeline.io.coco`; WIDER FACE
                   converted from its official files first, see `pipeline.widerface.convert`)
- `images/<split>/` the images (built-in dataset only; a dataset on disk stays where it is)
- `stats.json`, `stats.md`  objects per class and per COCO size range, per split
- `preview.png`    a few images of the test split with their boxes
- `index.json`     where each split's JSON and image root are (written last: see `index.py`)

The whole folder is built under a temporary name and renamed when complete, so an interrupted run
never leaves a folder that looks finished.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.data import builtin, stats
from pipeline.data.index import INDEX_NAME, SplitFiles, read_index, write_index
from pipeline.errors import InputError
from pipeline.io import atomic
from pipeline.io.coco import CocoCheckPolicy, image_list, load_json, validate_coco
from pipeline.widerface import convert as widerface_convert

log = logging.getLogger(__name__)


def _build_builtin(section: dict[str, Any], tmp: Path, n_jobs: int) -> list[tuple[str, dict[str, Any], Path, dict[str, Any]]]:
    spec = builtin.BuiltinSpec.from_config(section["builtin"])
    out = []
    for split in spec.num_images:
        image_root = tmp / "images" / split
        coco, dropped = builtin.generate_split(spec, split, image_root, n_jobs=n_jobs)
        if split in section["builtin"]["unlabelled"]:  # written as an image list, as COCO test-dev is
            del coco["annotations"]
        out.append((split, coco, image_root, {"dropped_objects": dropped}))
    return out


def _build_coco(section: dict[str, Any]) -> list[tuple[str, dict[str, Any], Path, dict[str, Any]]]:
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
            split, report.images, report.annotations, report.crowd, report.clipped_boxes, report.dropped_boxes,
        )
        for example in report.dropped_examples:
            log.info("  dropped: %s", example)
        out.append((split, clean, image_root, {"clipped_boxes": report.clipped_boxes, "dropped_boxes": report.dropped_boxes}))
    return out


def _build_widerface(section: dict[str, Any]) -> list[tuple[str, dict[str, Any], Path, dict[str, Any]]]:
    cfg = section["widerface"]
    if not cfg["splits"]:
        raise InputError("config data.widerface.splits is empty: name each split's bbx_gt.txt and image folder")
    # Sizes are read from the JPEG headers by the conversion, which also reports missing files.
    policy = CocoCheckPolicy(box_tolerance=cfg["box_tolerance"], invalid_boxes=cfg["invalid_boxes"],
                             check_image_files=False, check_image_sizes=False)
    out = []
    for split, files in cfg["splits"].items():
        path, image_root = Path(files["annotations"]), Path(files["images"]).resolve()
        log.info("converting split %s: %s (images under %s)", split, path, image_root)
        coco, counts = widerface_convert.to_coco(widerface_convert.read_bbx_gt(path), image_root, path)
        clean, report = validate_coco(coco, path, image_root, policy)
        log.info("split %s: %d faces clipped to their image, %d outside it dropped", split, report.clipped_boxes, report.dropped_boxes)
        for example in report.dropped_examples:
            log.info("  dropped: %s", example)
        extra = {k: counts[k] for k in ("zero_size_faces", "invalid_faces", "images_without_faces")}
        out.append((split, clean, image_root, extra | {"clipped_boxes": report.clipped_boxes, "dropped_boxes": report.dropped_boxes}))
    return out


def build_dataset(section: dict[str, Any], out_dir: Path, n_jobs: int = 1) -> dict[str, SplitFiles]:
    """Run the data stage for the config's `data` section (validated, defaults filled)."""
    out_dir = Path(out_dir)
    name, source = section["name"], section["source"]
    with atomic.atomic_dir(out_dir) as tmp:
        if source == "builtin":
            built = _build_builtin(section, tmp, n_jobs)
        else:
            built = _build_coco(section) if source == "coco" else _build_widerface(section)
        splits, all_stats = [], {}
        for split, coco, image_root, extra in built:
            atomic.write_json(tmp / f"{split}.json", coco)
            labelled = "annotations" in coco
            if not labelled and split in (section["train_split"], section["test_split"]):
                raise InputError(f"split {split!r} has no annotations: it cannot be data.train_split or data.test_split "
                                 "(an image list is re-scored through data.submit_split)")
            splits.append(SplitFiles(split, tmp / f"{split}.json", image_root, len(coco["images"]),
                                     len(coco.get("annotations", [])), labelled))
            all_stats[split] = {**stats.split_stats(coco), **extra}
        stats.write_stats(name, all_stats, tmp / "stats.json", tmp / "stats.md")
        _, test_coco, test_root, _ = next(b for b in built if b[0] == section["test_split"])
        stats.draw_preview(test_coco, test_root, tmp / "preview.png", title=f"{name} / {section['test_split']}: ground truth")
        # Paths inside the folder are written relative to it, so they stay valid after the rename.
        write_index(tmp / INDEX_NAME, name, source, splits)
        log.info("\n%s", stats.stats_markdown(name, all_stats))
    return read_index(out_dir / INDEX_NAME)
