"""When does the generator help? The paper's account tested where its premise would hold: D shown
fewer small objects in training, everything else held fixed.

The paper explains why MTGAN beats a D fed the resized proposal (its Table 3): re-sizing blurs a
small ROI, and G, trained on pairs of LR and HR crops, restores the detail D needs to read it
(paper lines 925-935 and 1041-1046). In the default run Table 3 is reversed: the control (D w/o
adv, the 64x64 HR crop) beats MTGAN, and on small crops G does no better than a resize. In the
built-in training split about 40% of the objects are small, so the control learns the blurred
look of small objects directly. If G's help is a transfer of what it learns on larger objects to
small ones, it should show where D has seen few small objects.

The regimes, fixed here before any run: `shards.train_small_positive_share` 1.0 (the default run's
training shards; its models are `bench/seeds.py`'s wherever that script made them, or the
pipeline's own for the configured seed), 0.25 and 0.0 (a random subset of the sampled small
positives, nested: what 0.25 keeps is a subset of 1.0's; every other training ROI the same). The
variants `mtgan`, `sbu` and `d_no_adv`, seeds 0, 1 and 2, on one default run's baseline, ROI tables
and test shards; each model inferred under the configured test-time rules (the default's two: the
paper's path; `by_size` where it applies, i.e. MTGAN) and scored on the config's test split (the built-in val) with pycocotools, as
the pipeline scores it. Nothing is chosen on these numbers.

The hypothesis, written before any run: "MTGAN - D w/o adv, on APS and on D's accuracy on small
positive test ROIs, grows as fewer small positives are kept". The verdict rule: for each MTGAN path
(the paper's, `by_size`) and each of the two metrics, d = mean(MTGAN) - mean(D w/o adv) over the
seeds and s = the larger of the two stds (sample std, n - 1); the mechanism is "held at" a regime
when d > s, and "not held" there otherwise; the trend is "held" when d grows from 1.0 to 0.25 to
0.0 (d(1.0) < d(0.25) < d(0.0)), "not held" otherwise.

    snakemake --cores 8 eval_coco && python bench/regimes.py
    python bench/regimes.py --seeds 0,1 --config config/tiny.yaml     # the test's smoke run

Writes, under artifacts/<dataset>/regimes/: `regimes.csv` (one row per regime, method and seed),
`regimes.md` (means +- std, the verdicts, D's accuracy by the crop's side), `regimes.png` (APS and
small-positive accuracy against the regime, seed error bars) and `by_side_<share>.png` (D's
accuracy on positives by the crop's side, one figure per regime). Resumable: each regime's shards,
each model and each scored inference is cached (`share-<share>/`), a rerun redoes nothing.

Cost on a 2-core AMD EPYC (Zen 4) VM after the default run: 108 minutes for 24 trainings (MTGAN's
about 8 minutes each, SBU's and D w/o adv's about 2; seeds 1 and 2 at 1.0 are `bench/seeds.py`'s
models, which that script then reuses), 2.3 GB of memory at most; a rerun from the caches, 5 s.
The results: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io import atomic
from core.io.shards import read_manifest, sha256_of
from core.io.tables import ROIS_SCHEMA, file_metadata, read_table
from core.sizes import SIDE_BINS
from jobs.mtgan.settings import VARIANTS, applies, resolve_preset
from jobs.mtgan.train import train_mtgan
from pipeline.config import load_config_files, validate_config
from pipeline.data.index import split_coco
from pipeline.infer import infer
from pipeline.merge import MergeSettings, merge_detections
from pipeline.methods import display_name, method_key, method_name, parse_method
from pipeline.report.figures import plot_accuracy_by_side
from pipeline.report.style import label, method_color, ordered, plt, save
from pipeline.score import coco_bbox_eval
from pipeline.shards import ShardSettings, write_shards

from seeds import csv_text, mean_std, same_training, seed_model, spread, verdict

REPO = Path(__file__).resolve().parents[1]

SHARES = (1.0, 0.25, 0.0)
VARIANT_NAMES = ("mtgan", "sbu", "d_no_adv")
CONTROL = "d_no_adv"
TESTED = "mtgan"  # judged against CONTROL on each configured path
COLUMNS = ("AP", "AP75", "APS", "APM", "APL")
ACCURACY = ("positive", "negative", "all", "positive_small")
JUDGED = ("APS", "acc_positive_small")


def regime_shards(root: Path, config: dict[str, Any], share: float, jobs: int) -> Path:
    """The training shards of regime `share`: the default run's own at 1.0, else written here from
    the same ROI table with `shards.train_small_positive_share: share`."""
    if share == 1.0:
        return root / "shards" / "train" / "manifest.json"
    out = root / "regimes" / f"share-{share}" / "shards"
    manifest = out / "manifest.json"
    if manifest.is_file():
        return manifest
    settings = ShardSettings.from_config(config["shards"] | {"train_small_positive_share": share}, "train")
    split = config["data"]["train_split"]
    coco, _, image_root = split_coco(root / "data" / "index.json", split)
    return write_shards(root / "rois" / "train.parquet", coco, image_root, split, settings, out, n_jobs=jobs)


def regime_model(root: Path, config: dict[str, Any], share: float, variant: str, seed: int, threads: int) -> Path:
    """`variant` trained with `seed` on regime `share`'s shards (at 1.0: bench/seeds.py's model)."""
    preset = resolve_preset(config["mtgan"]["preset"], config["mtgan"]["overrides"])
    if share == 1.0:
        return seed_model(root, variant, preset, seed, config["mtgan"]["seed"], threads)
    out = root / "regimes" / f"share-{share}" / f"{variant}-seed{seed}"
    if (out / "model.pt").is_file():
        if not same_training(out / "model.pt", variant, preset):
            raise SystemExit(f"{out / 'model.pt'} was trained with other settings than the config's: move it away to retrain it")
        return out / "model.pt"
    manifest = regime_shards(root, config, share, jobs=threads)
    return train_mtgan(manifest, VARIANTS[variant], preset, out, "cpu", threads=threads, seed=seed)


def scored(root: Path, config: dict[str, Any], model: Path, share: float, variant: str, rule: str, seed: int) -> dict[str, Any]:
    """One model under one rule on the test split: COCOeval's numbers and D's accuracy (cached)."""
    cache = root / "regimes" / f"share-{share}" / "scored" / f"{method_name(variant, rule)}-seed{seed}.json"
    model_sha256 = sha256_of(model)
    if cache.is_file() and (row := json.loads(cache.read_text()))["model_sha256"] == model_sha256:
        return row
    test = config["data"]["test_split"]
    rois = read_table(root / "rois/test.parquet", ROIS_SCHEMA)
    category_ids = list(file_metadata(root / "rois/test.parquet")["category_ids"])
    table, accuracy = infer(model, root / "shards/test/manifest.json", torch.device("cpu"), config["infer"]["batch_size"], rule, config["infer"]["g_max_side"])
    m = config["merge"]
    stats, _ = coco_bbox_eval(
        root / "data" / f"{test}.json", merge_detections(rois, table, MergeSettings(m["nms_iou"], m["score_floor"], m["max_per_image"]), False, category_ids)
    )
    acc = accuracy["accuracy"]
    row = {"share": share, "method": method_name(variant, rule), "seed": seed, **{c: stats[c] for c in COLUMNS}}
    row |= {f"acc_{k}": acc[k] for k in ACCURACY}
    row |= {f"acc_side_{b['side']}": b["accuracy"] for b in acc["positive_by_side"]}
    row |= {"side_rois": [b["rois"] for b in acc["positive_by_side"]], "model_sha256": model_sha256}
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(cache, row)  # a killed run leaves no half-written row to read back
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="extra config files (after default.yaml)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    root = Path("artifacts") / config["data"]["name"]
    for needed in (root / "shards/train/manifest.json", root / "shards/test/manifest.json", root / "rois/test.parquet"):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: run `snakemake --cores 8 eval_coco` (same config) first")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(share, seed, variant) for share in SHARES for seed in seeds for variant in VARIANT_NAMES]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for done, (share, seed, variant) in enumerate(jobs, 1):
        start = time.perf_counter()
        model = regime_model(root, config, share, variant, seed, args.threads)
        for rule in (r for r in config["infer"]["rules"] if applies(r, VARIANTS[variant])):
            rows.append(scored(root, config, model, share, variant, rule, seed))
        elapsed = time.perf_counter() - started
        print(
            f"[{done}/{len(jobs)}] share {share} seed {seed} {variant}: {time.perf_counter() - start:.0f} s "
            f"(APS {100 * rows[-1]['APS']:.1f}); {elapsed / 60:.1f} min so far, about {elapsed / done * (len(jobs) - done) / 60:.0f} min to go",
            flush=True,
        )
    out = root / "regimes"
    small = {share: small_positives_kept(regime_shards(root, config, share, args.threads)) for share in SHARES}
    (out / "regimes.csv").write_text(csv_text([{k: v for k, v in r.items() if k not in ("side_rois", "model_sha256")} for r in rows]))
    text = report(rows, seeds, small)
    (out / "regimes.md").write_text(text)
    plot_regimes(rows, out / "regimes.png")
    for share in SHARES:
        curves = {m: side_curve(rows, share, m) for m in ordered(sorted({r["method"] for r in rows if r["share"] == share}))}
        counts = next(r["side_rois"] for r in rows if r["share"] == share)
        plot_accuracy_by_side(
            curves, counts, out / f"by_side_{share}.png", f"D's accuracy on positive test ROIs by size, small positives kept in training: {share}"
        )
    print(text)


def small_positives_kept(manifest: Path) -> str:
    """How many small positives a regime's training shards hold, from its manifest."""
    doc = read_manifest(manifest)
    counts = doc.get("small_positives")
    return f"{counts['kept']} of {counts['sampled']}" if counts else "all"


