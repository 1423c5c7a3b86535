"""RoIAlign with a fast backward pass on the CPU, for training Faster R-CNN on a few cores.

torchvision's CPU kernel for RoIAlign's backward runs on one thread and recomputes every sample's
bilinear weights once per channel: in a training step of `fasterrcnn_small_cpu` (4 images of 320
px, 2048 sampled ROIs) it was 40% of the step on 2 cores (torch.profiler: docs/choices.md).
Here the forward pass is torchvision's own op, unchanged; the backward pass on the CPU writes
down, once per call, every bilinear sample as a (feature-map cell, output bin, weight) entry of a
sparse matrix, with torchvision's rules (a sample outside [-1, size] adds nothing; coordinates
clamp at 0 and at size - 1; each bin averages its sampling_ratio^2 samples), and multiplies it
with the output's gradient. Only the order of the floating-point sums differs from torchvision's
backward (tests/test_roi_align.py compares the two). On other devices, and with an adaptive
sampling ratio (<= 0: a grid per ROI), torchvision's backward runs.

`SparseBackwardMultiScaleRoIAlign` is torchvision's `MultiScaleRoIAlign` (same levels, same
output, bit for bit) pooling with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import MultiScaleRoIAlign  # importing torchvision.ops registers the torchvision:: ops
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def bilinear_samples(
    rois: torch.Tensor, spatial_scale: float, pooled: tuple[int, int], sampling_ratio: int, size: tuple[int, int], aligned: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every bilinear sample of RoIAlign (fixed `sampling_ratio` > 0) as three flat tensors: the
    feature cell it reads (index into batch x height x width), the output bin it adds to (index
    into rois x pooled height x pooled width) and its weight, the bin's average included."""
    (ph, pw), (height, width), s = pooled, size, sampling_ratio
    n = len(rois)
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision: ROIs at least 1x1 when not aligned
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = (roi_h / ph)[:, None, None], (roi_w / pw)[:, None, None]
    steps = torch.arange(s, dtype=rois.dtype, device=rois.device) + 0.5
    # y of bin row i, sample row j: y1 + i * bin_h + (j + 0.5) * bin_h / s, as torchvision computes it
    y = y1[:, None, None] + torch.arange(ph, dtype=rois.dtype, device=rois.device)[None, :, None] * bin_h + steps * bin_h / s
    x = x1[:, None, None] + torch.arange(pw, dtype=rois.dtype, device=rois.device)[None, :, None] * bin_w + steps * bin_w / s
    y = y[:, :, None, :, None].expand(n, ph, pw, s, s)  # (roi, bin row, bin column, sample row, sample column)
    x = x[:, None, :, None, :].expand(n, ph, pw, s, s)
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y, x = y.clamp(min=0.0), x.clamp(min=0.0)
    y_low, x_low = y.long(), x.long()
    y_last, x_last = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = y_low.clamp(max=height - 1), x_low.clamp(max=width - 1)
    y, x = torch.where(y_last, y_low.to(y.dtype), y), torch.where(x_last, x_low.to(x.dtype), x)
    y_high, x_high = torch.where(y_last, y_low, y_low + 1), torch.where(x_last, x_low, x_low + 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    image = (rois[:, 0].long() * (height * width))[:, None, None, None, None]
    cells = torch.stack([image + y_low * width + x_low, image + y_low * width + x_high, image + y_high * width + x_low, image + y_high * width + x_high])
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx]) * inside / (s * s)
    bins = torch.arange(n * ph * pw, device=rois.device).view(n, ph, pw, 1, 1).expand(4, n, ph, pw, s, s)
    return cells.reshape(-1), bins.reshape(-1), weights.reshape(-1)


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, features: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled: tuple[int, int], sampling_ratio: int, aligned: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.settings = (spatial_scale, pooled, sampling_ratio, aligned, tuple(features.shape))
        return torch.ops.torchvision.roi_align(features, rois, spatial_scale, pooled[0], pooled[1], sampling_ratio, aligned)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled, sampling_ratio, aligned, (batch, channels, height, width) = ctx.settings
        if grad.device.type != "cpu" or sampling_ratio <= 0:
            args = (spatial_scale, *pooled, batch, channels, height, width, sampling_ratio, aligned)
            return torch.ops.torchvision._roi_align_backward(grad, rois, *args), None, None, None, None, None
        cells, bins, weights = bilinear_samples(rois, spatial_scale, pooled, sampling_ratio, (height, width), aligned)
        samples = torch.sparse_coo_tensor(
            torch.stack([cells, bins]), weights.to(grad.dtype), (batch * height * width, grad.shape[0] * pooled[0] * pooled[1]), check_invariants=False
        )
        per_bin = grad.permute(0, 2, 3, 1).reshape(-1, channels)  # (rois x bins, channels)
        per_cell = torch.sparse.mm(samples, per_bin)  # (batch x height x width, channels)
        return per_cell.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous(), None, None, None, None, None


def roi_align(
    features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool = False
) -> torch.Tensor:
    """torchvision.ops.roi_align on (K, 5) `rois` (batch index, x1, y1, x2, y2), with the sparse
    backward on the CPU."""
    return _RoIAlign.apply(features, rois, spatial_scale, tuple(output_size), sampling_ratio, aligned)


class SparseBackwardMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (FPN level per box, RoIAlign on it) with `roi_align` above."""

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)  # one level: all 0
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            rows = torch.where(levels == level)[0]
            result[rows] = roi_align(feature, rois[rows], self.output_size, scale, self.sampling_ratio).to(result.dtype)
        return result
