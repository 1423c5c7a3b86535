"""COCO's object size classes, defined once for every stage, the rules and the report.

By area, as pycocotools' `areaRng`: small < 32**2 <= medium < 96**2 <= large. `SIZE_RANGES` adds
"all" (the four ranges COCOeval reports); the error analysis covers `ERROR_AREAS`. The ROI shards
store a size class as its index in `SIZE_CLASSES`. No heavy imports: the Snakefile reads this.

D's accuracy by object size (the report's figure, bench/regimes.py) bins a ROI by its crop's longer
side in image pixels (`core.crops.crop_sides`, what the `by_size` rule routes on): `SIDE_BINS`,
upper edges inclusive, so the bin "12-16" ends where `infer.g_max_side: 16` sends ROIs through G.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
SIZE_CLASSES: tuple[str, ...] = ("small", "medium", "large")
SIZE_RANGES: tuple[str, ...] = ("all", *SIZE_CLASSES)
ERROR_AREAS: tuple[str, ...] = ("all", "small")


def size_class(area: float) -> str:
    """COCO size class of an object with the given area (pixels**2)."""
    if area < SMALL_MAX_AREA:
        return "small"
    if area < MEDIUM_MAX_AREA:
        return "medium"
    return "large"


def size_classes(areas: Any) -> Any:
    """`size_class` of each area of a numpy array, as its index in SIZE_CLASSES (int64)."""
    import numpy as np

    return np.where(areas < SMALL_MAX_AREA, 0, np.where(areas < MEDIUM_MAX_AREA, 1, 2)).astype(np.int64)


SIDE_BIN_EDGES: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64, 96)
SIDE_BINS: tuple[str, ...] = (f"<={SIDE_BIN_EDGES[0]}", *(f"{a}-{b}" for a, b in zip(SIDE_BIN_EDGES, SIDE_BIN_EDGES[1:])), f">{SIDE_BIN_EDGES[-1]}")


def side_bin(side: float) -> int:
    """Index in `SIDE_BINS` of a crop whose longer side is `side` pixels."""
    return bisect_left(SIDE_BIN_EDGES, side)
