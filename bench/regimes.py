"""When does the generator help? The paper's account tested where its premise would hold: D shown
fewer small objects in training, everything else held fixed.

The paper explains why MTGAN beats a D fed the resized proposal (its Table 3): re-sizing blurs a
small ROI, and G, trained on pairs of LR and HR crops, restores the detail D needs to read it
(paper lines 925-935 and 1041-1046). In the default run Table 3 is reversed: the control (D w/o
adv, the 64x64 HR crop) beats MTGAN, and on small crops G does no better than a resize. In the
built-in training split about 40% of the objects are small, so the control learns the blurred
look of small objects directly. If G's help is a transfer of what it learns on larger objects to
small ones, it should show where D has seen few small objects.

**The regimes, fixed before the first run** (issue 36): `shards.train_small_positive_share` 1.0
(the default run's training shards; its models are `bench/seeds.py`'s wherever that script made
them, or the pipeline's own for the configured seed), 0.25 and 0.0 (a random subset of the sampled
small positives, nested: what 0.25 keeps is a subset of 1.0's; every other training ROI the same).
The variants `mtgan`, `sbu` and `d_no_adv`, seeds 0, 1 and 2, on one default run's baseline, ROI
tables and test shards; each model inferred under the configured test-time rules (the default's
two: the paper's path; `by_size` where it applies) and scored on the config's test split (the
built-in val) with pycocotools, as the pipeline scores it. Nothing is chosen on these numbers.
The hypothesis: "MTGAN - D w/o adv, on APS and on D's accuracy on small positive test ROIs,
grows as fewer small positives are kept". The verdict rule: for each MTGAN path and each of the
two metrics, d = mean(MTGAN) - mean(D w/o adv) over seeds 0-2 and s = the larger of the two stds
(sample std, n - 1); "held at" a regime when d > s, "not held" otherwise; the trend "held" when d
grows from 1.0 to 0.25 to 0.0. These verdicts stand as published; Welch's one-sided p and the
number of seeds are printed beside each.

**Added before their runs** (issue 44, 2026-12-06, with bench/seeds.py's Welch rule):

- The matched control of our path, `sbu_hr` (SBU whose D trains on the up-sampled and the HR
  crops, as MTGAN's does), in every regime, and the claim "SBU-HR < MTGAN on the by-size path"
  judged at each regime on APS and on small-positive accuracy.
- The blur shortcut closed: thinning small positives keeps every small negative, so at 0.0 nearly
  every small training crop is background, and a D that sees HR crops only (D w/o adv) can learn
  "a blurred small crop is background". The regime "0.0, small negatives 0.0 too"
  (`shards.train_small_negative_share: 0.0`: D sees no small crop at all in training) takes that
  away. D's accuracy on small negatives is reported for every method and regime. The hypothesis
  (the paper's account, strictly): "on our path (`by_size`), MTGAN - D w/o adv and MTGAN - SBU-HR
  on APS and on small-positive accuracy are above zero in that regime"; and, to read the
  shortcut, the same differences at 0.0 with and without the small negatives.
- Every new comparison uses seeds 0-4 and is "held" when Welch's one-sided t-test (unequal
  variances) gives p < 0.05 (its error rates: bench/seeds.py's docstring).

    snakemake --cores 8 eval_coco && python bench/regimes.py --seeds 0,1,2,3,4
    python bench/regimes.py --regimes 1.0,0.0-neg-0.0     # some regimes only (their report alone; no trend)
    python bench/regimes.py --regimes 0.25 --variants mtgan,sbu_hr   # some variants only (one claim's models first)
    python bench/regimes.py --seeds 0 --config config/tiny.yaml      # the test's smoke run

Writes, under artifacts/<dataset>/regimes/: `regimes.csv` (one row per regime, method and seed),
`regimes.md` (means +- std, every verdict with its seeds and Welch's p, D's accuracy by the
crop's side), `regimes.png` (APS and small-positive accuracy against the regime, seed error bars)
and `by_side_<regime>.png` (D's accuracy on positives by the crop's side, one figure per regime).
Resumable: each regime's shards and each model are cached (`share-<share>[-neg-<share>]/`), each
scored model under `scored/` by its sha256; a rerun redoes nothing.

Cost on a 2-core AMD EPYC (Zen 4) VM after the default run: MTGAN's training about 7 minutes per
regime and seed, SBU's, SBU-HR's and D w/o adv's about 1.5 (the 1.0 models are `bench/seeds.py`'s,
which that script reuses); with seeds 0-4, four variants and four regimes, about 4 hours from
scratch. The results: docs/results.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io.shards import read_manifest
from core.sizes import SIDE_BINS
from jobs.mtgan.settings import VARIANTS, applies, resolve_preset
from jobs.mtgan.train import train_mtgan
from pipeline.config import load_config_files, validate_config
from pipeline.data.index import split_coco
from pipeline.methods import display_name, method_key, method_name, parse_method
from pipeline.report.figures import plot_accuracy_by_side
from pipeline.report.style import label, method_color, ordered, plt, save
from pipeline.shards import ShardSettings, write_shards

from seeds import (
    BY_SIZE,
    PUBLISHED_SEEDS,
    STRICT_SEEDS,
    TestSet,
    csv_text,
    mean_std,
    same_training,
    scored,
    seed_model,
    spread,
    verdict,
    welch_p,
    welch_verdict,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Regime:
    """What D's training shards keep: a share of the small positives, and of the small negatives."""

    positives: float
    negatives: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.positives}" + (f", small negatives {self.negatives}" if self.negatives < 1 else "")

    @property
    def folder(self) -> str:
        return f"share-{self.positives}" + (f"-neg-{self.negatives}" if self.negatives < 1 else "")


