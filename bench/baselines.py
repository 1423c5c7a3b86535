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
it).

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
    python bench/baselines.py --phase dev --config config/tiny.yaml --budgets 6,12    # the test's smoke run

Writes under artifacts/<dataset>/baselines/: `dev.csv` and `dev.md` (each candidate budget's dev
AP, APS, AR100, training time, and the strong budget chosen) and logs/b<B>.log (each budget's
Snakemake output). Resumable: each budget's pipeline run is Snakemake's own cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from core.io.tables import DETECTIONS_SCHEMA, read_table
from pipeline.config import dev_split, load_config_files, validate_config
from pipeline.detect import results_records
from pipeline.score import coco_bbox_eval

from seeds import csv_text

REPO = Path(__file__).resolve().parents[1]

DEFAULT_BUDGET = 300
COMPUTE_MATCHED = 1125
CANDIDATES = (600, 1200, 2400, 4800)
MIN_GAIN = 1.0  # AP x100 that a doubling must add on dev for the ladder to go on
DEV_COLUMNS = ("AP", "AP50", "APS", "APM", "APL", "AR100", "ARS")


def budget_name(dataset: str, budget: int, default: int) -> str:
    """The `data.name` of budget `budget`'s run: the default run's own at the default budget."""
    return dataset if budget == default else f"{dataset}-b{budget}"


def budget_config(configs: list[Path], dataset: str, budget: int, default: int, out: Path) -> list[Path]:
    """The config files of budget `budget`'s pipeline run: the given ones and, but at the default
    budget, an overlay with its iterations and its own dataset name (so its artifacts are its own)."""
    if budget == default:
        return configs
    overlay = out / "configs" / f"b{budget}.yaml"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"data": {"name": budget_name(dataset, budget, default)}, "train_baseline": {"iterations": budget}}, sort_keys=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="extra config files (after default.yaml)")
    parser.add_argument("--phase", choices=["dev"], required=True)
    parser.add_argument("--budgets", default=",".join(map(str, CANDIDATES)), help="the candidate budgets, in order (the test's smoke run: small ones)")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    default = config["train_baseline"]["iterations"]
    budgets = tuple(int(b) for b in args.budgets.split(","))
    rows, strong = dev_phase(list(args.config), config, budgets, default, args.cores)
    print(dev_markdown(rows, strong))


if __name__ == "__main__":
    main()
