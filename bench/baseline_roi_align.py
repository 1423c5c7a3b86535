"""The baseline detector's training with RoIAlign's sparse CPU backward (`jobs.baseline.roi_align`,
what `fasterrcnn_small_cpu` trains with) against torchvision's own backward.

Without --seeds: the median time of a training step of `fasterrcnn_small_cpu` (4 random 320-px
images with 10 random boxes each; the ROI heads sample 512 ROIs per image either way), each
backward alternately in the same run, and their ratio.

With --seeds (after the default run's data stage): the `train_baseline` job, as the pipeline runs
it (config/default.yaml), once per seed and backward, then detection on the dev split and its
COCO AP. The rule, fixed before the runs: the sparse backward is adopted if its step is at least
1.3x faster in the training job (the logs' images/s) and, over the seeds, the dev AP and APS of
its detectors differ from torchvision's by no more than the larger of the two stds. Models are
cached under artifacts/<dataset>/bench_baseline/<backward>-seed<N>/; results in results.md there.

    python bench/baseline_roi_align.py
    python bench/baseline_roi_align.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import MultiScaleRoIAlign

import jobs.baseline.train as baseline_train
from core.io.tables import DETECTIONS_SCHEMA, read_table
from jobs.baseline.models import DetectorSettings, build_detector
from jobs.baseline.train import TrainSettings
from pipeline.config import dev_split, load_config_files, validate_config
from pipeline.detect import detect_split, results_records
from pipeline.score import coco_bbox_eval

from timing import median_seconds

REPO = Path(__file__).resolve().parents[1]
BACKWARDS = ("torchvision", "sparse")


def with_backward(model: torch.nn.Module, backward: str) -> torch.nn.Module:
    """`model` (fasterrcnn_small_cpu) pooling with torchvision's MultiScaleRoIAlign when `backward`
    is torchvision; as built (the sparse backward) otherwise."""
    if backward == "torchvision":
        pool = model.roi_heads.box_roi_pool
        model.roi_heads.box_roi_pool = MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio)
    return model


def step_times(steps: int) -> dict[str, float]:
    """Median seconds of a training step per backward, measured alternately."""
    models, optimizers = {}, {}
    for backward in BACKWARDS:
        torch.manual_seed(0)
        models[backward] = with_backward(build_detector("fasterrcnn_small_cpu", 8, DetectorSettings(320, 320, 0.05, 0.5, 100)), backward).train()
        optimizers[backward] = torch.optim.AdamW(models[backward].parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 320, 320, generator=generator) for _ in range(4)]
    targets = []
    for _ in images:
        corner = torch.rand(10, 2, generator=generator) * 250
        size = torch.rand(10, 2, generator=generator) * 60 + 6
        targets.append({"boxes": torch.cat([corner, corner + size], 1), "labels": torch.randint(1, 8, (10,), generator=generator)})
    times: dict[str, list[float]] = {b: [] for b in BACKWARDS}
    for _ in range(steps):
        for backward in BACKWARDS:

            def step(backward: str = backward) -> None:
                loss = sum(models[backward](images, targets).values())
                optimizers[backward].zero_grad()
                loss.backward()
                optimizers[backward].step()

            times[backward].append(median_seconds(step, 1))
    return {b: statistics.median(t[1:]) for b, t in times.items()}  # the first step warms up


def dev_scores(seeds: list[int], config: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Train, detect dev and score, per seed and backward (trained models in `folder` are reused)."""
    data = REPO / "artifacts" / config["data"]["name"] / "data"
    index = json.loads((data / "index.json").read_text())["splits"]
    train, dev = index[config["data"]["train_split"]], index[dev_split(config["data"])]
    coco_dev = json.loads((data / dev["annotations"]).read_text())
    build = baseline_train.build_detector
    rows = []
    for seed in seeds:
        for backward in BACKWARDS:
            out = folder / f"{backward}-seed{seed}"
            settings = TrainSettings.from_config(config["detector"], config["train_baseline"] | {"seed": seed})
            if not (out / "model.pt").is_file():
                baseline_train.build_detector = lambda *a, backward=backward, **k: with_backward(build(*a, **k), backward)
                try:
                    baseline_train.train_baseline(data / train["annotations"], data / train["image_root"], settings, out, "cpu", torch.get_num_threads())
                finally:
                    baseline_train.build_detector = build
            logged = [json.loads(line)["images_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
            detect_split(config["detector"] | {"device": "cpu"}, coco_dev, data / dev["image_root"], "dev", out / "dev.parquet", out / "model.pt")
            stats, _ = coco_bbox_eval(data / dev["annotations"], results_records(read_table(out / "dev.parquet", DETECTIONS_SCHEMA)))
            rows.append({"seed": seed, "backward": backward, "AP": 100 * stats["AP"], "APS": 100 * stats["APS"], "images_per_s": statistics.median(logged)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Mean +- sample std per backward, and each seed's values."""
    lines = ["| backward | seeds | AP | APS | training images/s (median of the log) | AP per seed | APS per seed |", "|---|---|---:|---:|---:|---|---|"]
    for backward in BACKWARDS:
        mine = [r for r in rows if r["backward"] == backward]

        def stat(key: str, mine: list[dict[str, Any]] = mine) -> str:
            values = [r[key] for r in mine]
            return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

        seeds = ", ".join(str(r["seed"]) for r in mine)
        per_seed = " | ".join(" / ".join(f"{r[k]:.1f}" for r in mine) for k in ("AP", "APS"))
        lines.append(f"| {backward} | {seeds} | {stat('AP')} | {stat('APS')} | {stat('images_per_s')} | {per_seed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per backward (without --seeds)")
    parser.add_argument("--seeds", default="", help="e.g. 0,1,2: train, detect dev and score per seed")
    parser.add_argument("--config", type=Path, action="append", default=[], help="config files on top of config/default.yaml")
    args = parser.parse_args()
    if not args.seeds:
        times = step_times(args.steps)
        for backward, seconds in times.items():
            print(f"{backward:<12} {seconds:.3f} s per step  {times['torchvision'] / seconds:.2f}x torchvision's")
        return
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    folder = REPO / "artifacts" / config["data"]["name"] / "bench_baseline"
    text = summary(dev_scores([int(s) for s in args.seeds.split(",")], config, folder))
    (folder / "results.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
