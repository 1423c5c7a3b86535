"""What does the second stage add to a detector worth using? Each re-scorer over a ladder of
first-stage budgets: the default, one matched to the re-scorers' compute, and a strong one.

The default table re-scores a detector trained for 300 iterations (AP 10.8 on the built-in val
split), while the paper's gains sit on a strong first stage (its COCO baseline has APS 18.4; MTGAN
19.9, the ensemble 20.8). A user with a real detector asks three questions this script answers on
the built-in dataset: would the re-scorers' training time do as much if the detector trained
longer instead; what is left of each gain over a strong detector; how much could any re-scoring of
those ROIs add at most, and how much of it does each method take.

**The ladder** (`train_baseline.iterations`), fixed here before any run:

- 300: the default.
- 1125: compute-matched. One default run of 894b05e on the 2-core AMD EPYC (Zen 4) VM, 2026-12-06
  (its Snakemake benchmark files): `train_baseline` 220.9 s for 300 iterations, 0.736 s per
  iteration; the default re-scorers' training jobs `train_mtgan` mtgan 426.1 s, sbu 90.3 s and
  d_no_adv 91.3 s, together 607.7 s, which buy 607.7 / 0.736 = 825 more iterations: 300 + 825 =
  1125.
- strong: chosen on the development split only. Candidates 600, 1200, 2400 and 4800 (2x to 16x),
  each its own training (the cosine schedule depends on the budget); the strong budget is the
  smallest B of 300, 600, 1200 and 2400 whose doubling adds less than 1.0 AP on dev
  (AP_dev(2B) - AP_dev(B) < 1.0, x100; pycocotools on the baseline's own dev detections), else
  4800. Every dev figure looked at is written to `dev.csv` (and docs/results.md).

**Per budget** (its artifacts under `artifacts/<dataset>-b<B>/`, the pipeline run with
`train_baseline.iterations: B` and its own `data.name`; the default's are the default run's own):
its detections, ROI tables and shards; the re-scorers `d_no_adv`, `sbu` and `mtgan` retrained on
them with seeds 0, 1 and 2 (the pipeline's own seed-0 models; seeds 1 and 2 as `bench/seeds.py`
trains them); each inferred under both test-time rules (the paper's path; `by_size` where it
applies, i.e. MTGAN), alone and x its own baseline, scored on the test split as the pipeline
scores it. **Transfer**: the default budget's re-scorer models (seeds 0-2), unchanged, on each
stronger budget's test shards, alone and x that budget's baseline (a user may re-score with a
model trained on another detector's ROIs).

**Headroom per detector**: the baseline's AP, APS, AR100 and AR-small, and two ceilings for
re-scoring its test ROIs, computed by the project's own merge and scorer on its own ROI table:
`label` (each ROI's class distribution replaced by its true label: a positive ROI scores its IoU
with its object for that object's class, so that of two ROIs on one object the better placed one
ranks first; negative and ignored ROIs score nothing; boxes unchanged) and `label+box` (the same
with each positive ROI's box replaced by its object's: its regression target applied). Each
re-scorer's gain is given in points and as a share of its detector's headroom (the `label`
ceiling minus the baseline).

**The detector is one training per budget**: its own spread is not in the seed std. At the strong
budget a second detector (`train_baseline.seed: 1`) is trained when that budget's training took
under 70 minutes; its dev and test AP stand beside seed 0's (the re-scorers are not retrained on
it). `--second-detector auto` applies that rule to the train_baseline job's wall time
(`yes` and `no` decide it by hand: the built-in run's 4800-iteration job measured 6,436 s with a
25-minute pause and a second job beside it, and the rule was applied to its uncontended estimate
of 54-59 minutes, as docs/results.md records, before any test-split number existed).

**Hypotheses and rules, written before any run.** Gains are differences from the budget's own
baseline (one number per budget), x100; p is a one-sided test over the seeds; "held" at p < 0.05.

- H1, the ensemble over a strong detector (the paper's Table 6 where it matters): "MTGAN x
  baseline (the paper's path) is above its own baseline on APS and on AP at the strong budget":
  one-sample t-test of the seeds' values against the baseline's.
- H2, shrinking gains: "the ensemble's APS gain over its own baseline shrinks as the baseline
  strengthens": the mean gain falls from 300 to 1125 to the strong budget, and Welch's test of
  gain(300) > gain(strong) gives p < 0.05.
- H3, compute-matched: "the default baseline x MTGAN (the paper's path) beats the compute-matched
  baseline alone on AP and on APS": one-sample t-test of the default budget's ensemble values
  against the 1125-iteration baseline's.

Every other row (each method alone and x baseline, both paths, the transfer arm) is reported with
its gain, its share of headroom and the same one-sided p, as description, not as a tested claim.

    snakemake --cores 8 eval_coco && python bench/baselines.py --phase dev   # trains 600-4800, scores dev
    python bench/baselines.py --phase test                                     # the ladder on the test split
    python bench/baselines.py --phase dev --config config/tiny.yaml --budgets 12,24    # the test's smoke run
    python bench/baselines.py --phase test --config config/tiny.yaml --budgets 12,24 --matched 12 --seeds 0,1

Writes under artifacts/<dataset>/baselines/: `dev.csv` and `dev.md` (each candidate budget's dev
AP, APS, AR100, training time, and the strong budget chosen), `baselines.csv` (one row per budget,
method, arm and seed), `baselines.md` (the detectors and their headroom, every method's gain in
points and as a share of headroom, the hypotheses' verdicts), `baselines.png` (gains against the
detector's AP, and as a share of headroom, seed error bars), `detectors.csv` (the strong budget's
two detectors on dev and test, where the second was trained) and logs/b<B>.log (each budget's
Snakemake output). Resumable: each budget's pipeline run is Snakemake's own cache, each seed's
model is cached as `bench/seeds.py` caches it, and each scored model under `baselines/scored/`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import yaml
from scipy import stats

from core.io.tables import DETECTIONS_SCHEMA, INFERENCE_SCHEMA, ROIS_SCHEMA, checked_metadata, make_table, read_table
from jobs.mtgan.settings import PAPER_RULE, VARIANTS, applies, resolve_preset
from pipeline.config import dev_split, load_config_files, validate_config
from pipeline.detect import results_records
from pipeline.merge import MergeSettings, merge_detections
from pipeline.methods import display_name, method_name
from pipeline.report.style import label, method_color, ordered, plt, save
from pipeline.score import coco_bbox_eval

from seeds import TestSet, csv_text, mean_std, scored, seed_model, spread, welch_p

REPO = Path(__file__).resolve().parents[1]

DEFAULT_BUDGET = 300
COMPUTE_MATCHED = 1125
CANDIDATES = (600, 1200, 2400, 4800)
MIN_GAIN = 1.0  # AP x100 that a doubling must add on dev for the ladder to go on
DEV_COLUMNS = ("AP", "AP50", "APS", "APM", "APL", "AR100", "ARS")


def budget_name(dataset: str, budget: int, default: int, detector_seed: int | None = None) -> str:
    """The `data.name` of budget `budget`'s run: the default run's own at the default budget;
    `detector_seed`: a second detector's run, trained with that `train_baseline.seed`."""
    if detector_seed is not None:
        return f"{dataset}-b{budget}-detector-seed{detector_seed}"
    return dataset if budget == default else f"{dataset}-b{budget}"


