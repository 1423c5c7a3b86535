"""How each stage grows with the split: synthetic COCO-shaped splits, every stage measured, its
growth fitted, COCO 2017 projected.

The pipeline's real workload is COCO 2017 (118,287 train and 5,000 val images, 860k annotations,
100 detections per image, 80 classes), which no test can hold. This script makes COCO-shaped
splits of growing size and runs each stage on them as the rules run it (the `mtgan` command of
each stage, in a process of its own), so a stage whose cost grows faster than its input shows
before a user meets it after hours of GPU time.

**The splits** (`synthetic_split`, seeded): 80 categories (COCO's ids), images of COCO's common
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

`--full-size N` runs data, detect (import of N x 100 detections), rois (both roles) and
shards_plan (both roles) on an N-image split without image files (`check_image_files` off): what a
2-core, 24 GB machine must finish for COCO train's table stages. Work goes under `--work`
(default artifacts/scale/, removed per size); results under `--out` (default bench/scale/).

Cost on the 2-core AMD EPYC (Zen 4) VM: see bench/README.md (about 40 minutes for the three sizes,
35 GB of disk at 16k images while its shards exist; the full-size run about 25 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from PIL import Image

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
GROWTH_FLAG = 1.15
COCO_TRAIN_IMAGES, COCO_VAL_IMAGES = 118_287, 5_000


def synthetic_split(n: int, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO-shaped split of `n` images (its COCO dict) and its imported detections."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    limits = ((4, 32**2), (32**2, 96**2), (96**2, 400**2))
    for i in range(n):
        w, h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        image_id = i + 1
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h})
        boxes = []
        for _ in range(int(rng.poisson(OBJECTS_PER_IMAGE))):
            size = int(rng.choice(3, p=np.asarray(SIZE_SHARES) / sum(SIZE_SHARES)))
            area = math.exp(rng.uniform(*np.log(limits[size])))
            aspect = math.exp(rng.normal(0, 0.5))
            bw, bh = min(w - 1.0, math.sqrt(area * aspect)), min(h - 1.0, math.sqrt(area / aspect))
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            category = COCO_CATEGORY_IDS[int(rng.integers(80))]
            crowd = int(rng.random() < CROWD_SHARE)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": crowd}
            )
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
            detections.append({"image_id": image_id, "category_id": category, "bbox": [round(float(v), 2) for v in (x, y, bw, bh)], "score": round(score, 4)})
    categories = [{"id": c, "name": f"category {c}"} for c in COCO_CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


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
    """The split's annotation JSON, image folder (hard links into the pool) and detections JSON."""
    coco, detections = synthetic_split(n, seed)
    work.mkdir(parents=True, exist_ok=True)
    (work / "instances.json").write_text(json.dumps(coco))
    (work / "detections.json").write_text(json.dumps(detections))
    images = work / "images"
    images.mkdir(exist_ok=True)
    if with_images and pool is not None:
        for im in coco["images"]:
            link = images / im["file_name"]
            if not link.exists():
                os.link(pool[(im["width"], im["height"])][im["id"] % POOL_PER_SIZE], link)
    return work / "instances.json", images, work / "detections.json"


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
        "shards": {"num_chunks": 4},
        "mtgan": {
            "preset": "tiny",
            "overrides": {"iterations": 40, "pretrain_iterations": 0, "checkpoint_every": 1000, "picture_every": 1000, "eval_every": 1000},
        },
        "infer": {"batch_size": 512},
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
    extra: dict[str, Any] = field(default_factory=dict)


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
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
    return Measured(stage, images, wall, cpu, rss, peak[0] / 2**20, _size(outputs))


