"""Cutting ROIs out of images: the HR crop and its LR version, with one resize function.

MTGAN's generator learns to undo exactly the degradation used to make its inputs, so every LR
image in the project comes from `resize_bicubic`: Pillow's bicubic filter (a = -0.5), which is
anti-aliased when it shrinks (the kernel is widened by the scale factor, as MATLAB's `imresize`
does). torch's `F.interpolate(mode="bicubic", antialias=True)` implements the same filter and
agrees to within a grey level or two (tested).

- `crop_hr`: the ROI box (xyxy, original-image pixels, sub-pixel accurate), optionally grown by a
  context margin, clipped to the image, resized to `hr_size` x `hr_size` in one step (Pillow's
  `resize(box=...)`, so no intermediate rounding to whole pixels);
- `make_lr`: the HR crop shrunk `scale` times with the same bicubic filter.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_METHOD = "PIL.Image.resize BICUBIC (a=-0.5, antialiased when shrinking)"


def resize_bicubic(image: Image.Image, size: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """`image` (or its `box` region, xyxy floats) resized to size x size RGB, as uint8."""
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box))


def roi_region(box: np.ndarray, width: int, height: int, margin: float) -> tuple[float, float, float, float]:
    """The crop region of a ROI: grown by `margin` of its size on each side, clipped to the image,
    and at least one pixel wide and high."""
    x1, y1, x2, y2 = (float(v) for v in box)
    mw, mh = margin * (x2 - x1), margin * (y2 - y1)
    x1, y1, x2, y2 = max(0.0, x1 - mw), max(0.0, y1 - mh), min(float(width), x2 + mw), min(float(height), y2 + mh)
    if x2 - x1 < 1.0:
        x1 = min(max(0.0, (x1 + x2) / 2 - 0.5), width - 1.0)
        x2 = x1 + 1.0
    if y2 - y1 < 1.0:
        y1 = min(max(0.0, (y1 + y2) / 2 - 0.5), height - 1.0)
        y2 = y1 + 1.0
    return x1, y1, x2, y2


def crop_hr(image: Image.Image, box: np.ndarray, hr_size: int, margin: float = 0.0) -> np.ndarray:
    """The HR image of one ROI: (hr_size, hr_size, 3) uint8."""
    return resize_bicubic(image, hr_size, roi_region(box, image.width, image.height, margin))


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The LR version of an HR crop: (hr_size / scale) pixels square, bicubic, uint8."""
    size = hr.shape[0] // scale
    if size * scale != hr.shape[0]:
        raise ValueError(f"HR size {hr.shape[0]} is not a multiple of the scale {scale}")
    return resize_bicubic(Image.fromarray(hr), size)


def crop_sides(boxes: np.ndarray, image_sizes: np.ndarray, margin: float) -> np.ndarray:
    """The longer side, in image pixels, of each ROI's crop region (`roi_region`, vectorised):
    boxes (N, 4) xyxy, image_sizes (N, 2) width, height. How much detail the crop holds."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sizes = np.asarray(image_sizes, np.float64).reshape(-1, 2)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x1, y1 = np.maximum(0.0, boxes[:, 0] - margin * w), np.maximum(0.0, boxes[:, 1] - margin * h)
    x2, y2 = np.minimum(sizes[:, 0], boxes[:, 2] + margin * w), np.minimum(sizes[:, 1], boxes[:, 3] + margin * h)
    return np.maximum(np.maximum(x2 - x1, 1.0), np.maximum(y2 - y1, 1.0))
