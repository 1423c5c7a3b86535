"""COCO detection error analysis: the "Analysis" of cocodataset.org/#detection-eval.

This is the Derek Hoiem style breakdown of the official MATLAB `CocoEval.analyze` (and of its Python
ports, e.g. detectron's / MMDetection's `coco_error_analysis.py`), computed by re-running pycocotools'
own `COCOeval` with the documented modifications -- there is no hand-written matcher here. Seven
precision-recall curves per category and area range (maxDets 100, pycocotools' 101 recall points):

- C75: PR at IoU .75;  C50: PR at IoU .50;
- Loc: PR at IoU .10 (localisation errors ignored, duplicate detections are still false positives);
- Sim: PR at IoU .10 after supercategory false positives are removed;
- Oth: PR at IoU .10 after all class-confusion false positives are removed;
- BG:  PR after all false positives are removed (background and confusion);
- FN:  PR after all remaining errors are removed (1 everywhere).

How each is obtained:

(a) C75, C50, Loc: one `COCOeval` run (useCats, all categories) with `params.iouThrs = [.75, .5, .1]`.
(b) Sim, per category k: a `COCOeval` run with `params.catIds = [k]`, `iouThrs = [.1]`, the detections
    of k, and a ground truth made of the gt of k plus the gt of the *other categories of k's
    supercategory*, relabelled k and marked ignore. A detection whose best match (at IoU >= .1, a
    regular gt of k being preferred, as pycocotools always does) is such an ignored object counts
    neither as a true nor as a false positive; the relabelled objects never count as positives
    (recall denominators are unchanged). This is the MATLAB `analyze1` (which keeps the labels and
    sets useCats=0 instead -- the same thing, since only detections of k take part).
(c) Oth: the same with the gt of *all* other categories relabelled k and ignored.
(d) BG: `precision[BG] = (precision[Oth] > 0)` -- 1 at every recall threshold the Oth curve reaches
    (pycocotools' interpolated precision is > 0 exactly there), 0 beyond the highest recall reached;
    as the MATLAB `ps(6,:,k,:) = ps(5,:,k,:) > 0`.
(e) FN: 1 at every recall threshold.

The "ignore" is pycocotools' own gt `ignore` flag: `COCOeval._prepare` overwrites it from `iscrowd`,
so a small subclass re-sets it afterwards for the relabelled objects. The relabelled objects keep
their `iscrowd` (and so their IoU), they are not turned into crowd regions: a non-crowd ignored
object absorbs at most one detection, exactly as in the MATLAB API, whose `ignore` flag is honoured.

Unlike the reference (which turns pycocotools' -1 into 0 before averaging), an undefined entry (a
category without ground truth in an area range) stays -1 in all seven settings, and the means of
`ErrorAnalysis.ap` / `ErrorAnalysis.curve` leave those categories out, as `COCOeval.summarize`
does, so C50/C75 are exactly pycocotools' AP50/AP75 (stats[1], stats[2] for area "all").

Supercategories come from `gt.cats[k]["supercategory"]`; a category without one is its own
supercategory, so its Sim curve equals its Loc curve.

Cost: the per-category runs only see the images that hold gt or detections of that category (the
others contribute nothing to its precision), and their ground truth is a small dataset dict built
from the annotations of those images (shallow copies) -- the COCO object is never deep-copied.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from core.errors import InputError, first_few
from pipeline.report.style import save

log = logging.getLogger(__name__)

ERROR_TYPES: tuple[str, ...] = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREA_RANGES: dict[str, tuple[float, float]] = {  # pycocotools' Params defaults (areaRng, areaRngLbl)
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
MAX_DETS = 100
# MATLAB palette of CocoEval.analyze (Loc blue, Sim red, Oth green, BG purple, FN orange); there C75
# and C50 are both white, here two greys so they can be told apart.
COLORS: dict[str, tuple[float, float, float]] = {
    "C75": (1.0, 1.0, 1.0),
    "C50": (0.82, 0.82, 0.82),
    "Loc": (0.31, 0.51, 0.74),
    "Sim": (0.75, 0.31, 0.30),
    "Oth": (0.36, 0.90, 0.38),
    "BG": (0.50, 0.39, 0.64),
    "FN": (1.0, 0.6, 0.0),
}
_IGNORE = "_error_analysis_ignore"  # marks a relabelled gt object of another category


class _IgnoreAwareCOCOeval(COCOeval):
    """COCOeval that honours an explicit gt ignore flag (pycocotools resets `ignore` from `iscrowd`)."""

    def _prepare(self) -> None:
        super()._prepare()
        for objects in self._gts.values():
            for g in objects:
                if g.get(_IGNORE):
                    g["ignore"] = 1


@dataclass(frozen=True)
class ErrorAnalysis:
    """Precision of the seven settings: `precision[e, r, k, a]` for error type `ERROR_TYPES[e]`, recall
    threshold r, category `category_ids[k]`, area range `area_names[a]` (maxDets 100); -1 where the
    category has no ground truth in that area range (as pycocotools)."""

    recall_thresholds: np.ndarray  # (R,) = 0, .01, ..., 1
    precision: np.ndarray  # (7, R, K, A)
    category_ids: list[int]
    area_names: tuple[str, ...]

    def _columns(self, error_type: str, area: str, category_id: int | None) -> np.ndarray:
        """(R, K') precision of the categories that have ground truth in `area` (K' may be 0)."""
        if error_type not in ERROR_TYPES:
            raise ValueError(f"unknown error type {error_type!r}; expected one of {ERROR_TYPES}")
        if area not in self.area_names:
            raise ValueError(f"area {area!r} not analysed; have {self.area_names}")
        p = self.precision[ERROR_TYPES.index(error_type), :, :, self.area_names.index(area)]
        if category_id is not None:
            if category_id not in self.category_ids:
                raise ValueError(f"unknown category id {category_id}")
            p = p[:, [self.category_ids.index(category_id)]]
        return p[:, p[0] > -1]

    def ap(self, error_type: str, area: str = "all", category_id: int | None = None) -> float:
        """Area under the curve (mean of the 101 points), averaged over the categories with ground
        truth in `area` (`COCOeval.summarize`); 0.0 when there is none (score.py reads -1 as 0)."""
        p = self._columns(error_type, area, category_id)
        return float(p.mean()) if p.size else 0.0

    def curve(self, error_type: str, area: str = "all", category_id: int | None = None) -> np.ndarray:
        """(R,) precision per recall threshold, mean over the categories with ground truth in `area`;
        zeros when there is none. Its mean is `ap(...)`."""
        p = self._columns(error_type, area, category_id)
        return p.mean(axis=1) if p.shape[1] else np.zeros(len(self.recall_thresholds))


def _coco(images: list[dict[str, Any]], categories: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """The detections as a COCO object; copies of the records, since `loadRes` annotates in place."""
    if not results:  # pycocotools cannot load an empty list; an empty index evaluates to precision 0
        return _coco(list(gt.dataset["images"]), list(gt.dataset["categories"]), [])
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise InputError(f"{len(unknown)} result image ids are not in the ground truth, e.g. {first_few(sorted(unknown))}")
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(r) for r in results])


def _evaluate(gt: COCO, dt: COCO, cat_ids: list[int], img_ids: list[int], iou_thrs: list[float], areas: Sequence[str]) -> np.ndarray:
    """pycocotools' accumulated precision (T, R, K, A) at maxDets 100."""
    ev = _IgnoreAwareCOCOeval(gt, dt, iouType="bbox")
    p = ev.params
    p.imgIds = list(img_ids)
    p.catIds = list(cat_ids)
    p.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    p.maxDets = [MAX_DETS]
    p.areaRng = [list(AREA_RANGES[a]) for a in areas]
    p.areaRngLbl = list(areas)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][..., 0]


