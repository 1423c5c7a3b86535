"""Reading images: one function, so greyscale, palette, RGBA and CMYK files all become RGB the same way.

Pillow converts its integer modes to RGB without scaling (a 16-bit PNG's mid-grey 32768 would
clip to white), so 16-bit greyscale (`I;16*`, and `I` holding 16-bit values) is scaled to 8 bits
here (value / 257, rounded); 32-bit integer and float images have no agreed range and are refused,
naming the file and its mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import PipelineError


class ImageReadError(PipelineError, OSError):
    """An image file that cannot be decoded; the message names the file."""


def open_rgb(path: Path) -> Image.Image:
    """The image at `path`, decoded and converted to RGB."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16") or im.mode == "I":
                return _sixteen_bit_grey(im, path).convert("RGB")
            if im.mode == "F":
                raise ImageReadError(f"{path}: a floating-point image (mode F) has no known range of values; convert it to 8-bit RGB first")
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def _sixteen_bit_grey(im: Image.Image, path: Path) -> Image.Image:
    """A 16-bit greyscale image scaled to 8 bits (mode L)."""
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageReadError(f"{path}: a {im.mode} image with values outside 0..65535 (32-bit?); convert it to 8-bit RGB first")
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")


def read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as an (H, W, 3) uint8 RGB array."""
    return np.asarray(open_rgb(path))
