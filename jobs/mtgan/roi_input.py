"""What D sees for a ROI at test time, in one place for the training job's held-out check, the
infer stage and `mtgan rescore`.

Training pairs are (LR, HR): HR is the ROI crop resized to 64x64, LR its 4x bicubic reduction
(16x16), and D learns on both G(LR) and HR (Eq 11). At test time the paper says only that ROIs are
"cropped by our baseline detector and then fed to our MTGAN framework" and that G's input is "small
ROI images". Squeezing every ROI to 16x16 before G would throw away what a large ROI's crop holds
(on the built-in val split the median positive ROI is 70 px wide). Our reading, rule `by_size`:

- a ROI whose crop's longer side is at most `g_max_side` image pixels (about the LR size: its
  16x16 LR image holds all the detail its crop has) reaches D as G(LR): super-resolution is what
  such a ROI lacks;
- any larger ROI reaches D as its HR crop, which holds at least its crop's detail up to 64 px (D
  is trained on HR crops with the classification and regression losses, Eq 11, so this is inside
  its training distribution).

`all_generator` (every ROI through G, as before) and `all_hr` (every ROI's HR crop: G unused at
test time) are kept for comparison. Variants without a learned G use the same rule with their own
up-sampler (SBU: bilinear); the plain R-CNN style `d_no_adv` always sees the HR crop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from jobs.mtgan.settings import Variant
from pipeline.crops import crop_sides

RULES = ("by_size", "all_generator", "all_hr")


def through_generator(boxes: np.ndarray, image_sizes: np.ndarray, margin: float, rule: str, g_max_side: float,
                      variant: Variant) -> np.ndarray:
    """Per ROI: True where D sees the up-sampled LR image, False where it sees the HR crop."""
    n = len(boxes)
    if variant.generator == "none" or rule == "all_hr":
        return np.zeros(n, bool)
    if rule == "all_generator":
        return np.ones(n, bool)
    if rule != "by_size":
        raise ValueError(f"unknown roi_input rule {rule!r}: one of {RULES}")
    return crop_sides(boxes, image_sizes, margin) <= g_max_side


def discriminator_images(g: nn.Module | None, lr: torch.Tensor, hr: torch.Tensor, use_g: torch.Tensor) -> torch.Tensor:
    """D's input images: G(LR) where `use_g`, the HR crop elsewhere (all (N, 3, S, S) in [-1, 1]).
    G runs on the selected ROIs only."""
    if g is None or not bool(use_g.any()):
        return hr
    images = hr.clone()
    images[use_g] = g(lr[use_g]).to(images.dtype)
    return images
