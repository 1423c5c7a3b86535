"""The shards stage: sampling, the plan, round trip of every column, checksums, determinism,
atomicity, bad images, thinning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.compute as pc
import pytest

from core.crops import crop_hr, make_lr
from core.io import shards as shard_io
from core.io.images import ImageReadError, open_rgb
from core.io.shards import ORIGIN_CODES, read_manifest, sha256_of
from core.io.tables import ROIS_SCHEMA, read_table
from core.sizes import SIZE_CLASSES
from pipeline.audit import audit
from pipeline.shards import ShardSettings, gather_manifest, plan_shards, sample_rois, small_negative_mask, small_positive_mask, thin, write_chunk, write_shards

from conftest import SHARD_SETTINGS

SAMPLING = {"rois_per_image": 12, "positive_fraction": 0.25, "seed": 0}


def settings(
    sampling: dict[str, Any] | None = None, small_positives: dict[str, Any] | None = None, small_negatives: dict[str, Any] | None = None, **changes: Any
) -> ShardSettings:
    return ShardSettings(**{**SHARD_SETTINGS, **changes}, sampling=sampling, small_positives=small_positives, small_negatives=small_negatives)


def build(tiny_data: Path, rois: Path, split: str, out: Path, s: ShardSettings) -> dict[str, Any]:
    coco = json.loads((tiny_data / f"{split}.json").read_text())
    return read_manifest(write_shards(rois, coco, tiny_data / "images" / split, split, s, out))


def test_fast_rcnn_sampling_per_image() -> None:
    labels = np.array([1] * 10 + [0] * 100 + [-1] * 5 + [2] * 3 + [0] * 2)
    image_ids = np.array([7] * 115 + [9] * 5)
    rows = sample_rois(labels, image_ids, rois_per_image=64, positive_fraction=0.25, seed=0)
    first, second = rows[image_ids[rows] == 7], rows[image_ids[rows] == 9]
    assert (labels[first] > 0).sum() == 10 and (labels[first] == 0).sum() == 54  # 10 < 16 positives: all kept
    assert sorted(labels[second].tolist()) == [0, 0, 2, 2, 2]  # fewer than 64: everything but ignored
    assert not (labels[rows] == -1).any() and len(set(rows.tolist())) == len(rows)
    many = sample_rois(np.array([1] * 40 + [0] * 40), np.zeros(80, int), 16, 0.25, seed=3)
    assert (many < 40).sum() == 4 and len(many) == 16
    assert np.array_equal(many, sample_rois(np.array([1] * 40 + [0] * 40), np.zeros(80, int), 16, 0.25, seed=3))


def test_round_trip_every_column(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    doc = build(tiny_data, tiny_rois["val"], "val", tmp_path, settings())
    table = read_table(tiny_rois["val"], ROIS_SCHEMA).to_pydict()
    assert doc["num_rois"] == len(table["roi_id"]) and doc["sampling"] is None
    assert all(s["num_rois"] <= 50 for s in doc["shards"]) and len(doc["shards"]) >= 4
    seen = []
    coco = json.loads((tiny_data / "val.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    for entry in doc["shards"]:
        with h5py.File(tmp_path / entry["path"], "r") as f:
            assert f.attrs["layout_version"] == 2 and f.attrs["num_rois"] == entry["num_rois"]
            assert f["hr"].chunks == (min(16, entry["num_rois"]), 64, 64, 3) and f["hr"].compression is None
            assert all(f[k].fletcher32 for k in shard_io.layout())  # every chunk read is checked
            assert entry["bytes"] == (tmp_path / entry["path"]).stat().st_size
            ids = f["roi_id"][:]
            seen += ids.tolist()
            for j, r in enumerate(ids):
                assert f["image_id"][j] == table["image_id"][r]
                assert f["label"][j] == table["label"][r] and f["base_label"][j] == table["base_label"][r]
                np.testing.assert_array_equal(f["box"][j], [table[k][r] for k in ("x1", "y1", "x2", "y2")])
                np.testing.assert_array_equal(f["target"][j], [table[k][r] for k in ("dx", "dy", "dw", "dh")])
                np.testing.assert_array_equal(f["base_probs"][j], np.asarray(table["base_probs"][r], np.float32))
                assert (f["iou"][j], f["base_score"][j]) == (np.float32(table["iou"][r]), np.float32(table["base_score"][r]))
                assert SIZE_CLASSES[f["size_class"][j]] == table["size_class"][r] and ORIGIN_CODES[f["origin"][j]] == table["origin"][r]
                assert tuple(f["image_size"][j]) == (table["image_width"][r], table["image_height"][r])
            j = len(ids) // 2  # the pixels: recomputed independently for one ROI per shard
            image = open_rgb(tiny_data / "images" / "val" / files[int(f["image_id"][j])])
            hr = crop_hr(image, f["box"][j], 64)
            np.testing.assert_array_equal(f["hr"][j], hr)
            np.testing.assert_array_equal(f["lr"][j], make_lr(hr, 4))
    assert sorted(seen) == list(range(len(table["roi_id"])))


def test_training_split_is_sampled_and_rerun_is_byte_identical(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    first = build(tiny_data, tiny_rois["train"], "train", tmp_path / "a", settings(SAMPLING))
    again = build(tiny_data, tiny_rois["train"], "train", tmp_path / "b", settings(SAMPLING))
    table = read_table(tiny_rois["train"], ROIS_SCHEMA)
    assert 0 < first["num_rois"] < table.num_rows and first["sampling"] == SAMPLING
    assert "-1" not in first["histograms"]["label"]
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in again["shards"]]


def test_killed_writer_leaves_nothing_that_looks_complete(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, calls = shard_io.write_shard, []

    def dies_on_second(path: Path, *args: Any) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise MemoryError("killed while writing")
        original(path, *args)

    monkeypatch.setattr("pipeline.shards.write_shard", dies_on_second)
    coco = json.loads((tiny_data / "val.json").read_text())
    plan, images = tmp_path / "plan.parquet", tmp_path / "images.parquet"
    plan_shards(tiny_rois["val"], coco, "val", settings(), plan, images)
    with pytest.raises(MemoryError):
        write_chunk(plan, images, tiny_rois["val"], tiny_data / "images" / "val", 0, settings(), tmp_path / "chunk-0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.parquet", "plan.parquet"]  # no chunk folder, no temporary folder, no stray shard


def test_bad_image_is_an_error_or_a_listed_skip(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "images" / "val" / "000002.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ImageReadError, match="000002.jpg: cannot decode"):
        build(data, tiny_rois["val"], "val", tmp_path / "error", settings())
    doc = build(data, tiny_rois["val"], "val", tmp_path / "skip", settings(on_bad_image="skip"))
    assert len(doc["skipped_images"]) == 1 and "000002.jpg" in doc["skipped_images"][0]
    table = read_table(tiny_rois["val"], ROIS_SCHEMA)
    assert doc["num_rois"] == table.num_rows - table.column("image_id").to_pylist().count(2)


def test_manifest_refuses_chunks_of_another_table(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    build(tiny_data, tiny_rois["val"], "val", tmp_path, settings())
    dirs = [tmp_path / "chunk-0", tmp_path / "chunk-1"]
    before = sha256_of(tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="another version"):
        gather_manifest(tiny_rois["train"], tmp_path / "plan.parquet", dirs, "val", settings(), tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="another version"):  # and a chunk job refuses a plan of another table
        write_chunk(tmp_path / "plan.parquet", tmp_path / "images.parquet", tiny_rois["train"], tiny_data / "images" / "val", 0, settings(), tmp_path / "c")
    with pytest.raises(ValueError, match="other sampling or thinning settings"):
        gather_manifest(tiny_rois["val"], tmp_path / "plan.parquet", dirs, "val", settings(SAMPLING), tmp_path / "manifest.json")
    assert sha256_of(tmp_path / "manifest.json") == before  # the earlier manifest is untouched


def test_the_plan_is_made_once_and_a_chunk_reads_only_its_part(
    tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk jobs share one plan: sampling and the split's JSON are not redone per chunk, and each
    chunk writes exactly the plan's rows of its images."""
    coco = json.loads((tiny_data / "train.json").read_text())
    s = settings(SAMPLING)
    meta = plan_shards(tiny_rois["train"], coco, "train", s, tmp_path / "plan.parquet", tmp_path / "images.parquet")
    plan = read_table(tmp_path / "plan.parquet", "shard_plan.schema.yaml")
    assert plan.num_rows == meta["num_rois"] == sum(meta["chunk_rois"]) and meta["source_table"]["sha256"] == sha256_of(tiny_rois["train"])

    def no_sampling(*args: Any) -> None:
        raise AssertionError("a chunk job sampled the split again")

    monkeypatch.setattr("pipeline.shards.sample_rois", no_sampling)
    for c in range(s.num_chunks):
        images = tiny_data / "images" / "train"
        info = write_chunk(tmp_path / "plan.parquet", tmp_path / "images.parquet", tiny_rois["train"], images, c, s, tmp_path / f"chunk-{c}")
        ids = []
        for entry in info["shards"]:
            with h5py.File(tmp_path / f"chunk-{c}" / entry["path"], "r") as f:
                ids += f["roi_id"][:].tolist()
        wanted = plan.filter(pc.equal(plan.column("chunk"), c)).column("roi_id").to_pylist()
        assert sorted(ids) == sorted(wanted) and info["num_rois"] == meta["chunk_rois"][c]