def budget_config(configs: list[Path], dataset: str, budget: int, default: int, out: Path, detector_seed: int | None = None) -> list[Path]:
    """The config files of budget `budget`'s pipeline run: the given ones and, but at the default
    budget, an overlay with its iterations and its own dataset name (so its artifacts are its own);
    `detector_seed`: a second detector's run, its overlay also setting `train_baseline.seed`."""
    if budget == default and detector_seed is None:
        return configs
    name = budget_name(dataset, budget, default, detector_seed)
    overlay = out / "configs" / f"{name.removeprefix(dataset + '-')}.yaml"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    train: dict[str, int] = {"iterations": budget} if detector_seed is None else {"iterations": budget, "seed": detector_seed}
    text = yaml.safe_dump({"data": {"name": name}, "train_baseline": train}, sort_keys=False)
    if not overlay.is_file() or overlay.read_text() != text:
        overlay.write_text(text)
    return [*configs, overlay]


def run_pipeline(configs: list[Path], targets: list[str], cores: int, log: Path) -> None:
    """The pipeline (Snakemake, this checkout's Snakefile) making `targets` with `configs`; its
    output goes to `log` (its last lines are shown if it fails)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *targets, "--cores", str(cores)]
    cmd += ["--configfile", *map(str, configs)] if configs else []
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        done = subprocess.run(cmd, cwd=Path.cwd(), stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"the pipeline failed ({' '.join(cmd)}); the end of {log}:\n" + "\n".join(log.read_text().splitlines()[-30:]))


def detector_seconds(root: Path) -> float | None:
    """The wall time of the budget's `train_baseline` job (its Snakemake benchmark file)."""
    path = root / "benchmarks" / "train_baseline.tsv"
    if not path.is_file():
        return None
    header, values = path.read_text().splitlines()[:2]
    return float(dict(zip(header.split("\t"), values.split("\t")))["s"])


