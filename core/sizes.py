"""COCO's object size classes, defined once for every stage, the rules and the report.

By area, as pycocotools' `areaRng`: small < 32**2 <= medium < 96**2 <= large. `SIZE_RANGES` adds
"all" (the four ranges COCOeval reports); the error analysis covers `ERROR_AREAS`. The ROI shards
store a size class as its index in `SIZE_CLASSES`. No heavy imports: the Snakefile reads this.
"""

from __future__ import annotations

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
