"""Seed variance of the default table: every row (each variant under each test-time rule, alone and
in the ensemble with the baseline) over several training seeds, on the same baseline, ROIs and
shards, each scored on the test split exactly as the pipeline scores it; then each of the paper's
orderings with its verdict.

One run's difference is noise until seeds say otherwise. For each seed this trains every
configured variant (the pipeline's own `mtgan.seed` models are reused: the CPU run is
deterministic), runs the infer, merge and score code of stages 6-8 on the test shards under every
configured rule that applies, and writes mean +- std (sample std, n - 1) over seeds of AP, AP75,
APS, APM, APL for every method, and of D's Table 9 accuracy. The baseline is the same detector in
every seed (std 0).

The orderings (ORDERINGS: the paper's Tables 3, 4, 6 and 9, and ours against the paper's path)
are judged by a rule fixed before any run: with d the difference of the two means and s the larger
of the two stds, an ordering is "held beyond the spread" when d > s, "held within the spread" when
0 < d <= s, "not held (within the spread)" when -s <= d <= 0, and "reversed beyond the spread" when
d < -s; the number of seeds in which it holds is given beside it.

    snakemake --cores 8 eval_coco && python bench/seeds.py              # seeds 0, 1, 2
    python bench/seeds.py --seeds 0,1,2,3,4 --config config/default.yaml --config my.yaml

Writes artifacts/<dataset>/seeds/seeds.md, seeds.csv (one row per method and seed) and
orderings.csv.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io.tables import ROIS_SCHEMA, file_metadata, read_table
from jobs.mtgan.settings import PAPER_RULE, RULES, VARIANTS, applies, resolve_preset
from jobs.mtgan.train import train_mtgan
from pipeline.config import load_config_files, validate_config
from pipeline.infer import infer
from pipeline.merge import MergeSettings, merge_detections
from pipeline.methods import display_name, method_key, method_name
from pipeline.score import coco_bbox_eval

REPO = Path(__file__).resolve().parents[1]

COLUMNS = ("AP", "AP75", "APS", "APM", "APL")
ACCURACY = ("positive", "negative", "all", "positive_small")
# (what, lower method, higher method, metrics): the ordering claims "lower < higher" on each metric.
ORDERINGS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("Table 3: D w/o adv < MTGAN", "d_no_adv", "mtgan", ("AP", "APS")),
    ("Table 4: SBU < MTGAN", "sbu", "mtgan", ("AP", "APS")),
    ("Table 6: MTGAN < MTGAN x baseline", "mtgan", "mtgan_ensemble", ("AP", "APS")),
    # The paper claims all three (its Table 9: MTGAN's D more accurate on positives, negatives and all).
    ("Table 9: SBU < MTGAN, D's accuracy", "sbu", "mtgan", ("acc_positive", "acc_negative", "acc_all")),
    # ours: each of our rules against the paper's path, on the same MTGAN models, alone and in the ensemble
    *(
        (
            f"ours: paper's path < {rule} path, MTGAN{' x baseline' if e else ''}",
            method_name("mtgan", PAPER_RULE, e),
            method_name("mtgan", rule, e),
            ("AP", "APS"),
        )
        for rule in RULES
        if rule != PAPER_RULE
        for e in (False, True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="extra config files (after default.yaml)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=None, help="comma-separated (default: the config's mtgan.variants)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    root = Path("artifacts") / config["data"]["name"]
    test = config["data"]["test_split"]
    for needed in (root / "shards/test/manifest.json", root / "rois/test.parquet", root / "detect" / f"{test}_results.json"):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: run `snakemake --cores 8 eval_coco` (same config) first")
    mtgan, rules = config["mtgan"], config["infer"]["rules"]
    variants = args.variants.split(",") if args.variants else mtgan["variants"]
    preset = resolve_preset(mtgan["preset"], mtgan["overrides"])
    rois = read_table(root / "rois/test.parquet", ROIS_SCHEMA)
    category_ids = list(file_metadata(root / "rois/test.parquet")["category_ids"])
    coco_json = root / "data" / f"{test}.json"
    m = config["merge"]
    merge = MergeSettings(m["nms_iou"], m["score_floor"], m["max_per_image"])
    seeds = [int(s) for s in args.seeds.split(",")]

    rows: list[dict[str, Any]] = []
    base = coco_bbox_eval(coco_json, json.loads((root / "detect" / f"{test}_results.json").read_text()))[0]
    rows += [{"method": "baseline", "seed": s, **{c: base[c] for c in COLUMNS}} for s in seeds]
    for seed in seeds:
        for variant in variants:
            start = time.perf_counter()
            model = seed_model(root, variant, preset, seed, mtgan["seed"], args.threads)
            for rule in (r for r in rules if applies(r, VARIANTS[variant])):
                table, accuracy = infer(
                    model, root / "shards/test/manifest.json", torch.device("cpu"), config["infer"]["batch_size"], rule, config["infer"]["g_max_side"]
                )
                for ensemble in (False, True):
                    stats, _ = coco_bbox_eval(coco_json, merge_detections(rois, table, merge, ensemble, category_ids))
                    row = {"method": method_name(variant, rule, ensemble), "seed": seed, **{c: stats[c] for c in COLUMNS}}
                    if not ensemble:
                        row |= {f"acc_{k}": accuracy["accuracy"][k] for k in ACCURACY}
                    rows.append(row)
                print(
                    f"seed {seed} {variant} {rule}: {time.perf_counter() - start:.0f} s; "
                    + "; ".join(f"{r['method']} AP {100 * r['AP']:.1f} APS {100 * r['APS']:.1f}" for r in rows[-2:]),
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
    """The ordering low < high judged by the rule in the module's docstring."""
    (m_low, s_low), (m_high, s_high) = mean_std(low), mean_std(high)
    d, s = m_high - m_low, max(s_low, s_high)
    if d > s:
        return "held beyond the spread"
    if d > 0:
        return "held within the spread"
    return "not held (within the spread)" if d >= -s else "reversed beyond the spread"


