"""Seed variance of the default run: MTGAN and SBU trained with several seeds on the same baseline,
ROIs and shards, each scored on the test split exactly as the pipeline scores it.

One run's difference is noise until seeds say otherwise. For each seed this trains the variants
(the pipeline's own `mtgan.seed` model is reused: the CPU run is deterministic), runs the infer,
merge and score code of stages 6-8 on the test shards, and prints mean +- std (sample std, n - 1)
over seeds of AP, AP75, APS, APM, APL for every method and ensemble, and of D's Table 9 accuracy.
The baseline is the same detector in every seed (std 0).

    snakemake --cores 8 eval_coco && python bench/seeds.py              # seeds 0, 1, 2 (~30 min on 2 cores)
    python bench/seeds.py --seeds 0,1,2,3,4 --config config/default.yaml --config my.yaml

Writes artifacts/<dataset>/seeds/seeds.md and seeds.csv (one row per method and seed).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.mtgan.settings import VARIANTS, resolve_preset  # noqa: E402
from jobs.mtgan.train import train_mtgan  # noqa: E402
from pipeline.config import load_config_files, validate_config  # noqa: E402
from pipeline.infer import infer  # noqa: E402
from pipeline.io.tables import ROIS_SCHEMA, file_metadata, read_table  # noqa: E402
from pipeline.merge import MergeSettings, merge_detections  # noqa: E402
from pipeline.score import coco_bbox_eval  # noqa: E402
from pipeline.table import display_name  # noqa: E402

COLUMNS = ("AP", "AP75", "APS", "APM", "APL")
ACCURACY = ("positive", "negative", "positive_small")


def _model(root: Path, variant: str, preset: Any, seed: int, config_seed: int, threads: int) -> Path:
    """The variant trained with `seed`: the pipeline's own model for its configured seed, else ours."""
    own = root / "mtgan" / variant / "model.pt"
    if seed == config_seed and own.is_file():
        state = torch.load(own, map_location="cpu", weights_only=True)
        if state["preset"] == json.loads(json.dumps(dataclasses.asdict(preset))):
            return own
    out = root / "seeds" / f"{variant}-seed{seed}"
    if (out / "model.pt").is_file():
        return out / "model.pt"
    return train_mtgan(root / "shards" / "train" / "manifest.json", VARIANTS[variant], preset, out, "cpu", threads=threads, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="extra config files (after default.yaml)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="mtgan,sbu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(load_config_files([REPO / "config" / "default.yaml", *args.config]))
    root = Path("artifacts") / config["data"]["name"]
    test = config["data"]["test_split"]
    for needed in (root / "shards/test/manifest.json", root / "rois/test.parquet", root / "detect" / f"{test}_results.json"):
        if not needed.is_file():
            raise SystemExit(f"{needed} is missing: run `snakemake --cores 8 eval_coco` (same config) first")
    mtgan = config["mtgan"]
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
        for variant in args.variants.split(","):
            start = time.perf_counter()
            model = _model(root, variant, preset, seed, mtgan["seed"], args.threads)
            table, accuracy = infer(model, root / "shards/test/manifest.json", torch.device("cpu"), config["infer"]["batch_size"])
            for ensemble in (False, True):
                stats, _ = coco_bbox_eval(coco_json, merge_detections(rois, table, merge, ensemble, category_ids))
                row = {"method": f"{variant}_ensemble" if ensemble else variant, "seed": seed, **{c: stats[c] for c in COLUMNS}}
                if not ensemble:
                    row |= {f"acc_{k}": accuracy["accuracy"][k] for k in ACCURACY}
                rows.append(row)
            print(f"seed {seed} {variant}: {time.perf_counter() - start:.0f} s; "
                  + "; ".join(f"{r['method']} APS {100 * r['APS']:.1f}" for r in rows[-2:]), flush=True)
    print(_write(rows, seeds, root / "seeds"))


def _write(rows: list[dict[str, Any]], seeds: list[int], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / "seeds.csv").write_text(buffer.getvalue())
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = [*COLUMNS, *(f"acc_{k}" for k in ACCURACY)]
    lines = [f"Mean +- std over seeds {', '.join(map(str, seeds))} (x100; acc_*: D's Table 9 accuracy on test ROIs)", "",
             "| method | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for method in methods:
        values = [[r[k] for r in rows if r["method"] == method and r.get(k) is not None] for k in metrics]
        cells = [f"{100 * np.mean(v):.1f} +- {100 * np.std(v, ddof=1) if len(v) > 1 else 0:.1f}" if v else "" for v in values]
        lines.append(f"| {display_name(method)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "seeds.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
