"""Seed variance of the default table: every row (each variant under each test-time rule, alone and
in the ensemble with the baseline) over several training seeds, on the same baseline, ROIs and
shards, each scored on the test split exactly as the pipeline scores it; then each of the paper's
orderings with its verdict.

One run's difference is noise until seeds say otherwise. For each seed this trains every
configured variant (the pipeline's own `mtgan.seed` models are reused: the CPU run is
deterministic), runs the infer, merge and score code of stages 6-8 on the test shards under every
configured rule that applies, and writes mean +- std (sample std, n - 1) over seeds of AP, AP50,
AP75, APS, APM, APL for every method, and of D's Table 9 accuracy (small negatives too). The
baseline is the same detector in every seed (std 0). `--ablations` adds the paper's Table 5
variants (`no_reg_branch`, `no_adv_loss`, `no_cls_loss`, `no_reg_loss`) to the configured ones.

**Two verdict rules, each fixed before the runs it judges.**

- The spread rule (registered before the first seed runs, published with seeds 0, 1, 2): with d
  the difference of the two means and s the larger of the two stds, an ordering is "held beyond
  the spread" when d > s, "held within the spread" when 0 < d <= s, "not held (within the
  spread)" when -s <= d <= 0, and "reversed beyond the spread" when d < -s. It judges the orderings
  published with it (Tables 3, 4, 6, 9 and ours against the paper's path) on seeds 0, 1, 2, as
  they were published; Welch's one-sided p and the number of seeds stand beside each.
- Welch's test (registered in this docstring before the runs of issue 44, 2026-12-06): an
  ordering "low < high" is "held" when Welch's one-sided t-test (unequal variances) of high > low
  over seeds 0-4 gives p < 0.05, and "not held" otherwise. It judges, with seeds 0-4: Table 3
  (D w/o adv < MTGAN), Table 4 (SBU < MTGAN), ours against the paper's path, the matched control
  of our path ("SBU-HR < MTGAN on the by-size path": `sbu_hr-by_size` < `mtgan-by_size`, both D
  trained on up-sampled and HR crops, one up-sampled by G, the other bilinearly), and Table 5 (each
  ablation < MTGAN, on the paper's path and on ours), each on AP and APS.

How often each rule errs (`python bench/seeds.py --simulate`: 20,000 simulated pairs of normal
samples of equal std per cell, numpy seed 0; "false": the share of null differences (equal means)
called held; "power": the share of true differences of one, two std called held):

| rule | seeds | false | power at 1 std | power at 2 std |
|---|---:|---:|---:|---:|
| spread (d > s: "held beyond the spread") | 3 | 10.6% | 43.9% | 82.4% |
| spread (d > s) | 5 | 5.3% | 42.2% | 89.2% |
| Welch one-sided p < 0.05 | 3 | 4.1% | 22.5% | 57.7% |
| Welch one-sided p < 0.05 | 5 | 4.6% | 40.6% | 87.9% |

(The spread rule's "held within the spread" calls half of all null differences held.) Welch with
five seeds errs on a null difference at its nominal rate and finds a difference of two std nine
times in ten; with three it finds one of two std about half the time, so a published "held
within the spread" is no evidence either way.

    snakemake --cores 8 eval_coco && python bench/seeds.py --seeds 0,1,2,3,4      # the configured variants
    python bench/seeds.py --seeds 0,1,2,3,4 --ablations                            # and Table 5's
    python bench/seeds.py --simulate                                               # the error rates above

Writes artifacts/<dataset>/seeds/seeds.md, seeds.csv (one row per method and seed) and
orderings.csv; each model's scores are cached in seeds/scored/ (by the model's sha256), so a rerun
trains and scores only what is new. Cost on the 2-core AMD EPYC (Zen 4) VM: per seed MTGAN's
training about 7 minutes and each Table 5 ablation's as long, SBU's, SBU-HR's and D w/o adv's
about 1.5; inference and scoring about 15 s per model and rule.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from core.io import atomic
from core.io.shards import sha256_of
from core.io.tables import ROIS_SCHEMA, file_metadata, read_table
from jobs.mtgan.settings import PAPER_RULE, RULES, VARIANTS, applies, resolve_preset
from jobs.mtgan.train import train_mtgan
from pipeline.config import load_config_files, validate_config
from pipeline.infer import infer
from pipeline.merge import MergeSettings, merge_detections
from pipeline.methods import display_name, method_key, method_name
from pipeline.score import STAT_NAMES, coco_bbox_eval

REPO = Path(__file__).resolve().parents[1]

COLUMNS = ("AP", "AP50", "AP75", "APS", "APM", "APL")
ACCURACY = ("positive", "negative", "all", "positive_small", "negative_small")
ABLATIONS = ("no_reg_branch", "no_adv_loss", "no_cls_loss", "no_reg_loss")  # the paper's Table 5
PUBLISHED_SEEDS = (0, 1, 2)  # the seeds the spread rule's verdicts were published with
STRICT_SEEDS = (0, 1, 2, 3, 4)  # the seeds Welch's test judges
ALPHA = 0.05
BY_SIZE = next(name for name, rule in RULES.items() if rule.reads_g_max_side)  # our size-aware path (the registry's)


@dataclass(frozen=True)
class Ordering:
    """A claim "lower < higher" on each metric, and the rules registered for it."""

    what: str
    lower: str
    higher: str
    metrics: tuple[str, ...]
    spread: bool  # published with the spread rule (on PUBLISHED_SEEDS)
    welch: bool  # judged by Welch's test (on STRICT_SEEDS)


AP_APS = ("AP", "APS")
ORDERINGS: tuple[Ordering, ...] = (
    Ordering("Table 3: D w/o adv < MTGAN", "d_no_adv", "mtgan", AP_APS, spread=True, welch=True),
    Ordering("Table 4: SBU < MTGAN", "sbu", "mtgan", AP_APS, spread=True, welch=True),
    Ordering("Table 6: MTGAN < MTGAN x baseline", "mtgan", "mtgan_ensemble", AP_APS, spread=True, welch=False),
    # The paper claims all three (its Table 9: MTGAN's D more accurate on positives, negatives and all).
    Ordering("Table 9: SBU < MTGAN, D's accuracy", "sbu", "mtgan", ("acc_positive", "acc_negative", "acc_all"), spread=True, welch=False),
    # ours: each of our rules against the paper's path, on the same MTGAN models, alone and in the ensemble
    *(
        Ordering(
            f"ours: paper's path < {rule} path, MTGAN{' x baseline' if e else ''}",
            method_name("mtgan", PAPER_RULE, e),
            method_name("mtgan", rule, e),
            AP_APS,
            spread=True,
            welch=True,
        )
        for rule in RULES
        if rule != PAPER_RULE
        for e in (False, True)
    ),
    # the matched control of our path: the same routing and D inputs, a bilinear up-sampler for G
    Ordering("ours: SBU-HR < MTGAN, by-size path", method_name("sbu_hr", BY_SIZE), method_name("mtgan", BY_SIZE), AP_APS, spread=False, welch=True),
    *(
        Ordering(f"Table 5: {VARIANTS[a].label} < MTGAN, {RULES[rule].label}", method_name(a, rule), method_name("mtgan", rule), AP_APS, False, True)
        for a in ABLATIONS
        for rule in (PAPER_RULE, BY_SIZE)
    ),
)


def same_training(model: Path, variant: str, preset: Any) -> bool:
    """Whether `model` was trained as `variant` with `preset` (the settings it records)."""
    state = torch.load(model, map_location="cpu", weights_only=True)
    as_saved = json.loads(json.dumps([dataclasses.asdict(preset), dataclasses.asdict(VARIANTS[variant])]))
    return [state["preset"], state["variant"]] == as_saved


def seed_model(root: Path, variant: str, preset: Any, seed: int, config_seed: int, threads: int) -> Path:
    """The variant trained with `seed`: the pipeline's own model for its configured seed, else ours."""
    own = root / "mtgan" / variant / "model.pt"
    if seed == config_seed and own.is_file() and same_training(own, variant, preset):
        return own
    out = root / "seeds" / f"{variant}-seed{seed}"
    if (out / "model.pt").is_file():
        return out / "model.pt"
    return train_mtgan(root / "shards" / "train" / "manifest.json", VARIANTS[variant], preset, out, "cpu", threads=threads, seed=seed)