PUBLISHED = (Regime(1.0), Regime(0.25), Regime(0.0))  # the regimes of issue 36, the trend's
CLOSED = Regime(0.0, 0.0)  # issue 44: no small crop at all in training
REGIMES = (*PUBLISHED, CLOSED)
REGIMES_BY_KEY = {r.folder.removeprefix("share-"): r for r in REGIMES}  # --regimes: 1.0, 0.25, 0.0, 0.0-neg-0.0
VARIANT_NAMES = ("mtgan", "sbu", "d_no_adv", "sbu_hr")
PUBLISHED_VARIANTS = ("mtgan", "sbu", "d_no_adv")
CONTROL = "d_no_adv"
MATCHED = "sbu_hr"
TESTED = "mtgan"  # judged against CONTROL on each configured path, and against MATCHED on ours
COLUMNS = ("AP", "AP75", "APS", "APM", "APL")
ACCURACY = ("positive", "negative", "all", "positive_small", "negative_small")
JUDGED = ("APS", "acc_positive_small")


def regime_shards(root: Path, config: dict[str, Any], regime: Regime, jobs: int) -> Path:
    """The training shards of `regime`: the default run's own at 1.0, else written here from the
    same ROI table with its shares."""
    if regime == Regime(1.0):
        return root / "shards" / "train" / "manifest.json"
    shares = {"train_small_positive_share": regime.positives, "train_small_negative_share": regime.negatives}
    settings = ShardSettings.from_config(config["shards"] | shares, "train")
    split = config["data"]["train_split"]
    out = root / "regimes" / regime.folder / "shards"
    if (out / "manifest.json").is_file():
        return out / "manifest.json"
    coco, _, image_root = split_coco(root / "data" / "index.json", split)
    return write_shards(root / "rois" / "train.parquet", coco, image_root, split, settings, out, n_jobs=jobs)


def regime_model(root: Path, config: dict[str, Any], regime: Regime, variant: str, seed: int, threads: int) -> Path:
    """`variant` trained with `seed` on `regime`'s shards (at 1.0: bench/seeds.py's model)."""
    preset = resolve_preset(config["mtgan"]["preset"], config["mtgan"]["overrides"])
    if regime == Regime(1.0):
        return seed_model(root, variant, preset, seed, config["mtgan"]["seed"], threads)
    out = root / "regimes" / regime.folder / f"{variant}-seed{seed}"
    if (out / "model.pt").is_file():
        if not same_training(out / "model.pt", variant, preset):
            raise SystemExit(f"{out / 'model.pt'} was trained with other settings than the config's: move it away to retrain it")
        return out / "model.pt"
    manifest = regime_shards(root, config, regime, jobs=threads)
    return train_mtgan(manifest, VARIANTS[variant], preset, out, "cpu", threads=threads, seed=seed)


