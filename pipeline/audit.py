"""`mtgan audit`: check a split's cached ROI shards against their manifest and ROI table.

Checks, each problem named with its shard:
- the manifest matches its schema; every listed shard exists, and no unlisted `.h5` file lies beside
  them (temporary folders of interrupted writes are named as leftovers, not as damage: the next run
  of their stage removes them); each shard's sha256 equals the manifest's (so a single flipped byte is caught);
- each shard's layout version, attributes, datasets, shapes and dtypes match
  `schemas/shard_layout.yaml` and the manifest; its ROI count matches the manifest;
- the shards' label / size-class / origin counts equal the manifest's histograms;
- against the ROI table: the table is the one the shards were made from (sha256), every ROI id
  exists in it with the same image, label and IoU, and the number of ROIs is what the table and the
  sampling settings give.
It also tabulates labels, size classes and IoUs, and draws random LR / HR pairs.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq

from core.io import atomic
from core.io.shards import LAYOUT_VERSION, ORIGIN_CODES, layout, place_problem, read_manifest, sha256_of, shapes
from core.sizes import SIZE_CLASSES
from pipeline.shards import THINNING_STREAMS, ShardSettings, TableLabels, kept_rows

IOU_BINS = np.linspace(0.0, 1.0, 11)


@dataclass
class AuditReport:
    manifest: Path
    num_rois: int = 0
    problems: list[str] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    origins: Counter = field(default_factory=Counter)
    iou_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(IOU_BINS) - 1, np.int64))
    # Temporary files and folders of interrupted writes (not damage: the next run of their stage removes them).
    leftovers: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"# Audit of {self.manifest}: {self.num_rois} ROIs", "", "| label | ROIs |", "|---|---:|"]
        names = {-1: "-1 (ignored)", 0: "0 (background)"}
        lines += [f"| {names.get(k, k)} | {v} |" for k, v in sorted(self.labels.items())]
        lines += ["", "| size class | ROIs |", "|---|---:|"] + [f"| {s} | {self.sizes.get(s, 0)} |" for s in SIZE_CLASSES]
        lines += ["", "| origin | ROIs |", "|---|---:|"] + [f"| {o} | {self.origins.get(o, 0)} |" for o in ORIGIN_CODES]
        lines += ["", "| IoU | ROIs |", "|---|---:|"]
        lines += [f"| {lo:.1f}-{hi:.1f} | {n} |" for lo, hi, n in zip(IOU_BINS[:-1], IOU_BINS[1:], self.iou_hist)]
        if self.leftovers:
            lines += ["", f"Leftovers of interrupted runs (not damage; the next run of their stage removes them): {', '.join(self.leftovers)}"]
        return "\n".join(lines) + "\n"


def _manifest_path(target: Path) -> Path:
    target = Path(target)
    return target / "manifest.json" if target.is_dir() else target


def _check_shard(path: Path, entry: dict[str, Any], doc: dict[str, Any], report: AuditReport) -> dict[str, np.ndarray] | None:
    """Layout checks of one shard; its small columns when readable."""
    name = entry["path"]
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        report.problems.append(f"{name}: not a readable HDF5 file ({e})")
        return None
    with f:
        if f.attrs.get("layout_version") != LAYOUT_VERSION:
            report.problems.append(f"{name}: layout_version {f.attrs.get('layout_version')}, expected {LAYOUT_VERSION}")
        for key in ("hr_size", "lr_size", "scale", "block_size"):
            if f.attrs.get(key) != doc[key]:
                report.problems.append(f"{name}: attribute {key} is {f.attrs.get(key)}, the manifest says {doc[key]}")
        if f.attrs.get("num_rois") != entry["num_rois"]:
            report.problems.append(f"{name}: holds {f.attrs.get('num_rois')} ROIs, the manifest says {entry['num_rois']}")
        expected = shapes(entry["num_rois"], doc["hr_size"], doc["lr_size"], doc["num_labels"])
        for ds, spec in layout().items():
            if ds not in f:
                report.problems.append(f"{name}: dataset {ds} is missing")
            elif f[ds].shape != expected[ds] or f[ds].dtype != np.dtype(spec["dtype"]):
                report.problems.append(f"{name}: dataset {ds} is {f[ds].dtype}{f[ds].shape}, expected {spec['dtype']}{expected[ds]}")
        if any(p.startswith(f"{name}:") for p in report.problems):
            return None
        try:
            for ds, spec in layout().items():  # every number finite (NaN would pass every other check)
                if np.dtype(spec["dtype"]).kind == "f" and not np.isfinite(f[ds][:]).all():
                    report.problems.append(f"{name}: dataset {ds} holds NaN or infinity")
            return {k: f[k][:] for k in ("roi_id", "image_id", "label", "iou", "size_class", "origin")}
        except OSError as e:  # a checksum that does not match, a damaged chunk
            report.problems.append(f"{name}: cannot read its columns ({e})")
            return None


def audit(target: Path, rois_table: Path | None = None) -> tuple[AuditReport, list[Path]]:
    """Audit the shards of a split (its folder or manifest); the report and the readable shards."""
    manifest = _manifest_path(target)
    report = AuditReport(manifest)
    doc = read_manifest(manifest)
    base = manifest.parent
    listed = {(base / s["path"]).resolve() for s in doc["shards"]}
    leftovers = sorted(p for p in base.rglob(".tmp-*") if atomic.is_leftover(p) and not any(atomic.is_leftover(q) for q in p.parents))
    report.leftovers = [str(p.relative_to(base)) for p in leftovers]
    for stray in sorted(p for p in base.rglob("*.h5") if p.resolve() not in listed):
        if not any(stray.is_relative_to(p) for p in leftovers):
            report.problems.append(f"{stray.relative_to(base)}: a shard file that the manifest does not list")
    columns, readable = [], []
    for entry in doc["shards"]:
        path = base / entry["path"]
        if (problem := place_problem(manifest, entry["path"], base)) is not None:
            report.problems.append(problem)
            continue
        if not path.is_file():
            report.problems.append(f"{entry['path']}: listed in the manifest but missing")
            continue
        if sha256_of(path) != entry["sha256"]:
            report.problems.append(f"{entry['path']}: sha256 differs from the manifest (the file changed or is corrupt)")
            continue
        cols = _check_shard(path, entry, doc, report)
        if cols is not None:
            columns.append(cols)
            readable.append(path)
    report.num_rois = sum(len(c["roi_id"]) for c in columns)
    if report.num_rois != doc["num_rois"] and not report.problems:
        report.problems.append(f"the shards hold {report.num_rois} ROIs, the manifest says {doc['num_rois']}")
    for c in columns:
        report.labels.update(c["label"].tolist())
        report.sizes.update(SIZE_CLASSES[i] for i in c["size_class"])
        report.origins.update(ORIGIN_CODES[i] for i in c["origin"])
        report.iou_hist += np.histogram(np.clip(c["iou"], 0, 1), IOU_BINS)[0]
    if len(columns) == len(doc["shards"]):
        found = {"label": {str(k): v for k, v in sorted(report.labels.items())}, "size_class": dict(report.sizes), "origin": dict(report.origins)}
        for key, counts in found.items():
            if {k: v for k, v in counts.items() if v} != {k: v for k, v in doc["histograms"][key].items() if v}:
                report.problems.append(f"{key} counts of the shards {counts} differ from the manifest's {doc['histograms'][key]}")
    run = base.parent.parent  # artifacts/<dataset>: the shards' ROI table is the run's own
    if rois_table is None and (problem := place_problem(manifest, doc["source_table"]["path"], run)) is not None:
        report.problems.append(f"the ROI table: {problem}")
    else:
        _check_against_table(Path(rois_table) if rois_table else base / doc["source_table"]["path"], doc, columns, report)
    return report, readable


def _check_against_table(path: Path, doc: dict[str, Any], columns: list[dict[str, np.ndarray]], report: AuditReport) -> None:
    if not path.is_file():
        report.problems.append(f"ROI table {path} not found: cannot check the shards against it")
        return
    if sha256_of(path) != doc["source_table"]["sha256"]:
        report.problems.append(f"ROI table {path} is not the one the shards were made from (sha256 differs): rerun the shards stage")
        return
    table = pq.read_table(path, columns=["roi_id", "image_id", "label", "iou"])
    image_id, label, iou = (table.column(k).to_numpy() for k in ("image_id", "label", "iou"))
    settings = ShardSettings(doc["hr_size"], doc["scale"], doc["margin"], 1, doc["block_size"], 1, "error", doc["sampling"])
    none = np.zeros(len(label), bool)
    planned = kept_rows(TableLabels(label, image_id, none, none), settings)  # sampled, before any thinning
    # the split's ground truth is not at hand: the thinning's recorded counts
    thinned = {kind.replace("_", " "): doc[kind]["sampled"] - doc[kind]["kept"] for kind in THINNING_STREAMS if kind in doc}
    expected = len(planned) - sum(thinned.values())
    if doc["num_rois"] + doc["skipped_rois"] != expected:
        report.problems.append(
            f"the manifest lists {doc['num_rois']} ROIs and {doc['skipped_rois']} skipped; the ROI table and sampling settings give {expected}"
            + "".join(f" (less the {n} {kind} the manifest says were left out)" for kind, n in thinned.items())
        )
    for entry, c in zip(doc["shards"], columns):
        ids = c["roi_id"]
        if ids.size and (ids.min() < 0 or ids.max() >= len(label)):
            report.problems.append(f"{entry['path']}: ROI ids outside the table's {len(label)} rows")
            continue
        for name, ours, theirs in (("image id", c["image_id"], image_id[ids]), ("label", c["label"], label[ids]), ("IoU", c["iou"], iou[ids])):
            bad = np.flatnonzero(ours != theirs)
            if bad.size:
                report.problems.append(f"{entry['path']}: {bad.size} ROI(s) whose {name} differs from the table (first: roi {ids[bad[0]]})")
    _check_coverage(doc, columns, planned, report)


def _check_coverage(doc: dict[str, Any], columns: list[dict[str, np.ndarray]], planned: np.ndarray, report: AuditReport) -> None:
    """Each ROI of the shards is one the table and sampling plan, and none is in them twice."""
    if not columns:
        return
    ids = np.concatenate([c["roi_id"] for c in columns])
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        twice = unique[counts > 1]
        where = [e["path"] for e, c in zip(doc["shards"], columns) if twice[0] in c["roi_id"]]
        report.problems.append(f"{twice.size} ROI(s) are in the shards more than once (first: roi {twice[0]}, in {where}): a copied chunk?")
    unplanned = np.setdiff1d(unique, planned)
    if unplanned.size:
        report.problems.append(f"{unplanned.size} ROI(s) in the shards that the table and sampling settings leave out (first: roi {unplanned[0]})")


def draw_pairs(shards: list[Path], out_png: Path, count: int = 32, seed: int = 0) -> None:
    """A grid of random LR (nearest-neighbour up-sampled for display) / HR pairs with label and IoU."""
    from core.plots import plt

    rng = np.random.default_rng(seed)
    picks = []
    for _ in range(count):
        if not shards:
            break
        path = shards[int(rng.integers(len(shards)))]
        with h5py.File(path, "r") as f:
            n = f.attrs["num_rois"]
            if n:
                i = int(rng.integers(n))
                categories = json.loads(f.attrs["category_ids"])
                picks.append((f["lr"][i], f["hr"][i], int(f["label"][i]), float(f["iou"][i]), categories))
    cols = 8
    rows = max(1, -(-len(picks) // (cols // 2)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (lr, hr, label, iou, categories) in enumerate(picks):
        scale = hr.shape[0] // lr.shape[0]
        a, b = axes.flat[2 * k], axes.flat[2 * k + 1]
        a.imshow(np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1))
        b.imshow(hr)
        what = "ignored" if label < 0 else "bg" if label == 0 else f"cat {categories[label - 1]}"
        a.set_title(f"LR {what}", fontsize=6)
        b.set_title(f"HR IoU {iou:.2f}", fontsize=6)
    fig.suptitle("Random ROIs: LR (left, nearest-neighbour x4) and HR (right)", fontsize=9)
    fig.tight_layout()
    atomic.write_figure(fig, Path(out_png), dpi=110)