def dev_row(root: Path, split: str, budget: int) -> dict[str, Any]:
    """The budget's baseline on the dev split: COCOeval of its own detections (cached beside them)."""
    cache = root / "detect" / f"{split}_score.json"
    table = root / "detect" / f"{split}.parquet"
    if cache.is_file() and cache.stat().st_mtime >= table.stat().st_mtime:
        return json.loads(cache.read_text())
    stats, _ = coco_bbox_eval(root / "data" / f"{split}.json", results_records(read_table(table, DETECTIONS_SCHEMA)))
    row = {"budget": budget, **{c: stats[c] for c in DEV_COLUMNS}, "train_seconds": detector_seconds(root)}
    cache.write_text(json.dumps(row))
    return row


def strong_budget(ap: dict[int, float], default: int, candidates: tuple[int, ...]) -> int | None:
    """The smallest budget whose doubling adds less than MIN_GAIN AP on dev, else the largest
    candidate; None while a needed budget has no dev AP yet. `ap`: budget -> dev AP (x100)."""
    ladder = (default, *candidates)
    for low, high in zip(ladder, ladder[1:]):
        if low not in ap or high not in ap:
            return None
        if ap[high] - ap[low] < MIN_GAIN:
            return low
    return ladder[-1]


def dev_phase(configs: list[Path], config: dict[str, Any], budgets: tuple[int, ...], default: int, cores: int) -> tuple[list[dict[str, Any]], int | None]:
    """Train the candidate detectors in order, stopping once the strong budget is decided; each
    budget's dev AP. Returns the dev rows and the strong budget."""
    dataset, split = config["data"]["name"], dev_split(config["data"])
    if split is None:
        raise SystemExit("the dev phase needs a development split (data.dev_split)")
    out = Path("artifacts") / dataset / "baselines"
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for done, budget in enumerate((default, *budgets), 1):
        root = Path("artifacts") / budget_name(dataset, budget, default)
        start = time.perf_counter()
        run_pipeline(budget_config(configs, dataset, budget, default, out), [str(root / "detect" / f"{split}.parquet")], cores, out / "logs" / f"b{budget}.log")
        rows.append(dev_row(root, split, budget))
        print(
            f"[{done}/{len(budgets) + 1}] budget {budget}: dev AP {100 * rows[-1]['AP']:.1f} APS {100 * rows[-1]['APS']:.1f} "
            f"({time.perf_counter() - start:.0f} s; {(time.perf_counter() - started) / 60:.1f} min so far)",
            flush=True,
        )
        strong = strong_budget({r["budget"]: 100 * r["AP"] for r in rows}, default, budgets)
        if strong is not None:
            break
    out.mkdir(parents=True, exist_ok=True)
    (out / "dev.csv").write_text(csv_text(rows))
    (out / "dev.md").write_text(dev_markdown(rows, strong))
    return rows, strong


