"""The MTGAN training job's speed in a process whose infer code ran first: why the infer stage's
heap bound (`jobs.common.bounded_host_heap`) is given back when its batches are done.

The infer stage serves every allocation of 1 MiB or more from its own mapping, so that its memory
stays flat over the ROIs. The setting is the process's: the bench scripts that score models and
then train others in one process (`bench/seeds.py`, `bench/regimes.py`, `bench/baselines.py`)
trained under it. Each arm runs in a fresh process (the setting cannot be undone within one) and
times `train_mtgan` itself (the shards read, the crops batched, D and G stepped) on a run's
training shards for `--pretrain` MSE and `--iterations` GAN steps of the preset:

- `glibc`: glibc's own rule (the threshold rises to the largest block freed, up to 32 MiB);
- `bound left set`: the bound entered and never left (what infer did before);
- `bound given back`: the bound entered and left (what infer does now).

    snakemake --cores 8 eval_coco && python bench/heap_after_infer.py    # the default run's shards
    python bench/heap_after_infer.py --manifest artifacts/tiny/shards/train/manifest.json --preset tiny
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs.common import bounded_host_heap
from jobs.mtgan.settings import VARIANTS, resolve_preset
from jobs.mtgan.train import train_mtgan

ARMS = ("glibc", "bound left set", "bound given back")


def arm_rate(arm: str, manifest: Path, preset_name: str, pretrain: int, iterations: int) -> float:
    """Steps a second of the training job in this process, after `arm`."""
    bound = bounded_host_heap()
    if arm == "bound left set":
        bound.__enter__()  # entered, never left (`bound` lives on: its collection would leave it)
    elif arm == "bound given back":
        with bound:
            pass
    preset = resolve_preset(preset_name, {"pretrain_iterations": pretrain, "iterations": iterations, "epochs": None})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_mtgan(manifest, VARIANTS["mtgan"], preset, Path(out) / "model", "cpu", threads=2)
        return (pretrain + iterations) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("artifacts/builtin/shards/train/manifest.json"))
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--pretrain", type=int, default=150)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--arm", choices=ARMS, help="measure one arm in this process (what each child process runs)")
    args = parser.parse_args()
    if args.arm:
        print(arm_rate(args.arm, args.manifest, args.preset, args.pretrain, args.iterations))
        return
    print(f"{args.manifest}, preset {args.preset}: {args.pretrain} + {args.iterations} steps an arm, 2 threads, each arm in its own process")
    print(f"{'arm':<18} {'steps/s':>8} {'x glibc':>8}")
    first = None
    for arm in ARMS:
        child = [sys.executable, __file__, "--arm", arm, "--manifest", str(args.manifest), "--preset", args.preset]
        child += ["--pretrain", str(args.pretrain), "--iterations", str(args.iterations)]
        found = subprocess.run(child, capture_output=True, text=True, check=True)
        rate = float(found.stdout.split()[-1])
        first = rate if first is None else first
        print(f"{arm:<18} {rate:>8.2f} {rate / first:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
