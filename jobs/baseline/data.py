"""Images and boxes of a COCO-format split, as torchvision's detectors take them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.boxes import xywh_to_xyxy
from core.io.images import ImageReadError, read_rgb


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1] (torchvision's detectors normalise themselves)."""
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div_(255.0)  # copy: PIL arrays are read-only


class CocoImages(Dataset):
    """The images of a split, for inference: item i is (image tensor, image id, None), or (None,
    image id, the one-line error) for an image that cannot be decoded: the error travels back from
    a DataLoader worker as data, so the caller reports it (or skips the image) as it would without
    workers, rather than as a worker's traceback."""

    def __init__(self, coco: dict[str, Any], image_root: Path) -> None:
        self.images = coco["images"]
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        im = self.images[i]
        try:
            return to_tensor(read_rgb(self.image_root / im["file_name"])), int(im["id"]), None
        except ImageReadError as e:
            return None, int(im["id"]), str(e)


class CocoDetectionTrain(Dataset):
    """Training samples: item (i, flip) is (image, {"boxes" xyxy, "labels" 1..K}), crowd regions left
    out (as torchvision's reference training does). Flips are decided by the sampler, so a seed fixes
    the whole stream of samples whatever the number of workers."""

    def __init__(self, coco: dict[str, Any], image_root: Path, category_ids: list[int]) -> None:
        self.image_root = Path(image_root)
        self.images = coco["images"]
        label = {cid: k + 1 for k, cid in enumerate(category_ids)}
        boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in self.images}
        labels: dict[int, list[int]] = {im["id"]: [] for im in self.images}
        for a in coco["annotations"]:
            if a.get("iscrowd", 0):
                continue
            boxes[a["image_id"]].append(xywh_to_xyxy(list(a["bbox"])))
            labels[a["image_id"]].append(label[a["category_id"]])
        self.boxes = {k: torch.tensor(v, dtype=torch.float32).reshape(-1, 4) for k, v in boxes.items()}
        self.labels = {k: torch.tensor(v, dtype=torch.int64) for k, v in labels.items()}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        i, flip = key
        im = self.images[i]
        image = to_tensor(read_rgb(self.image_root / im["file_name"]))
        boxes = self.boxes[im["id"]].clone()
        if flip:
            image = image.flip(-1)
            width = image.shape[-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        return image, {"boxes": boxes, "labels": self.labels[im["id"]].clone()}


class SeededBatches:
    """Batches of (index, flip) keys for iterations [start, stop): epoch e is a permutation drawn
    from (seed, e), flips from the same stream. Resuming at any iteration gives the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int, hflip: bool, start: int, stop: int) -> None:
        self.n, self.batch_size, self.seed, self.hflip = n, batch_size, seed, hflip
        self.start, self.stop = start, stop
        self.per_epoch = -(-n // batch_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def batch(self, iteration: int) -> list[tuple[int, bool]]:
        epoch, offset = divmod(iteration, self.per_epoch)
        rng = np.random.default_rng([self.seed, epoch])
        order, flips = rng.permutation(self.n), rng.random(self.n) < 0.5
        chosen = order[offset * self.batch_size : (offset + 1) * self.batch_size]
        return [(int(i), bool(self.hflip and flips[i])) for i in chosen]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for iteration in range(self.start, self.stop):
            yield self.batch(iteration)


def collate(batch: list[Any]) -> tuple[Any, ...]:
    return tuple(zip(*batch))


def load_coco(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
