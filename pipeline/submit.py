"""Re-scoring where there is no ground truth: COCO test-dev submissions and `mtgan rescore`.

- `submission`: a method's detections on an unlabelled split (`data.submit_split`), the
  file COCO's evaluation server takes: `detections_<split>_<method>_results.json`, a JSON list of
  `{image_id, category_id, bbox: [x, y, w, h], score}`. The baseline's are the detect stage's
  own; a variant's (alone and in the ensemble, from one reading of its tables) come from the merge
  code over its inference on the split's shards. Before it is
  written, `core.io.coco.results_problems` checks it against the split's image list: every image id and
  category id known, at most `max_per_image` detections per image, four finite numbers per box with
  positive width and height, finite scores in [0, 1].
- `rescore`: a trained model over another detector's results on any images, in one call: the
  detections (a COCO results JSON, or the detect stage's own table) are validated and made ROIs
  (`pipeline.detect.import_detections`, `pipeline.rois`),
  cropped into temporary shards with the model's own HR size, scale and margin (`pipeline.shards`),
  inferred under the test-time rule asked for (the paper's path by default; `pipeline.infer`) and merged (`pipeline.merge`):
  the same code as the pipeline's stages 3-7, so for the same ROIs it gives the same detections.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError, first_few
from core.io import atomic
from core.io.coco import RESULTS_FILE, ResultsCheck, image_list, iter_json_array, load_json, validate_coco
from core.io.tables import DETECTIONS_SCHEMA, ROIS_SCHEMA, checked_metadata, read_table
from jobs.common import pick_device
from jobs.mtgan.model_file import read_model_state
from jobs.mtgan.settings import DEFAULT_G_MAX_SIDE, PAPER_RULE
from pipeline.detect import import_detections
from pipeline.infer import infer
from pipeline.merge import MergeSettings, file_parts, merge_detections, merge_parts
from pipeline.methods import method_name, parse_method
from pipeline.rois import build_rois
from pipeline.shards import ShardSettings, write_shards

log = logging.getLogger(__name__)


def write_submission(
    parts: Iterable[list[dict[str, Any]]], coco: dict[str, Any], out: Path, max_per_image: int = 100, new_only: bool = False
) -> dict[str, int]:
    """Check records (in parts) against the image list `coco` and write them to `out`, part by
    part (nothing is written under `out`'s name unless every record passes; `new_only`: nor over
    a file that is there when the writing ends); the counts."""
    check = ResultsCheck(coco, max_per_image)
    images: set[int] = set()

    def checked() -> Iterator[list[dict[str, Any]]]:
        for part in parts:
            check.add(part)
            images.update(r["image_id"] for r in part if isinstance(r, dict))
            yield part
        if problems := check.problems():
            raise InputError(f"{out}: not a valid COCO results file for these {len(coco['images'])} images: " + "; ".join(problems))

    detections = atomic.write_json_list(out, checked(), new_only)
    counts = {"detections": detections, "images": len(coco["images"]), "images_with_detections": len(images)}
    log.info("%s: %s", out, counts)
    return counts


def submission(
    method: str,
    coco: dict[str, Any],
    settings: MergeSettings,
    outputs: dict[bool, Path],
    detections: Path | None = None,
    rois: Path | None = None,
    inference: Path | None = None,
) -> dict[Path, dict[str, int]]:
    """The results files of an unlabelled split for `method`: the baseline's own detections
    (`detections`, the detect stage's COCO results; `outputs` {False: path}) or a variant's merged
    ones under one rule (`rois` and its `inference`), alone (key False) and in the ensemble with the
    baseline (key True) for the keys of `outputs`. Each file's counts."""
    if method == "baseline":
        if detections is None:
            raise InputError("the baseline's submission needs the detect stage's results file")
        if set(outputs) != {False}:
            raise InputError("the baseline has no ensemble with itself")
        return {outputs[False]: write_submission(iter_json_array(detections, RESULTS_FILE), coco, outputs[False], settings.max_per_image)}
    try:
        parsed = parse_method(method)
    except ValueError as err:
        raise InputError(str(err)) from None
    if parsed.ensemble:
        raise InputError(f"{method}: name the method alone ({method_name(parsed.variant, parsed.rule)}); its ensemble's file comes with it")
    if rois is None or inference is None:
        raise InputError(f"the submission of {method} needs the split's ROI table and the variant's inference")
    category_ids = list(checked_metadata(rois, ROIS_SCHEMA)["category_ids"])
    return {
        outputs[e]: write_submission(merge_parts(file_parts(rois, inference), settings, e, category_ids), coco, outputs[e], settings.max_per_image)
        for e in outputs
    }


def image_info(images: Path, model: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The image list to re-score and its image root: an image-info or COCO JSON (its images live
    beside it, or under `<json folder>/images`), or a folder of images (ids 1..N in sorted file-name
    order). The categories must be the model's."""
    images = Path(images)
    if images.is_dir():
        return image_list(images, model["categories"]), images
    data = load_json(images)
    root = images.parent / "images" if (images.parent / "images").is_dir() else images.parent
    data.setdefault("categories", model["categories"])
    ours, theirs = [c["id"] for c in model["categories"]], sorted(c["id"] for c in data["categories"])
    if ours != theirs:
        raise InputError(
            f"{images}: categories {first_few(theirs)} are not the model's {first_few(ours)}: the model re-scores only the categories it was trained on"
        )
    return data, root


def check_folder_ids(image_ids: list[int], coco: dict[str, Any], folder: Path, detections: Path) -> None:
    """A folder's images get ids 1..N in sorted file-name order: only detections made on that very
    listing name all of them. Detections that name part of them were most likely made on other
    images (another split's ids), and would be re-scored on the wrong pixels: InputError."""
    named = set(image_ids)
    if len(named) < len(coco["images"]):
        first, last = coco["images"][0]["file_name"], coco["images"][-1]["file_name"]
        raise InputError(
            f"{detections}: names {len(named)} of the {len(coco['images'])} images of {folder} (ids 1 = {first} .. {len(coco['images'])} = {last}, "
            "sorted file names): made on other images? Give the image list they were made on (--images <its COCO or image-info JSON>)"
        )


def _detections(path: Path, coco: dict[str, Any], top_k: int, model: dict[str, Any], model_path: Path, out: Path) -> Path:
    """The detections to re-score: a COCO results JSON (validated and imported as the detect stage
    imports one, into the table `out`), or the detect stage's own table (`detect/<split>.parquet`,
    with the detector's probability vectors), which must be for the model's categories and these
    images. The table's path."""
    if path.suffix == ".parquet":
        categories = checked_metadata(path, DETECTIONS_SCHEMA).get("category_ids")
        if list(categories or []) != list(model["category_ids"]):
            raise InputError(f"{path}: detections for categories {first_few(categories or [])}, not the model's {first_few(model['category_ids'])}")
        image_ids = read_table(path, DETECTIONS_SCHEMA, columns=["image_id"]).column("image_id").to_numpy()
        unknown = np.setdiff1d(image_ids, [im["id"] for im in coco["images"]])
        if unknown.size:
            raise InputError(f"{path}: {unknown.size} image id(s) not among the images: {first_few(unknown.tolist())}")
        return path
    try:
        import_detections(path, coco, top_k, out)
    except InputError as e:
        raise InputError(f"{e} (the model {model_path} knows categories {first_few(model['category_ids'])})") from None
    return out


def rescore(
    model_path: Path,
    images: Path,
    detections: Path,
    out: Path,
    settings: MergeSettings,
    ensemble: bool = False,
    top_k: int = 100,
    image_root: Path | None = None,
    batch_size: int = 256,
    device: str = "auto",
    rule: str = PAPER_RULE,
    g_max_side: float = DEFAULT_G_MAX_SIDE,
) -> dict[str, int]:
    """Another detector's results on `images`, re-scored by a trained model (MTGAN alone, or the
    ensemble with the detector's own scores) under the test-time rule `rule`: the pipeline's
    stages 3-7 in one call."""
    model = read_model_state(model_path)
    coco, root = image_info(images, model)
    root = Path(image_root) if image_root else root
    coco = {k: v for k, v in coco.items() if k != "annotations"}  # re-scoring never uses ground truth
    coco, _ = validate_coco(coco, Path(images), root)
    shard_settings = ShardSettings(
        hr_size=model["hr_size"],
        scale=model["scale"],
        context_margin=model["margin"],
        rois_per_shard=4096,
        block_size=256,
        num_chunks=1,
        on_bad_image="error",
        sampling=None,
    )
    with tempfile.TemporaryDirectory(prefix="mtgan-rescore-") as tmp:
        table = _detections(Path(detections), coco, top_k, model, model_path, Path(tmp) / "detections.parquet")
        if Path(images).is_dir():
            check_folder_ids(read_table(table, DETECTIONS_SCHEMA, columns=["image_id"]).column("image_id").to_pylist(), coco, Path(images), Path(detections))
        rois = Path(tmp) / "rois.parquet"
        build_rois(table, coco, add_gt=False, positive_iou=0.5, negative_iou=0.35, out=rois)
        manifest = write_shards(rois, coco, root, "rescore", shard_settings, Path(tmp) / "shards")
        predictions, _ = infer(model_path, manifest, pick_device(device), batch_size, rule, g_max_side)
        records = merge_detections(read_table(rois, ROIS_SCHEMA), predictions, settings, ensemble, list(model["category_ids"]))
    return write_submission([records], coco, out, settings.max_per_image, new_only=True)  # a user's file: never replaced
