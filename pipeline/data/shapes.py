"""Sprites of the built-in dataset: objects, distractors and backgrounds.

Every object class uses the same outer silhouettes (ellipse, rounded rectangle, hexagon), colours,
aspect ratios and rotations; the classes differ only in an inner pattern whose period is 1/6 to 1/8
of the object's size, each covering about half of it. At 64 px the pattern (8-10 px period) is
plain to see; at 16 px it is at the limit of resolution and at 8 px it blurs into one colour:
exactly the regime MTGAN's super-resolution generator is meant to help in.

Sprites are drawn at several times their final size and down-sampled with a Lanczos filter, which
gives anti-aliased edges. Everything is driven by a `numpy.random.Generator`, so a seed fixes the
pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Object classes, in category-id order (category id = index + 1). Supercategories group patterns
# that look alike (line patterns vs spot patterns): COCO's error analysis uses them for its
# "similar class" confusion.
CLASS_NAMES: tuple[str, ...] = ("stripes", "checks", "grid", "cross", "rings", "dots", "holes")
SUPERCATEGORIES: dict[str, str] = {
    "stripes": "lines",
    "checks": "lines",
    "grid": "lines",
    "cross": "lines",
    "rings": "spots",
    "dots": "spots",
    "holes": "spots",
}
SILHOUETTES: tuple[str, ...] = ("ellipse", "rounded_rect", "hexagon")

RGB = tuple[int, int, int]


def _hsv_colour(rng: np.random.Generator, value: tuple[float, float]) -> RGB:
    """A saturated-ish random colour whose HSV value lies in `value`."""
    h = rng.uniform(0.0, 1.0)
    s = rng.uniform(0.35, 1.0)
    v = rng.uniform(*value)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def contrasting_colours(rng: np.random.Generator) -> tuple[RGB, RGB]:
    """Body and pattern colours with a clear brightness difference (either may be the darker)."""
    dark, light = _hsv_colour(rng, (0.15, 0.45)), _hsv_colour(rng, (0.7, 1.0))
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def _silhouette_mask(kind: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    box = (1, 1, w - 2, h - 2)
    if kind == "ellipse":
        draw.ellipse(box, fill=255)
    elif kind == "rounded_rect":
        draw.rounded_rectangle(box, radius=min(w, h) // 5, fill=255)
    elif kind == "hexagon":
        cx, cy, rx, ry = (w - 1) / 2, (h - 1) / 2, (w - 3) / 2, (h - 3) / 2
        points = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.arange(6) * math.pi / 3]
        draw.polygon(points, fill=255)
    elif kind == "triangle":
        draw.polygon([(w / 2, 1), (w - 2, h - 2), (1, h - 2)], fill=255)
    else:
        raise ValueError(f"unknown silhouette {kind!r}")
    return mask


def _pattern_mask(class_name: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """The class's inner pattern as a mask over the sprite's own (unrotated) frame."""
    w, h = size
    m = min(w, h)
    period = m / rng.uniform(6.0, 8.0)
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    steps = np.arange(-period, max(w, h) + period, period)
    if class_name == "stripes":
        for x in steps:
            draw.rectangle((x, 0, x + period / 2, h), fill=255)
    elif class_name == "checks":
        for i, x in enumerate(steps):
            for j, y in enumerate(steps):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + period, y + period), fill=255)
    elif class_name == "grid":
        width = max(1.0, 0.29 * period)  # about half the area covered, like the other patterns
        for x in steps:
            draw.rectangle((x, 0, x + width, h), fill=255)
            draw.rectangle((0, x, w, x + width), fill=255)
    elif class_name == "cross":  # a lattice of small x marks
        arm, width = 0.35 * period, max(1, round(0.2 * period))
        for x in steps:
            for y in steps:
                cx, cy = x + period / 2, y + period / 2
                draw.line((cx - arm, cy - arm, cx + arm, cy + arm), fill=255, width=width)
                draw.line((cx - arm, cy + arm, cx + arm, cy - arm), fill=255, width=width)
    elif class_name == "rings":  # concentric rings, each half a period wide
        cx, cy = w / 2, h / 2
        n = max(2, int(2 * (m / 2) / period))
        for k in range(n, 0, -1):
            rx, ry = (w / 2) * k / n, (h / 2) * k / n
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255 if k % 2 == 1 else 0)
    elif class_name in ("dots", "holes"):  # dots are painted on, holes go through the body
        r = (0.4 if class_name == "dots" else 0.33) * period
        for x in steps:
            for y in steps:
                draw.ellipse((x + period / 2 - r, y + period / 2 - r, x + period / 2 + r, y + period / 2 + r), fill=255)
    else:
        raise ValueError(f"unknown object class {class_name!r}")
    return mask


def _finish_sprite(rgb: Image.Image, alpha: Image.Image, angle: float, out_size: tuple[int, int] | None) -> Image.Image:
    """Rotate, crop to the visible pixels, and (optionally) down-sample to `out_size`."""
    sprite = rgb.convert("RGBA")
    sprite.putalpha(alpha)
    sprite = sprite.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    bbox = sprite.getchannel("A").getbbox()
    if bbox is not None:
        sprite = sprite.crop(bbox)
    if out_size is not None:
        sprite = sprite.resize(out_size, Image.Resampling.LANCZOS)
    return sprite


def _body_size(render_size: int, aspect: float) -> tuple[int, int]:
    return max(8, round(render_size * math.sqrt(aspect))), max(8, round(render_size / math.sqrt(aspect)))


def render_object(class_name: str, rng: np.random.Generator, render_size: int, aspect: float, angle: float) -> Image.Image:
    """An object of `class_name` as a high-resolution RGBA sprite, rotated and tightly cropped.

    `render_size` is the geometric mean of the unrotated body's sides in pixels (draw large, then
    down-sample with `fit_sprite`), `aspect` its width/height, `angle` its rotation in degrees.
    """
    size = _body_size(render_size, aspect)
    body, pattern = contrasting_colours(rng)
    silhouette = _silhouette_mask(SILHOUETTES[int(rng.integers(len(SILHOUETTES)))], size)
    marks = _pattern_mask(class_name, size, rng)
    if class_name == "holes":
        rgb = Image.new("RGB", size, body)
        alpha = Image.composite(Image.new("L", size, 0), silhouette, marks)
    else:
        rgb = Image.composite(Image.new("RGB", size, pattern), Image.new("RGB", size, body), marks)
        alpha = silhouette
    return _finish_sprite(rgb, alpha, angle, None)


def render_distractor(rng: np.random.Generator, render_size: int, aspect: float, angle: float) -> Image.Image:
    """Clutter that is not an object: a plain, shaded or speckled silhouette without a class pattern."""
    size = _body_size(render_size, aspect)
    silhouette = _silhouette_mask(("ellipse", "rounded_rect", "hexagon", "triangle")[int(rng.integers(4))], size)
    body, other = contrasting_colours(rng)
    style = int(rng.integers(3))
    if style == 0:  # plain
        rgb = Image.new("RGB", size, body)
    elif style == 1:  # linear shading between two colours
        t = np.linspace(0.0, 1.0, size[1])[:, None, None]
        grad = (1 - t) * np.array(body) + t * np.array(other)
        rgb = Image.fromarray(np.broadcast_to(grad, (size[1], size[0], 3)).astype(np.uint8))
    else:  # fine speckle: texture without structure
        noise = rng.random((size[1], size[0], 1)) < 0.5
        rgb = Image.fromarray(np.where(noise, np.array(body), np.array(other)).astype(np.uint8))
    return _finish_sprite(rgb, silhouette, angle, None)


def fit_sprite(sprite: Image.Image, side: float) -> Image.Image:
    """Down-sample a sprite so that its box has area `side`**2, keeping its aspect ratio."""
    w, h = sprite.size
    a = w / h
    out = (max(2, round(side * math.sqrt(a))), max(2, round(side / math.sqrt(a))))
    return sprite.resize(out, Image.Resampling.LANCZOS)


def visible_box(sprite: Image.Image, threshold: int = 64) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1), exclusive end, of pixels at least `threshold`/255 opaque."""
    alpha = np.asarray(sprite.getchannel("A"))
    ys, xs = np.nonzero(alpha >= threshold)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def render_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A textured background: a smooth colour field plus one of three fine textures."""
    w, h = size
    coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    texture = int(rng.integers(3))
    if texture == 0:  # sensor-like noise
        field += rng.normal(0.0, rng.uniform(4, 12), size=(h, w, 1))
    elif texture == 1:  # hatching
        layer = Image.new("L", size, 0)
        draw = ImageDraw.Draw(layer)
        period = rng.uniform(5, 14)
        for x in np.arange(-h, w, period):
            draw.line((x, 0, x + h, h), fill=255, width=1)
        strength = rng.uniform(10, 30)
        field += strength * (np.asarray(layer, dtype=np.float32)[..., None] / 255.0 - 0.5)
    else:  # soft blotches
        layer = Image.new("L", size, 128)
        draw = ImageDraw.Draw(layer)
        for _ in range(int(rng.integers(10, 30))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 30)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(60, 200)))
        layer = layer.filter(ImageFilter.GaussianBlur(3))
        field += 0.35 * (np.asarray(layer, dtype=np.float32)[..., None] - 128.0)
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
