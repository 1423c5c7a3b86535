"""The third bad-input matrix, tables and files: cross-checks between the pipeline's files (the
categories of a model against the ROI table's, a manifest against the table it covers), rows that
would be dropped or mis-read silently, and files that are not what they claim, each named in one
line with the row, key or file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from core.io.shards import write_manifest
from core.io.tables import DETECTIONS_SCHEMA, INFERENCE_SCHEMA, make_table, read_table, write_table
from pipeline.audit import audit
from pipeline.detect import import_detections
from pipeline.shards import ShardSettings, gather_manifest, plan_shards, write_chunk

from conftest import SHARD_SETTINGS
from test_bad_input import CONFIGS, _coco_config, _coco_folder, cli_error, one_line


def _detections(tiny_data: Path, tmp_path: Path, split: str = "val") -> tuple[Any, dict[str, Any]]:
    coco = json.loads((tiny_data / f"{split}.json").read_text())
    records = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in coco["annotations"]]
    (tmp_path / "results.json").write_text(json.dumps(records))
    import_detections(tmp_path / "results.json", coco, 100, tmp_path / "imported.parquet")
    return read_table(tmp_path / "imported.parquet", DETECTIONS_SCHEMA), coco


def _rois_cli(tiny_data: Path, detections: Path, tmp_path: Path) -> str:
    return cli_error(
        "rois", *sum((["--config", c] for c in CONFIGS), []), "--data-index", tiny_data / "index.json", "--split", "val", "--role", "test",
        "--detections", detections, "--out", tmp_path / "rois.parquet", "--out-counts", tmp_path / "counts.md",
    )  # fmt: skip


def test_a_detection_of_an_image_outside_the_split_is_named_not_dropped(tiny_data: Path, tmp_path: Path) -> None:
    table, _ = _detections(tiny_data, tmp_path)
    ids = table.column("image_id").to_numpy().copy()
    ids[3] = 999_999
    write_table(table.set_column(table.schema.get_field_index("image_id"), "image_id", [ids]), tmp_path / "det.parquet")
    message = one_line(_rois_cli(tiny_data, tmp_path / "det.parquet", tmp_path))
    assert "det.parquet" in message and "1 detection(s) of 1 image id(s) not in the split (first: image 999999, row 3)" in message
    assert not (tmp_path / "rois.parquet").exists()


def test_a_detection_without_area_is_named_by_its_row(tiny_data: Path, tmp_path: Path) -> None:
    table, _ = _detections(tiny_data, tmp_path)
    x2 = table.column("x2").to_numpy().copy()
    x2[5] = table.column("x1").to_numpy()[5] - 3
    write_table(table.set_column(table.schema.get_field_index("x2"), "x2", [x2]), tmp_path / "det.parquet")
    message = one_line(_rois_cli(tiny_data, tmp_path / "det.parquet", tmp_path))
    assert "det.parquet" in message and "1 detection(s) without area (first: row 5" in message and "x2 must exceed x1" in message


def test_a_table_rewritten_without_its_metadata_is_named(tiny_data: Path, tmp_path: Path) -> None:
    table, _ = _detections(tiny_data, tmp_path)
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "det.parquet")  # as pandas' to_parquet would leave it
    message = one_line(_rois_cli(tiny_data, tmp_path / "det.parquet", tmp_path))
    assert "det.parquet" in message and "not the pipeline's metadata" in message


def test_a_table_of_other_columns_names_the_differing_column(tiny_data: Path, tmp_path: Path) -> None:
    table, _ = _detections(tiny_data, tmp_path)
    table = table.set_column(table.schema.get_field_index("score"), "score", [table.column("score").cast("float64")])
    write_table(table.drop_columns(["label"]), tmp_path / "det.parquet")
    message = one_line(_rois_cli(tiny_data, tmp_path / "det.parquet", tmp_path))
    assert "missing columns ['label']" in message and "column 'score' is double (not float)" in message and len(message) < 300


def test_merge_refuses_a_model_of_other_categories(tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    rois = read_table(tiny_rois["val"], "rois.schema.yaml")
    n = rois.num_rows
    columns = {"roi_id": np.arange(n), "probs": np.full((n, 8), 1 / 8, np.float32), "through_g": np.zeros(n, np.int32)}
    columns |= {k: np.zeros(n, np.float32) for k in ("dx", "dy", "dw", "dh")}
    metadata = {"variant": "mtgan", "rule": "paper", "category_ids": [1, 5, 90, 91, 92, 93, 94]}
    write_table(make_table(columns, INFERENCE_SCHEMA, metadata), tmp_path / "inf.parquet")
    args = ["merge", "--config", CONFIGS[0], "--rois", tiny_rois["val"], "--inference", tmp_path / "inf.parquet", "--out", tmp_path / "out.json"]
    message = one_line(cli_error(*args))
    assert "categories [1, 5, 90, 91, 92, 93, 94]" in message and "[1, 2, 3, 4, 5, 6, 7]" in message
    assert not (tmp_path / "out.json").exists()


def _val_shards(tiny_data: Path, tiny_rois: dict[str, Path], out: Path) -> tuple[ShardSettings, list[Path]]:
    """The val split's plan and chunks in `out`, not yet gathered."""
    settings = ShardSettings(**SHARD_SETTINGS, sampling=None)
    coco = json.loads((tiny_data / "val.json").read_text())
    plan_shards(tiny_rois["val"], coco, "val", settings, out / "plan.parquet", out / "images.parquet")
    dirs = [out / f"chunk-{c}" for c in range(settings.num_chunks)]
    for c, d in enumerate(dirs):
        write_chunk(out / "plan.parquet", out / "images.parquet", tiny_rois["val"], tiny_data / "images" / "val", c, settings, d)
    return settings, dirs


