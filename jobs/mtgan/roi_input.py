"""What D sees for a ROI at test time under each test-time rule (the rules are named in
`jobs/mtgan/settings.py`, RULES), in one place for the training job's held-out check, the infer
stage, the report and `mtgan rescore`.

A rule is an inference setting (config `infer.rules`, a list): each trained variant is scored
under each rule that applies to it, from one training run.

- `paper`, the paper's path as we read it: every ROI, positive or negative, of any size, becomes
  its 16x16 LR image, is up-sampled 4x by the variant's up-sampler (G for MTGAN, bilinear for SBU)
  and is classified by D at 64x64. The paper never says in so many words that a large ROI is
  shrunk to 16x16 first; our reading rests on its Table 9 text, "the positive and negative examples
  are inputted to the generator network and up-sampled by" G or "a simple bi-linear up-sampler
  (SBU) to generated the super-resolved images, respectively. Finally, the super-resolved images
  go through the discriminator" (paper lines 1523-1538); on the training pairs, whose LR images are
  made "by down-sampling the high-resolution images using bicubic interpolation with a factor 4"
  (lines 781-783); on SBU, "We upsample the training ROIs 4 times (i.e. to 64x64)" (line 1056); and
  on D's input, "plain R-CCN (i.e. 224 x 224) is larger than our method (i.e. 64x64)" (lines
  1047-1048). Public re-implementations of the authors' tiny-face paper read it the same way: every
  crop, whatever its size, resized to a fixed HR size and its LR image at a quarter of it (e.g.
  EthanGuan/Finding-Tiny-Faces-with-GAN, dataset.py: 128 -> 32). A variant without an up-sampler
  (Table 3's `d_no_adv`) is fed the resized proposal, its HR crop.
- `by_size` (ours): G(LR) for a ROI whose crop's longer side is at most `g_max_side` image pixels
  (its 16x16 LR image then holds all the detail its crop has), the HR crop for any larger ROI:
  squeezing a 100-pixel ROI to 16x16 throws away what the image holds.
- `all_hr` (ours): the HR crop for every ROI (G unused at test time).

`by_size` and `all_hr` feed D HR crops, so they apply only to variants whose D trains on HR crops
and has an up-sampler (for `d_no_adv` they would repeat the `paper` row).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.crops import crop_sides
from jobs.mtgan.settings import HR_CROP, RULES, UP_SAMPLED, Variant, applies


def through_generator(boxes: np.ndarray, image_sizes: np.ndarray, margin: float, rule: str, g_max_side: float, variant: Variant) -> np.ndarray:
    """Per ROI: True where D sees the up-sampled LR image, False where it sees the HR crop, by the
    rule's routing (`TestTimeRule.routing`); a variant without an up-sampler sees HR crops only."""
    n = len(boxes)
    if not applies(rule, variant):
        raise ValueError(f"test-time rule {rule!r} does not apply to variant {variant.name!r}")
    routing = RULES[rule].routing
    if variant.generator == "none" or routing == HR_CROP:
        return np.zeros(n, bool)
    if routing == UP_SAMPLED:
        return np.ones(n, bool)
    return crop_sides(boxes, image_sizes, margin) <= g_max_side


def discriminator_images(g: nn.Module | None, lr: torch.Tensor, hr: torch.Tensor, use_g: torch.Tensor) -> torch.Tensor:
    """D's input images: G(LR) where `use_g`, the HR crop elsewhere (all (N, 3, S, S) in [-1, 1]).
    G runs on the selected ROIs only."""
    if g is None or not bool(use_g.any()):
        return hr
    if bool(use_g.all()):
        return g(lr).to(hr.dtype)
    images = hr.clone()
    images[use_g] = g(lr[use_g]).to(images.dtype)
    return images