def test_thinning_keeps_a_nested_share_of_the_small_positives_only() -> None:
    small = np.zeros(1000, bool)
    small[::3] = True  # 334 small positives among 1000 rows
    rows = np.arange(1000)
    kept = {share: thin(rows, small, share, seed=5, stream=32) for share in (1.0, 0.5, 0.25, 0.0)}
    assert np.array_equal(kept[1.0], rows)
    for share, r in kept.items():
        assert small[r].sum() == round(share * 334) and (~small[r]).sum() == 666  # every other row stays
    assert set(kept[0.25]) <= set(kept[0.5]) <= set(kept[1.0])  # a lower share keeps a subset
    assert np.array_equal(kept[0.25], thin(rows, small, 0.25, seed=5, stream=32))  # fixed by the seed
    assert not np.array_equal(kept[0.25], thin(rows, small, 0.25, seed=6, stream=32))
    assert not np.array_equal(kept[0.25], thin(rows, small, 0.25, seed=5, stream=33))  # each kind its own stream
    sampled = rows[::2]  # thinning applies to the rows sampling kept, not to the table
    assert set(thin(sampled, small, 0.5, seed=5, stream=32)) <= set(sampled.tolist())


def test_small_positives_are_those_whose_matched_object_is_small() -> None:
    coco = {"annotations": [{"id": 10, "area": 31.9**2}, {"id": 11, "area": 32.0**2}, {"id": 12, "area": 100.0}]}
    labels = np.array([1, 1, 2, 0, -1, 1])
    gt_ann = np.array([10, 11, 12, 10, 12, -1])  # negatives and ignored ROIs may name a box too
    assert small_positive_mask(labels, gt_ann, coco).tolist() == [True, False, True, False, False, False]
    sizes = np.array([0, 0, 1, 0, 0, 2])  # small negatives: by the ROI box's own size class
    assert small_negative_mask(np.array([0, 1, 0, 0, -1, 0]), sizes).tolist() == [True, False, False, True, False, False]


