"""Stage 4, shards: every ROI cropped to HR and LR images, stored in sharded HDF5 files.

For each split (role), from its ROI table and images, in three steps:

1. **the plan** (`plan_shards`, one job per role): which rows of the ROI table go into shards and
   which chunk writes each, decided once for the whole split and written beside the shards
   (`plan.parquet`: kept ROIs and their chunk; `images.parquet`: each image's file and chunk;
   their metadata: the counts and the ROI table's sha256). The chunk jobs read their part of it
   and nothing else of the split:
   - the training split is sampled per image, Fast R-CNN style (config `shards.train_sampling`):
     up to `rois_per_image` ROIs, of which up to `positive_fraction` positives (all positives are
     kept when there are fewer), negatives fill the rest; ignored ROIs (label -1) are left out. The
     test split keeps every ROI. Sampling is seeded per image, so it does not depend on the chunking;
   - then, on the training split, `shards.train_small_positive_share` of its small-object
     positives (matched ground truth of area < 32^2, as COCO's APS counts it; ground-truth boxes
     added by `rois.add_gt_to_train` included) are kept: a random subset of the sampled ones, drawn
     from `train_sampling.seed` over the whole split (a lower share keeps a subset of what a higher
     one keeps). 1.0, the default, keeps all of them. `shards.train_small_negative_share` does the
     same to the sampled negatives whose ROI box is small, so that at 0.0 of both D sees no small
     crop at all (a small crop then tells it nothing about the label). Every other ROI, the other
     splits' shards and the stages before are the same whatever the shares (bench/regimes.py);
   - the split's images are cut into `num_chunks` fixed chunks (the fan-out is known before
     anything runs: one Snakemake job per chunk, so `--cores` and a cluster executor both spread
     the work).
2. **the chunks** (`write_chunk`, one job each): images decoded and cropped in parallel (joblib),
   shards written as soon as `rois_per_shard` ROIs are ready, so memory is bounded by one chunk's
   images in flight plus one shard, never by the dataset; each ROI: `crop_hr` (box + context
   margin, bicubic to `hr_size`) and `make_lr` (bicubic `scale`x down-sampling), see `core.crops`.
   A chunk's folder is written under a temporary name and renamed when complete, with
   `chunk.json` listing its shards, their sizes and sha256.
3. **the manifest** (`gather_manifest`): `manifest.json` of the split, gathered from the chunks
   last and checked against the plan. A job killed at any moment leaves no folder or manifest
   that looks complete.

Images that cannot be decoded: an error naming the file (`on_bad_image: error`, the default) or,
with `on_bad_image: skip`, their ROIs are left out and the files are listed in the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from joblib import Parallel, delayed
from tqdm import tqdm

from core.crops import RESIZE_METHOD, crop_hr, make_lr
from core.errors import InputError
from core.io import atomic
from core.io.images import ImageReadError, open_rgb
from core.io.shards import LAYOUT_VERSION, ORIGIN_CODES, ShardSpec, sha256_of, write_manifest, write_shard
from core.io.tables import IMAGES_SCHEMA, PLAN_SCHEMA, ROIS_SCHEMA, TableWriter, checked_metadata, num_rows, read_table, vectors
from core.sizes import SIZE_CLASSES, size_class

log = logging.getLogger(__name__)

CHUNK_MANIFEST = "chunk.json"


@dataclass(frozen=True)
class ShardSettings:
    hr_size: int
    scale: int
    context_margin: float
    rois_per_shard: int
    block_size: int
    num_chunks: int
    on_bad_image: str  # "error" or "skip"
    sampling: dict[str, Any] | None  # {rois_per_image, positive_fraction, seed} for the training split
    small_positives: dict[str, Any] | None = None  # {share, seed} for the training split when share < 1
    small_negatives: dict[str, Any] | None = None  # the same for its small negatives

    @classmethod
    def from_config(cls, shards: dict[str, Any], role: str) -> ShardSettings:
        """From the config's `shards` section; only the training role is sampled and thinned."""
        sampling, share, negative_share = shards["train_sampling"], shards["train_small_positive_share"], shards["train_small_negative_share"]
        train = role == "train"
        return cls(
            hr_size=shards["hr_size"],
            scale=shards["scale"],
            context_margin=shards["context_margin"],
            rois_per_shard=shards["rois_per_shard"],
            block_size=shards["block_size"],
            num_chunks=shards["num_chunks"],
            on_bad_image=shards["on_bad_image"],
            sampling={k: sampling[k] for k in ("rois_per_image", "positive_fraction", "seed")} if sampling["enabled"] and train else None,
            small_positives={"share": share, "seed": sampling["seed"]} if train and share < 1 else None,
            small_negatives={"share": negative_share, "seed": sampling["seed"]} if train and negative_share < 1 else None,
        )

    @property
    def bytes_per_roi(self) -> int:
        lr = self.hr_size // self.scale
        return 3 * (self.hr_size**2 + lr**2) + 100  # images + the table's columns (about 100 bytes)


