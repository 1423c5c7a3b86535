"""Detection with the class-probability vector of every detection.

torchvision's `RoIHeads.postprocess_detections` turns each proposal's softmax into per-class
detections and throws the softmax away. MTGAN's ensemble multiplies its own class distribution by
the baseline's, element-wise, so `detect_batch` runs the same steps as torchvision's eval path
(transform, backbone, RPN, box head, per-class decode, clip, score threshold, small-box removal,
per-class NMS, top-k, rescale to the original image) and keeps, for each detection, the index of
the proposal it came from and so that proposal's full K+1 probability vector. With an identity
label map its boxes, labels and scores equal `model(images)`'s (tested).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from core.errors import InputError


@dataclass(frozen=True)
class LabelMap:
    """Model output classes <-> the dataset's contiguous labels (0 background, 1..K categories).

    `category_ids[k - 1]` is the COCO category id of contiguous label k. `model_to_label[c]` is the
    label of model class c (-1: a model class the dataset does not have, never reported), and
    `label_to_model[k]` the model class of label k.
    """

    category_ids: tuple[int, ...]
    model_to_label: torch.Tensor
    label_to_model: torch.Tensor

    @classmethod
    def identity(cls, category_ids: list[int]) -> LabelMap:
        n = len(category_ids) + 1
        return cls(tuple(category_ids), torch.arange(n), torch.arange(n))

    @classmethod
    def by_name(cls, model_classes: list[str], categories: list[dict]) -> LabelMap:
        """Map a pretrained model's class names (index 0 = background) onto dataset categories."""
        ordered = sorted(categories, key=lambda c: c["id"])
        index = {name: i for i, name in enumerate(model_classes) if i > 0}
        missing = [c["name"] for c in ordered if c["name"] not in index]
        if missing:
            raise InputError(
                f"the detector's classes do not include the dataset's categories {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}: train a detector on this dataset or import its detections"
            )
        label_to_model = torch.tensor([0] + [index[c["name"]] for c in ordered])
        model_to_label = torch.full((len(model_classes),), -1, dtype=torch.long)
        model_to_label[label_to_model] = torch.arange(len(ordered) + 1)
        return cls(tuple(c["id"] for c in ordered), model_to_label, label_to_model)

    @property
    def num_labels(self) -> int:
        return len(self.category_ids) + 1


@torch.inference_mode()
def detect_batch(model: GeneralizedRCNN, images: list[torch.Tensor], label_map: LabelMap) -> list[dict[str, torch.Tensor]]:
    """Detections of a batch of CHW float images in [0, 1]: per image a dict of `boxes` (xyxy,
    original pixels), `labels` (contiguous 1..K), `scores` and `probs` (N, K+1)."""
    model.eval()
    original_sizes = [tuple(img.shape[-2:]) for img in images]
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = model.rpn(batch, features)
    heads = model.roi_heads
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    counts = [len(p) for p in proposals]
    all_boxes = heads.box_coder.decode(box_regression, proposals).split(counts)
    all_probs = F.softmax(class_logits, -1).split(counts)

    model_to_label = label_map.model_to_label.to(class_logits.device)
    label_to_model = label_map.label_to_model.to(class_logits.device)
    reported = model_to_label > 0  # model classes the dataset has (never the background)
    results = []
    for boxes, probs, size, original in zip(all_boxes, all_probs, batch.image_sizes, original_sizes):
        boxes = box_ops.clip_boxes_to_image(boxes, size)
        n, c = probs.shape
        classes = torch.arange(c, device=probs.device).expand(n, c)
        proposal = torch.arange(n, device=probs.device)[:, None].expand(n, c)
        mask = reported[None, :].expand(n, c)
        boxes, scores, classes, proposal = boxes[mask], probs[mask], classes[mask], proposal[mask]
        keep = torch.where(scores > heads.score_thresh)[0]
        boxes, scores, classes, proposal = boxes[keep], scores[keep], classes[keep], proposal[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, classes, proposal = boxes[keep], scores[keep], classes[keep], proposal[keep]
        keep = box_ops.batched_nms(boxes, scores, classes, heads.nms_thresh)[: heads.detections_per_img]
        boxes, scores, classes, proposal = boxes[keep], scores[keep], classes[keep], proposal[keep]
        results.append(
            {"boxes": resize_boxes(boxes, size, original), "labels": model_to_label[classes], "scores": scores, "probs": probs[proposal][:, label_to_model]}
        )
    return results