def test_a_share_of_small_positives_changes_only_those_rows(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    full = build(tiny_data, tiny_rois["train"], "train", tmp_path / "full", settings(SAMPLING))
    quarter = build(tiny_data, tiny_rois["train"], "train", tmp_path / "quarter", settings(SAMPLING, {"share": 0.25, "seed": 0}))
    coco = json.loads((tiny_data / "train.json").read_text())
    table = read_table(tiny_rois["train"], ROIS_SCHEMA).to_pydict()
    small = small_positive_mask(np.asarray(table["label"]), np.asarray(table["gt_ann_id"]), coco)

    def rows(doc: dict[str, Any], folder: Path) -> set[int]:
        ids: list[int] = []
        for entry in doc["shards"]:
            with h5py.File(folder / entry["path"], "r") as f:
                ids += f["roi_id"][:].tolist()
        return set(ids)

    a, b = rows(full, tmp_path / "full"), rows(quarter, tmp_path / "quarter")
    n_small = sum(small[r] for r in a)
    assert n_small >= 8 and b <= a and all(small[r] for r in a - b)  # only small positives left out
    assert sum(small[r] for r in b) == round(0.25 * n_small)
    assert quarter["small_positives"] == {"share": 0.25, "seed": 0, "sampled": n_small, "kept": round(0.25 * n_small)}
    assert "small_positives" not in full and quarter["num_rois"] == full["num_rois"] - (n_small - round(0.25 * n_small))
    report, _ = audit(tmp_path / "quarter" / "manifest.json")
    assert report.problems == []  # the audit checks the thinned count against what the manifest records


def test_thinning_small_negatives_leaves_no_small_crop_in_training(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    """The second regime knob: with both shares at 0.0, no training crop is small."""
    full = build(tiny_data, tiny_rois["train"], "train", tmp_path / "full", settings(SAMPLING))
    none = build(tiny_data, tiny_rois["train"], "train", tmp_path / "none", settings(SAMPLING, {"share": 0.0, "seed": 0}, {"share": 0.0, "seed": 0}))
    assert none["small_negatives"]["sampled"] > 0 and none["small_negatives"]["kept"] == 0
    dropped = none["small_positives"]["sampled"] + none["small_negatives"]["sampled"]
    assert none["num_rois"] == full["num_rois"] - dropped
    coco = json.loads((tiny_data / "train.json").read_text())
    small_objects = {a["id"] for a in coco["annotations"] if a["area"] < 32**2}
    for entry in none["shards"]:
        with h5py.File(tmp_path / "none" / entry["path"], "r") as f:
            negatives = f["label"][:] == 0
            assert not (negatives & (f["size_class"][:] == 0)).any()  # no small negative
    table = read_table(tiny_rois["train"], ROIS_SCHEMA).to_pydict()
    ids = set()
    for entry in none["shards"]:
        with h5py.File(tmp_path / "none" / entry["path"], "r") as f:
            ids |= set(f["roi_id"][:].tolist())
    assert not any(table["label"][r] > 0 and table["gt_ann_id"][r] in small_objects for r in ids)  # no small positive
    assert audit(tmp_path / "none" / "manifest.json")[0].problems == []


def test_only_the_training_role_is_thinned() -> None:
    from conftest import tiny_config

    shards = tiny_config()["shards"] | {"train_small_positive_share": 0.25, "train_small_negative_share": 0.5}
    assert ShardSettings.from_config(shards, "train").small_positives == {"share": 0.25, "seed": 0}
    assert ShardSettings.from_config(shards, "train").small_negatives == {"share": 0.5, "seed": 0}
    assert ShardSettings.from_config(shards, "test") == ShardSettings.from_config(tiny_config()["shards"], "test")
    assert ShardSettings.from_config(tiny_config()["shards"], "train").small_positives is None  # 1.0: nothing to thin
