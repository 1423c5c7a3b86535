"""What G gives D at test time: D's accuracy on dev positives by crop size, via G and via the HR crop.

For each recipe of `bench/dev_sweep.py` (run it first: this reads its cached per-ROI predictions,
`artifacts/<dataset>/dev_sweep/<recipe>/dev_predictions.npz`, made on every dev ROI both ways),
prints the share of positive dev ROIs whose class D names, per range of the crop's longer side in
image pixels, when D sees G's output (SBU: the bilinear up-sampler's) and when it sees the 64x64 HR
crop. For crops of at most the LR size (16 px) the HR crop is an up-sampling of the very pixels the
LR image holds, so G earns its place only where it beats that column.

    python bench/dev_sweep.py && python bench/g_path_accuracy.py
    python bench/g_path_accuracy.py --recipes mtgan,sbu --dataset builtin
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.crops import crop_sides
from core.io.shards import read_manifest
from core.io.tables import ROIS_SCHEMA, read_table

REPO = Path(__file__).resolve().parents[1]

RANGES = ((0.0, 16.0), (16.0, 32.0), (32.0, float("inf")))


def _label(lo: float, hi: float) -> str:
    return f"crop <= {hi:g} px" if lo == 0 else (f"crop > {lo:g} px" if hi == float("inf") else f"{lo:g}-{hi:g} px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--recipes", default="mtgan,sbu", help="comma-separated dev_sweep recipe names")
    args = parser.parse_args()
    root = Path("artifacts") / args.dataset
    rois = read_table(root / "rois/dev.parquet", ROIS_SCHEMA).to_pydict()
    order = np.argsort(rois["roi_id"])
    boxes = np.stack([np.asarray(rois[k])[order] for k in ("x1", "y1", "x2", "y2")], axis=1)
    sizes = np.stack([np.asarray(rois[k])[order] for k in ("image_width", "image_height")], axis=1)
    sides = crop_sides(boxes, sizes, read_manifest(root / "shards/dev/manifest.json")["margin"])
    print(f"D's accuracy (%) on positive dev ROIs, by crop side, seen via G (or the up-sampler) / via the HR crop ({root})\n")
    print("| recipe | " + " | ".join(f"{_label(lo, hi)}: via G / via HR" for lo, hi in RANGES) + " |")
    print("|---|" + "---:|" * len(RANGES))
    for recipe in args.recipes.split(","):
        cache = root / "dev_sweep" / recipe / "dev_predictions.npz"
        if not cache.is_file():
            raise SystemExit(f"{cache}: missing; run `python bench/dev_sweep.py --recipes {recipe}` first")
        pred = np.load(cache)
        if not np.array_equal(pred["roi_id"], np.asarray(rois["roi_id"])[order]):
            raise SystemExit(f"{cache}: made for other dev ROIs than {root}/rois/dev.parquet; rerun bench/dev_sweep.py")
        label = pred["label"]
        cells = []
        for lo, hi in RANGES:
            keep = (label >= 1) & (sides > lo) & (sides <= hi)
            via_g = (pred["g_probs"][keep].argmax(1) == label[keep]).mean()
            via_hr = (pred["hr_probs"][keep].argmax(1) == label[keep]).mean()
            cells.append(f"{100 * via_g:.1f} / {100 * via_hr:.1f} (n {keep.sum()})")
        print(f"| {recipe} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
