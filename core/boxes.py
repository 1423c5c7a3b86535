"""Box conventions, shared by every stage (no torch: stages that only read and write boxes, as
the score and report stages, do not pay for importing it).

Inside the project boxes are `xyxy` in original-image pixels; COCO's `xywh` appears only where
annotations are read and results written (`xywh_to_xyxy`, `xyxy_to_xywh`). Size classes are in
`core.sizes`; the box coder and ROI matching in `core.roi_targets`.
"""

from __future__ import annotations

from typing import Any, TypeVar

Boxes = TypeVar("Boxes", bound=Any)  # a torch tensor or numpy array (last axis 4), or one box as a list


def xywh_to_xyxy(boxes: Boxes) -> Boxes:
    """COCO's [x, y, w, h] -> [x1, y1, x2, y2]: a tensor or array (last axis 4) or one box as a list."""
    if isinstance(boxes, list):
        x, y, w, h = boxes
        return [x, y, x + w, y + h]
    out = boxes.clone() if hasattr(boxes, "clone") else boxes.copy()  # torch tensor or numpy array
    out[..., 2:] = boxes[..., :2] + boxes[..., 2:]
    return out


def xyxy_to_xywh(boxes: Boxes) -> Boxes:
    """[x1, y1, x2, y2] -> COCO's [x, y, w, h]: a tensor or array (last axis 4) or one box as a list."""
    if isinstance(boxes, list):
        x0, y0, x1, y1 = boxes
        return [x0, y0, x1 - x0, y1 - y0]
    out = boxes.clone() if hasattr(boxes, "clone") else boxes.copy()
    out[..., 2:] = boxes[..., 2:] - boxes[..., :2]
    return out
