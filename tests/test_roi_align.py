"""RoIAlign's sparse CPU backward (jobs/baseline/roi_align.py) against torchvision's own kernels:
the forward is torchvision's, bit for bit; the gradient equals torchvision's backward up to the
order of the sums (compared in float64, to 1e-10, and in float32), for ROIs inside, across and
outside the feature map, tiny and large, aligned or not, at several sampling ratios; the
multi-scale pooler equals torchvision's."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as torchvision_roi_align

from jobs.baseline.models import DetectorSettings, build_detector
from jobs.baseline.roi_align import SparseBackwardMultiScaleRoIAlign, roi_align


def _rois(n: int, images: int, extent: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes from 0 to 60 px wide, some sticking out of or lying outside the image, some empty."""
    corner = torch.rand(n, 2, generator=generator) * (extent + 40) - 30
    size = torch.rand(n, 2, generator=generator) * 60
    size[: n // 10] = 0.0  # degenerate boxes
    index = torch.randint(0, images, (n, 1), generator=generator).float()
    return torch.cat([index, corner, corner + size], 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3, 0])
def test_gradient_equals_torchvisions_backward(aligned: bool, sampling_ratio: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(sampling_ratio)
    features = torch.randn(3, 5, 20, 24, generator=generator).to(dtype)
    rois = _rois(400, 3, 96.0, generator).to(dtype)
    grad = torch.randn(400, 5, 7, 6, generator=generator).to(dtype)
    theirs, ours = features.clone().requires_grad_(), features.clone().requires_grad_()
    torchvision_roi_align(theirs, rois, (7, 6), 0.25, sampling_ratio, aligned).backward(grad)
    output = roi_align(ours, rois, (7, 6), 0.25, sampling_ratio, aligned)
    output.backward(grad)
    assert torch.equal(output, torchvision_roi_align(features, rois, (7, 6), 0.25, sampling_ratio, aligned))
    assert theirs.grad.abs().max() > 1.0  # the boxes reach the features
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4  # float32: sums of hundreds of terms of up to 10
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=tolerance, atol=tolerance)
    if sampling_ratio == 0:  # adaptive grid: torchvision's backward itself
        assert torch.equal(ours.grad, theirs.grad)


def test_the_pooler_equals_torchvisions_forward_and_backward() -> None:
    generator = torch.Generator().manual_seed(0)
    levels = OrderedDict((name, torch.randn(2, 8, 80 // 2**i, 80 // 2**i, generator=generator).double()) for i, name in enumerate(["0", "1", "2", "pool"]))
    boxes = [_rois(60, 1, 320.0, generator)[:, 1:].clamp(0, 320).double() for _ in range(2)]
    for image_boxes in boxes:  # x1 < x2, y1 < y2, as the pooler is promised; small to whole-image boxes
        image_boxes[:, 2:] = torch.maximum(image_boxes[:, 2:], image_boxes[:, :2] + 1)
        image_boxes[:2] = torch.tensor([[0.0, 0.0, 320.0, 320.0], [10.0, 20.0, 160.0, 170.0]], dtype=torch.float64)  # FPN levels 2 and 1
    outputs, grads = [], []
    for pooler in (MultiScaleRoIAlign(["0", "1", "2"], 7, 2), SparseBackwardMultiScaleRoIAlign(["0", "1", "2"], 7, 2)):
        inputs = OrderedDict((name, level.clone().requires_grad_()) for name, level in levels.items())
        output = pooler(inputs, boxes, [(320, 320)] * 2)
        output.backward(torch.ones_like(output))
        outputs.append(output)
        grads.append([inputs[name].grad for name in ("0", "1", "2")])
    assert torch.equal(outputs[0], outputs[1])
    for theirs, ours in zip(*grads):
        assert theirs is not None and ours is not None and theirs.abs().max() > 0  # every level got ROIs
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_the_small_cpu_detector_pools_with_the_sparse_backward() -> None:
    model = build_detector("fasterrcnn_small_cpu", 8, DetectorSettings(320, 320, 0.05, 0.5, 100))
    assert isinstance(model.roi_heads.box_roi_pool, SparseBackwardMultiScaleRoIAlign)


def test_a_single_level_pooler_equals_torchvisions() -> None:
    generator = torch.Generator().manual_seed(1)
    features = OrderedDict(only=torch.randn(2, 4, 40, 40, generator=generator))
    boxes = [torch.tensor([[0.0, 0.0, 50.0, 50.0], [10.0, 10.0, 300.0, 200.0]]), torch.tensor([[5.0, 7.0, 9.0, 30.0]])]
    theirs = MultiScaleRoIAlign(["only"], 7, 2)(features, boxes, [(160, 160)] * 2)
    ours = SparseBackwardMultiScaleRoIAlign(["only"], 7, 2)(features, boxes, [(160, 160)] * 2)
    assert theirs.abs().max() > 0 and torch.equal(ours, theirs)