def dev_markdown(rows: list[dict[str, Any]], strong: int | None) -> str:
    lines = [
        "The baseline detector on the dev split by training budget (x100; train_seconds: the train_baseline job's wall time)",
        "",
        "| iterations | " + " | ".join(DEV_COLUMNS) + " | doubling adds (AP) | train s |",
        "|---:|" + "---:|" * (len(DEV_COLUMNS) + 2),
    ]
    for i, r in enumerate(rows):
        gain = f"{100 * (rows[i + 1]['AP'] - r['AP']):+.1f}" if i + 1 < len(rows) else ""
        seconds = f"{r['train_seconds']:.0f}" if r["train_seconds"] is not None else "n/a"
        lines.append(f"| {r['budget']} | " + " | ".join(f"{100 * r[c]:.1f}" for c in DEV_COLUMNS) + f" | {gain} | {seconds} |")
    lines += ["", f"The strong budget (the smallest whose doubling adds less than {MIN_GAIN} AP on dev, else the largest): {strong}"]
    return "\n".join(lines) + "\n"


# --- The test phase: the ladder on the test split ---------------------------------------------------

VARIANT_NAMES = ("d_no_adv", "sbu", "mtgan")
COLUMNS = ("AP", "AP50", "APS", "APM", "APL", "AR100", "ARS")
ALPHA = 0.05


def baseline_row(root: Path, config: dict[str, Any]) -> dict[str, float]:
    """The budget's detector on the test split: its own detections, as the pipeline scores them."""
    test = config["data"]["test_split"]
    stats, _ = coco_bbox_eval(root / "data" / f"{test}.json", json.loads((root / "detect" / f"{test}_results.json").read_text()))
    return {c: stats[c] for c in COLUMNS}


def oracle_table(rois: pa.Table, category_ids: list[int], boxes: bool) -> pa.Table:
    """An inference table that re-scores each ROI by its true label: a positive scores its IoU with
    its object for that object's class (`boxes`: 1, and its box moved onto the object by its
    regression target); negative and ignored ROIs score nothing."""
    label = rois.column("label").to_numpy()
    n, k1 = len(label), len(category_ids) + 1
    positive = label > 0
    probs = np.zeros((n, k1), np.float32)
    probs[~positive, 0] = 1.0
    probs[np.flatnonzero(positive), label[positive]] = 1.0 if boxes else rois.column("iou").to_numpy()[positive]
    offsets = {k: np.where(positive, rois.column(k).to_numpy(), 0.0).astype(np.float32) if boxes else np.zeros(n, np.float32) for k in ("dx", "dy", "dw", "dh")}
    columns = {"roi_id": rois.column("roi_id").to_numpy(), "probs": probs, **offsets, "through_g": np.zeros(n, np.int32)}
    return make_table(columns, INFERENCE_SCHEMA, {"variant": "oracle", "category_ids": category_ids})


