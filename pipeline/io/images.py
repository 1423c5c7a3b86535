"""Reading images: one function, so greyscale, palette, RGBA and CMYK files all become RGB the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import PipelineError


class ImageReadError(PipelineError, OSError):
    """An image file that cannot be decoded; the message names the file."""


def open_rgb(path: Path) -> Image.Image:
    """The image at `path`, decoded and converted to RGB."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as an (H, W, 3) uint8 RGB array."""
    return np.asarray(open_rgb(path))
