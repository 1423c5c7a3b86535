"""Box coder and ROI matching, against torchvision, pycocotools and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from core.boxes import xywh_to_xyxy, xyxy_to_xywh
from core.roi_targets import BACKGROUND, IGNORE, BoxCoder, crowd_overlap, match_rois
from core.sizes import size_class


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 120 + 2
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_and_decode_match_torchvision() -> None:
    rois, targets = random_boxes(500, 0), random_boxes(500, 1)
    ours, theirs = BoxCoder(), TorchvisionBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    offsets = ours.encode(targets, rois)
    torch.testing.assert_close(offsets, theirs.encode_single(targets, rois))
    noisy = offsets + torch.randn_like(offsets)
    torch.testing.assert_close(ours.decode(noisy, rois), theirs.decode_single(noisy, rois))


def test_encode_decode_round_trip() -> None:
    rois, targets = random_boxes(200, 2).double(), random_boxes(200, 3).double()
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(targets, rois), rois), targets)


def test_hand_computed_encoding() -> None:
    roi = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    gt = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size 20 x 20
    expected = torch.tensor([[10 * 7 / 10, 10 * 4 / 20, 5 * math.log(2.0), 5 * math.log(1.0)]])
    torch.testing.assert_close(BoxCoder().encode(gt, roi), expected)


def test_decode_clamps_huge_size_offsets() -> None:
    roi = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    box = BoxCoder().decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), roi)
    assert torch.isfinite(box).all()
    assert float(box[0, 2] - box[0, 0]) == pytest.approx(1000.0, rel=1e-4)  # 16 px grown at most to 1000


def test_xywh_conversions() -> None:
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(xywh_to_xyxy(b), torch.tensor([[1.0, 2.0, 4.0, 6.0]]))
    torch.testing.assert_close(xyxy_to_xywh(xywh_to_xyxy(b)), b)
    assert torch.equal(b, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # the input is left as it was
    a = np.array([[[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 1.0, 2.0]]])  # any leading axes
    np.testing.assert_array_equal(xywh_to_xyxy(a), [[[1.0, 2.0, 4.0, 6.0], [0.5, 0.5, 1.5, 2.5]]])
    np.testing.assert_array_equal(xyxy_to_xywh(xywh_to_xyxy(a)), a)
    assert xywh_to_xyxy([1, 2, 3, 4]) == [1, 2, 4, 6] and xyxy_to_xywh([1, 2, 4, 6]) == [1, 2, 3, 4]


def test_size_classes_follow_coco_ranges() -> None:
    assert [size_class(a) for a in (0, 32**2 - 1, 32**2, 96**2 - 1, 96**2, 1e6)] == ["small", "small", "medium", "medium", "large", "large"]


def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y1]


def test_labels_by_iou_thresholds() -> None:
    gt = torch.tensor([box(0, 0, 10, 10)])
    rois = torch.tensor(
        [
            box(0, 0, 10, 10),  # IoU 1
            box(0, 0, 10, 5),  # IoU 0.5 exactly: positive
            box(0, 0, 10, 4),  # IoU 0.4: ignored
            box(0, 0, 10, 3.5),  # IoU 0.35 exactly: ignored (negative is < 0.35)
            box(0, 0, 10, 3),  # IoU 0.3: negative
            box(50, 50, 60, 60),  # no overlap: negative
        ]
    )
    m = match_rois(rois, gt, torch.tensor([3]), torch.tensor([False]))
    torch.testing.assert_close(m.iou, torch.tensor([1.0, 0.5, 0.4, 0.35, 0.3, 0.0]))
    assert m.labels.tolist() == [3, 3, IGNORE, IGNORE, BACKGROUND, BACKGROUND]
    assert m.gt_index.tolist() == [0] * 6


def test_ties_go_to_the_first_ground_truth_box() -> None:
    gt = torch.tensor([box(0, 0, 10, 10), box(10, 0, 20, 10)])
    rois = torch.tensor([box(5, 0, 15, 10)])  # IoU 1/3 with both
    m = match_rois(rois, gt, torch.tensor([1, 2]), torch.tensor([False, False]))
    assert m.gt_index.tolist() == [0]


def test_image_without_ground_truth_makes_every_roi_negative() -> None:
    m = match_rois(torch.tensor([box(0, 0, 5, 5), box(1, 1, 9, 9)]), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))
    assert m.labels.tolist() == [BACKGROUND, BACKGROUND] and m.gt_index.tolist() == [-1, -1] and m.iou.tolist() == [0.0, 0.0]


def test_crowd_regions_make_rois_ignored_not_negative() -> None:
    gt = torch.tensor([box(0, 0, 100, 100), box(200, 200, 210, 210)])
    labels, crowd = torch.tensor([1, 2]), torch.tensor([True, False])
    rois = torch.tensor(
        [
            box(10, 10, 20, 20),  # inside the crowd, far from the object: ignored
            box(200, 200, 210, 210),  # the object itself: positive
            box(300, 300, 310, 310),  # nowhere: negative
            box(90, 90, 110, 110),  # a quarter inside the crowd, no object: best overlap is the crowd, ignored
            box(98, 195, 208, 205),  # IoU 0.03 with the object, nothing in the crowd: negative
        ]
    )
    m = match_rois(rois, gt, labels, crowd)
    assert m.labels.tolist() == [IGNORE, 2, BACKGROUND, IGNORE, BACKGROUND]
    assert m.gt_index.tolist() == [1] * 5  # crowd regions are never the match


def test_overlaps_agree_with_pycocotools_iou() -> None:
    rois, gts = random_boxes(60, 4), random_boxes(9, 5)
    iscrowd = [0, 1, 0, 0, 1, 0, 0, 0, 1]
    reference = mask_utils.iou(xyxy_to_xywh(rois).double().numpy(), xyxy_to_xywh(gts).double().numpy(), iscrowd)
    crowd = torch.tensor(iscrowd, dtype=torch.bool)
    np.testing.assert_allclose(crowd_overlap(rois, gts[crowd]).numpy(), reference[:, np.array(iscrowd) == 1], rtol=1e-5, atol=1e-6)
    m = match_rois(rois, gts, torch.arange(1, 10), crowd, positive_iou=0.5, negative_iou=0.35)
    solid = reference[:, np.array(iscrowd) == 0]
    np.testing.assert_allclose(m.iou.numpy(), solid.max(axis=1), rtol=1e-5, atol=1e-6)
