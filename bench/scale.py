"""How each stage grows with the split: synthetic COCO-shaped splits, every stage measured, its
growth fitted, COCO 2017 projected.

The pipeline's real workload is COCO 2017 (118,287 train and 5,000 val images, 860k annotations,
100 detections per image, 80 classes), which no test can hold. This script makes COCO-shaped
splits of growing size and runs each stage on them as the rules run it (the `mtgan` command of
each stage, in a process of its own), so a stage whose cost grows faster than its input shows
before a user meets it after hours of GPU time.

**The splits** (`synthetic_images`, seeded): 80 categories (COCO's ids), images of COCO's common
sizes (640 x 480, 480 x 640, 640 x 427, 500 x 375, 427 x 640), 7.3 objects per image on average
(Poisson; COCO train has 860k / 118k), of COCO train's sizes (41% small, 34% medium, 24% large by
area; 1% crowd regions), and 100 imported detections per image (the ground truth jittered, with a
wrong class now and then, then random boxes), so that no detector runs. Image files are hard links
to a pool of 40 textured JPEGs per image size: every image is decoded as a real one is, on a few
MB of disk. One split serves as the training and the test split (both ROI roles).

**The stages**, each run on 1k, 4k and 16k images (`--sizes`) and on a 50-image start-up run whose
wall and CPU time (the imports of Python, torch and the rest; the fixed work) are subtracted before
fitting: data (COCO validation, files checked, sizes not read), detect (the import), results (the
test split's COCO results JSON), rois (train role: ground truth added; test role), shards_plan,
shards (every chunk, 4 per role, 2 workers each), shards_manifest (both roles), train_mtgan (the
`tiny` preset for 40 steps: its start-up over the shards; the steps are the same at every size),
infer (the `tiny` preset over every test ROI), merge (alone and x baseline) and score
(pycocotools). Per stage and size: wall time, CPU time (user + system, children included), the
peak memory of its largest process (`/usr/bin/time`, its maximum resident set) and of its process
tree (the resident sets of the stage and its workers summed, sampled every 0.1 s), and the bytes it
wrote. The growth exponent is the slope of log(cost - start-up) against log(images), least squares
over the sizes; above 1.15 in time it is flagged. Peak memory above the start-up's, per image, says
which stages hold a table of the split (and how many bytes a row).

**The projection** to COCO 2017 (train: 118,287 images, 11.8M detections; val: 5,000 images) from
each stage's fitted power law: time, CPU time, peak memory and bytes written, each an estimate.

    python bench/scale.py                       # 1k, 4k, 16k: writes bench/scale/scale.{csv,md,png}
    python bench/scale.py --full-size 118287    # also data, detect and rois of a 118,287-image split
    python bench/scale.py --sizes 200,400 --out /tmp/s --no-shards   # a smoke run (the test's)
    python bench/scale.py --coco-dry-run        # what each job of a COCO-sized run asks for

`--full-size N` runs data, detect (import of N x 100 detections), rois (both roles) and
shards_plan (both roles) on an N-image split without image files (`check_image_files` off): what a
2-core, 24 GB machine must finish for COCO train's table stages. Work goes under `--work`
(default artifacts/scale/, removed per size); results under `--out` (default bench/scale/).

Cost on the 2-core AMD EPYC (Zen 4) VM: see bench/README.md (about 50 minutes for the three sizes,
35 GB of disk at 16k images while its shards exist; the full-size run about 25 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from PIL import Image

from core.io import atomic
from core.io.tables import PLAN_SCHEMA, checked_metadata, num_rows
from jobs.mtgan.settings import PAPER_RULE

REPO = Path(__file__).resolve().parents[1]

# COCO's 80 category ids (1..90 with gaps).
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (427, 640))
OBJECTS_PER_IMAGE = 7.3  # COCO train: 860,001 annotations on 118,287 images
SIZE_SHARES = (0.41, 0.34, 0.24)  # COCO train's small, medium, large (the rest: crowd regions)
CROWD_SHARE = 0.01
DETECTIONS_PER_IMAGE = 100
POOL_PER_SIZE = 40
STARTUP_IMAGES = 50
BENCH_CHUNKS = 4  # the shards stage's chunk jobs per role
GROWTH_FLAG = 1.15
TRAIN_STEPS = 40
SMALL_MODEL = {"g_channels": 4, "g_upsample_channels": 4, "d_width": 4, "d_stem": "7x7", "checkpoint_every": 1000, "picture_every": 1000, "eval_every": 1000}
COCO_TRAIN_IMAGES, COCO_VAL_IMAGES = 118_287, 5_000


def synthetic_images(n: int, seed: int) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
    """The images of a COCO-shaped split of `n` images, one at a time: each image, its annotations
    and its imported detections."""
    rng = np.random.default_rng(seed)
    limits = ((4, 32**2), (32**2, 96**2), (96**2, 400**2))
    annotation_id = 0
    for i in range(n):
        w, h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        image = {"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": w, "height": h}
        annotations, boxes, detections = [], [], []
        for _ in range(int(rng.poisson(OBJECTS_PER_IMAGE))):
            size = int(rng.choice(3, p=np.asarray(SIZE_SHARES) / sum(SIZE_SHARES)))
            area = math.exp(rng.uniform(*np.log(limits[size])))
            aspect = math.exp(rng.normal(0, 0.5))
            bw, bh = min(w - 1.0, math.sqrt(area * aspect)), min(h - 1.0, math.sqrt(area / aspect))
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            category = COCO_CATEGORY_IDS[int(rng.integers(80))]
            annotation_id += 1
            annotation = {"id": annotation_id, "image_id": image["id"], "category_id": category, "bbox": [x, y, bw, bh], "area": bw * bh}
            annotations.append(annotation | {"iscrowd": int(rng.random() < CROWD_SHARE)})
            boxes.append((x, y, bw, bh, category))
        for k in range(DETECTIONS_PER_IMAGE):
            if k < len(boxes) * 2:  # each object found twice, jittered, now and then as another class
                x, y, bw, bh, category = boxes[k // 2]
                x, y = x + rng.normal(0, 0.1 * bw), y + rng.normal(0, 0.1 * bh)
                bw, bh = bw * math.exp(rng.normal(0, 0.1)), bh * math.exp(rng.normal(0, 0.1))
                category = category if rng.random() < 0.7 else COCO_CATEGORY_IDS[int(rng.integers(80))]
                score = float(rng.uniform(0.3, 1.0))
            else:
                bw, bh = math.exp(rng.uniform(np.log(4), np.log(300))), math.exp(rng.uniform(np.log(4), np.log(300)))
                x, y = rng.uniform(-bw / 4, w - bw / 2), rng.uniform(-bh / 4, h - bh / 2)
                category, score = COCO_CATEGORY_IDS[int(rng.integers(80))], float(rng.uniform(0.0, 0.5))
            box = [round(float(v), 2) for v in (x, y, bw, bh)]
            detections.append({"image_id": image["id"], "category_id": category, "bbox": box, "score": round(score, 4)})
        yield image, annotations, detections


def image_pool(folder: Path, seed: int = 0) -> dict[tuple[int, int], list[Path]]:
    """POOL_PER_SIZE textured JPEGs per image size (made once)."""
    rng = np.random.default_rng(seed)
    pool: dict[tuple[int, int], list[Path]] = {}
    for w, h in IMAGE_SIZES:
        pool[(w, h)] = []
        for k in range(POOL_PER_SIZE):
            path = folder / f"{w}x{h}-{k}.jpg"
            if not path.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
                smooth = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]
                noise = rng.integers(-24, 25, (h, w, 3))
                Image.fromarray(np.clip(smooth.astype(int) + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
            pool[(w, h)].append(path)
    return pool


def write_split(work: Path, n: int, seed: int, with_images: bool, pool: dict[tuple[int, int], list[Path]] | None) -> tuple[Path, Path, Path]:
    """The split's annotation JSON, image folder (hard links into the pool) and detections JSON
    (written as it is made: a COCO-sized one is over a GB)."""
    work.mkdir(parents=True, exist_ok=True)
    images_dir = work / "images"
    images_dir.mkdir(exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []

    def detections() -> Iterator[list[dict[str, Any]]]:
        for image, anns, dets in synthetic_images(n, seed):
            images.append(image)
            annotations.extend(anns)
            if with_images and pool is not None:
                os.link(pool[(image["width"], image["height"])][image["id"] % POOL_PER_SIZE], images_dir / image["file_name"])
            yield dets

    atomic.write_json_list(work / "detections.json", detections())
    categories = [{"id": c, "name": f"category {c}"} for c in COCO_CATEGORY_IDS]
    atomic.write_json(work / "instances.json", {"images": images, "annotations": annotations, "categories": categories})
    return work / "instances.json", images_dir, work / "detections.json"


def config_for(work: Path, name: str, with_images: bool) -> Path:
    """The config of a scale run: the split as COCO data, its detections imported."""
    config = {
        "data": {
            "name": name,
            "source": "coco",
            "train_split": "train",
            "test_split": "train",
            "dev_split": None,
            "coco": {
                "splits": {"train": {"annotations": str(work / "instances.json"), "images": str(work / "images")}},
                "invalid_boxes": "drop",
                "check_image_files": with_images,
                "check_image_sizes": False,
            },
        },
        "detector": {"source": "import", "import_results": {"train": str(work / "detections.json")}, "top_k": DETECTIONS_PER_IMAGE},
        "shards": {"num_chunks": BENCH_CHUNKS},
        # the tiny preset, G and D slimmer still: the model's own cost grows with the ROIs by construction;
        # what is measured is the stage around it
        "mtgan": {"preset": "tiny", "overrides": SMALL_MODEL | {"iterations": TRAIN_STEPS, "pretrain_iterations": 0}},
        "infer": {"batch_size": 1024},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Measured:
    stage: str
    images: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float  # the largest process's (/usr/bin/time)
    tree_rss_mb: float  # the process tree's, sampled
    bytes_written: int
    items: int = 0  # what the stage works on (resource_costs.yaml's `item` of its rule)


def _tree_rss(root: psutil.Process) -> int:
    """The resident memory of a process and its descendants (0 once it has ended)."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in tree:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _size(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def run_stage(stage: str, images: int, args: list[str], outputs: list[Path], log: Path) -> Measured:
    """Run one stage's command under /usr/bin/time, sampling its process tree's memory."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "pipeline.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss(proc))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - start
        sampler.join()
    text = log.read_text()
    if code:
        raise SystemExit(f"{stage} at {images} images failed (exit {code}); the end of {log}:\n" + "\n".join(text.splitlines()[-25:]))

    def field_of(name: str) -> float:
        return float(re.search(rf"{re.escape(name)}: ([0-9.:]+)", text).group(1))  # type: ignore[union-attr]

    cpu = field_of("User time (seconds)") + field_of("System time (seconds)")
    rss = field_of("Maximum resident set size (kbytes)") / 1024
    return Measured(stage, images, wall, cpu, rss, max(peak[0] / 2**20, rss), _size(outputs))


def stages(work: Path, config: Path, root: Path, images: int, shards: bool, logs: Path) -> list[Measured]:
    """Every stage on one split, in the pipeline's order."""
    c = ["--config", str(REPO / "config" / "default.yaml"), "--config", str(config)]
    index = root / "data" / "index.json"
    out: list[Measured] = []

    def step(stage: str, args: list[str], outputs: list[Path], items: Any) -> None:
        out.append(run_stage(stage, images, args, outputs, logs / f"{stage}-{images}.log"))
        out[-1].items = int(items())
        print(f"  {stage:<22} {images:>7} images: {out[-1].wall_s:7.1f} s wall, {out[-1].cpu_s:7.1f} s CPU, {out[-1].tree_rss_mb:7.0f} MB", flush=True)

    def rows(path: Path) -> Any:
        return lambda: num_rows(path)

    def planned(plan: Path) -> Any:
        return lambda: checked_metadata(plan, PLAN_SCHEMA)["num_rois"]

    step("data", ["data", *c, "--out", str(root / "data"), "--jobs", "2"], [root / "data"], lambda: (work / "instances.json").stat().st_size // 2**20)
    step(
        "detect",
        ["detect", *c, "--data-index", str(index), "--split", "train", "--out-table", str(root / "detect.parquet")],
        [root / "detect.parquet"],
        lambda: DETECTIONS_PER_IMAGE * images,  # the records of the imported file
    )
    step(
        "results",
        ["results", "--detections", str(root / "detect.parquet"), "--out", str(root / "results.json")],
        [root / "results.json"],
        rows(root / "detect.parquet"),
    )
    for role in ("train", "test"):
        rois = root / f"rois_{role}.parquet"
        args = ["rois", *c, "--data-index", str(index), "--split", "train", "--role", role, "--detections", str(root / "detect.parquet")]
        step(f"rois {role}", [*args, "--out", str(rois), "--out-counts", str(root / f"rois_{role}.md")], [rois], rows(root / "detect.parquet"))
        plan, listing = root / "shards" / role / "plan.parquet", root / "shards" / role / "images.parquet"
        args = ["shards-plan", *c, "--data-index", str(index), "--split", "train", "--role", role, "--rois", str(rois)]
        step(f"shards_plan {role}", [*args, "--out-plan", str(plan), "--out-images", str(listing)], [plan, listing], rows(rois))
        if not shards:
            continue
        chunks = [root / "shards" / role / f"chunk-{k}" for k in range(BENCH_CHUNKS)]
        parts = []
        for k, chunk in enumerate(chunks):
            args = ["shards", *c, "--data-index", str(index), "--split", "train", "--role", role, "--rois", str(rois), "--plan", str(plan)]
            parts.append(
                run_stage(
                    f"shards {role}",
                    images,
                    [*args, "--images", str(listing), "--chunk", str(k), "--out", str(chunk), "--jobs", "2"],
                    [chunk],
                    logs / f"shards-{role}-{k}-{images}.log",
                )
            )
        out.append(
            Measured(
                f"shards {role}",
                images,
                *(sum(getattr(p, a) for p in parts) for a in ("wall_s", "cpu_s")),
                max(p.peak_rss_mb for p in parts),
                max(p.tree_rss_mb for p in parts),
                sum(p.bytes_written for p in parts),
                planned(plan)(),
            )
        )
        m = out[-1]
        print(f"  {'shards ' + role:<22} {images:>7} images: {m.wall_s:7.1f} s wall (4 chunk jobs), {m.cpu_s:7.1f} s CPU, {m.tree_rss_mb:7.0f} MB", flush=True)
        manifest = root / "shards" / role / "manifest.json"
        step(
            f"shards_manifest {role}",
            ["shards-manifest", *c, "--split", "train", "--role", role, "--rois", str(rois), "--plan", str(plan), "--out", str(manifest), *map(str, chunks)],
            [manifest],
            planned(plan),
        )
    if not shards:
        return out
    model = root / "mtgan" / "model.pt"
    step(
        "train_mtgan (start-up)",
        ["train-mtgan", *c, "--variant", "mtgan", "--manifest", str(root / "shards/train/manifest.json"), "--out", str(model.parent), "--threads", "2"],
        [model.parent],
        lambda: TRAIN_STEPS * 8,
    )
    infer = root / "infer.parquet"
    args = ["infer", *c, "--model", str(model), "--manifest", str(root / "shards/test/manifest.json"), "--rule", PAPER_RULE]
    step("infer", [*args, "--out", str(infer), "--out-accuracy", str(root / "accuracy.json"), "--threads", "2"], [infer], rows(root / "rois_test.parquet"))
    merged = [root / "merged.json", root / "merged_ensemble.json"]
    step(
        "merge",
        ["merge", *c, "--rois", str(root / "rois_test.parquet"), "--inference", str(infer), "--out", str(merged[0]), "--out-ensemble", str(merged[1])],
        merged,
        rows(root / "rois_test.parquet"),
    )
    score = [root / f"score.{x}" for x in ("json", "md", "npz")]
    step(
        "score",
        [
            "score",
            "--data-index",
            str(index),
            "--split",
            "train",
            "--results",
            str(merged[0]),
            "--method",
            "mtgan",
            "--out-json",
            str(score[0]),
            "--out-md",
            str(score[1]),
            "--out-eval",
            str(score[2]),
        ],
        score,
        lambda: merged[0].stat().st_size // 100,
    )
    return out


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares fit of log(cost) = log(a) + b log(images): (a, b)."""
    xs, ys = np.log([p[0] for p in points]), np.log([max(p[1], 1e-6) for p in points])
    b, log_a = np.polyfit(xs, ys, 1)
    return float(math.exp(log_a)), float(b)


# The split each stage meets in a COCO 2017 run: the training split's stages train, the test split's val.
COCO_ROLE = {
    "results": "val",
    "rois test": "val",
    "shards_plan test": "val",
    "shards test": "val",
    "shards_manifest test": "val",
    "infer": "val",
    "merge": "val",
    "score": "val",
}


# Below these, what a stage adds to its start-up run at the largest size is noise: the stage is flat.
FLAT = {"wall_s": 2.0, "cpu_s": 2.0, "tree_rss_mb": 50.0, "bytes_written": 1e6}


def growth(points: list[tuple[int, float]], fixed: float, key: str) -> tuple[float | None, float, float]:
    """A cost's growth over the sizes, above the start-up run's `fixed`: (exponent, a, b) of
    cost - fixed = a x images^b; exponent None where the stage is flat (what it adds at the
    largest size is under FLAT[key] and a fifth of `fixed`)."""
    added = [(n, c - fixed) for n, c in points]
    if added[-1][1] <= max(FLAT[key], 0.2 * fixed):
        return None, 0.0, 0.0
    a, b = fit([(n, c) for n, c in added if c > 0])
    return b, a, b


def coco_chunks() -> int:
    """The chunks per split of config/coco.yaml (its shards.num_chunks)."""
    return int(yaml.safe_load((REPO / "config" / "coco.yaml").read_text())["shards"]["num_chunks"])


def analyse(rows: list[Measured], startup: dict[str, Measured], full: list[Measured] = ()) -> list[dict[str, Any]]:
    """Per stage: the growth exponents of time, CPU and memory (above the start-up run's) over the
    sizes and, for the stages the full-size run measured, its size too (a second-long stage's
    small sizes alone say little), the flag, and the projection to COCO 2017 (a flat cost
    projects as measured at the largest size)."""
    out = []
    for stage in dict.fromkeys(r.stage for r in rows):
        mine = sorted((r for r in [*rows, *full] if r.stage == stage), key=lambda r: r.images)
        base = startup.get(stage)
        images = COCO_VAL_IMAGES if COCO_ROLE.get(stage) == "val" else COCO_TRAIN_IMAGES
        found: dict[str, Any] = {"stage": stage}
        found |= {f"{key}_{r.images}": getattr(r, key) for r in mine for key in ("wall_s", "cpu_s", "peak_rss_mb", "tree_rss_mb", "bytes_written")}
        project = {}
        for key, name in (("wall_s", "time"), ("cpu_s", "cpu"), ("tree_rss_mb", "memory"), ("bytes_written", "disk")):
            fixed = getattr(base, key) if base else 0.0
            exponent, a, b = growth([(r.images, getattr(r, key)) for r in mine], fixed, key)
            found[f"growth_{name}"] = exponent
            # a chunk job's memory follows its chunk: here a quarter of the split, in COCO's config a 1/num_chunks
            at = images * BENCH_CHUNKS / coco_chunks() if key == "tree_rss_mb" and stage.startswith("shards ") else images
            project[key] = getattr(mine[-1], key) if exponent is None else fixed + a * at**b
        found |= {
            "startup_wall_s": base.wall_s if base else 0.0,
            "memory_per_image_kb": 1024 * (mine[-1].tree_rss_mb - (base.tree_rss_mb if base else 0.0)) / mine[-1].images,
            "flagged": any((found[f"growth_{k}"] or 0.0) > GROWTH_FLAG for k in ("time", "cpu")),
            "coco_split": "val" if images == COCO_VAL_IMAGES else "train",
            "coco_images": images,
            "coco_wall_h": project["wall_s"] / 3600,
            "coco_cpu_h": project["cpu_s"] / 3600,
            "coco_memory_gb": project["tree_rss_mb"] / 1024,
            "coco_disk_gb": project["bytes_written"] / 1e9,
        }
        out.append(found)
    return out


def _exponent(value: float | None) -> str:
    return "flat" if value is None else f"{value:.2f}"


def markdown(found: list[dict[str, Any]], sizes: list[int], machine: str) -> str:
    lines = [
        f"Stages on synthetic COCO-shaped splits ({machine}); time in s (wall / CPU), memory in MB (the process tree's peak); "
        f"growth: the exponent of cost - start-up against images (over these sizes and, where it ran, the full-size run's), flagged above {GROWTH_FLAG}",
        "",
        "| stage | " + " | ".join(f"{n} images: s / CPU s / MB" for n in sizes) + " | growth time | growth CPU | growth memory | memory KB per image | flag |",
        "|---|" + "---:|" * (len(sizes) + 5),
    ]
    for f in found:
        cells = [f"{f.get(f'wall_s_{n}', 0):.1f} / {f.get(f'cpu_s_{n}', 0):.1f} / {f.get(f'tree_rss_mb_{n}', 0):.0f}" for n in sizes]
        flag = "**above**" if f["flagged"] else ""
        growths = " | ".join(_exponent(f[f"growth_{k}"]) for k in ("time", "cpu", "memory"))
        lines.append(f"| {f['stage']} | " + " | ".join(cells) + f" | {growths} | {f['memory_per_image_kb']:.1f} | {flag} |")
    lines += [
        "",
        "Projected to COCO 2017 from each stage's fitted growth (estimates: train 118,287 images, val 5,000):",
        "",
        "| stage | split | wall h | CPU h | peak memory GB | disk GB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {f['stage']} | {f['coco_split']} | {f['coco_wall_h']:.2f} | {f['coco_cpu_h']:.2f} | {f['coco_memory_gb']:.2f} | {f['coco_disk_gb']:.1f} |"
        for f in found
    ]
    return "\n".join(lines) + "\n"


def plot(found: list[dict[str, Any]], sizes: list[int], out: Path) -> None:
    from core.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for f in found:
        for ax, key in zip(axes, ("wall_s", "tree_rss_mb")):
            ys = [f.get(f"{key}_{n}") for n in sizes]
            ax.plot(sizes, ys, "-o", ms=3, label=f"{f['stage']} ({_exponent(f['growth_time' if key == 'wall_s' else 'growth_memory'])})")
    for ax, title in zip(axes, ("wall time (s)", "peak memory of the process tree (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="images in the split", title=title)
        ax.grid(alpha=0.3, which="both")
    axes[0].plot(sizes, [sizes[0] / 10 * n / sizes[0] for n in sizes], "k:", lw=1, label="linear")
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle("Each stage against the split's size (the legend: its growth exponent)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --- The costs each rule's resources are computed from (pipeline/resource_costs.yaml) -------------

GPU_TFLOPS = 25.0  # sustained on these networks in bf16: an estimate for an A100/H100-class GPU (no GPU was measured)
DECODE_SECONDS = 0.02  # a COCO JPEG decoded and resized by one of 8 loader workers, per image: an estimate
SHARD_READ_MB_S = 500.0  # reading shards from a local SSD: an estimate
MARGINS = {"memory": 1.5, "time": 3.0, "min_minutes": 10}
FALLBACK = {"mem_mb": 8000, "runtime": 60}
# The scale bench's stages -> the rules whose costs they give (the larger of a rule's two roles).
BENCH_RULES = {
    "data": "data",
    "detect": "detect_import",
    "results": "detect_results",
    "rois train": "rois",
    "rois test": "rois",
    "shards_plan train": "shards_plan",
    "shards_plan test": "shards_plan",
    "shards train": "shards",
    "shards test": "shards",
    "shards_manifest train": "shards_manifest",
    "shards_manifest test": "shards_manifest",
    "infer": "infer",
    "merge": "merge",
    "score": "score",
}
ITEMS = {
    "data": "MB of the annotation JSON files",
    "data_builtin": "images generated",
    "detect": "images detected",
    "detect_import": "records of the imported file (about 100 bytes each)",
    "detect_results": "detections",
    "rois": "detections",
    "shards_plan": "ROIs of the table",
    "shards": "ROIs of the chunk",
    "shards_manifest": "ROIs planned",
    "train_baseline": "iterations",
    "train_mtgan": "training pairs (iterations x batch size)",
    "infer": "ROIs",
    "merge": "ROIs",
    "score": "detections (about 100 bytes each of the results file)",
}


def _cost(mem_mb: float, mem_per: float, seconds: float, seconds_per: float) -> dict[str, float]:
    return {
        "mem_mb": round(mem_mb, 1),
        "mem_mb_per_item": float(f"{mem_per:.4g}"),
        "seconds": round(seconds, 2),
        "seconds_per_item": float(f"{seconds_per:.4g}"),
    }


def bench_costs(rows: list[Measured], startup: dict[str, Measured]) -> dict[str, dict[str, float]]:
    """Per rule, from the scale runs: the start-up run's cost and, per item, the largest size's
    cost above it (a chunk job's start-up is a quarter of the four chunks')."""
    out: dict[str, dict[str, float]] = {}
    for stage, rule in BENCH_RULES.items():
        mine = [r for r in rows if r.stage == stage]
        if not mine or stage not in startup:
            continue
        big, base = max(mine, key=lambda r: r.images), startup[stage]
        jobs = BENCH_CHUNKS if rule == "shards" else 1  # a chunk job: a quarter of the stage's ROIs, its memory its own
        items = max(big.items - base.items, 1)
        cost = _cost(
            base.tree_rss_mb, max(big.tree_rss_mb - base.tree_rss_mb, 0.0) / (items / jobs), base.wall_s / jobs, max(big.wall_s - base.wall_s, 0.0) / items
        )
        old = out.get(rule)
        out[rule] = cost if old is None else {k: max(old[k], cost[k]) for k in cost}
    return out


def _benchmark(root: Path, name: str) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of a job of a pipeline run (its Snakemake benchmark file)."""
    header, values = (root / "benchmarks" / f"{name}.tsv").read_text().splitlines()[:2]
    row = dict(zip(header.split("\t"), values.split("\t")))
    return float(row["s"]), float(row["max_rss"])


def default_run_costs(root: Path) -> dict[str, dict[str, float]]:
    """The model stages on the CPU and the small rules, from a default pipeline run's benchmark
    files (built-in dataset, `cpu` presets; one run, so fixed costs are folded into the per-item
    ones where only one size was run)."""
    images = json.loads((root / "data" / "index.json").read_text())["splits"]
    out: dict[str, dict[str, float]] = {}
    seconds, mem = _benchmark(root, "data")
    out["data_builtin"] = _cost(mem, 0.0, 0.0, seconds / sum(s["num_images"] for s in images.values()))
    (t_train, m_train), (t_val, m_val) = _benchmark(root, "detect_train"), _benchmark(root, "detect_val")
    n_train, n_val = images["train"]["num_images"], images["val"]["num_images"]
    per = (t_train - t_val) / (n_train - n_val)
    out["detect"] = _cost(max(m_train, m_val), 0.0, max(t_val - per * n_val, 0.0), per)
    seconds, mem = _benchmark(root, "train_baseline")
    out["train_baseline"] = _cost(mem, 0.0, 0.0, seconds / 300)
    from jobs.mtgan.settings import resolve_preset

    preset = resolve_preset("cpu")
    seconds, mem = _benchmark(root, "train_mtgan_mtgan")  # the slowest variant's
    out["train_mtgan"] = _cost(mem, 0.0, 0.0, seconds / ((preset.pretrain_iterations + preset.iterations) * preset.batch_size))
    rois = json.loads((root / "shards" / "test" / "manifest.json").read_text())["num_rois"]
    seconds, mem = _benchmark(root, "infer_paper_mtgan")
    out["infer"] = _cost(mem, 0.0, 0.0, seconds / rois)
    for name in ("table", "report_charts", "report_errors", "report_rois", "report_detections", "profile"):
        path = root / "benchmarks" / f"{name}.tsv"
        if path.is_file():
            seconds, mem = _benchmark(root, name)
            out[name] = _cost(mem, 0.0, seconds, 0.0)
    return out


def gpu_costs() -> dict[str, dict[str, float]]:
    """The model stages on a GPU, estimated from their FLOPs at GPU_TFLOPS (no GPU was measured):
    the paper preset's training pair (torch's FlopCounterMode), a third of it for an inference, and
    torchvision's GFLOPs of Faster R-CNN ResNet-50-FPN at 800 px (its weights' meta)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    from jobs.mtgan.engine import train_step
    from jobs.mtgan.settings import VARIANTS, Preset

    sys.path.insert(0, str(REPO / "bench"))
    from train_throughput import training_setup

    # the paper's preset (Preset's defaults); FLOPs per pair depend on neither the batch nor the weights
    small = dataclasses.replace(Preset(), batch_size=4, amp=False, d_weights="none")
    g, d, d_opt, g_opt, batch = training_setup(VARIANTS["mtgan"], small, torch.device("cpu"), 81)
    with FlopCounterMode(display=False) as counter:
        train_step(g, d, d_opt, g_opt, batch, VARIANTS["mtgan"], small, contextlib.nullcontext)
    pair = counter.get_total_flops() / small.batch_size
    detector = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["_ops"] * 1e9
    host = 4000.0  # the host memory of a GPU job (torch, the CUDA context, loader buffers): an estimate
    return {
        "detect": _cost(host, 0.0, 60.0, detector / (GPU_TFLOPS * 1e12) + DECODE_SECONDS),
        "train_baseline": _cost(host, 0.0, 60.0, 4 * (3 * detector / (GPU_TFLOPS * 1e12) + DECODE_SECONDS)),
        "train_mtgan": _cost(host, 0.0, 60.0, pair / (GPU_TFLOPS * 1e12)),
        "infer": _cost(host, 0.0, 60.0, pair / 3 / (GPU_TFLOPS * 1e12) + 13.4e-3 / SHARD_READ_MB_S),
    }


def write_costs(rows: list[Measured], startup: dict[str, Measured], default_run: Path, out: Path, provenance: str) -> dict[str, Any]:
    """pipeline/resource_costs.yaml from the scale runs, a default pipeline run and the GPU estimates."""
    measured = bench_costs(rows, startup)
    cpu = default_run_costs(default_run) | {rule: cost for rule, cost in measured.items() if rule != "infer"}
    # infer: the cpu preset's time per ROI from the default run; the memory it adds per ROI (the
    # predictions it holds) from the scale runs, whose model is slimmer but whose stage is the same
    cpu["infer"] = cpu["infer"] | {"mem_mb_per_item": measured["infer"]["mem_mb_per_item"]}
    gpu = gpu_costs()
    rules: dict[str, Any] = {}
    for rule in sorted({*cpu, *gpu}):
        entry: dict[str, Any] = {"item": ITEMS.get(rule, "none (a fixed cost)")}
        if rule in cpu:
            entry["cpu"] = cpu[rule]
        if rule in gpu:
            entry["gpu"] = gpu[rule] | {"estimate": True}
        rules[rule] = entry
    # The rules that do another rule's work.
    alike = {"infer_submit": "infer", "submission": "merge", "submission_baseline": "detect_results", "score_widerface": "score", "table_widerface": "table"}
    for rule, like in (alike | {"profile": "table"}).items():
        rules[rule] = rules.get(rule) or json.loads(json.dumps(rules[like]))  # a copy: no YAML aliases
    doc = {"measured": provenance, "margins": MARGINS, "fallback": FALLBACK, "rules": rules}
    header = (
        "# What each rule's job needs, per item of its input (pipeline/resources.py): written by\n"
        "# `python bench/scale.py --write-costs`. cpu: measured; gpu: estimated from FLOPs (no GPU was measured).\n"
    )
    out.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return doc


def coco_gpu_hours(rules: dict[str, Any]) -> str:
    """The GPU stages of config/coco.yaml on one GPU, from the costs' GPU estimates (markdown):
    detect over train and val, one training of the paper preset, inference over val's ROIs."""
    from jobs.mtgan.settings import Preset

    paper = Preset()
    pairs = (paper.pretrain_iterations + paper.iterations) * paper.batch_size
    val_rois = COCO_VAL_IMAGES * DETECTIONS_PER_IMAGE
    gpu = {rule: rules[rule]["gpu"] for rule in ("detect", "train_mtgan", "infer")}
    hours = {
        f"detect, train + val ({COCO_TRAIN_IMAGES + COCO_VAL_IMAGES:,} images)": gpu["detect"]["seconds_per_item"] * (COCO_TRAIN_IMAGES + COCO_VAL_IMAGES),
        f"train_mtgan, one variant of the paper preset ({pairs:,} pairs)": gpu["train_mtgan"]["seconds_per_item"] * pairs,
        f"infer, one variant and rule ({val_rois:,} val ROIs)": gpu["infer"]["seconds_per_item"] * val_rois,
    }
    text = f"GPU hours of config/coco.yaml's GPU stages on one GPU (estimates: FLOPs at {GPU_TFLOPS:.0f} TFLOPS sustained, no GPU measured):\n\n"
    text += "| stage | GPU hours (estimate) |\n|---|---:|\n" + "".join(f"| {k} | {v / 3600:.1f} |\n" for k, v in hours.items())
    return text


def machine() -> str:
    info = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"Model name:\s*(.+)", info)
    family = re.search(r"CPU family:\s*(.+)", info)
    return f"{model.group(1).strip() if model else '?'}, family {family.group(1).strip() if family else '?'}, {os.cpu_count()} cores"


def measure(work: Path, n: int, with_images: bool, shards: bool, pool: dict[tuple[int, int], list[Path]] | None, logs: Path) -> list[Measured]:
    """Every stage on an `n`-image split made under `work` (removed afterwards)."""
    split = work / f"split-{n}"
    write_split(split, n, seed=n, with_images=with_images, pool=pool)
    config = config_for(split, f"scale-{n}", with_images)
    try:
        return stages(split, config, split / "artifacts", n, shards, logs)
    finally:
        shutil.rmtree(split)


def coco_dry_run(work: Path, out: Path) -> str:
    """What each job of a COCO 2017-sized run asks for: synthetic train (118,287 images) and val
    (5,000) splits with imported detections, config/coco.yaml on top of them, the data stage run
    for real through Snakemake (so the jobs count from the data index), then `snakemake -n` for
    eval_coco; per rule, its jobs and the largest memory, time and GPU request among them
    (`out`/coco_dry_run.md). The data stage's outputs are removed afterwards."""
    name = "scale-coco"
    splits = {"train": COCO_TRAIN_IMAGES, "val": COCO_VAL_IMAGES}
    paths = {split: write_split(work / split, n, seed=n, with_images=False, pool=None) for split, n in splits.items()}
    overlay = {
        "data": {
            "name": name,
            "coco": {
                "splits": {split: {"annotations": str(a), "images": str(i)} for split, (a, i, _) in paths.items()},
                "check_image_files": False,
                "check_image_sizes": False,
            },
        },
        "detector": {"source": "import", "import_results": {split: str(d) for split, (_, _, d) in paths.items()}},
    }
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    configs = ["--cores", "2", "--configfile", "config/coco.yaml", str(work / "overlay.yaml")]  # --configfile last: it takes every file after it
    root = REPO / "artifacts" / name

    def snakemake(*targets: str) -> str:
        done = subprocess.run([sys.executable, "-m", "snakemake", *targets, *configs], cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"snakemake {' '.join(targets)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    try:
        snakemake(f"artifacts/{name}/data/index.json")
        dry = snakemake("-n", "eval_coco")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    jobs: dict[str, list[dict[str, int]]] = {}
    for block in dry.split("\nrule ")[1:]:
        found = re.search(r"resources: (.*)", block)
        if found is None:
            continue
        values = dict(re.findall(r"(\w+)=(\d+)", found.group(1)))
        jobs.setdefault(block.split(":", 1)[0].strip(), []).append({k: int(values.get(k, 0)) for k in ("mem_mb", "runtime", "gpu")})
    text = (
        f"`snakemake -n eval_coco` on a COCO 2017-sized synthetic run (config/coco.yaml; {COCO_TRAIN_IMAGES:,} train and {COCO_VAL_IMAGES:,} val "
        f"images, 100 imported detections each; {machine()}): per rule, its jobs and the largest request among them\n\n"
        "| rule | jobs | mem_mb | runtime (min) | gpu |\n|---|---:|---:|---:|---:|\n"
    )
    text += "".join(
        f"| {rule} | {len(found)} | {max(j['mem_mb'] for j in found)} | {max(j['runtime'] for j in found)} | {max(j['gpu'] for j in found)} |\n"
        for rule, found in jobs.items()
    )
    (out / "coco_dry_run.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--full-size", type=int, default=0, help="also the table stages on a split of this many images")
    parser.add_argument("--no-shards", action="store_true", help="the table stages only (no images, shards, training, inference)")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "scale")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "scale")
    parser.add_argument("--reuse", action="store_true", help="measure nothing: analyse the measurements already in --out")
    parser.add_argument("--write-costs", action="store_true", help="also write pipeline/resource_costs.yaml (needs --default-run)")
    parser.add_argument("--default-run", type=Path, default=REPO / "artifacts" / "builtin", help="a default pipeline run's artifacts")
    parser.add_argument("--coco-dry-run", action="store_true", help="only the requests of a COCO-sized run's jobs (coco_dry_run.md)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.coco_dry_run:
        work = args.work / "coco-dry-run"
        try:
            print(coco_dry_run(work, args.out))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if args.reuse:
        kept = [Measured(**m) for m in json.loads((args.out / "measured.json").read_text())]
        for m in kept:  # the process tree's peak is at least its largest process's
            m.tree_rss_mb = max(m.tree_rss_mb, m.peak_rss_mb)
        startup = {m.stage: m for m in kept if m.images == STARTUP_IMAGES}
        rows = [m for m in kept if m.images in sizes]
        full = [m for m in kept if m.images == args.full_size]
    else:
        startup, rows, full = run_all(args, sizes, started)
        (args.out / "measured.json").write_text(json.dumps([m.__dict__ for m in [*startup.values(), *rows, *full]], indent=1))
    found = analyse(rows, startup, full)
    with open(args.out / "scale.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(found[0]))
        writer.writeheader()
        writer.writerows(found)
    text = markdown(found, sizes, machine())
    if full:
        text += "\nThe full-size run (no image files), measured:\n\n"
        text += "| stage | images | wall s | CPU s | peak MB (largest process) | peak MB (process tree) | written MB |\n|---|---:|---:|---:|---:|---:|---:|\n"
        text += "".join(
            f"| {m.stage} | {m.images} | {m.wall_s:.0f} | {m.cpu_s:.0f} | {m.peak_rss_mb:.0f} | {m.tree_rss_mb:.0f} | {m.bytes_written / 1e6:.0f} |\n"
            for m in full
        )
    (args.out / "scale.md").write_text(text)
    plot(found, sizes, args.out / "scale.png")
    print(text)
    if args.write_costs:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False).stdout.strip()
        provenance = f"bench/scale.py (sizes {args.sizes}) and the default run in {args.default_run}, at {commit}, {time.strftime('%Y-%m-%d')}, {machine()}"
        doc = write_costs(rows, startup, args.default_run, REPO / "pipeline" / "resource_costs.yaml", provenance)
        gpu_text = coco_gpu_hours(doc["rules"])
        (args.out / "scale.md").write_text(text + "\n" + gpu_text)
        print(gpu_text)
        print(f"costs -> {REPO / 'pipeline' / 'resource_costs.yaml'}")
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")


def run_all(args: argparse.Namespace, sizes: list[int], started: float) -> tuple[dict[str, Measured], list[Measured], list[Measured]]:
    """The start-up run, every size, and the full-size table stages."""
    shards = not args.no_shards
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    pool = image_pool(args.work / "pool") if shards else None
    print(f"start-up run: {STARTUP_IMAGES} images", flush=True)
    startup = {m.stage: m for m in measure(args.work, STARTUP_IMAGES, shards, shards, pool, logs)}
    rows: list[Measured] = []
    for n in sizes:
        print(f"{n} images ({(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
        rows += measure(args.work, n, shards, shards, pool, logs)
    full: list[Measured] = []
    if args.full_size:
        print(f"full size: {args.full_size} images, table stages ({(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
        full = measure(args.work, args.full_size, False, False, None, logs)
    return startup, rows, full


if __name__ == "__main__":
    main()