def stages(work: Path, config: Path, root: Path, images: int, shards: bool, logs: Path) -> list[Measured]:
    """Every stage on one split, in the pipeline's order."""
    c = ["--config", str(REPO / "config" / "default.yaml"), "--config", str(config)]
    index = root / "data" / "index.json"
    out: list[Measured] = []

    def step(stage: str, args: list[str], outputs: list[Path]) -> None:
        out.append(run_stage(stage, images, args, outputs, logs / f"{stage}-{images}.log"))
        print(f"  {stage:<22} {images:>7} images: {out[-1].wall_s:7.1f} s wall, {out[-1].cpu_s:7.1f} s CPU, {out[-1].tree_rss_mb:7.0f} MB", flush=True)

    step("data", ["data", *c, "--out", str(root / "data"), "--jobs", "2"], [root / "data"])
    step("detect", ["detect", *c, "--data-index", str(index), "--split", "train", "--out-table", str(root / "detect.parquet")], [root / "detect.parquet"])
    step("results", ["results", "--detections", str(root / "detect.parquet"), "--out", str(root / "results.json")], [root / "results.json"])
    for role in ("train", "test"):
        rois = root / f"rois_{role}.parquet"
        args = ["rois", *c, "--data-index", str(index), "--split", "train", "--role", role, "--detections", str(root / "detect.parquet")]
        step(f"rois {role}", [*args, "--out", str(rois), "--out-counts", str(root / f"rois_{role}.md")], [rois])
        plan, listing = root / "shards" / role / "plan.parquet", root / "shards" / role / "images.parquet"
        args = ["shards-plan", *c, "--data-index", str(index), "--split", "train", "--role", role, "--rois", str(rois)]
        step(f"shards_plan {role}", [*args, "--out-plan", str(plan), "--out-images", str(listing)], [plan, listing])
        if not shards:
            continue
        chunks = [root / "shards" / role / f"chunk-{k}" for k in range(4)]
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
            )
        )
        m = out[-1]
        print(f"  {'shards ' + role:<22} {images:>7} images: {m.wall_s:7.1f} s wall (4 chunk jobs), {m.cpu_s:7.1f} s CPU, {m.tree_rss_mb:7.0f} MB", flush=True)
        manifest = root / "shards" / role / "manifest.json"
        step(
            f"shards_manifest {role}",
            ["shards-manifest", *c, "--split", "train", "--role", role, "--rois", str(rois), "--plan", str(plan), "--out", str(manifest), *map(str, chunks)],
            [manifest],
        )
    if not shards:
        return out
    model = root / "mtgan" / "model.pt"
    step(
        "train_mtgan (start-up)",
        ["train-mtgan", *c, "--variant", "mtgan", "--manifest", str(root / "shards/train/manifest.json"), "--out", str(model.parent), "--threads", "2"],
        [model.parent],
    )
    infer = root / "infer.parquet"
    args = ["infer", *c, "--model", str(model), "--manifest", str(root / "shards/test/manifest.json"), "--rule", PAPER_RULE]
    step("infer", [*args, "--out", str(infer), "--out-accuracy", str(root / "accuracy.json"), "--threads", "2"], [infer])
    merged = [root / "merged.json", root / "merged_ensemble.json"]
    step(
        "merge",
        ["merge", *c, "--rois", str(root / "rois_test.parquet"), "--inference", str(infer), "--out", str(merged[0]), "--out-ensemble", str(merged[1])],
        merged,
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


def analyse(rows: list[Measured], startup: dict[str, Measured]) -> list[dict[str, Any]]:
    """Per stage: the growth exponents of time, CPU and memory (above the start-up run's) over the
    sizes, the flag, and the projection to COCO 2017 (a flat cost projects as measured at the
    largest size)."""
    out = []
    for stage in dict.fromkeys(r.stage for r in rows):
        mine = sorted((r for r in rows if r.stage == stage), key=lambda r: r.images)
        base = startup.get(stage)
        images = COCO_VAL_IMAGES if COCO_ROLE.get(stage) == "val" else COCO_TRAIN_IMAGES
        found: dict[str, Any] = {"stage": stage}
        found |= {f"{key}_{r.images}": getattr(r, key) for r in mine for key in ("wall_s", "cpu_s", "peak_rss_mb", "tree_rss_mb", "bytes_written")}
        project = {}
        for key, name in (("wall_s", "time"), ("cpu_s", "cpu"), ("tree_rss_mb", "memory"), ("bytes_written", "disk")):
            fixed = getattr(base, key) if base else 0.0
            exponent, a, b = growth([(r.images, getattr(r, key)) for r in mine], fixed, key)
            found[f"growth_{name}"] = exponent
            project[key] = getattr(mine[-1], key) if exponent is None else fixed + a * images**b
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
        f"growth: the exponent of cost - start-up against images, flagged above {GROWTH_FLAG}",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--full-size", type=int, default=0, help="also the table stages on a split of this many images")
    parser.add_argument("--no-shards", action="store_true", help="the table stages only (no images, shards, training, inference)")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "scale")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "scale")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    shards = not args.no_shards
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    pool = image_pool(args.work / "pool") if shards else None
    started = time.perf_counter()
    print(f"start-up run: {STARTUP_IMAGES} images", flush=True)
    startup = {m.stage: m for m in measure(args.work, STARTUP_IMAGES, shards, shards, pool, logs)}
    rows: list[Measured] = []
    for n in sizes:
        print(f"{n} images ({(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
        rows += measure(args.work, n, shards, shards, pool, logs)
    found = analyse(rows, startup)
    full: list[Measured] = []
    if args.full_size:
        print(f"full size: {args.full_size} images, table stages ({(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
        full = measure(args.work, args.full_size, False, False, None, logs)
    import csv

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
    (args.out / "measured.json").write_text(json.dumps([m.__dict__ for m in [*startup.values(), *rows, *full]], indent=1))
    plot(found, sizes, args.out / "scale.png")
    print(text)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
