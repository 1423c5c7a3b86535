"""The `eval_coco` table: every method's COCOeval numbers in the layout of the paper's Tables 2-6.

Rows come in the order of `pipeline/methods.py`: the paper's experiment first, every variant on
the paper's path (baseline, Table 3's D w/o adversarial branch, SBU, MTGAN, its ablations, then
the ensembles with the baseline), then each of our test-time rules' rows; each row's name says
which path D's input took. Columns AP, AP50, AP75, APS, APM, APL (x100, one decimal), AR100 and
the number of images. Also the per-class AP of the baseline, MTGAN and its ensemble, and D's
classification accuracy (the paper's Table 9) per variant and rule.

Left out: Table 3's "plain R-CNN" row (proposals resized to 224x224, ResNet-50 features, class-
specific linear SVMs; paper lines 937-945). It needs an ImageNet-pretrained ResNet-50 as its
feature extractor, which cannot be had offline, and 224-pixel crops that multiply the CPU
budget 12-fold; features from a network trained here would make it a weaker copy of the
`d_no_adv` row, which is Table 3's end-to-end control of the same question.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from core.errors import PipelineError
from core.io import atomic
from pipeline.methods import display_name, method_key
from pipeline.score import TABLE_COLUMNS

# D's accuracy (the infer stage's keys) and their headers: the paper's Table 9, positives by size,
# and small negatives (a D that reads every small crop as background scores high there).
ACCURACY_COLUMNS = ("positive", "negative", "all", "positive_small", "positive_medium", "positive_large", "negative_small")
ACCURACY_HEADERS = ("positive", "negative", "all", "small positive", "medium positive", "large positive", "small negative")


TABLE_OUTPUTS = ("csv", "markdown", "per_class", "accuracy")


def write_tables(scores: list[dict[str, Any]], accuracies: list[dict[str, Any]], outputs: dict[str, Path]) -> str:
    """The table as CSV and Markdown, per-class AP (CSV) and D's accuracy (CSV), at `outputs`
    (names TABLE_OUTPUTS); returns the Markdown."""
    missing = sorted(set(TABLE_OUTPUTS) - set(outputs))
    if missing:
        raise PipelineError(f"the table needs outputs {missing}")
    scores = sorted(scores, key=lambda s: method_key(s["method"]))
    header = ["method", "name", *TABLE_COLUMNS, "images"]
    rows = [[s["method"], display_name(s["method"]), *(f"{100 * s['metrics'][c]:.1f}" for c in TABLE_COLUMNS), int(s["metrics"]["images"])] for s in scores]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    atomic.write_text(outputs["csv"], buffer.getvalue())
    lines = ["| method | " + " | ".join(TABLE_COLUMNS) + " | images |", "|---|" + "---:|" * (len(TABLE_COLUMNS) + 1)]
    lines += [f"| {r[1]} | " + " | ".join(str(v) for v in r[2:]) + " |" for r in rows]
    if accuracies:
        lines += [
            "",
            "Discriminator classification accuracy (%) on the test ROIs (paper Table 9), eval mode, each ROI "
            "as its row's path feeds it to D; positives also by size, and small negatives:",
            "",
            "| method | " + " | ".join(ACCURACY_HEADERS) + " |",
            "|---|" + "---:|" * len(ACCURACY_HEADERS),
        ]
        for a in sorted(accuracies, key=lambda a: method_key(a["method"])):
            acc = a["accuracy"]
            cells = " | ".join("n/a" if acc.get(k) is None else f"{100 * acc[k]:.1f}" for k in ACCURACY_COLUMNS)
            lines.append(f"| {display_name(a['method'])} | {cells} |")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["method", "variant", "rule", *ACCURACY_COLUMNS, *(f"{k}_rois" for k in ACCURACY_COLUMNS)])
        for a in sorted(accuracies, key=lambda a: method_key(a["method"])):
            acc = a["accuracy"]
            writer.writerow([a["method"], a["variant"], a["rule"], *(acc.get(k) for k in ACCURACY_COLUMNS), *(acc.get(f"{k}_rois") for k in ACCURACY_COLUMNS)])
        atomic.write_text(outputs["accuracy"], buffer.getvalue())
    markdown = "\n".join(lines) + "\n"
    atomic.write_text(outputs["markdown"], markdown)

    per_class = [s for s in scores if s["method"] in ("baseline", "mtgan", "mtgan_ensemble")]
    if per_class:
        names = per_class[0]["category_names"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["category_id", "category", *(f"AP_{s['method']}" for s in per_class)])
        for cat_id, name in names.items():
            writer.writerow([cat_id, name, *(f"{100 * s['per_class_ap'][cat_id]:.1f}" for s in per_class)])
        atomic.write_text(outputs["per_class"], buffer.getvalue())
    return markdown


def read_json_files(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text()) for p in paths]
