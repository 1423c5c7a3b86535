"""Baseline detectors: torchvision's Faster R-CNN builders, plus one small architecture for CPUs.

`build_detector(arch, num_classes, ...)` accepts any torchvision detection builder name that
returns a two-stage `GeneralizedRCNN` (the `fasterrcnn_*` and `maskrcnn_*` builders; MTGAN needs
region proposals with class-probability vectors) and `fasterrcnn_small_cpu`:

`fasterrcnn_small_cpu` is torchvision's `FasterRCNN` on a small backbone of 8 conv-BN-ReLU layers
(4 stages of 2 convs; strides 4/8/16 feed an FPN of 64 channels plus a max-pooled level), one
anchor size per level (12, 24, 48, 96 px; ratios 0.5/1/2), RoIAlign 7x7 on the three FPN levels
(torchvision's, with a faster backward pass on the CPU: `jobs.baseline.roi_align`), and
torchvision's two-layer MLP box head of 256 units: about 2.2 M parameters. Trained from scratch on
2 CPU cores it learns a weak but real detector in minutes, where a ResNet-FPN learns nothing in
that time.

Weights (chosen by `pipeline.detect.load_detector` from `detector.weights`): `none` (random init), `torchvision` (the builder's default COCO
weights, from the torch hub cache or downloaded; offline and not cached -> `WeightsUnavailable`
naming the file and where it is expected), or a path to a checkpoint: the `train_baseline` job's
own, or a plain state dict of the architecture (e.g. a torchvision .pth file).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from core.errors import InputError
from jobs.baseline.roi_align import SparseBackwardMultiScaleRoIAlign
from jobs.weights import WeightsUnavailable, pretrained_torchvision_model

__all__ = [
    "SMALL_CPU_ARCH",
    "DetectorSettings",
    "WeightsUnavailable",
    "build_detector",
    "num_classes_of",
    "replace_box_predictor",
    "small_cpu_fasterrcnn",
    "state_dict_of",
    "torchvision_categories",
]

SMALL_CPU_ARCH = "fasterrcnn_small_cpu"


def _conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallBackbone(nn.Module):
    """8 conv-BN-ReLU layers in 4 stages (strides 2, 4, 8, 16; 32/64/128/256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        widths = (32, 64, 128, 256)
        cin = 3
        for i, width in enumerate(widths, start=1):
            self.add_module(f"stage{i}", nn.Sequential(*_conv_bn(cin, width, 2), *_conv_bn(width, width, 1)))
            cin = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # unused: BackboneWithFPN walks the stages
        for stage in self.children():
            x = stage(x)
        return x


def small_cpu_fasterrcnn(num_classes: int, min_size: int, max_size: int, **kwargs: Any) -> FasterRCNN:
    backbone = BackboneWithFPN(
        SmallBackbone(),
        return_layers={"stage2": "0", "stage3": "1", "stage4": "2"},
        in_channels_list=[64, 128, 256],
        out_channels=64,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(sizes=((12,), (24,), (48,), (96,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    roi_pool = SparseBackwardMultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(64 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )


@dataclass(frozen=True)
class DetectorSettings:
    """Inference settings passed to torchvision's detector (see `build_detector`)."""

    min_size: int
    max_size: int
    score_thresh: float
    nms_thresh: float
    detections_per_img: int


def build_detector(arch: str, num_classes: int, settings: DetectorSettings, pretrained: bool = False) -> GeneralizedRCNN:
    """A detector with `num_classes` outputs (background included), randomly initialised unless
    `pretrained` (torchvision's default weights, which fix num_classes to theirs)."""
    kwargs: dict[str, Any] = {
        "min_size": settings.min_size,
        "max_size": settings.max_size,
        "box_score_thresh": settings.score_thresh,
        "box_nms_thresh": settings.nms_thresh,
        "box_detections_per_img": settings.detections_per_img,
    }
    if arch == SMALL_CPU_ARCH:
        if pretrained:
            raise InputError(f"{SMALL_CPU_ARCH} has no pretrained weights: use weights none or a checkpoint path")
        return small_cpu_fasterrcnn(num_classes, **kwargs)
    if arch not in torchvision.models.list_models(module=torchvision.models.detection):
        raise InputError(f"unknown detector architecture {arch!r}: use {SMALL_CPU_ARCH} or a torchvision detection builder")
    if pretrained:
        model = pretrained_torchvision_model(arch, **kwargs)
    else:
        model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if not isinstance(model, GeneralizedRCNN) or not hasattr(model, "roi_heads"):
        raise InputError(f"{arch} is not a two-stage (R-CNN) detector: MTGAN needs region proposals with class scores")
    return model


def replace_box_predictor(model: GeneralizedRCNN, num_classes: int) -> GeneralizedRCNN:
    """`model` with a fresh box predictor for `num_classes` (background included): fine-tuning a
    detector with torchvision's COCO weights on another dataset (WIDER FACE: 2 classes)."""
    old = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = FastRCNNPredictor(old.cls_score.in_features, num_classes)
    return model


def torchvision_categories(arch: str) -> list[str]:
    """Class names of torchvision's default weights for `arch` (index = model label)."""
    return list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])


def state_dict_of(checkpoint: Any) -> OrderedDict[str, torch.Tensor]:
    """The model weights inside a checkpoint: ours ({'model': ...}) or a plain state dict."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint  # type: ignore[return-value]
    raise InputError("not a detector checkpoint: expected a state dict or a dict with a 'model' state dict")


def num_classes_of(state_dict: dict[str, torch.Tensor]) -> int:
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise InputError(f"checkpoint has no {key}: not a Faster R-CNN detector")
    return int(state_dict[key].shape[0])
