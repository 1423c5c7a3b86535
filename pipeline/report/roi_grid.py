"""The paper's Fig 3 from a trained variant and the cached test shards: for small positives, large
positives and negatives, the rows LR (shown up-sampled by nearest neighbour), bicubic 4x, SR from
G and the real HR crop, each captioned with D's probability of the ROI's true label on that input
(and D's predicted class when it differs); a green frame marks the input D sees for that ROI at
test time (`jobs/mtgan/roi_input.py`). ROIs are drawn with a fixed seed, so the picture is the
same on every run. Only G and D forward a few dozen crops: no training or inference stage reruns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle

from core.io.shards import read_manifest, shard_paths
from jobs.mtgan.engine import to_model
from jobs.mtgan.model_file import load_model
from jobs.mtgan.roi_input import through_generator
from jobs.mtgan.settings import DEFAULT_G_MAX_SIDE, PAPER_RULE, RULES
from pipeline.report.style import plt, save

GROUPS: tuple[tuple[str, str], ...] = (
    ("small positives (area < 32²)", "small"),
    ("large positives (area > 96²)", "large"),
    ("negatives (background ROIs)", "negative"),
)


@dataclass
class RoiSample:
    lr: np.ndarray  # (n, L, L, 3) uint8
    hr: np.ndarray  # (n, S, S, 3) uint8
    label: np.ndarray  # (n,)
    box: np.ndarray  # (n, 4) xyxy
    image_size: np.ndarray  # (n, 2) width, height


def sample_rois(manifest: Path, per_group: int = 6, seed: int = 0) -> dict[str, RoiSample]:
    """`per_group` ROIs of each group from the shards of `manifest` (fewer where the split has fewer)."""
    doc = read_manifest(manifest)
    picks: dict[str, list[tuple[int, int]]] = {}
    paths = shard_paths(manifest, doc)
    columns = []
    for s, path in enumerate(paths):
        with h5py.File(path, "r") as f:
            columns.append((s, f["label"][:], f["size_class"][:]))
    rng = np.random.default_rng(seed)
    for _, key in GROUPS:
        candidates = []
        for s, label, size in columns:
            if key == "negative":
                mask = label == 0
            else:
                mask = (label > 0) & (size == (0 if key == "small" else 2))
            candidates += [(s, int(i)) for i in np.flatnonzero(mask)]
        chosen = rng.choice(len(candidates), size=min(per_group, len(candidates)), replace=False) if candidates else []
        picks[key] = sorted(candidates[i] for i in chosen)
    out = {}
    for key, rows in picks.items():
        if not rows:
            continue
        parts: dict[str, list[np.ndarray]] = {"lr": [], "hr": [], "label": [], "box": [], "image_size": []}
        for s in sorted({s for s, _ in rows}):  # each shard opened once, its rows read in order
            index = [i for shard, i in rows if shard == s]
            with h5py.File(paths[s], "r") as f:
                for name in parts:
                    parts[name].append(f[name][index])
        out[key] = RoiSample(*(np.concatenate(parts[name]) for name in ("lr", "hr", "label", "box", "image_size")))
    return out


@torch.inference_mode()
def plot_roi_grid(
    model_path: Path,
    manifest: Path,
    category_names: dict[int, str],
    out_png: Path,
    per_group: int = 6,
    rule: str = PAPER_RULE,
    g_max_side: float = DEFAULT_G_MAX_SIDE,
) -> None:
    """Write the Fig 3 grid of the variant in `model_path` on the ROIs of `manifest`, framing what D
    sees under the test-time rule `rule` (the paper's path by default; `g_max_side`: the threshold
    of a rule that reads it, config `infer.g_max_side`)."""
    device = torch.device("cpu")
    model = load_model(model_path, device)
    variant, g, d, state = model.variant, model.g, model.d, model.state
    names = {0: "background", **{k + 1: category_names.get(cid, str(cid)) for k, cid in enumerate(state["category_ids"])}}
    samples = sample_rois(manifest, per_group)
    margin = read_manifest(manifest)["margin"]
    row_names = ["LR (nearest)", "bicubic 4x", f"SR ({'G' if variant.generator == 'learned' else variant.generator})", "HR (real)"]
    n_rows = len(row_names) * len(samples)
    fig, axes = plt.subplots(
        max(1, n_rows), per_group, figsize=(1.3 * per_group + 1.2, 1.55 * max(1, n_rows) + 0.6), squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.45}
    )
    for ax in axes.flat:
        ax.axis("off")
    r = 0
    for title, key in GROUPS:
        if key not in samples:
            continue
        sample = samples[key]
        lr, hr = to_model(torch.from_numpy(sample.lr), device), to_model(torch.from_numpy(sample.hr), device)
        scale = hr.shape[-1] // lr.shape[-1]
        sr = g(lr).clamp(-1, 1) if g is not None else hr
        inputs = [
            F.interpolate(lr, scale_factor=scale, mode="nearest"),
            F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1),
            sr,
            hr,
        ]
        use_g = through_generator(sample.box, sample.image_size, margin, rule, g_max_side, variant)
        for row, (name, images) in enumerate(zip(row_names, inputs)):
            probs = torch.softmax(d(images)["cls"].float(), dim=1)
            for c in range(len(sample.label)):
                ax = axes[r, c]
                ax.imshow(((images[c].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(), interpolation="nearest")
                true = int(sample.label[c])
                predicted = int(probs[c].argmax())
                caption = f"{names[true]}: D {probs[c, true]:.2f}"
                if predicted != true:
                    caption += f"\n(D says {names[predicted]})"
                ax.set_title(caption, fontsize=6, color="black" if predicted == true else "#b22222")
                if row == (2 if use_g[c] else 3):  # what D sees for this ROI at test time
                    ax.add_patch(Rectangle((-0.5, -0.5), images.shape[-1], images.shape[-2], fill=False, lw=2.5, ec="#2e8b57"))
            heading = f"{title}\n" if name == row_names[0] else ""
            axes[r, 0].text(
                -0.12, 0.5, heading + name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8, fontweight="bold" if heading else "normal"
            )
            r += 1
    fig.subplots_adjust(left=0.2, right=0.99, top=1 - 0.95 / fig.get_figheight(), bottom=0.01)
    fig.suptitle(
        f"{variant.name}: test ROIs as LR / bicubic / SR / HR, captioned with D's probability of the true label "
        f"(red: D predicts another class); green frame: what D sees on the {RULES[rule].label}",
        fontsize=9,
        y=1 - 0.2 / fig.get_figheight(),
    )
    save(fig, out_png)
