"""The data stage: make a dataset available as COCO JSON per split plus an image root.

Output folder `artifacts/<dataset>/data/`:

- `<split>.json`   COCO-format annotations of each split, made by the data source
                   (`pipeline.data.sources`: generated, read, or converted from a format's own
                   files) and validated (`core.io.coco`)
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

from core.errors import InputError
from core.io import atomic
from pipeline.data import stats
from pipeline.data.index import INDEX_NAME, PREVIEW_NAME, STATS_NAMES, SplitFiles, read_index, write_index
from pipeline.data.sources import DATA_SOURCES

log = logging.getLogger(__name__)


def build_dataset(section: dict[str, Any], out_dir: Path, n_jobs: int = 1) -> dict[str, SplitFiles]:
    """Run the data stage for the config's `data` section (validated, defaults filled)."""
    out_dir = Path(out_dir)
    name, source = section["name"], section["source"]
    with atomic.atomic_dir(out_dir) as tmp:
        built = DATA_SOURCES[source].build(section, tmp, n_jobs)
        splits, all_stats = [], {}
        for split, coco, image_root, extra in built:
            atomic.write_json(tmp / f"{split}.json", coco)
            labelled = "annotations" in coco
            if split in (section["train_split"], section["test_split"]) and not coco.get("annotations"):
                raise InputError(
                    f"split {split!r} has no annotated objects: it cannot be data.train_split or data.test_split "
                    "(nothing to train on or to score; an image list is re-scored through data.submit_split)"
                )
            splits.append(SplitFiles(split, tmp / f"{split}.json", image_root, len(coco["images"]), len(coco.get("annotations", [])), labelled))
            all_stats[split] = {**stats.split_stats(coco), **extra}
        stats.write_stats(name, all_stats, *(tmp / n for n in STATS_NAMES))
        _, test_coco, test_root, _ = next(b for b in built if b[0] == section["test_split"])
        stats.draw_preview(test_coco, test_root, tmp / PREVIEW_NAME, title=f"{name} / {section['test_split']}: ground truth")
        # Paths inside the folder are written relative to it, so they stay valid after the rename.
        write_index(tmp / INDEX_NAME, name, source, splits)
        log.info("\n%s", stats.stats_markdown(name, all_stats))
    return read_index(out_dir / INDEX_NAME)
