"""Crop and resize against an independent computation (torch's anti-aliased bicubic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from core.crops import crop_hr, make_lr, roi_region
from core.io.images import ImageReadError, open_rgb


def torch_bicubic(pixels: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.round().clamp(0, 255)[0].permute(1, 2, 0).numpy().astype(np.int16)


@pytest.fixture
def image() -> Image.Image:
    noise = (np.random.default_rng(0).random((120, 150, 3)) * 255).astype(np.uint8)
    return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.5))


@pytest.mark.parametrize("box", [(10, 20, 90, 100), (0, 0, 150, 120), (40, 10, 104, 74)])
def test_hr_crop_shrinking_matches_torch(image: Image.Image, box: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = box
    ours = crop_hr(image, np.array(box, np.float32), 64).astype(np.int16)
    reference = torch_bicubic(np.asarray(image)[y1:y2, x1:x2], 64)
    assert ours.shape == (64, 64, 3)
    assert np.abs(ours - reference).max() <= 2


@pytest.mark.parametrize("box", [(30, 40, 46, 56), (5, 5, 13, 13)])
def test_hr_crop_enlarging_matches_torch_inside(image: Image.Image, box: tuple[int, int, int, int]) -> None:
    """Enlarging small ROIs: the filters agree inside; Pillow and torch pad borders differently."""
    x1, y1, x2, y2 = box
    ours = crop_hr(image, np.array(box, np.float32), 64).astype(np.int16)
    reference = torch_bicubic(np.asarray(image)[y1:y2, x1:x2], 64)
    assert np.abs(ours - reference)[8:-8, 8:-8].max() <= 2
    assert np.abs(ours - reference).mean() < 1.0


def test_lr_is_the_bicubic_quarter(image: Image.Image) -> None:
    hr = crop_hr(image, np.array([10, 20, 90, 100], np.float32), 64)
    lr = make_lr(hr, 4)
    assert lr.shape == (16, 16, 3) and lr.dtype == np.uint8
    assert np.abs(lr.astype(np.int16) - torch_bicubic(hr, 16)).max() <= 2
    with pytest.raises(ValueError, match="not a multiple"):
        make_lr(hr, 5)


def test_sub_pixel_boxes_are_honoured(image: Image.Image) -> None:
    """A box shifted by half a pixel gives a different crop: no rounding to whole pixels."""
    a = crop_hr(image, np.array([10.0, 20.0, 42.0, 52.0]), 64).astype(int)
    b = crop_hr(image, np.array([10.5, 20.0, 42.5, 52.0]), 64).astype(int)
    assert np.abs(a - b).mean() > 1.0


def test_roi_region_margin_clip_and_minimum_size() -> None:
    assert roi_region(np.array([10, 10, 30, 20]), 100, 100, 0.5) == (0.0, 5.0, 40.0, 25.0)
    assert roi_region(np.array([90, 90, 110, 120]), 100, 100, 0.0) == (90.0, 90.0, 100.0, 100.0)
    x1, y1, x2, y2 = roi_region(np.array([50.2, 60, 50.4, 60.1]), 100, 100, 0.0)
    assert x2 - x1 == pytest.approx(1.0) and y2 - y1 == pytest.approx(1.0)
    x1, _, x2, _ = roi_region(np.array([99.9, 0, 100, 5]), 100, 100, 0.0)
    assert (x1, x2) == (99.0, 100.0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_every_image_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"x.{'jpg' if mode in ('L', 'CMYK') else 'png'}"
    Image.new(mode, (20, 10)).save(path)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (20, 10)
    assert crop_hr(image, np.array([0, 0, 20, 10]), 16).shape == (16, 16, 3)


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg: cannot decode"):
        open_rgb(path)