def analyze_errors(gt: COCO, results: list[dict[str, Any]], area_ranges: Sequence[str] = ("all", "small", "medium", "large")) -> ErrorAnalysis:
    """The seven PR settings of the COCO analysis for bbox `results` (COCO results records) on `gt`.

    Neither `gt` nor `results` is modified. No detections at all: C75..BG are 0 (FN is 1, as always,
    for every category with ground truth).
    """
    areas = tuple(area_ranges)
    bad = [a for a in areas if a not in AREA_RANGES]
    if bad or not areas:
        raise ValueError(f"area ranges must be among {tuple(AREA_RANGES)}, got {areas}")
    t0 = time.perf_counter()
    cat_ids = sorted(gt.getCatIds())
    img_ids = sorted(gt.getImgIds())
    images = list(gt.dataset.get("images", []))
    categories = list(gt.dataset.get("categories", []))
    # evaluate copies: COCOeval writes 'ignore' / '_ignore' into the gt records it sees
    gt_copy = _coco(images, categories, [dict(a) for a in gt.dataset.get("annotations", [])])
    dt = _load_results(gt, results)

    base = _evaluate(gt_copy, dt, cat_ids, img_ids, [0.75, 0.5, 0.1], areas)  # (3, R, K, A)
    n_rec = base.shape[1]
    precision = np.empty((len(ERROR_TYPES), n_rec, len(cat_ids), len(areas)), dtype=np.float64)
    precision[:3] = base
    precision[3] = base[2]  # Sim / Oth default to Loc: right for a category without detections or gt
    precision[4] = base[2]

    supercategory = {k: gt.cats[k].get("supercategory") for k in cat_ids}
    siblings: dict[Any, set[int]] = defaultdict(set)
    for k, s in supercategory.items():
        if s is not None:
            siblings[s].add(k)
    dt_images: dict[int, set[int]] = defaultdict(set)
    for d in dt.dataset["annotations"]:
        dt_images[d["category_id"]].add(d["image_id"])

    for ki, k in enumerate(cat_ids):
        gt_images = set(gt.catToImgs.get(k, ()))
        if not gt_images or not dt_images.get(k):
            continue  # all -1 (no gt), or no detections: every IoU .1 curve is the Loc one
        # only these images contribute to k's precision: the others hold neither gt nor detections of k
        imgs = sorted(gt_images | dt_images[k])
        sims = siblings[supercategory[k]] - {k} if supercategory[k] is not None else set()
        for e, relabel in ((3, sims), (4, None)):  # Sim: same supercategory; Oth: every other category
            if relabel is not None and not relabel:
                continue  # no sibling categories: Sim == Loc
            anns = []
            for i in imgs:
                for a in gt.imgToAnns.get(i, ()):
                    c = a["category_id"]
                    if c == k:
                        anns.append(dict(a))
                    elif relabel is None or c in relabel:
                        anns.append(dict(a, category_id=k, **{_IGNORE: 1}))
            gt_k = _coco([gt.imgs[i] for i in imgs if i in gt.imgs], [gt.cats[k]], anns)
            precision[e, :, ki, :] = _evaluate(gt_k, dt, [k], imgs, [0.1], areas)[0, :, 0, :]

    valid = precision[0] > -1  # (R, K, A): whole (k, a) slices, identical in every setting
    precision[5] = np.where(valid, (precision[4] > 0).astype(np.float64), -1.0)
    precision[6] = np.where(valid, 1.0, -1.0)
    recall_thresholds = np.asarray(Params(iouType="bbox").recThrs, dtype=np.float64)
    analysis = ErrorAnalysis(recall_thresholds=recall_thresholds, precision=precision, category_ids=cat_ids, area_names=areas)
    log.info(
        "error analysis of %d detections, %d images, %d categories in %.1fs: %s",
        len(results),
        len(img_ids),
        len(cat_ids),
        time.perf_counter() - t0,
        ", ".join(f"{t} {analysis.ap(t, areas[0]):.3f}" for t in ERROR_TYPES),
    )
    return analysis