@dataclass(frozen=True)
class TestSet:
    """What a model is scored on: a run's test ROI table, its shards, the split's ground truth."""

    rois: Path
    manifest: Path
    coco_json: Path

    @classmethod
    def of(cls, root: Path, config: dict[str, Any]) -> TestSet:
        """A pipeline run's own test set (`root`: artifacts/<dataset>)."""
        return cls(root / "rois" / "test.parquet", root / "shards" / "test" / "manifest.json", root / "data" / f"{config['data']['test_split']}.json")


def scored(model: Path, rule: str, test: TestSet, config: dict[str, Any], cache: Path) -> dict[str, Any]:
    """One model under one rule on `test`: COCOeval's twelve numbers alone and x baseline, and D's
    accuracy (the infer stage's), run with the infer, merge and score code of stages 6-8 and cached
    in `cache` by the model's and the test shards' sha256."""
    key = {"model_sha256": sha256_of(model), "manifest_sha256": sha256_of(test.manifest), "rule": rule}
    if cache.is_file() and all((row := json.loads(cache.read_text())).get(k) == v for k, v in key.items()):
        return row
    infer_section, m = config["infer"], config["merge"]
    table, accuracy = infer(model, test.manifest, torch.device("cpu"), infer_section["batch_size"], rule, infer_section["g_max_side"])
    rois = read_table(test.rois, ROIS_SCHEMA)
    category_ids = list(file_metadata(test.rois)["category_ids"])
    merge = MergeSettings(m["nms_iou"], m["score_floor"], m["max_per_image"])
    row: dict[str, Any] = {**key}
    for name, ensemble in (("alone", False), ("ensemble", True)):
        stats_, _ = coco_bbox_eval(test.coco_json, merge_detections(rois, table, merge, ensemble, category_ids))
        row[name] = {k: stats_[k] for k in STAT_NAMES}
    row["accuracy"] = accuracy["accuracy"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(cache, row)  # a killed run leaves no half-written row to read back
    return row


def method_rows(row: dict[str, Any], variant: str, rule: str, seed: int) -> list[dict[str, Any]]:
    """The seed table's two rows (alone with D's accuracy, and x baseline) of one `scored` row."""
    alone = {"method": method_name(variant, rule), "seed": seed, **{c: row["alone"][c] for c in COLUMNS}}
    alone |= {f"acc_{k}": row["accuracy"].get(k) for k in ACCURACY}
    return [alone, {"method": method_name(variant, rule, True), "seed": seed, **{c: row["ensemble"][c] for c in COLUMNS}}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="extra config files (after default.yaml)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=None, help="comma-separated (default: the config's mtgan.variants)")
    parser.add_argument("--ablations", action="store_true", help="add Table 5's ablations to the variants")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--simulate", action="store_true", help="print how often each verdict rule errs, and stop")
    args = parser.parse_args()
    if args.simulate:
        print(simulate_rules())
        return
    torch.set_num_threads(args.threads)
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    root = Path("artifacts") / config["data"]["name"]
    test = TestSet.of(root, config)
    results = root / "detect" / f"{config['data']['test_split']}_results.json"
    for needed in (test.manifest, test.rois, results):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: run `snakemake --cores 8 eval_coco` (same config) first")
    mtgan, rules = config["mtgan"], config["infer"]["rules"]
    variants = list(dict.fromkeys([*(args.variants.split(",") if args.variants else mtgan["variants"]), *(ABLATIONS if args.ablations else ())]))
    preset = resolve_preset(mtgan["preset"], mtgan["overrides"])
    seeds = [int(s) for s in args.seeds.split(",")]

    rows: list[dict[str, Any]] = []
    base = coco_bbox_eval(test.coco_json, json.loads(results.read_text()))[0]
    rows += [{"method": "baseline", "seed": s, **{c: base[c] for c in COLUMNS}} for s in seeds]
    jobs = [(seed, variant) for seed in seeds for variant in variants]
    started = time.perf_counter()
    for done, (seed, variant) in enumerate(jobs, 1):
        start = time.perf_counter()
        model = seed_model(root, variant, preset, seed, mtgan["seed"], args.threads)
        for rule in (r for r in rules if applies(r, VARIANTS[variant])):
            row = scored(model, rule, test, config, root / "seeds" / "scored" / f"{method_name(variant, rule)}-seed{seed}.json")
            rows += method_rows(row, variant, rule, seed)
        elapsed = time.perf_counter() - started
        print(
            f"[{done}/{len(jobs)}] seed {seed} {variant}: {time.perf_counter() - start:.0f} s; "
            + "; ".join(f"{r['method']} AP {100 * r['AP']:.1f} APS {100 * r['APS']:.1f}" for r in rows[-2:])
            + f"; {elapsed / 60:.1f} min so far, about {elapsed / done * (len(jobs) - done) / 60:.0f} min to go",
            flush=True,
        )
    print(_write(rows, seeds, root / "seeds"))


def _stats(rows: list[dict[str, Any]], method: str, key: str) -> dict[int, float]:
    return {r["seed"]: 100 * r[key] for r in rows if r["method"] == method and r.get(key) is not None}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1; 0 for one value) of `values` over seeds."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def spread(values: list[float]) -> str:
    """A table cell: mean +- sample std of `values` (`mean_std`), or empty without any."""
    return "{:.1f} +- {:.1f}".format(*mean_std(values)) if values else ""


def verdict(low: list[float], high: list[float]) -> str:
    """The ordering low < high judged by the spread rule of the module's docstring."""
    (m_low, s_low), (m_high, s_high) = mean_std(low), mean_std(high)
    d, s = m_high - m_low, max(s_low, s_high)
    if d > s:
        return "held beyond the spread"
    if d > 0:
        return "held within the spread"
    return "not held (within the spread)" if d >= -s else "reversed beyond the spread"


def welch_p(low: list[float], high: list[float]) -> float | None:
    """Welch's one-sided p of high > low (None with fewer than two values a side, or no variance at all)."""
    if len(low) < 2 or len(high) < 2 or np.std(low) + np.std(high) == 0:
        return None
    return float(stats.ttest_ind(high, low, equal_var=False, alternative="greater").pvalue)


def welch_verdict(low: list[float], high: list[float]) -> str:
    """The ordering low < high judged by Welch's test (the module's docstring)."""
    p = welch_p(low, high)
    return "n/a" if p is None else f"held (p < {ALPHA})" if p < ALPHA else "not held"


def judged(what: str, metric: str, low: str, high: str, rule: str, lo: list[float], hi: list[float]) -> dict[str, Any]:
    """One ordering on one metric under one rule: the numbers and the verdict."""
    (lo_mean, lo_std), (hi_mean, hi_std) = mean_std(lo), mean_std(hi)
    return {
        "ordering": what,
        "metric": metric,
        "rule": rule,
        "lower": low,
        "higher": high,
        "lower_mean": lo_mean,
        "lower_std": lo_std,
        "higher_mean": hi_mean,
        "higher_std": hi_std,
        "difference": hi_mean - lo_mean,
        "seeds_held": sum(h > x for x, h in zip(lo, hi)),
        "seeds": len(lo),
        "welch_p": welch_p(lo, hi),
        "verdict": verdict(lo, hi) if rule == "spread" else welch_verdict(lo, hi),
    }


def orderings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ordering of ORDERINGS whose methods were scored, per metric, under each of its rules:
    the spread rule on the published seeds present, Welch's test on the strict seeds present."""
    out = []
    for o in ORDERINGS:
        for key in o.metrics:
            a, b = _stats(rows, o.lower, key), _stats(rows, o.higher, key)
            for rule, wanted in (("spread", PUBLISHED_SEEDS if o.spread else ()), ("welch", STRICT_SEEDS if o.welch else ())):
                seeds = sorted(set(a) & set(b) & set(wanted))
                if seeds:
                    out.append(judged(o.what, key, o.lower, o.higher, rule, [a[s] for s in seeds], [b[s] for s in seeds]))
    return out


def csv_text(rows: list[dict[str, Any]]) -> str:
    """`rows` as CSV text, one column per key in first-seen order."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


RULE_NAMES = {"spread": "spread (as published)", "welch": f"Welch p < {ALPHA}"}


def orderings_markdown(found: list[dict[str, Any]]) -> list[str]:
    """The verdict table's lines: each ordering, metric and rule with n, d, Welch's p and the verdict."""
    lines = [
        "| ordering | metric | rule | seeds | lower | higher | d | seeds where it holds | Welch p | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    return lines + [
        f"| {o['ordering']} | {o['metric']} | {RULE_NAMES[o['rule']]} | {o['seeds']} | {o['lower_mean']:.1f} +- {o['lower_std']:.1f} | "
        f"{o['higher_mean']:.1f} +- {o['higher_std']:.1f} | {o['difference']:+.1f} | {o['seeds_held']} of {o['seeds']} | "
        f"{'n/a' if o['welch_p'] is None else format(o['welch_p'], '.3f')} | {o['verdict']} |"
        for o in found
    ]


def _write(rows: list[dict[str, Any]], seeds: list[int], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.csv").write_text(csv_text(rows))
    methods = sorted(dict.fromkeys(r["method"] for r in rows), key=method_key)
    metrics = [*COLUMNS, *(f"acc_{k}" for k in ACCURACY)]
    lines = [
        f"Mean +- std over seeds {', '.join(map(str, seeds))} (x100; acc_*: D's Table 9 accuracy on test ROIs)",
        "",
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for method in methods:
        lines.append(f"| {display_name(method)} | " + " | ".join(spread(list(_stats(rows, method, k).values())) for k in metrics) + " |")
    found = orderings(rows)
    (out / "orderings.csv").write_text(csv_text(found))
    lines += [
        "",
        "The orderings, each under the rule registered for it (the module's docstring): the spread rule on seeds "
        f"{', '.join(map(str, PUBLISHED_SEEDS))} as published (d = difference of the means, s = the larger std; held beyond the "
        f"spread: d > s), Welch's one-sided test on seeds {', '.join(map(str, STRICT_SEEDS))} (held: p < {ALPHA}); Welch's p beside both.",
        "",
        *orderings_markdown(found),
    ]
    lines += ["", "Rules: " + "; ".join(f"{k}: {r.description}" for k, r in RULES.items())]
    text = "\n".join(lines) + "\n"
    (out / "seeds.md").write_text(text)
    return text


def simulate_rules(trials: int = 20000, seed: int = 0) -> str:
    """How often each verdict rule calls an ordering held: on null differences (false) and on true
    differences of one and two std (power), from normal samples of equal std."""
    rng = np.random.default_rng(seed)
    lines = ["| rule | seeds | false | power at 1 std | power at 2 std |", "|---|---:|---:|---:|---:|"]
    for name, n in (("spread (d > s)", 3), ("spread (d > s)", 5), (f"Welch one-sided p < {ALPHA}", 3), (f"Welch one-sided p < {ALPHA}", 5)):
        rates = []
        for delta in (0.0, 1.0, 2.0):
            low, high = rng.normal(0.0, 1.0, (trials, n)), rng.normal(delta, 1.0, (trials, n))
            if name.startswith("spread"):
                held = high.mean(1) - low.mean(1) > np.maximum(low.std(1, ddof=1), high.std(1, ddof=1))
            else:
                held = stats.ttest_ind(high, low, axis=1, equal_var=False, alternative="greater").pvalue < ALPHA
            rates.append(f"{100 * held.mean():.1f}%")
        lines.append(f"| {name} | {n} | " + " | ".join(rates) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
