"""Dataset statistics (objects per class and per COCO size range) and a preview picture."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patches

from core.io import atomic  # noqa: E402
from core.io.images import ImageReadError, open_rgb  # noqa: E402
from core.plots import plt
from core.sizes import SIZE_CLASSES, size_class  # noqa: E402

log = logging.getLogger(__name__)


def split_stats(coco: dict[str, Any]) -> dict[str, Any]:
    """Counts of one split. Crowd regions (WIDER FACE: invalid faces) are counted apart: COCO's
    evaluation ignores them."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    objects = [a for a in coco.get("annotations", []) if not a.get("iscrowd", 0)]
    per_image = Counter(a["image_id"] for a in objects)
    counts = [per_image.get(im["id"], 0) for im in coco["images"]]
    by_size = Counter(size_class(a["area"]) for a in objects)
    by_class = Counter(names[a["category_id"]] for a in objects)
    n = len(objects)
    return {
        "images": len(coco["images"]),
        "objects": n,
        "crowd_regions": len(coco.get("annotations", [])) - n,
        "labelled": "annotations" in coco,
        "objects_per_image": {"min": min(counts, default=0), "mean": round(n / max(1, len(counts)), 2), "max": max(counts, default=0)},
        "by_size_class": {s: by_size.get(s, 0) for s in SIZE_CLASSES},
        "size_shares": {s: round(by_size.get(s, 0) / n, 4) if n else 0.0 for s in SIZE_CLASSES},
        "by_class": {names[c["id"]]: by_class.get(names[c["id"]], 0) for c in coco["categories"]},
    }


# Counts the data stage adds per source (built-in generator, COCO validation, WIDER FACE conversion).
EXTRA_ROWS: dict[str, str] = {
    "dropped_objects": "objects left out (no place found)",
    "clipped_boxes": "boxes clipped to their image",
    "dropped_boxes": "boxes outside their image, dropped",
    "invalid_faces": "invalid faces (kept as ignore regions)",
    "zero_size_faces": "zero-size faces, dropped",
    "images_without_faces": "images without faces",
}


def stats_markdown(dataset: str, stats: dict[str, dict[str, Any]]) -> str:
    """Human-readable tables of `stats` (split -> split_stats)."""
    splits = list(stats)
    lines = [f"# Dataset `{dataset}`", "", "| | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]

    def row(label: str, values: list[Any]) -> None:
        lines.append(f"| {label} | " + " | ".join(str(v) for v in values) + " |")

    row("images", [stats[s]["images"] for s in splits])
    row("objects", [stats[s]["objects"] for s in splits])
    row("crowd regions", [stats[s]["crowd_regions"] for s in splits])
    row("objects per image (min / mean / max)", ["{min} / {mean} / {max}".format(**stats[s]["objects_per_image"]) for s in splits])
    for size in SIZE_CLASSES:
        row(f"{size} objects", [f"{stats[s]['by_size_class'][size]} ({100 * stats[s]['size_shares'][size]:.1f}%)" for s in splits])
    for key, label in EXTRA_ROWS.items():
        if key in stats[splits[0]]:
            row(label, [stats[s][key] for s in splits])
    lines += ["", "## Objects per class", "", "| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for name in stats[splits[0]]["by_class"]:
        row(name, [stats[s]["by_class"].get(name, 0) for s in splits])
    return "\n".join(lines) + "\n"


def write_stats(dataset: str, stats: dict[str, dict[str, Any]], json_path: Path, md_path: Path) -> None:
    atomic.write_json(json_path, {"dataset": dataset, "splits": stats}, indent=2)
    atomic.write_text(md_path, stats_markdown(dataset, stats))


def draw_preview(coco: dict[str, Any], image_root: Path, out_png: Path, title: str, n: int = 6) -> int:
    """A grid of the split's first `n` images with their boxes, coloured by class, crowd dashed.

    An image that cannot be read (missing, truncated) is drawn as a grey panel and named in a
    warning; the count is returned. Whether such images stop the pipeline is the shards stage's
    `on_bad_image`."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    colours = plt.get_cmap("tab20")
    images = coco["images"][:n]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    cols = min(3, max(1, len(images)))
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    unreadable = []
    for ax, im in zip(axes.flat, images):
        try:
            ax.imshow(open_rgb(image_root / im["file_name"]))
        except ImageReadError as e:  # a preview is no place to stop the stage: the shards stage decides
            unreadable.append(str(e))
            # a small grey panel stretched to the size the JSON claims: nothing is allocated from a size
            # that was not checked (a header may claim 32000 x 32000)
            ax.imshow(np.full((8, 8, 3), 200, np.uint8), extent=(0, im["width"], im["height"], 0))
            ax.text(im["width"] / 2, im["height"] / 2, "cannot read this image", ha="center", fontsize=8)
        anns = by_image.get(im["id"], [])
        for a in anns:
            x, y, w, h = a["bbox"]
            colour = colours(a["category_id"] % 20)
            ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, lw=1.2, ec=colour, ls="--" if a.get("iscrowd") else "-"))
            if w * h >= 24**2:
                ax.text(x, y - 2, names[a["category_id"]], color="white", fontsize=6, bbox={"fc": colour, "pad": 0.5, "lw": 0}, parse_math=False)
        ax.set_title(f"{im['file_name']} ({len(anns)} boxes)", fontsize=8, parse_math=False)  # user text: drawn as written
    fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    atomic.write_figure(fig, out_png, dpi=90)
    if unreadable:
        log.warning("preview: %d of %d image(s) could not be read and are drawn grey: %s", len(unreadable), len(images), "; ".join(unreadable))
    return len(unreadable)
