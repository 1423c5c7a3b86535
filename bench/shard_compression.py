"""Should ROI shards be compressed? Size, write time and block-read speed of one real shard's
images (`hr`, `lr`) stored without compression, with lzf and with gzip (levels 1 and 4), all
chunked in the loader's blocks. Medians of repeated runs; ratios against no compression.

    python bench/shard_compression.py      # after `snakemake --cores 2 eval_coco`
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("artifacts/builtin/shards/train/manifest.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    doc = json.loads(args.manifest.read_text())
    block = doc["block_size"]
    with h5py.File(args.manifest.parent / doc["shards"][0]["path"], "r") as f:
        arrays = {"hr": f["hr"][:], "lr": f["lr"][:]}
    n = len(arrays["hr"])
    options = {
        "none": {},
        "lzf": {"compression": "lzf"},
        "gzip-1": {"compression": "gzip", "compression_opts": 1},
        "gzip-4": {"compression": "gzip", "compression_opts": 4},
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in options.items():
            path = Path(tmp) / f"{name}.h5"
            writes, reads = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                with h5py.File(path, "w") as f:
                    for key, a in arrays.items():
                        f.create_dataset(key, data=a, chunks=(block, *a.shape[1:]), **opts)
                writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                with h5py.File(path, "r") as f:
                    for s in np.random.default_rng(0).permutation(range(0, n, block)):
                        f["hr"][s : s + block], f["lr"][s : s + block]
                reads.append(time.perf_counter() - start)
            rows[name] = (path.stat().st_size, statistics.median(writes), n / statistics.median(reads))
    size0, write0, read0 = rows["none"]
    print(f"one shard of {n} ROIs ({args.manifest.parent.name}), blocks of {block}, {args.repeats} repeats")
    print(f"{'storage':<8} {'MB':>7} {'size':>6} {'write s':>8} {'write':>6} {'read pairs/s':>13} {'read':>6}")
    for name, (size, write, read) in rows.items():
        print(f"{name:<8} {size / 1e6:>7.1f} {size / size0:>6.2f} {write:>8.2f} {write / write0:>6.1f} {read:>13.0f} {read / read0:>6.2f}")


if __name__ == "__main__":
    main()