def values(rows: list[dict[str, Any]], share: float, method: str, key: str) -> list[float]:
    """`key` x100 of `method` at regime `share`, one value per seed (seeds where it is defined)."""
    return [100 * r[key] for r in sorted(rows, key=lambda r: r["seed"]) if r["share"] == share and r["method"] == method and r.get(key) is not None]


def side_curve(rows: list[dict[str, Any]], share: float, method: str) -> list[tuple[float | None, float]]:
    """Per side bin: mean and std over seeds of D's accuracy on positives (x100)."""
    return [mean_std(v) if (v := values(rows, share, method, f"acc_side_{b}")) else (None, 0.0) for b in SIDE_BINS]


def differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MTGAN (each path) - D w/o adv per regime and judged metric, with the verdicts of the docstring."""
    out = []
    for tested in sorted({r["method"] for r in rows if parse_method(r["method"]).variant == TESTED}, key=method_key):
        for key in JUDGED:
            found = []
            for share in SHARES:
                a, b = values(rows, share, CONTROL, key), values(rows, share, tested, key)
                if not a or not b:
                    continue
                (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
                held = verdict(a, b) == "held beyond the spread"
                found.append(
                    {"method": tested, "metric": key, "share": share, "control": (ma, sa), "tested": (mb, sb), "d": mb - ma, "s": max(sa, sb), "held": held}
                )
            d = [f["d"] for f in found]
            trend = len(d) == len(SHARES) and all(x < y for x, y in zip(d, d[1:]))
            out += [f | {"trend": trend} for f in found]
    return out


def report(rows: list[dict[str, Any]], seeds: list[int], small: dict[float, str]) -> str:
    """regimes.md: every method per regime (mean +- std), the verdicts, accuracy by side."""
    metrics = [*COLUMNS, *(f"acc_{k}" for k in ACCURACY)]
    lines = [
        f"Small positives kept in D's training: mean +- std over seeds {', '.join(map(str, seeds))} (x100; acc_*: D's accuracy on the test ROIs)",
        "",
        "| small positives kept | method | " + " | ".join(metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for share in SHARES:
        for method in sorted({r["method"] for r in rows if r["share"] == share}, key=method_key):
            cells = [spread(values(rows, share, method, k)) or "n/a" for k in metrics]
            lines.append(f"| {share} ({small[share]}) | {display_name(method)} | " + " | ".join(cells) + " |")
    found = differences(rows)
    lines += [
        "",
        "The hypothesis: MTGAN - D w/o adv grows as fewer small positives are kept. d = the difference of the means, "
        "s = the larger std; held at a regime when d > s; the trend held when d grows from 1.0 to 0.25 to 0.0.",
        "",
        "| MTGAN's path | metric | small positives kept | D w/o adv | MTGAN | d | s | held at this regime | trend |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {display_name(f['method'])} | {f['metric']} | {f['share']} | {f['control'][0]:.1f} +- {f['control'][1]:.1f} | "
        f"{f['tested'][0]:.1f} +- {f['tested'][1]:.1f} | {f['d']:+.1f} | {f['s']:.1f} | {'held' if f['held'] else 'not held'} | "
        f"{'held' if f['trend'] else 'not held'} |"
        for f in found
    ]
    lines += ["", "D's accuracy on positive test ROIs by the crop's longer side (pixels), mean over seeds (x100):", ""]
    lines += ["| small positives kept | method | " + " | ".join(SIDE_BINS) + " |", "|---|---|" + "---:|" * len(SIDE_BINS)]
    for share in SHARES:
        for method in sorted({r["method"] for r in rows if r["share"] == share}, key=method_key):
            cells = ["n/a" if mean is None else f"{mean:.1f}" for mean, _ in side_curve(rows, share, method)]
            lines.append(f"| {share} | {display_name(method)} | " + " | ".join(cells) + " |")
    counts = next(r["side_rois"] for r in rows)
    lines.append("| | positive test ROIs | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(lines) + "\n"


def plot_regimes(rows: list[dict[str, Any]], out_png: Path) -> None:
    """APS and D's small-positive accuracy of each method and path against the regime."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    x = np.arange(len(SHARES))
    for ax, (key, title) in zip(
        axes, (("APS", "APS (COCO AP on small objects) x 100"), ("acc_positive_small", "D's accuracy on small positive test ROIs (%)"))
    ):
        for method in ordered(sorted({r["method"] for r in rows})):
            points = [(i, *mean_std(v)) for i, share in enumerate(SHARES) if (v := values(rows, share, method, key))]
            if points:
                xs, means, stds = zip(*points)
                ax.errorbar(xs, means, yerr=stds, fmt="-o", capsize=3, color=method_color(method), label=label(method))
        ax.set_xticks(x, [f"{share}" for share in SHARES])
        ax.set(xlabel="share of small positives kept in D's training shards", title=title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, -0.12))
    fig.suptitle("Does G help where D has seen few small objects? (mean +- std over seeds)")
    save(fig, out_png)


if __name__ == "__main__":
    main()
