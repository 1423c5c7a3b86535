"""Training-loader throughput: HDF5 block loader vs an on-the-fly loader, measured in the same run.

The on-the-fly loader is how public SR-for-detection code feeds its models: for every ROI, decode
its JPEG, crop, resize to HR and down-sample to LR. The block loader reads the shards stage's
HDF5 files in contiguous blocks. Both run with shuffling, batch 64; medians of repeated runs.

    python bench/loader_throughput.py      # after `snakemake --cores 2 eval_coco` (built-in dataset)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from core.crops import crop_hr, make_lr
from core.io.images import open_rgb
from core.io.shards import check_shards, read_manifest, sha256_of, shard_paths
from jobs.mtgan.data import ShardBatches
from pipeline.data.index import read_index

from timing import median_seconds


class OnTheFly(Dataset):
    """ROI i -> (LR, HR, label), decoding and cropping its image every time."""

    def __init__(self, rois: Path, data_index: Path, split: str) -> None:
        t = pq.read_table(rois, columns=["image_id", "x1", "y1", "x2", "y2", "label"]).to_pydict()
        split_files = read_index(data_index)[split]
        coco = json.loads(split_files.annotations.read_text())
        self.files = {im["id"]: split_files.image_root / im["file_name"] for im in coco["images"]}
        self.image_id = t["image_id"]
        self.boxes = np.stack([t[k] for k in ("x1", "y1", "x2", "y2")], axis=1)
        self.labels = t["label"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        hr = crop_hr(open_rgb(self.files[self.image_id[i]]), self.boxes[i], 64)
        return torch.from_numpy(np.array(make_lr(hr, 4))), torch.from_numpy(np.array(hr)), self.labels[i]


def rate(batches, limit: int | None = None) -> float:  # type: ignore[no-untyped-def]
    start, n = time.perf_counter(), 0
    for batch in batches:
        n += len(batch[-1] if isinstance(batch, (list, tuple)) else batch["label"])
        if limit and n >= limit:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("artifacts/builtin"), help="artifacts/<dataset>")
    parser.add_argument("--split", default="train", help="the split of the training role")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--on-the-fly-rois", type=int, default=1500, help="ROIs timed for the slow loader")
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = args.root / "shards" / "train" / "manifest.json"
    print(f"shards: {manifest} ({json.loads(manifest.read_text())['num_rois']} ROIs), batch 64, shuffled")
    results = {}
    for workers in (0, 2):
        runs = []
        for epoch in range(args.repeats):
            ds = ShardBatches(manifest, batch_size=64, seed=0, fields=("lr", "hr", "label", "target"))
            ds.set_epoch(epoch)
            runs.append(rate(DataLoader(ds, batch_size=None, num_workers=workers)))
        results[f"HDF5 blocks, {workers} workers"] = statistics.median(runs)
    slow = OnTheFly(args.root / "rois" / "train.parquet", args.root / "data" / "index.json", args.split)
    runs = []
    for seed in range(args.repeats):
        order = torch.randperm(len(slow), generator=torch.Generator().manual_seed(seed))[: args.on_the_fly_rois].tolist()
        runs.append(rate(DataLoader(torch.utils.data.Subset(slow, order), batch_size=64, num_workers=0), args.on_the_fly_rois))
    baseline = statistics.median(runs)
    results["on the fly (JPEG decode + crop per ROI), 0 workers"] = baseline
    print(f"{'loader':<55} {'pairs/s':>10} {'x on-the-fly':>13}")
    for name, value in results.items():
        print(f"{name:<55} {value:>10.0f} {value / baseline:>13.1f}")

    # The checks a train or infer job makes before it reads (check_shards: files, places, sizes;
    # every byte it reads is checked by HDF5's checksums), against the sha256 of every shard that
    # the jobs made before (audit still makes it), and one epoch of the block loader alone.
    check = median_seconds(lambda: check_shards(manifest), args.repeats)
    rehash = median_seconds(lambda: [sha256_of(p) for p in shard_paths(manifest, read_manifest(manifest))], args.repeats)
    num_rois = json.loads(manifest.read_text())["num_rois"]
    epoch = num_rois / results["HDF5 blocks, 0 workers"]
    print(f"\nchecks before a job reads: {check:.3f} s; sha256 of every shard (audit's): {rehash:.2f} s; one epoch of the block loader alone: {epoch:.2f} s")