def _legend_ap(ap: float) -> str:
    """MATLAB style: '[.412]', '[1.00]'."""
    milli = round(ap * 1000)
    return "[1.00]" if milli >= 1000 else f"[.{milli:03d}]"


def plot_error_analysis(analysis: ErrorAnalysis, area: str, out_png: Path, title: str, category_id: int | None = None) -> Path:
    """Stacked-area PR plot of the seven settings (the COCO analysis figure; MTGAN Figs 1, 6).

    Each band is filled between the curve below and its own curve, so the area under curve t is
    its AP, shown in the legend ("[.412] C75"). Mean over categories, or one `category_id`.
    """
    rs = analysis.recall_thresholds
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    lower = np.zeros(len(rs))
    for t in ERROR_TYPES:
        upper = np.maximum(analysis.curve(t, area, category_id), lower)
        label = f"{_legend_ap(analysis.ap(t, area, category_id))} {t}"
        ax.fill_between(rs, lower, upper, facecolor=COLORS[t], edgecolor="none", label=label)
        ax.plot(rs, upper, color="black", linewidth=0.6)
        lower = upper
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    legend = ax.legend(loc="lower left", fontsize=9, frameon=True)
    for patch in legend.get_patches():
        patch.set_edgecolor("black")
        patch.set_linewidth(0.5)
    save(fig, out_png, dpi=120)
    log.info("wrote %s", out_png)
    return Path(out_png)


def error_table(analyses: dict[str, ErrorAnalysis], areas: Sequence[str] = ("all", "small")) -> list[dict[str, Any]]:
    """One row per method and area: {"method", "area", "C75", ..., "FN"} (APs as fractions)."""
    return [{"method": method, "area": area} | {t: a.ap(t, area) for t in ERROR_TYPES} for method, a in analyses.items() for area in areas]


def error_table_markdown(rows: list[dict[str, Any]]) -> str:
    """`error_table` rows as a markdown table, APs with 3 decimals (as in the figure legends)."""
    lines = ["| method | area | " + " | ".join(ERROR_TYPES) + " |", "|---|---|" + "---:|" * len(ERROR_TYPES)]
    for row in rows:
        values = " | ".join(f"{row[t]:.3f}" for t in ERROR_TYPES)
        lines.append(f"| {row['method']} | {row['area']} | {values} |")
    return "\n".join(lines) + "\n"