def test_audit_finds_a_copied_chunk(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    """A manifest whose second chunk is a copy of the first, its counts made to add up (the
    copy's ROIs standing in for as many others, the rest declared skipped): every count matches, the
    ROIs do not."""
    settings, dirs = _val_shards(tiny_data, tiny_rois, tmp_path / "shards")
    manifest = tmp_path / "shards" / "manifest.json"
    doc = gather_manifest(tiny_rois["val"], tmp_path / "shards" / "plan.parquet", dirs, "val", settings, manifest)
    report, _ = audit(manifest)  # before: the true manifest passes
    assert report.problems == []
    small = min(range(len(dirs)), key=lambda c: sum(s["num_rois"] for s in doc["shards"] if s["chunk"] == c))  # the copy fits the count
    kept = [s for s in doc["shards"] if s["chunk"] == small]
    shutil.copytree(dirs[small], tmp_path / "shards" / "chunk-copy")
    n = sum(s["num_rois"] for s in kept)
    doc["shards"] = kept + [{**s, "path": s["path"].replace(f"chunk-{small}", "chunk-copy")} for s in kept]
    doc["skipped_rois"] += doc["num_rois"] - 2 * n
    doc["num_rois"] = 2 * n
    write_manifest(manifest, doc | {"histograms": _doubled(json.loads((dirs[small] / "chunk.json").read_text())["histograms"])})
    report, _ = audit(manifest)
    assert any(f"{n} ROI(s) are in the shards more than once" in p and "a copied chunk?" in p for p in report.problems), report.problems


def _doubled(histograms: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {key: {k: 2 * v for k, v in counts.items()} for key, counts in histograms.items()}


def test_a_manifest_written_elsewhere_names_its_shards_but_is_not_read_outside_its_folder(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    """gather_manifest records each shard relative to wherever the manifest is written; audit and
    the jobs read only shards inside the manifest's own folder (a path that leads out of it may
    reach a copy of another run's cache), so such a manifest is named, not read."""
    settings, dirs = _val_shards(tiny_data, tiny_rois, tmp_path / "shards")
    manifest = tmp_path / "elsewhere" / "manifest.json"
    manifest.parent.mkdir()
    doc = gather_manifest(tiny_rois["val"], tmp_path / "shards" / "plan.parquet", dirs, "val", settings, manifest)
    assert all(s["path"].startswith("../shards/chunk-") for s in doc["shards"])
    report, _ = audit(manifest)
    assert len(report.problems) >= len(doc["shards"]) and all("is outside" in p for p in report.problems[: len(doc["shards"])])


def test_a_train_or_test_split_without_objects_is_refused_before_any_work(tmp_path: Path) -> None:
    images = tmp_path / "images"
    coco = _coco_folder(images) | {"annotations": []}
    message = one_line(cli_error("data", "--config", CONFIGS[0], "--config", _coco_config(tmp_path, coco, images), "--out", tmp_path / "out"))
    assert "split 'train' has no annotated objects: it cannot be data.train_split or data.test_split" in message
    assert not (tmp_path / "out").exists()


def test_scoring_a_split_without_objects_is_an_error_not_zero(tmp_path: Path) -> None:
    from pipeline.score import coco_bbox_eval

    gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(ValueError, match="no ground-truth objects: nothing to score"):
        coco_bbox_eval(tmp_path / "gt.json", [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "score": 0.5}])


@pytest.mark.parametrize("kind", ["baseline model", "training checkpoint"])
def test_rescore_names_the_kind_of_file_it_was_given(tmp_path: Path, kind: str) -> None:
    from jobs.mtgan.model_file import read_model_state

    state = {"model": {}, "arch": "fasterrcnn_small_cpu", "num_classes": 8, "category_ids": [1], "settings": {}, "step": 6}
    if kind == "training checkpoint":
        state = {"format_version": 2, "d": {}, "d_opt": {}, "step": 4, "rng": {}, "settings": {}, "metrics": []}
    torch.save(state, tmp_path / "file.pt")
    with pytest.raises(Exception, match="baseline detector's model" if kind == "baseline model" else "a training checkpoint, not the model"):
        read_model_state(tmp_path / "file.pt")
