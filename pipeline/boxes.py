"""Box conventions shared by every stage.

Inside the project boxes are `xyxy` in original-image pixels; COCO's `xywh` appears only where
annotations are read and results written. Size classes follow COCO's evaluation exactly: by the
annotation's `area`, small < 32**2 <= medium < 96**2 <= large (pycocotools' `areaRng`).
"""

from __future__ import annotations

SMALL_MAX_AREA = 32**2
MEDIUM_MAX_AREA = 96**2
SIZE_CLASSES: tuple[str, ...] = ("small", "medium", "large")


def size_class(area: float) -> str:
    """COCO size class of an object with the given area (pixels**2)."""
    if area < SMALL_MAX_AREA:
        return "small"
    if area < MEDIUM_MAX_AREA:
        return "medium"
    return "large"