def orderings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ordering of ORDERINGS whose methods were scored, per metric, with its verdict."""
    out = []
    for what, low, high, metrics in ORDERINGS:
        for key in metrics:
            a, b = _stats(rows, low, key), _stats(rows, high, key)
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            lo, hi = [a[s] for s in seeds], [b[s] for s in seeds]
            (lo_mean, lo_std), (hi_mean, hi_std) = mean_std(lo), mean_std(hi)
            out.append(
                {
                    "ordering": what,
                    "metric": key,
                    "lower": low,
                    "higher": high,
                    "lower_mean": lo_mean,
                    "lower_std": lo_std,
                    "higher_mean": hi_mean,
                    "higher_std": hi_std,
                    "difference": hi_mean - lo_mean,
                    "seeds_held": sum(h > x for x, h in zip(lo, hi)),
                    "seeds": len(seeds),
                    "verdict": verdict(lo, hi),
                }
            )
    return out


def csv_text(rows: list[dict[str, Any]]) -> str:
    """`rows` as CSV text, one column per key in first-seen order."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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
        "The paper's orderings (and ours against the paper's path): d = difference of the means, s = the larger "
        "std; held beyond the spread: d > s; held within the spread: 0 < d <= s.",
        "",
        "| ordering | metric | lower | higher | d | seeds where it holds | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {o['ordering']} | {o['metric']} | {o['lower_mean']:.1f} +- {o['lower_std']:.1f} | "
        f"{o['higher_mean']:.1f} +- {o['higher_std']:.1f} | {o['difference']:+.1f} | {o['seeds_held']} of {o['seeds']} | "
        f"{o['verdict']} |"
        for o in found
    ]
    lines += ["", "Rules: " + "; ".join(f"{k}: {r.description}" for k, r in RULES.items())]
    text = "\n".join(lines) + "\n"
    (out / "seeds.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