def regime_rows(root: Path, config: dict[str, Any], model: Path, regime: Regime, variant: str, rule: str, seed: int) -> dict[str, Any]:
    """One model under one rule on the test split: the regime's row (COCOeval's numbers, D's
    accuracy, by side), from `bench/seeds.py`'s cached scoring."""
    found = scored(model, rule, TestSet.of(root, config), config, root / "regimes" / "scored" / regime.folder / f"{method_name(variant, rule)}-seed{seed}.json")
    acc = found["accuracy"]
    row = {"regime": regime.name, "share": regime.positives, "negative_share": regime.negatives, "method": method_name(variant, rule), "seed": seed}
    row |= {c: found["alone"][c] for c in COLUMNS} | {f"acc_{k}": acc.get(k) for k in ACCURACY}
    row |= {f"acc_side_{b['side']}": b["accuracy"] for b in acc["positive_by_side"]}
    row |= {f"acc_negative_side_{b['side']}": b["accuracy"] for b in acc.get("negative_by_side", [])}
    return row | {"side_rois": [b["rois"] for b in acc["positive_by_side"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="extra config files (after default.yaml)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--regimes", default=",".join(REGIMES_BY_KEY), help="comma-separated, of " + ", ".join(REGIMES_BY_KEY) + " (default: all)")
    parser.add_argument("--variants", default=",".join(VARIANT_NAMES), help="comma-separated, of " + ", ".join(VARIANT_NAMES) + " (default: all)")
    args = parser.parse_args()
    chosen = chosen_regimes(args.regimes)
    variants = chosen_variants(args.variants)
    torch.set_num_threads(args.threads)
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    root = Path("artifacts") / config["data"]["name"]
    for needed in (root / "shards/train/manifest.json", root / "shards/test/manifest.json", root / "rois/test.parquet"):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: run `snakemake --cores 8 eval_coco` (same config) first")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(regime, seed, variant) for regime in chosen for seed in seeds for variant in variants]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for done, (regime, seed, variant) in enumerate(jobs, 1):
        start = time.perf_counter()
        model = regime_model(root, config, regime, variant, seed, args.threads)
        for rule in (r for r in config["infer"]["rules"] if applies(r, VARIANTS[variant])):
            rows.append(regime_rows(root, config, model, regime, variant, rule, seed))
        elapsed = time.perf_counter() - started
        print(
            f"[{done}/{len(jobs)}] regime {regime.name} seed {seed} {variant}: {time.perf_counter() - start:.0f} s "
            f"(APS {100 * rows[-1]['APS']:.1f}); {elapsed / 60:.1f} min so far, about {elapsed / done * (len(jobs) - done) / 60:.0f} min to go",
            flush=True,
        )
    out = root / "regimes"
    small = {regime: kept_small(regime_shards(root, config, regime, args.threads)) for regime in chosen}
    (out / "regimes.csv").write_text(csv_text([{k: v for k, v in r.items() if k != "side_rois"} for r in rows]))
    text = report(rows, seeds, small)
    (out / "regimes.md").write_text(text)
    plot_regimes(rows, chosen, out / "regimes.png")
    for regime in chosen:
        curves = {m: side_curve(rows, regime, m) for m in ordered(sorted({r["method"] for r in rows if r["regime"] == regime.name}))}
        counts = next(r["side_rois"] for r in rows if r["regime"] == regime.name)
        plot_accuracy_by_side(
            curves, counts, out / f"by_side_{regime.folder.removeprefix('share-')}.png", f"D's accuracy on positive test ROIs by size, {regime.name}"
        )
    print(text)


def chosen_regimes(keys: str) -> tuple[Regime, ...]:
    """The regimes named in `keys` (comma-separated keys of REGIMES_BY_KEY), in REGIMES' order."""
    wanted = set(keys.split(","))
    if unknown := sorted(wanted - set(REGIMES_BY_KEY)):
        raise SystemExit(f"--regimes: unknown {', '.join(unknown)}; the regimes are {', '.join(REGIMES_BY_KEY)}")
    return tuple(r for k, r in REGIMES_BY_KEY.items() if k in wanted)


def chosen_variants(keys: str) -> tuple[str, ...]:
    """The variants named in `keys` (comma-separated, of VARIANT_NAMES), in VARIANT_NAMES' order."""
    wanted = set(keys.split(","))
    if unknown := sorted(wanted - set(VARIANT_NAMES)):
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; the variants are {', '.join(VARIANT_NAMES)}")
    return tuple(v for v in VARIANT_NAMES if v in wanted)


def kept_small(manifest: Path) -> str:
    """How many small positives (and negatives) a regime's training shards hold, from its manifest."""
    doc = read_manifest(manifest)
    parts = [f"{doc[k]['kept']} of {doc[k]['sampled']} {k.replace('small_', 'small ')}" for k in ("small_positives", "small_negatives") if k in doc]
    return "; ".join(parts) or "all"


def values(rows: list[dict[str, Any]], regime: Regime, method: str, key: str, seeds: tuple[int, ...] | None = None) -> list[float]:
    """`key` x100 of `method` at `regime`, one value per seed (of `seeds`, where it is defined)."""
    return [
        100 * r[key]
        for r in sorted(rows, key=lambda r: r["seed"])
        if r["regime"] == regime.name and r["method"] == method and r.get(key) is not None and (seeds is None or r["seed"] in seeds)
    ]


def side_curve(rows: list[dict[str, Any]], regime: Regime, method: str) -> list[tuple[float | None, float]]:
    """Per side bin: mean and std over seeds of D's accuracy on positives (x100)."""
    return [mean_std(v) if (v := values(rows, regime, method, f"acc_side_{b}")) else (None, 0.0) for b in SIDE_BINS]


def differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MTGAN (each path) - D w/o adv per published regime and judged metric, by the published rule
    on seeds 0-2 (with its Welch p and seeds beside), and the trend."""
    out = []
    for tested in sorted({r["method"] for r in rows if parse_method(r["method"]).variant == TESTED}, key=method_key):
        for key in JUDGED:
            found = []
            for regime in PUBLISHED:
                a, b = values(rows, regime, CONTROL, key, PUBLISHED_SEEDS), values(rows, regime, tested, key, PUBLISHED_SEEDS)
                if not a or not b:
                    continue
                (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
                held = verdict(a, b) == "held beyond the spread"
                found.append(
                    {
                        "method": tested,
                        "metric": key,
                        "share": regime.positives,
                        "control": (ma, sa),
                        "tested": (mb, sb),
                        "d": mb - ma,
                        "s": max(sa, sb),
                        "held": held,
                        "seeds": len(a),
                        "welch_p": welch_p(a, b),
                    }
                )
            d = [f["d"] for f in found]
            trend = all(x < y for x, y in zip(d, d[1:])) if len(d) == len(PUBLISHED) else None  # None: not every regime ran
            out += [f | {"trend": trend} for f in found]
    return out


def strict_claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims added in issue 44, each by Welch's test over seeds 0-4: MTGAN > SBU-HR on our
    path at every regime; MTGAN > D w/o adv and > SBU-HR on our path with no small crop in training."""
    ours = method_name(TESTED, BY_SIZE)
    claims = [(regime, MATCHED, key) for regime in REGIMES for key in JUDGED] + [(CLOSED, CONTROL, key) for key in JUDGED]
    out = []
    for regime, control, key in claims:
        low_method = method_name(control, BY_SIZE) if applies(BY_SIZE, VARIANTS[control]) else control
        a, b = values(rows, regime, low_method, key, STRICT_SEEDS), values(rows, regime, ours, key, STRICT_SEEDS)
        if not a or not b:
            continue
        (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
        out.append(
            {
                "regime": regime.name,
                "lower": low_method,
                "metric": key,
                "control": (ma, sa),
                "tested": (mb, sb),
                "d": mb - ma,
                "seeds": len(a),
                "welch_p": welch_p(a, b),
                "verdict": welch_verdict(a, b),
            }
        )
    return out


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def report(rows: list[dict[str, Any]], seeds: list[int], small: dict[Regime, str]) -> str:
    """regimes.md: every method per regime of `small` (the regimes run, and their small ROIs kept),
    mean +- std, the verdicts, accuracy by side."""
    metrics = [*COLUMNS, *(f"acc_{k}" for k in ACCURACY)]
    lines = [
        f"Small objects kept in D's training: mean +- std over seeds {', '.join(map(str, seeds))} (x100; acc_*: D's accuracy on the test ROIs)",
        "",
        "| regime (small ROIs kept) | method | " + " | ".join(metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for regime in small:
        for method in sorted({r["method"] for r in rows if r["regime"] == regime.name}, key=method_key):
            cells = [spread(values(rows, regime, method, k)) or "n/a" for k in metrics]
            lines.append(f"| {regime.name} ({small[regime]}) | {display_name(method)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The published hypothesis (issue 36): MTGAN - D w/o adv grows as fewer small positives are kept. d = the difference of the means over seeds "
        "0-2, s = the larger std; held at a regime when d > s; the trend held when d grows from 1.0 to 0.25 to 0.0. Welch's one-sided p beside it.",
        "",
    ]
    published = differences(rows)
    if not published:
        lines.append(f"Not judged here: none of its regimes ({', '.join(r.name for r in PUBLISHED)}) ran.")
    else:
        lines += [
            "| MTGAN's path | metric | small positives kept | D w/o adv | MTGAN | d | s | held at this regime | seeds | Welch p | trend |",
            "|---|---|---|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        lines += [
            f"| {display_name(f['method'])} | {f['metric']} | {f['share']} | {f['control'][0]:.1f} +- {f['control'][1]:.1f} | "
            f"{f['tested'][0]:.1f} +- {f['tested'][1]:.1f} | {f['d']:+.1f} | {f['s']:.1f} | {'held' if f['held'] else 'not held'} | {f['seeds']} | "
            f"{_p(f['welch_p'])} | {'n/a' if f['trend'] is None else 'held' if f['trend'] else 'not held'} |"
            for f in published
        ]
    lines += [
        "",
        "Added in issue 44, by Welch's one-sided test over seeds 0-4 (held at p < 0.05): MTGAN on our path against its matched control SBU-HR "
        "at every regime, and against D w/o adv with no small crop in training.",
        "",
        "| regime | lower | metric | lower's mean | MTGAN (ours) | d | seeds | Welch p | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {c['regime']} | {display_name(c['lower'])} | {c['metric']} | {c['control'][0]:.1f} +- {c['control'][1]:.1f} | "
        f"{c['tested'][0]:.1f} +- {c['tested'][1]:.1f} | {c['d']:+.1f} | {c['seeds']} | {_p(c['welch_p'])} | {c['verdict']} |"
        for c in strict_claims(rows)
    ]
    lines += ["", "D's accuracy on positive test ROIs by the crop's longer side (pixels), mean over seeds (x100):", ""]
    lines += ["| regime | method | " + " | ".join(SIDE_BINS) + " |", "|---|---|" + "---:|" * len(SIDE_BINS)]
    for regime in small:
        for method in sorted({r["method"] for r in rows if r["regime"] == regime.name}, key=method_key):
            cells = ["n/a" if mean is None else f"{mean:.1f}" for mean, _ in side_curve(rows, regime, method)]
            lines.append(f"| {regime.name} | {display_name(method)} | " + " | ".join(cells) + " |")
    counts = next(r["side_rois"] for r in rows)
    lines.append("| | positive test ROIs | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(lines) + "\n"


def plot_regimes(rows: list[dict[str, Any]], regimes: tuple[Regime, ...], out_png: Path) -> None:
    """APS, D's small-positive and small-negative accuracy of each method and path against the regime."""
    panels = (
        ("APS", "APS (COCO AP on small objects) x 100"),
        ("acc_positive_small", "D's accuracy on small positive test ROIs (%)"),
        ("acc_negative_small", "D's accuracy on small negative test ROIs (%)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    x = np.arange(len(regimes))
    for ax, (key, title) in zip(axes, panels):
        for method in ordered(sorted({r["method"] for r in rows})):
            points = [(i, *mean_std(v)) for i, regime in enumerate(regimes) if (v := values(rows, regime, method, key))]
            if points:
                xs, means, stds = zip(*points)
                ax.errorbar(xs, means, yerr=stds, fmt="-o", capsize=3, color=method_color(method), label=label(method))
        ax.set_xticks(x, [r.name.replace(", small negatives", ",\nsmall negatives") for r in regimes], fontsize=8)
        ax.set(xlabel="share of small positives kept in D's training shards", title=title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.14))
    fig.suptitle("Does G help where D has seen few small objects? (mean +- std over seeds)")
    save(fig, out_png)


if __name__ == "__main__":
    main()
