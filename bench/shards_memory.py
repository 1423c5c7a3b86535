"""Peak memory of one shards job on the built-in dataset and on a 4x larger copy of it.

The 4x copy repeats every image of the split four times (new image ids, the same files) and its
ROI table four times, with the same number of chunks, so each chunk holds 4x the images and ROIs.
Each job runs in its own process with one worker (`--jobs 1`); its peak resident memory is read
from the kernel (ru_maxrss). A flat ratio shows memory is bounded by a shard, not by the dataset.

    python bench/shards_memory.py          # after `snakemake --cores 2 eval_coco`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from core.io.tables import ROIS_SCHEMA, read_table, write_table


def enlarge(root: Path, split: str, role: str, factor: int, out: Path) -> tuple[Path, Path]:
    """A data index and ROI table for `factor` copies of the split."""
    index = json.loads((root / "data" / "index.json").read_text())
    entry = index["splits"][split]
    coco = json.loads((root / "data" / entry["annotations"]).read_text())
    step = max(im["id"] for im in coco["images"]) + 1
    coco["images"] = [{**im, "id": im["id"] + k * step} for k in range(factor) for im in coco["images"]]
    coco["annotations"] = [{**a, "id": a["id"] + k * 10**9, "image_id": a["image_id"] + k * step} for k in range(factor) for a in coco["annotations"]]
    (out / f"{split}.json").write_text(json.dumps(coco))
    index["splits"] = {
        split: {**entry, "annotations": f"{split}.json", "image_root": str((root / "data" / entry["image_root"]).resolve()), "num_images": len(coco["images"])}
    }
    (out / "index.json").write_text(json.dumps(index))
    table = read_table(root / "rois" / f"{role}.parquet", ROIS_SCHEMA)
    copies = []
    for k in range(factor):
        image_id = pa.array(table.column("image_id").to_numpy() + k * step)
        roi_id = pa.array(table.column("roi_id").to_numpy() + k * table.num_rows)
        copies.append(table.set_column(0, "roi_id", roi_id).set_column(1, "image_id", image_id))
    write_table(pa.concat_tables(copies).replace_schema_metadata(table.schema.metadata), out / f"{split}.parquet")
    return out / "index.json", out / f"{split}.parquet"


def run_chunk(index: Path, rois: Path, split: str, role: str, out: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of one shards job (chunk 0) in a fresh process."""
    code = (
        "import resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
    )
    cmd = [
        sys.executable,
        "-c",
        code,
        sys.executable,
        "-m",
        "pipeline.cli",
        "shards",
        "--config",
        "config/default.yaml",
        "--data-index",
        str(index),
        "--split",
        split,
        "--role",
        role,
        "--rois",
        str(rois),
        "--chunk",
        "0",
        "--out",
        str(out),
        "--jobs",
        "1",
    ]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("artifacts/builtin"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--role", default="test", help="test keeps every ROI (no sampling): the heavier case")
    parser.add_argument("--factor", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        big = tmp_path / "big"
        big.mkdir()
        big_index, big_rois = enlarge(args.root, args.split, args.role, args.factor, big)
        runs = {
            "built-in dataset": run_chunk(
                args.root / "data" / "index.json", args.root / "rois" / f"{args.role}.parquet", args.split, args.role, tmp_path / "a"
            ),
            f"{args.factor}x larger": run_chunk(big_index, big_rois, args.split, args.role, tmp_path / "b"),
        }
        counts = {name: sum(s["num_rois"] for s in json.loads((tmp_path / d / "chunk.json").read_text())["shards"]) for name, d in zip(runs, ("a", "b"))}
    base = runs["built-in dataset"][0]
    print(f"one shards job (chunk 0 of split {args.split}, 1 worker)")
    print(f"{'dataset':<20} {'ROIs in chunk':>14} {'peak RSS MB':>12} {'x built-in':>11} {'seconds':>8}")
    for name, (rss, seconds) in runs.items():
        print(f"{name:<20} {counts[name]:>14} {rss:>12.0f} {rss / base:>11.2f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
