"""Compare two runs' artifacts file by file: what a refactoring must leave unchanged.

Every file under the two `artifacts/<dataset>` folders (logs and benchmarks aside: they hold wall
times) is compared byte for byte. A file that differs is compared again with the measured
throughput fields left out (`pairs_per_s` in metrics.jsonl, `images_per_s` in baseline/metrics.jsonl, both
inside checkpoints): those are timings, not results.

    git worktree add ../before <commit>; (cd ../before && snakemake --cores 2 eval_coco --configfile config/tiny.yaml)
    snakemake --cores 2 eval_coco --configfile config/tiny.yaml
    python bench/compare_artifacts.py ../before/artifacts/tiny artifacts/tiny
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import sys
from pathlib import Path
from typing import Any

import torch

TIMINGS = ("pairs_per_s", "images_per_s")
SKIPPED = ("logs", "benchmarks")  # folders of measured times and logs
PROFILE = "report/profile."  # the run profile: measured times too


def _files(root: Path) -> set[str]:
    names = (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in SKIPPED)
    return {name for name in names if not name.startswith(PROFILE)}


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, (list, tuple)):
        return [_without_timings(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def same_but_timings(a: Path, b: Path) -> bool:
    """Whether two files hold the same results once measured timings are left out."""
    if a.suffix == ".jsonl":
        read = lambda p: [_without_timings(json.loads(line)) for line in p.read_text().splitlines()]  # noqa: E731
    elif a.suffix == ".csv":

        def read(p: Path) -> Any:
            rows = list(csv.DictReader(p.open()))
            return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]
    elif a.suffix == ".pt":
        read = lambda p: _without_timings(torch.load(p, map_location="cpu", weights_only=True))  # noqa: E731
    else:
        return False
    return read(a) == read(b)


def compare(before: Path, after: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """Two runs' files (relative names): byte-identical, differing only in measured timings,
    differing, and present in one run only."""
    names_before, names_after = _files(before), _files(after)
    identical, timing_only, different = [], [], []
    for name in sorted(names_before & names_after):
        if filecmp.cmp(before / name, after / name, shallow=False):
            identical.append(name)
        elif same_but_timings(before / name, after / name):
            timing_only.append(name)
        else:
            different.append(name)
    return identical, timing_only, different, sorted(names_before ^ names_after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    identical, timing_only, different, only = compare(args.before, args.after)
    print(f"{len(identical)} files byte-identical, {len(timing_only)} differ only in measured timings, {len(different)} differ, {len(only)} in one run only")
    for name in timing_only:
        print(f"  timings only: {name}")
    for name in different:
        print(f"  DIFFERENT:    {name}")
    for name in only:
        print(f"  ONE RUN ONLY: {name}")
    sys.exit(1 if different or only else 0)


if __name__ == "__main__":
    main()