def sample_rois(labels: np.ndarray, image_ids: np.ndarray, rois_per_image: int, positive_fraction: float, seed: int) -> np.ndarray:
    """Rows kept by Fast R-CNN-style per-image sampling, in table order."""
    keep = []
    order = np.argsort(image_ids, kind="stable")
    bounds = np.flatnonzero(np.diff(image_ids[order])) + 1
    for rows in np.split(order, bounds):
        if rows.size == 0:
            continue
        rng = np.random.default_rng([seed, int(image_ids[rows[0]])])
        pos, neg = rows[labels[rows] > 0], rows[labels[rows] == 0]
        n_pos = min(pos.size, round(positive_fraction * rois_per_image))
        n_neg = min(neg.size, rois_per_image - n_pos)
        keep += [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def chunk_image_ids(coco: dict[str, Any], num_chunks: int) -> list[np.ndarray]:
    """The split's image ids, in file order, cut into `num_chunks` contiguous chunks."""
    return np.array_split(np.asarray([im["id"] for im in coco["images"]], np.int64), num_chunks)


def _crop_image(path: Path, boxes: np.ndarray, hr_size: int, scale: int, margin: float) -> tuple[np.ndarray, np.ndarray] | str:
    try:
        image = open_rgb(path)
    except ImageReadError as e:
        return str(e)
    hr = np.stack([crop_hr(image, box, hr_size, margin) for box in boxes]) if len(boxes) else np.zeros((0, hr_size, hr_size, 3), np.uint8)
    lr = np.stack([make_lr(h, scale) for h in hr]) if len(boxes) else np.zeros((0, hr_size // scale, hr_size // scale, 3), np.uint8)
    return hr, lr


def _columns(table: pa.Table, rows: np.ndarray, num_labels: int) -> dict[str, np.ndarray]:
    """The shard datasets that come from the ROI table, for `rows` of it."""
    t = table.take(pa.array(rows, pa.int64()))

    def col(name: str, dtype: Any) -> np.ndarray:
        return t.column(name).to_numpy().astype(dtype)

    return {
        "roi_id": col("roi_id", np.int64),
        "image_id": col("image_id", np.int64),
        "image_size": np.stack([col("image_width", np.int32), col("image_height", np.int32)], axis=1).reshape(-1, 2),
        "box": np.stack([col(k, np.float32) for k in ("x1", "y1", "x2", "y2")], axis=1).reshape(-1, 4),
        "label": col("label", np.int32),
        "iou": col("iou", np.float32),
        "target": np.stack([col(k, np.float32) for k in ("dx", "dy", "dw", "dh")], axis=1).reshape(-1, 4),
        "base_label": col("base_label", np.int32),
        "base_score": col("base_score", np.float32),
        "base_probs": vectors(t.column("base_probs"), num_labels, "the ROI table"),
        "size_class": _codes(t.column("size_class"), SIZE_CLASSES),
        "origin": _codes(t.column("origin"), ORIGIN_CODES),
    }


def _codes(column: Any, names: tuple[str, ...]) -> np.ndarray:
    """A string column as each value's index in `names` (uint8)."""
    return pc.index_in(column, value_set=pa.array(names)).to_numpy(zero_copy_only=False).astype(np.uint8)


def small_positive_mask(labels: np.ndarray, gt_ann_ids: np.ndarray, coco: dict[str, Any]) -> np.ndarray:
    """Per ROI: a positive whose matched ground-truth object is small by its annotation's `area`
    (COCO's size classes, as APS counts objects)."""
    small_ids = np.fromiter((a["id"] for a in coco.get("annotations", []) if size_class(a["area"]) == "small"), np.int64)
    return (labels > 0) & np.isin(gt_ann_ids, small_ids)


def small_negative_mask(labels: np.ndarray, size_codes: np.ndarray) -> np.ndarray:
    """Per ROI: a negative whose ROI box is small (`size_codes`: its size class, codes of SIZE_CLASSES)."""
    return (labels == 0) & (size_codes == SIZE_CLASSES.index("small"))


THINNING_STREAMS = {"small_positives": 32, "small_negatives": 33}  # each kind's own random stream


def thin(rows: np.ndarray, candidates_mask: np.ndarray, share: float, seed: int, stream: int) -> np.ndarray:
    """`rows` with only round(share * n) of its n candidates (`candidates_mask`: a mask over the
    table) left, a random subset fixed by `seed` and `stream` (a permutation of the candidates, cut
    at the share: a lower share keeps a subset of a higher one's)."""
    candidates = rows[candidates_mask[rows]]
    order = np.random.default_rng([seed, stream]).permutation(len(candidates))
    dropped = candidates[order[round(share * len(candidates)) :]]
    return np.setdiff1d(rows, dropped, assume_unique=True)


@dataclass(frozen=True)
class TableLabels:
    """What sampling and thinning need of a ROI table: its labels, image ids and the masks of its
    small positives and small negatives (about 14 bytes a ROI)."""

    labels: np.ndarray
    image_ids: np.ndarray
    small_positives: np.ndarray
    small_negatives: np.ndarray

    @classmethod
    def read(cls, rois_path: Path, coco: dict[str, Any]) -> TableLabels:
        t = pq.read_table(rois_path, columns=["label", "image_id", "gt_ann_id", "size_class"])
        labels = t.column("label").to_numpy()
        small = small_positive_mask(labels, t.column("gt_ann_id").to_numpy(), coco)
        return cls(labels, t.column("image_id").to_numpy(), small, small_negative_mask(labels, _codes(t.column("size_class"), SIZE_CLASSES)))


def kept_rows(table: TableLabels, settings: ShardSettings) -> np.ndarray:
    """Rows of the ROI table that go into shards: all of them, or the training split's sample, then
    with `settings.small_positives` (`small_negatives`) only that share of its small positives
    (negatives)."""
    if settings.sampling is None:
        rows = np.arange(len(table.labels))
    else:
        s = settings.sampling
        rows = sample_rois(table.labels, table.image_ids, s["rois_per_image"], s["positive_fraction"], s["seed"])
    for kind, mask in (("small_positives", table.small_positives), ("small_negatives", table.small_negatives)):
        thinning = getattr(settings, kind)
        if thinning is not None:
            rows = thin(rows, mask, thinning["share"], thinning["seed"], THINNING_STREAMS[kind])
    return rows


def thinning_counts(table: TableLabels, settings: ShardSettings, kind: str) -> dict[str, Any]:
    """What thinning did to the sampled small positives or negatives (`kind`): the share asked for
    and its seed, how many there were, how many are kept (recorded in the plan and the manifest;
    `mtgan audit` checks the shards against it)."""
    mask = getattr(table, kind)
    sampled = kept_rows(table, dataclasses.replace(settings, small_positives=None, small_negatives=None))
    kept = kept_rows(table, settings)
    thinning = getattr(settings, kind) or {"share": 1.0, "seed": 0}
    return {"share": thinning["share"], "seed": thinning["seed"], "sampled": int(mask[sampled].sum()), "kept": int(mask[kept].sum())}


def plan_shards(rois_path: Path, coco: dict[str, Any], split: str, settings: ShardSettings, out_plan: Path, out_images: Path) -> dict[str, Any]:
    """The split's plan, once for all its chunks: the kept rows of the ROI table with their images
    and chunks (`out_plan`), each image's file and chunk (`out_images`); returns the plan's
    metadata (counts, the ROI table's sha256 and size)."""
    table = TableLabels.read(rois_path, coco)
    rows = kept_rows(table, settings)
    chunks = chunk_image_ids(coco, settings.num_chunks)
    image_ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    chunk_of_image = np.repeat(np.arange(len(chunks), dtype=np.int32), [len(c) for c in chunks])
    order = np.argsort(image_ids, kind="stable")
    chunk_of_row = chunk_of_image[order[np.searchsorted(image_ids[order], table.image_ids[rows])]] if len(rows) else np.zeros(0, np.int32)
    metadata = {
        "split": split,
        "source_table": {"path": str(rois_path), "sha256": sha256_of(rois_path), "num_rows": len(table.labels), "bytes": Path(rois_path).stat().st_size},
        "sampling": settings.sampling,
        "num_rois": len(rows),
        "chunk_rois": np.bincount(chunk_of_row, minlength=len(chunks)).tolist(),
        **{kind: thinning_counts(table, settings, kind) for kind in THINNING_STREAMS if getattr(settings, kind) is not None},
    }
    log.info("split %s: %d of %d ROIs go into shards: about %.2f GB in all", split, len(rows), len(table.labels), len(rows) * settings.bytes_per_roi / 1e9)
    with TableWriter(out_plan, PLAN_SCHEMA, metadata) as plan:
        plan.write({"roi_id": rows.astype(np.int64), "image_id": table.image_ids[rows], "chunk": chunk_of_row})
    with TableWriter(out_images, IMAGES_SCHEMA, {"split": split}) as images:
        images.write({"image_id": image_ids, "file_name": [im["file_name"] for im in coco["images"]], "chunk": chunk_of_image})
    return metadata


@dataclass(frozen=True)
class ChunkPlan:
    """What one image chunk of a split writes: its images and their files, and per image the rows
    of the chunk's sub-table of the ROI table that go into shards."""

    image_ids: np.ndarray
    files: list[str]
    table: pa.Table  # the chunk's rows of the ROI table
    rows_of_image: dict[int, np.ndarray]
    spec: ShardSpec


def read_chunk_plan(plan_path: Path, images_path: Path, rois_path: Path, chunk: int, settings: ShardSettings) -> ChunkPlan:
    """Chunk `chunk`'s part of the plan, and its rows of the ROI table (read by image: the memory of
    one chunk, never the split's)."""
    meta = checked_metadata(plan_path, PLAN_SCHEMA)
    source = meta["source_table"]
    if Path(rois_path).stat().st_size != source["bytes"] or num_rows(rois_path) != source["num_rows"]:
        raise InputError(f"{plan_path}: made from another version of {rois_path}; rerun its shards_plan job")
    images = read_table(images_path, IMAGES_SCHEMA, filters=[("chunk", "=", chunk)])
    planned = read_table(plan_path, PLAN_SCHEMA, filters=[("chunk", "=", chunk)], columns=["roi_id", "image_id"])
    image_ids = images.column("image_id").to_numpy()
    planned_ids = planned.column("roi_id").to_numpy()
    # The planned rows' range first: the table is written image by image, so it names the few row
    # groups that hold the chunk (their statistics), and only those are read; then the chunk's images.
    span = [("roi_id", ">=", int(planned_ids.min())), ("roi_id", "<=", int(planned_ids.max()))] if len(planned_ids) else [("roi_id", "<", 0)]
    table = read_table(rois_path, ROIS_SCHEMA, filters=[*span, ("image_id", "in", image_ids.tolist())] if len(image_ids) else [("roi_id", "<", 0)])
    category_ids = tuple(checked_metadata(rois_path, ROIS_SCHEMA)["category_ids"])
    s = settings
    spec = ShardSpec(s.hr_size, s.scale, s.context_margin, s.block_size, len(category_ids) + 1, category_ids, meta["split"], source["sha256"], RESIZE_METHOD)
    # Rows of the whole table -> rows of the chunk's sub-table (roi_id is the row number), per image.
    local = np.searchsorted(table.column("roi_id").to_numpy(), planned_ids)
    of_row = planned.column("image_id").to_numpy()
    found, first = np.unique(of_row, return_index=True)  # each image's rows are together, in table order
    order = np.argsort(first)
    runs = dict(zip(found[order].tolist(), np.split(local, first[order][1:]))) if len(local) else {}
    empty = np.zeros(0, np.int64)
    return ChunkPlan(image_ids, images.column("file_name").to_pylist(), table, {int(i): runs.get(int(i), empty) for i in image_ids}, spec)


class ShardWriter:
    """Collects cropped ROIs and writes them as shards of `rois_per_shard` into `folder` as soon as
    that many are ready (the last one shorter), recording each in `shards`."""

    def __init__(self, folder: Path, plan: ChunkPlan, chunk: int, rois_per_shard: int) -> None:
        self.folder, self.plan, self.chunk, self.rois_per_shard = folder, plan, chunk, rois_per_shard
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, hr, lr) not yet in a shard
        self.shards: list[dict[str, Any]] = []

    def add(self, rows: np.ndarray, hr: np.ndarray, lr: np.ndarray) -> None:
        self.pending.append((rows, hr, lr))
        self.flush(final=False)

    def flush(self, final: bool) -> None:
        while self.pending and (final or sum(len(p[0]) for p in self.pending) >= self.rois_per_shard):
            r = np.concatenate([p[0] for p in self.pending])
            hr = np.concatenate([p[1] for p in self.pending])
            lr = np.concatenate([p[2] for p in self.pending])
            n = min(len(r), self.rois_per_shard)
            arrays = {"hr": hr[:n], "lr": lr[:n], **_columns(self.plan.table, r[:n], self.plan.spec.num_labels)}
            name = f"shard-{self.chunk:03d}-{len(self.shards):05d}.h5"
            write_shard(self.folder / name, arrays, self.plan.spec, len(self.shards))
            path = self.folder / name
            self.shards.append({"path": name, "chunk": self.chunk, "num_rois": n, "bytes": path.stat().st_size, "sha256": sha256_of(path)})
            self.pending = [(r[n:], hr[n:], lr[n:])] if n < len(r) else []
            if final and not self.pending:
                break


IMAGES_IN_FLIGHT = 16  # per worker: the images whose crops may wait for the writer at once


def cropped(plan: ChunkPlan, image_root: Path, settings: ShardSettings, n_jobs: int) -> Iterator[tuple[np.ndarray, np.ndarray] | str]:
    """Each image's crops of the chunk (`_crop_image`), in order, decoded in parallel a block of
    images at a time: the pool's workers never run more than a block ahead of the writer (joblib
    dispatches a new task whenever one finishes, consumed or not, so without blocks the crops of a
    chunk's images pile up in memory while the writer is slower: measured +865 MB at 16k images)."""
    boxes = np.stack([plan.table.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2")], axis=1)
    block = IMAGES_IN_FLIGHT * max(1, n_jobs)
    with Parallel(n_jobs=n_jobs, return_as="generator", batch_size=4) as pool:
        for start in range(0, len(plan.image_ids), block):
            ids, names = plan.image_ids[start : start + block], plan.files[start : start + block]
            jobs = (
                delayed(_crop_image)(image_root / name, boxes[plan.rows_of_image[int(i)]], settings.hr_size, settings.scale, settings.context_margin)
                for i, name in zip(ids, names)
            )
            yield from pool(jobs)


def write_chunk(
    plan_path: Path, images_path: Path, rois_path: Path, image_root: Path, chunk: int, settings: ShardSettings, out_dir: Path, n_jobs: int = 1
) -> dict[str, Any]:
    """Write the shards of one image chunk of a split (its part of the plan) into `out_dir`
    (replaced whole when done): its images decoded and cropped in parallel, shards written as they
    fill, then `chunk.json`."""
    plan = read_chunk_plan(plan_path, images_path, rois_path, chunk, settings)
    split = plan.spec.split
    results = cropped(plan, image_root, settings, n_jobs)
    skipped: list[str] = []
    written: list[np.ndarray] = []  # rows of the chunk's sub-table that went into shards
    skipped_rois = 0
    with atomic.atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, plan, chunk, settings.rois_per_shard)
        for image_id, result in tqdm(zip(plan.image_ids, results), total=len(plan.image_ids), desc=f"shards {split} chunk {chunk}", unit="img", mininterval=10):
            rows = plan.rows_of_image[int(image_id)]
            if isinstance(result, str):
                if settings.on_bad_image == "error":
                    raise ImageReadError(result + " (set shards.on_bad_image: skip to leave its ROIs out)")
                skipped.append(result)
                skipped_rois += len(rows)
                continue
            writer.add(rows, *result)
            written.append(rows)
        writer.flush(final=True)
        rows_written = np.concatenate(written) if written else np.zeros(0, np.int64)
        info = {
            "chunk": chunk,
            "split": split,
            "shards": writer.shards,
            "skipped_images": skipped,
            "skipped_rois": skipped_rois,
            "num_rois": sum(s["num_rois"] for s in writer.shards),
            "source_table_sha256": plan.spec.source_table_sha256,
            "histograms": _histograms(plan.table.take(pa.array(rows_written, pa.int64()))),
        }
        if info["num_rois"] != len(rows_written):
            raise AssertionError(f"chunk {chunk}: {info['num_rois']} ROIs in shards, {len(rows_written)} written")
        atomic.write_json(tmp / CHUNK_MANIFEST, info, indent=1)
    if skipped:
        log.warning(
            "split %s chunk %d: %d image(s) could not be decoded; their %d ROIs are left out: %s",
            split,
            chunk,
            len(skipped),
            skipped_rois,
            "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else ""),
        )
    log.info("split %s chunk %d: %d ROIs in %d shard(s)", split, chunk, info["num_rois"], len(writer.shards))
    return info


def _histograms(rows: pa.Table) -> dict[str, dict[str, int]]:
    """Label / size-class / origin counts of ROI table rows (the ROIs a chunk wrote), each in the
    order of its values."""
    out = {}
    for key in ("label", "size_class", "origin"):
        counts = pc.value_counts(rows.column(key)).to_pylist() if len(rows) else []
        out[key] = {str(c["values"]): int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"])}
    return out


def _count_order(key: str) -> tuple[int, int, str]:
    """Labels in numeric order (-1, 0, 1, ..., 10), names in alphabetical order."""
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)


def _add_counts(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    for key, counts in part.items():
        for k, v in counts.items():
            total.setdefault(key, {})[k] = total.get(key, {}).get(k, 0) + v


def gather_manifest(rois_path: Path, plan_path: Path, chunk_dirs: list[Path], split: str, settings: ShardSettings, out_path: Path) -> dict[str, Any]:
    """The split's manifest from its chunks' `chunk.json` files. Every count comes from what the
    chunks wrote; it is checked against the plan (less skipped images), and the plan against the
    ROI table (its sha256, computed here once for the split)."""
    meta = checked_metadata(rois_path, ROIS_SCHEMA)
    plan = checked_metadata(plan_path, PLAN_SCHEMA)
    table_sha = sha256_of(rois_path)
    if plan["source_table"]["sha256"] != table_sha:
        raise InputError(f"{plan_path}: made from another version of {rois_path}; rerun its shards_plan job")
    shares = [(plan.get(kind, {}).get("share", 1.0), (getattr(settings, kind) or {}).get("share", 1.0)) for kind in THINNING_STREAMS]
    if plan["sampling"] != settings.sampling or any(a != b for a, b in shares):
        raise InputError(f"{plan_path}: made with other sampling or thinning settings than these; rerun its shards_plan job")
    base = Path(out_path).parent.resolve()
    shards, skipped, skipped_rois = [], [], 0
    histograms: dict[str, dict[str, int]] = {"label": {}, "size_class": {}, "origin": {}}
    if not chunk_dirs:
        raise InputError(f"split {split}: no chunk folders given to gather into {out_path}")
    for d in chunk_dirs:
        if not (Path(d) / CHUNK_MANIFEST).is_file():
            raise InputError(f"{d}: not a finished chunk folder of the shards stage (no {CHUNK_MANIFEST}); run its shards job")
        info = json.loads((Path(d) / CHUNK_MANIFEST).read_text())
        if info["source_table_sha256"] != table_sha:
            raise InputError(f"{d}: made from another version of {rois_path}; rerun its shards job")
        for s in info["shards"]:
            shards.append({**s, "path": os.path.relpath((Path(d) / s["path"]).resolve(), base)})  # from wherever the manifest is
        skipped += info["skipped_images"]
        skipped_rois += info["skipped_rois"]
        _add_counts(histograms, info["histograms"])
    num_rois = sum(s["num_rois"] for s in shards)
    if num_rois + skipped_rois != plan["num_rois"]:
        raise InputError(
            f"split {split}: the chunks hold {num_rois} ROIs and skipped {skipped_rois}; the plan ({plan_path}) gives "
            f"{plan['num_rois']}: are the chunk folders {[str(d) for d in chunk_dirs]} all of them?"
        )
    histograms = {key: dict(sorted(counts.items(), key=lambda kv: _count_order(kv[0]))) for key, counts in histograms.items()}
    doc = {
        "layout_version": LAYOUT_VERSION,
        "split": split,
        "hr_size": settings.hr_size,
        "lr_size": settings.hr_size // settings.scale,
        "scale": settings.scale,
        "margin": settings.context_margin,
        "block_size": settings.block_size,
        "num_labels": len(meta["category_ids"]) + 1,
        "category_ids": list(meta["category_ids"]),
        **({"category_names": list(meta["category_names"])} if "category_names" in meta else {}),
        "resize_method": RESIZE_METHOD,
        # Relative to the manifest's folder, so the manifest reads the same from anywhere.
        "source_table": {"path": os.path.relpath(Path(rois_path).resolve(), base), "sha256": table_sha, "num_rows": plan["source_table"]["num_rows"]},
        "sampling": settings.sampling,
        **{kind: plan[kind] for kind in THINNING_STREAMS if kind in plan},
        "num_rois": num_rois,
        "skipped_images": skipped,
        "skipped_rois": skipped_rois,
        "shards": shards,
        "histograms": histograms,
    }
    write_manifest(out_path, doc)
    log.info(
        "split %s: %d ROIs in %d shards (%.2f GB); labels %s; %d image(s) skipped with %d ROIs",
        split,
        num_rois,
        len(shards),
        sum(s["bytes"] for s in shards) / 1e9,
        histograms["label"],
        len(skipped),
        skipped_rois,
    )
    return doc


def write_shards(rois_path: Path, coco: dict[str, Any], image_root: Path, split: str, settings: ShardSettings, out: Path, n_jobs: int = 1) -> Path:
    """The whole stage in one call (rescore, the benchmarks): the plan, every chunk and the
    manifest of a split, in the layout the rules give them under `out`; the manifest's path. A
    chunk already written (its `chunk.json`) is kept: an interrupted call resumes."""
    plan, images = out / "plan.parquet", out / "images.parquet"
    if not plan.is_file() or not images.is_file():
        plan_shards(rois_path, coco, split, settings, plan, images)
    chunks = [out / f"chunk-{c}" for c in range(settings.num_chunks)]
    for c, chunk in enumerate(chunks):
        if not (chunk / CHUNK_MANIFEST).is_file():
            write_chunk(plan, images, rois_path, image_root, c, settings, chunk, n_jobs=n_jobs)
    gather_manifest(rois_path, plan, chunks, split, settings, out / "manifest.json")
    return out / "manifest.json"