def ceilings(root: Path, config: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What re-scoring the budget's test ROIs could reach at most: `label` and `label+box`
    (`oracle_table`), merged and scored as every method is."""
    test = config["data"]["test_split"]
    rois = read_table(root / "rois" / "test.parquet", ROIS_SCHEMA)
    category_ids = list(checked_metadata(root / "rois" / "test.parquet", ROIS_SCHEMA)["category_ids"])
    m = config["merge"]
    merge = MergeSettings(m["nms_iou"], m["score_floor"], m["max_per_image"])
    out = {}
    for name, boxes in (("label", False), ("label+box", True)):
        stats, _ = coco_bbox_eval(root / "data" / f"{test}.json", merge_detections(rois, oracle_table(rois, category_ids, boxes), merge, False, category_ids))
        out[name] = {c: stats[c] for c in COLUMNS}
    return out


def scored_rows(model: Path, variant: str, seed: int, test: TestSet, config: dict[str, Any], cache: Path, budget: int, arm: str) -> list[dict[str, Any]]:
    """One model's rows on a budget's test set: each applying rule, alone and x that budget's baseline."""
    rows = []
    for rule in (r for r in config["infer"]["rules"] if applies(r, VARIANTS[variant])):
        found = scored(model, rule, test, config, cache / f"{method_name(variant, rule)}-seed{seed}.json")
        for ensemble, key in ((False, "alone"), (True, "ensemble")):
            rows.append({"budget": budget, "arm": arm, "method": method_name(variant, rule, ensemble), "seed": seed, **{c: found[key][c] for c in COLUMNS}})
    return rows


def test_phase(
    configs: list[Path], config: dict[str, Any], ladder: tuple[int, ...], default: int, seeds: list[int], cores: int, threads: int
) -> list[dict[str, Any]]:
    """Every budget of the ladder: its pipeline run (detector, ROIs, shards, seed-0 models, table),
    the other seeds' models, every model scored; the default budget's models on every other budget's
    test shards (the transfer arm); the detector's own row and its ceilings."""
    dataset = config["data"]["name"]
    out = Path("artifacts") / dataset / "baselines"
    preset = resolve_preset(config["mtgan"]["preset"], config["mtgan"]["overrides"])
    rows: list[dict[str, Any]] = []
    default_root = Path("artifacts") / budget_name(dataset, default, default)
    started, jobs = time.perf_counter(), len(ladder) * len(seeds) * len(VARIANT_NAMES)
    done = 0
    for budget in ladder:
        root = Path("artifacts") / budget_name(dataset, budget, default)
        overlay = budget_config(configs, dataset, budget, default, out)
        test_split = config["data"]["test_split"]
        run_pipeline(overlay, [str(root / "eval" / "metrics.csv"), str(root / "detect" / f"{test_split}_results.json")], cores, out / "logs" / f"b{budget}.log")
        detector = {"budget": budget, "arm": "detector", "method": "baseline", "seed": 0, **baseline_row(root, config)}
        rows.append(detector)
        for name, values in ceilings(root, config).items():
            rows.append({"budget": budget, "arm": "ceiling", "method": name, "seed": 0, **values})
        test = TestSet.of(root, config)
        for seed in seeds:
            for variant in VARIANT_NAMES:
                start = time.perf_counter()
                model = seed_model(root, variant, preset, seed, config["mtgan"]["seed"], threads)
                rows += scored_rows(model, variant, seed, test, config, out / "scored" / f"b{budget}", budget, "retrained")
                if budget != default:
                    transfer = seed_model(default_root, variant, preset, seed, config["mtgan"]["seed"], threads)
                    rows += scored_rows(transfer, variant, seed, test, config, out / "scored" / f"b{budget}-from-b{default}", budget, "transfer")
                done += 1
                elapsed = time.perf_counter() - started
                print(
                    f"[{done}/{jobs}] budget {budget} seed {seed} {variant}: {time.perf_counter() - start:.0f} s; "
                    f"{elapsed / 60:.1f} min so far, about {elapsed / done * (jobs - done) / 60:.0f} min to go",
                    flush=True,
                )
    return rows


SECOND_DETECTOR_MINUTES = 70.0


def second_detector_wanted(choice: str, root: Path) -> bool:
    """Whether the strong budget's detector is trained a second time: `yes`, `no`, or `auto` (when
    its first training, the train_baseline job's benchmark at `root`, took under
    SECOND_DETECTOR_MINUTES)."""
    if choice != "auto":
        return choice == "yes"
    seconds = detector_seconds(root)
    return seconds is not None and seconds < 60 * SECOND_DETECTOR_MINUTES


def detector_seed_rows(configs: list[Path], config: dict[str, Any], budget: int, default: int, cores: int) -> list[dict[str, Any]]:
    """The budget's detector and a second one trained with the next `train_baseline.seed` (the
    re-scorers are not retrained on it): each one's dev and test rows, x1."""
    dataset, dev, test = config["data"]["name"], dev_split(config["data"]), config["data"]["test_split"]
    out = Path("artifacts") / dataset / "baselines"
    first = config["train_baseline"]["seed"]
    rows: list[dict[str, Any]] = []
    for detector_seed in (None, first + 1):
        name = budget_name(dataset, budget, default, detector_seed)
        root, start = Path("artifacts") / name, time.perf_counter()
        targets = [str(root / "detect" / f"{dev}.parquet"), str(root / "detect" / f"{test}_results.json")]
        log = out / "logs" / f"{name.removeprefix(dataset + '-')}.log"
        run_pipeline(budget_config(configs, dataset, budget, default, out, detector_seed), targets, cores, log)
        on_dev = dev_row(root, dev, budget)
        seed = first if detector_seed is None else detector_seed
        for split, values in ((dev, {c: on_dev[c] for c in COLUMNS}), (test, baseline_row(root, config))):
            rows.append({"budget": budget, "detector_seed": seed, "split": split, **values, "train_seconds": on_dev["train_seconds"]})
        ap, aps = 100 * rows[-1]["AP"], 100 * rows[-1]["APS"]
        print(f"budget {budget}, detector seed {seed}: test AP {ap:.1f} APS {aps:.1f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def detector_seed_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """baselines.md's section on the strong budget's two detectors."""
    seeds = sorted({r["detector_seed"] for r in rows})
    lines = [
        f"The strong budget's detector trained twice (train_baseline.seed {' and '.join(map(str, seeds))}; "
        "the re-scorers are trained on the first's ROIs only; x100)",
        "",
        "| detector seed | split | " + " | ".join(COLUMNS) + " | train s |",
        "|---:|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    for r in rows:
        seconds = f"{r['train_seconds']:.0f}" if r["train_seconds"] is not None else "n/a"
        lines.append(f"| {r['detector_seed']} | {r['split']} | " + " | ".join(f"{100 * r[c]:.1f}" for c in COLUMNS) + f" | {seconds} |")
    for split in dict.fromkeys(r["split"] for r in rows):
        first, second = (r for r in rows if r["split"] == split)
        lines.append("")
        lines.append(
            f"On {split}, the second detector differs from the first by {100 * (second['AP'] - first['AP']):+.1f} AP and "
            f"{100 * (second['APS'] - first['APS']):+.1f} APS: one draw of the detector's own spread, which the re-scorers' seed std does not hold."
        )
    return lines


def gains(rows: list[dict[str, Any]], budget: int, method: str, arm: str, key: str) -> list[float]:
    """A method's gain over its budget's detector on `key` (x100), one per seed."""
    base = next(r[key] for r in rows if r["budget"] == budget and r["arm"] == "detector")
    return [100 * (r[key] - base) for r in sorted(rows, key=lambda r: r["seed"]) if r["budget"] == budget and r["arm"] == arm and r["method"] == method]


def headroom(rows: list[dict[str, Any]], budget: int, key: str) -> float:
    """The `label` ceiling minus the detector, x100."""
    get = {r["method"]: r[key] for r in rows if r["budget"] == budget and r["arm"] in ("detector", "ceiling")}
    return 100 * (get["label"] - get["baseline"])


def one_sample_p(values: list[float], above: float = 0.0) -> float | None:
    """One-sided p of mean(values) > above (a one-sample t-test); None for fewer than 2 values or no spread."""
    if len(values) < 2 or np.std(values) == 0:
        return None
    return float(stats.ttest_1samp(values, above, alternative="greater").pvalue)


def verdicts(rows: list[dict[str, Any]], ladder: tuple[int, ...], default: int, matched: int, strong: int) -> list[dict[str, Any]]:
    """H1-H3 of the module's docstring, each with its numbers, p and verdict."""
    ensemble = method_name("mtgan", PAPER_RULE, True)
    out = []
    for key in ("APS", "AP"):  # H1: the ensemble above its own baseline at the strong budget
        g = gains(rows, strong, ensemble, "retrained", key)
        p = one_sample_p(g)
        out.append({"hypothesis": "H1: MTGAN x baseline > its baseline, strong budget", "metric": key, "values": g, "p": p})
    g_default, g_matched, g_strong = (gains(rows, b, ensemble, "retrained", "APS") for b in (default, matched, strong))
    falling = bool(g_default and g_matched and g_strong) and mean_std(g_default)[0] > mean_std(g_matched)[0] > mean_std(g_strong)[0]
    p = welch_p(g_strong, g_default)
    out.append(
        {
            "hypothesis": "H2: the ensemble's APS gain shrinks with the baseline",
            "metric": "APS",
            "values": g_default + g_matched + g_strong,
            "p": p,
            "falling": falling,
        }
    )
    for key in ("AP", "APS"):  # H3: the default x MTGAN above the compute-matched baseline alone
        base = next(r[key] for r in rows if r["budget"] == matched and r["arm"] == "detector")
        values = [100 * (r[key] - base) for r in rows if r["budget"] == default and r["arm"] == "retrained" and r["method"] == ensemble]
        out.append({"hypothesis": "H3: default x MTGAN > compute-matched baseline", "metric": key, "values": values, "p": one_sample_p(values)})
    for v in out:
        held = v["p"] is not None and v["p"] < ALPHA and v.get("falling", True)
        v["verdict"] = "n/a" if v["p"] is None else "held" if held else "not held"
    return out


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.4f}"


def report(
    rows: list[dict[str, Any]], ladder: tuple[int, ...], default: int, matched: int, strong: int, seeds: list[int], detectors: list[dict[str, Any]]
) -> str:
    """baselines.md: the detectors and their headroom, every method's gain, the verdicts, and the
    strong budget's two detectors where the second was trained."""
    lines = [
        "The detector by training budget on the test split, and what re-scoring its ROIs could reach "
        f"(x100; seeds {', '.join(map(str, seeds))} for the re-scorers)",
        "",
        "| iterations | " + " | ".join(COLUMNS) + " | ceiling: label AP / APS | ceiling: label+box AP / APS |",
        "|---:|" + "---:|" * (len(COLUMNS) + 2),
    ]
    for budget in ladder:
        get = {r["method"]: r for r in rows if r["budget"] == budget and r["arm"] in ("detector", "ceiling")}
        cells = " | ".join(f"{100 * get['baseline'][c]:.1f}" for c in COLUMNS)
        ceil = " | ".join(f"{100 * get[n]['AP']:.1f} / {100 * get[n]['APS']:.1f}" for n in ("label", "label+box"))
        tag = " (default)" if budget == default else " (compute-matched)" if budget == matched else " (strong, chosen on dev)" if budget == strong else ""
        lines.append(f"| {budget}{tag} | {cells} | {ceil} |")
    lines += [
        "",
        "Each method's gain over its own detector (x100, mean +- std over seeds) and as a share of the headroom (the label ceiling minus the detector); "
        "retrained: on the budget's own ROIs; transfer: the default budget's models unchanged. p: one-sided one-sample t-test of gain > 0.",
        "",
        "| iterations | arm | method | AP gain | APS gain | AP share of headroom | APS share of headroom | p (APS gain > 0) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for budget in ladder:
        for arm in ("retrained", "transfer"):
            for method in ordered(sorted({r["method"] for r in rows if r["budget"] == budget and r["arm"] == arm})):
                ap, aps = gains(rows, budget, method, arm, "AP"), gains(rows, budget, method, arm, "APS")
                share = [
                    f"{100 * mean_std(g)[0] / room:.0f}%" if room > 0 else "n/a"
                    for g, room in ((ap, headroom(rows, budget, "AP")), (aps, headroom(rows, budget, "APS")))
                ]
                p = _p(one_sample_p(aps))
                lines.append(f"| {budget} | {arm} | {display_name(method)} | {spread(ap)} | {spread(aps)} | {share[0]} | {share[1]} | {p} |")
    lines += [
        "",
        f"The hypotheses (fixed before the runs; held at p < {ALPHA}):",
        "",
        "| hypothesis | metric | gains (x100) | p | verdict |",
        "|---|---|---|---:|---|",
    ]
    for v in verdicts(rows, ladder, default, matched, strong):
        lines.append(f"| {v['hypothesis']} | {v['metric']} | {spread(v['values'])} | {_p(v['p'])} | {v['verdict']} |")
    if detectors:
        lines += ["", *detector_seed_markdown(detectors)]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], ladder: tuple[int, ...], matched: int, out_png: Path) -> None:
    """Gains (AP and APS) against the detector's AP, and as a share of headroom; seed error bars."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    detector_ap = {b: 100 * next(r["AP"] for r in rows if r["budget"] == b and r["arm"] == "detector") for b in ladder}
    methods = ordered(sorted({r["method"] for r in rows if r["arm"] == "retrained"}))
    for col, key in enumerate(("AP", "APS")):
        for row, share in enumerate((False, True)):
            ax = axes[row, col]
            for method in methods:
                points = []
                for b in ladder:
                    g = gains(rows, b, method, "retrained", key)
                    if g:
                        scale = 100 / headroom(rows, b, key) if share and headroom(rows, b, key) > 0 else 1.0
                        m, sd = mean_std(g)
                        points.append((detector_ap[b], m * scale, sd * scale))
                if points:
                    xs, ys, es = zip(*points)
                    ax.errorbar(xs, ys, yerr=es, fmt="-o", capsize=3, ms=4, color=method_color(method), label=label(method))
            ax.axvline(detector_ap[matched], color="grey", ls=":", lw=1)
            ax.text(detector_ap[matched], ax.get_ylim()[1], " compute-matched", fontsize=7, va="top", color="grey")
            ax.axhline(0, color="black", lw=0.6)
            ax.set(xlabel="the detector's AP (x100)", ylabel=f"{key} gain over the detector" + (" (% of headroom)" if share else " (points)"))
            ax.grid(alpha=0.3)
    handles, labels_ = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="lower center", ncol=3, fontsize=7, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("What each re-scorer adds over a detector of growing strength (mean +- std over seeds)")
    save(fig, out_png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="extra config files (after default.yaml)")
    parser.add_argument("--phase", choices=["dev", "test"], required=True)
    parser.add_argument("--budgets", default=",".join(map(str, CANDIDATES)), help="the candidate budgets, in order (the test's smoke run: small ones)")
    parser.add_argument("--matched", type=int, default=COMPUTE_MATCHED, help="the compute-matched budget (the docstring's arithmetic)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--second-detector",
        choices=["auto", "yes", "no"],
        default="auto",
        help=f"train the strong budget's detector again with the next seed: auto when its training took under {SECOND_DETECTOR_MINUTES:.0f} minutes",
    )
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    default = config["train_baseline"]["iterations"]
    budgets = tuple(int(b) for b in args.budgets.split(","))
    rows, strong = dev_phase(list(args.config), config, budgets, default, args.cores)
    print(dev_markdown(rows, strong))
    if args.phase == "dev":
        return
    if strong is None:
        raise SystemExit("the dev phase has not decided the strong budget")
    ladder = tuple(sorted({default, args.matched, strong}))
    seeds = [int(s) for s in args.seeds.split(",")]
    found = test_phase(list(args.config), config, ladder, default, seeds, args.cores, args.threads)
    dataset = config["data"]["name"]
    out = Path("artifacts") / dataset / "baselines"
    detectors = []
    if second_detector_wanted(args.second_detector, Path("artifacts") / budget_name(dataset, strong, default)):
        detectors = detector_seed_rows(list(args.config), config, strong, default, args.cores)
        (out / "detectors.csv").write_text(csv_text(detectors))
    (out / "baselines.csv").write_text(csv_text(found))
    text = report(found, ladder, default, args.matched, strong, seeds, detectors)
    (out / "baselines.md").write_text(text)
    plot(found, ladder, args.matched, out / "baselines.png")
    print(text)


if __name__ == "__main__":
    main()
