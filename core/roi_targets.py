"""Training targets of ROIs: labels from matching against ground truth, and the box coder that
encodes regression targets in the rois stage and decodes the discriminator's offsets in the merge
stage (Fast R-CNN's, as torchvision's RoIHeads use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

# Label codes: the only contract between matching, sampling and the losses.
BACKGROUND = 0  # a negative ROI; object classes are 1..K
IGNORE = -1  # neither positive nor negative: not used for training, still scored at test time

# Fast R-CNN's per-coordinate weights (dx, dy, dw, dh), as torchvision's RoIHeads use them.
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# dw, dh are clamped before exp() so that a wild prediction cannot overflow: a box may grow at
# most 1000/16 times its ROI (the same bound torchvision uses).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class BoxCoder:
    """Fast R-CNN box encoding: offsets of a target box relative to a reference (ROI) box.

    dx = wx * (gx - rx) / rw,  dy = wy * (gy - ry) / rh,  dw = ww * log(gw / rw),  dh = wh * log(gh / rh)
    on box centres (gx, gy, rx, ry) and sizes, with weights (wx, wy, ww, wh) = (10, 10, 5, 5).
    """

    weights: tuple[float, float, float, float] = BOX_CODER_WEIGHTS

    def encode(self, targets: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """Offsets (N, 4) that move `rois` (N, 4, xyxy) onto `targets` (N, 4, xyxy)."""
        wx, wy, ww, wh = self.weights
        rw, rh = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
        rx, ry = rois[:, 0] + 0.5 * rw, rois[:, 1] + 0.5 * rh
        gw, gh = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
        gx, gy = targets[:, 0] + 0.5 * gw, targets[:, 1] + 0.5 * gh
        return torch.stack((wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * torch.log(gw / rw), wh * torch.log(gh / rh)), dim=1)

    def decode(self, offsets: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """Boxes (N, 4, xyxy) obtained by applying `offsets` (N, 4) to `rois` (N, 4, xyxy)."""
        wx, wy, ww, wh = self.weights
        rw, rh = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
        rx, ry = rois[:, 0] + 0.5 * rw, rois[:, 1] + 0.5 * rh
        dx, dy = offsets[:, 0] / wx, offsets[:, 1] / wy
        dw = torch.clamp(offsets[:, 2] / ww, max=BBOX_XFORM_CLIP)
        dh = torch.clamp(offsets[:, 3] / wh, max=BBOX_XFORM_CLIP)
        cx, cy = rx + dx * rw, ry + dy * rh
        w, h = rw * torch.exp(dw), rh * torch.exp(dh)
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=1)


@dataclass(frozen=True)
class RoiMatch:
    """Per ROI: best IoU with a (non-crowd) ground-truth box, that box's index (-1: none), label."""

    iou: torch.Tensor  # (N,) float
    gt_index: torch.Tensor  # (N,) long, index into the image's ground truth, -1 when there is none
    labels: torch.Tensor  # (N,) long: class 1..K (positive), BACKGROUND, or IGNORE


def crowd_overlap(rois: torch.Tensor, crowd_boxes: torch.Tensor) -> torch.Tensor:
    """(N, C) intersection over ROI area: COCO's overlap measure for crowd regions."""
    lt = torch.maximum(rois[:, None, :2], crowd_boxes[None, :, :2])
    rb = torch.minimum(rois[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = ((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1])).clamp(min=1e-9)
    return inter / area[:, None]


def match_rois(
    rois: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, gt_crowd: torch.Tensor, positive_iou: float = 0.5, negative_iou: float = 0.35
) -> RoiMatch:
    """Label the ROIs (N, 4, xyxy) of one image against its ground truth (M boxes, xyxy).

    - `iou`/`gt_index`: best IoU over the non-crowd boxes and that box's index (ties go to the
      lowest index; -1 and IoU 0 when the image has no non-crowd box);
    - label: positive (the matched box's class) if iou >= positive_iou, BACKGROUND if
      iou < negative_iou, IGNORE in between;
    - crowd regions are measured as COCO's evaluation does (intersection over the ROI's area); a ROI
      that overlaps a crowd region more than any single object is IGNORE, never a negative;
    - an image without ground truth makes every ROI negative.
    """
    if not 0.0 <= negative_iou <= positive_iou <= 1.0:
        raise ValueError(f"need 0 <= negative_iou ({negative_iou}) <= positive_iou ({positive_iou}) <= 1")
    rois, gt_boxes = rois.float(), gt_boxes.float()
    n = rois.shape[0]
    crowd = gt_crowd.bool()
    solid_index = torch.nonzero(~crowd).flatten()
    iou = torch.zeros(n)
    gt_index = torch.full((n,), -1, dtype=torch.long)
    labels = torch.full((n,), BACKGROUND, dtype=torch.long)
    if n and solid_index.numel():
        iou, best = box_iou(rois, gt_boxes[solid_index]).max(dim=1)  # max() keeps the first of equals
        gt_index = solid_index[best]
        labels = torch.where(iou >= positive_iou, gt_labels[gt_index].long(), torch.full_like(labels, IGNORE))
        labels[iou < negative_iou] = BACKGROUND
    if n and crowd.any():
        crowd_best = crowd_overlap(rois, gt_boxes[crowd]).max(dim=1).values
        labels[crowd_best > iou] = IGNORE
    return RoiMatch(iou, gt_index, labels)
