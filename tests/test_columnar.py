"""Tables and JSON handled in parts (the COCO-scale stages): each part-by-part path gives what the
whole-table path gives, checked against independent references written the straightforward way
(one Python object per record, one call over the whole split)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.ops import batched_nms

import core.io.coco as coco_io
import core.io.tables as tables
from core.boxes import xywh_to_xyxy, xyxy_to_xywh
from core.io import atomic
from core.io.coco import CocoFormatError, iter_json_array
from core.io.tables import DETECTIONS_SCHEMA, INFERENCE_SCHEMA, ROIS_SCHEMA, TableWriter, iter_table, make_table, read_table, vectors, write_table
from pipeline.detect import import_detections, results_records, write_results_json
from pipeline.merge import MergeSettings, merge_detections, merge_files
from pipeline.rois import build_rois

K = 5  # categories of the random cases


def _detection_columns(n: int, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "image_id": np.sort(rng.integers(0, 40, n)),
        "rank": rng.integers(0, 100, n).astype(np.int32),
        **{k: rng.random(n).astype(np.float32) for k in ("x1", "y1", "x2", "y2")},
        "label": rng.integers(1, K + 1, n).astype(np.int32),
        "category_id": rng.integers(1, K + 1, n),
        "score": rng.random(n).astype(np.float32),
        "probs": rng.random((n, K + 1)).astype(np.float32),
    }


def test_a_table_written_in_parts_is_the_whole_tables_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "ROW_GROUP_SIZE", 1000)  # several row groups of a small table
    cols = _detection_columns(4321, np.random.default_rng(0))
    meta = {"category_ids": list(range(1, K + 1)), "source": "import"}
    write_table(make_table(cols, DETECTIONS_SCHEMA, meta), tmp_path / "whole.parquet")
    with TableWriter(tmp_path / "parts.parquet", DETECTIONS_SCHEMA, meta) as writer:
        for start in range(0, 4321, 777):
            writer.write({k: v[start : start + 777] for k, v in cols.items()})
    assert filecmp.cmp(tmp_path / "whole.parquet", tmp_path / "parts.parquet", shallow=False)
    assert pq.ParquetFile(tmp_path / "parts.parquet").num_row_groups == 5
    with TableWriter(tmp_path / "late.parquet", DETECTIONS_SCHEMA, {"source": "unknown yet"}) as writer:  # metadata known at the end
        writer.write(cols)
        writer.metadata = meta
    assert filecmp.cmp(tmp_path / "whole.parquet", tmp_path / "late.parquet", shallow=False)
    back = read_table(tmp_path / "parts.parquet", DETECTIONS_SCHEMA)
    np.testing.assert_array_equal(vectors(back.column("probs"), K + 1), cols["probs"])  # no Python object per row
    parts = list(iter_table(tmp_path / "parts.parquet", DETECTIONS_SCHEMA, ["image_id", "score"]))
    assert [p.num_rows for p in parts] == [1000] * 4 + [321] and parts[0].column_names == ["image_id", "score"]


def test_a_failed_write_in_parts_leaves_nothing(tmp_path: Path) -> None:
    cols = _detection_columns(50, np.random.default_rng(1))
    with pytest.raises(RuntimeError, match="stopped"):
        with TableWriter(tmp_path / "t.parquet", DETECTIONS_SCHEMA, {}) as writer:
            writer.write(cols)
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
    bad = cols | {"score": np.full(50, 2.0, np.float32)}
    with pytest.raises(tables.TableSchemaError, match="score"), TableWriter(tmp_path / "t.parquet", DETECTIONS_SCHEMA, {}) as writer:
        writer.write(bad)  # each part's values are checked as the whole table's are
    assert list(tmp_path.iterdir()) == []


def test_a_json_list_written_in_parts_is_json_dump(tmp_path: Path) -> None:
    records = [{"image_id": i, "bbox": [0.5, 1e-7, 3.0, 4.125], "score": 0.1 * i} for i in range(7)]
    atomic.write_json(tmp_path / "whole.json", records)
    assert atomic.write_json_list(tmp_path / "parts.json", [records[:3], [], records[3:]]) == 7
    assert filecmp.cmp(tmp_path / "whole.json", tmp_path / "parts.json", shallow=False)
    atomic.write_json(tmp_path / "empty.json", [])
    atomic.write_json_list(tmp_path / "none.json", [])
    assert (tmp_path / "empty.json").read_bytes() == (tmp_path / "none.json").read_bytes() == b"[]\n"


@pytest.mark.parametrize("chars", [1, 2, 3, 7, 64, 1 << 20])
def test_a_json_array_read_in_parts_is_json_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chars: int) -> None:
    monkeypatch.setattr(coco_io, "STREAM_CHARS", chars)  # cuts land inside strings, numbers, nested lists
    items = [{"image_id": i, "bbox": [1.5, -2, 3e-5, 1.25e10], "s": 'a "],[" b', "nested": [[], {"x": None}]} for i in range(25)]
    items += [12345678901234567890, 1.5e-7, -2.5e10, True, False, None, "\u00e9", [], {}]
    for indent in (None, 2):
        (tmp_path / "a.json").write_text(json.dumps(items, indent=indent))
        assert [x for part in iter_json_array(tmp_path / "a.json", "X", batch=4) for x in part] == items


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"images": []}', "X, got dict"),
        ('"a string"', "X, got str"),
        ("{not json", "not valid JSON (Expecting value at char 0)"),
        ("[1, 2", "not valid JSON (Expecting ',' delimiter at char 5)"),
        ("[1 2]", "not valid JSON (Expecting ',' delimiter at char 3)"),
        ("[1,]", "not valid JSON (Expecting value at char 3)"),
        ("[1] x", "not valid JSON (Extra data at char 4)"),
        ("", "not valid JSON (Expecting value at char 0)"),
    ],
)
def test_a_json_array_read_in_parts_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, words: str) -> None:
    monkeypatch.setattr(coco_io, "STREAM_CHARS", 2)
    (tmp_path / "a.json").write_text(text)
    with pytest.raises(CocoFormatError) as err:
        [x for part in iter_json_array(tmp_path / "a.json", "X") for x in part]
    assert str(err.value) == f"{tmp_path / 'a.json'}: {words}"


# --- import: against the per-record reference ---------------------------------------------------------


def _coco(n_images: int = 6) -> dict[str, Any]:
    return {
        "images": [{"id": 100 + 7 * i, "file_name": f"{i}.jpg", "width": 60 + i, "height": 50 + 2 * i} for i in range(n_images)][::-1],
        "categories": [{"id": c * 3, "name": f"c{c}"} for c in range(1, K + 1)],
    }


def reference_import(records: list[dict[str, Any]], coco: dict[str, Any], top_k: int) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """What an import keeps, one record at a time: the rows (image, rank, box, label, score) and counts."""
    images = {im["id"]: im for im in coco["images"]}
    label_of = {c["id"]: k + 1 for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    counts = {"imported": len(records), "non_positive_size": 0, "outside_image": 0, "clipped": 0, "over_top_k": 0}
    per_image: dict[int, list[tuple[float, list[float], int]]] = {}
    for r in records:
        x, y, w, h = (float(v) for v in r["bbox"])
        if w <= 0 or h <= 0:
            counts["non_positive_size"] += 1
            continue
        im = images[r["image_id"]]
        xyxy = xywh_to_xyxy([x, y, w, h])
        box = [max(xyxy[0], 0.0), max(xyxy[1], 0.0), min(xyxy[2], float(im["width"])), min(xyxy[3], float(im["height"]))]
        if box[2] <= box[0] or box[3] <= box[1]:
            counts["outside_image"] += 1
            continue
        counts["clipped"] += box != xyxy
        per_image.setdefault(r["image_id"], []).append((float(r["score"]), box, label_of[r["category_id"]]))
    rows = []
    for image_id in images:
        dets = sorted(per_image.get(image_id, []), key=lambda d: -d[0])
        counts["over_top_k"] += max(0, len(dets) - top_k)
        rows += [(image_id, rank, *box, label, score) for rank, (score, box, label) in enumerate(dets[:top_k])]
    return rows, counts


def _records(rng: np.random.Generator, coco: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Random detections with equal scores, boxes off their image, of no size, and over the cap."""
    ids = [im["id"] for im in coco["images"]]
    out = []
    for _ in range(n):
        x, y = (float(v) for v in rng.uniform(-20, 70, 2))
        w, h = (float(v) for v in rng.choice([0.0, -1.0, *rng.uniform(0.5, 40, 8)], 2))
        score = float(rng.choice([0.5, 0.25, *rng.random(5)]))
        out.append({"image_id": int(rng.choice(ids)), "category_id": 3 * int(rng.integers(1, K + 1)), "bbox": [x, y, w, h], "score": score})
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_columnar_import_keeps_what_the_per_record_reference_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(coco_io, "STREAM_CHARS", 999)
    monkeypatch.setattr(tables, "ROW_GROUP_SIZE", 64)
    coco = _coco()
    records = _records(np.random.default_rng(seed), coco, 900)
    (tmp_path / "r.json").write_text(json.dumps(records))
    counts = import_detections(tmp_path / "r.json", coco, 25, tmp_path / "d.parquet")
    rows, expected = reference_import(records, coco, 25)
    assert {k: counts[k] for k in expected} == expected and counts["written"] == len(rows) and expected["over_top_k"] > 0
    t = read_table(tmp_path / "d.parquet", DETECTIONS_SCHEMA)
    got = list(zip(*(t.column(k).to_pylist() for k in ("image_id", "rank", "x1", "y1", "x2", "y2", "label", "score"))))
    assert [(r[0], r[1], *np.float32(r[2:6]).tolist(), r[6], float(np.float32(r[7]))) for r in rows] == got
    probs = vectors(t.column("probs"), K + 1)
    assert np.array_equal(probs[np.arange(len(rows)), t.column("label").to_numpy()], t.column("score").to_numpy())
    assert np.allclose(probs.sum(1), 1.0, atol=1e-6)


def test_results_json_of_a_table_is_the_reference_records(tmp_path: Path) -> None:
    cols = _detection_columns(300, np.random.default_rng(3))
    write_table(make_table(cols, DETECTIONS_SCHEMA, {"category_ids": list(range(1, K + 1))}), tmp_path / "d.parquet")
    t = read_table(tmp_path / "d.parquet", DETECTIONS_SCHEMA).to_pydict()
    reference = [
        {"image_id": i, "category_id": c, "bbox": [round(v, 3) for v in xyxy_to_xywh([x1, y1, x2, y2])], "score": round(s, 6)}
        for i, c, x1, y1, x2, y2, s in zip(t["image_id"], t["category_id"], t["x1"], t["y1"], t["x2"], t["y2"], t["score"])
    ]
    assert results_records(read_table(tmp_path / "d.parquet", DETECTIONS_SCHEMA)) == reference
    write_results_json(tmp_path / "d.parquet", tmp_path / "r.json")
    atomic.write_json(tmp_path / "ref.json", reference)
    assert filecmp.cmp(tmp_path / "r.json", tmp_path / "ref.json", shallow=False)


# --- rois and merge: part by part, as over the whole split ------------------------------------------


def _roi_case(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A split whose images have 0 to 30 detections and ground truth, imported."""
    rng = np.random.default_rng(4)
    coco = _coco(12)
    coco["annotations"] = [
        {"id": j, "image_id": im["id"], "category_id": 3 * int(rng.integers(1, K + 1)), "bbox": [5.0 + j % 7, 5.0, 10.0 + j % 11, 12.0], "area": 120.0}
        | {"iscrowd": int(j % 9 == 0)}
        for j, im in enumerate(coco["images"] * 3)
    ]
    records = [r for r in _records(rng, coco, 300) if r["image_id"] != coco["images"][4]["id"]]  # one image without detections
    (tmp_path / "r.json").write_text(json.dumps(records))
    import_detections(tmp_path / "r.json", coco, 30, tmp_path / "d.parquet")
    return tmp_path / "d.parquet", coco


def test_rois_in_parts_are_the_rois_of_the_whole_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    detections, coco = _roi_case(tmp_path)
    whole = build_rois(detections, coco, True, 0.5, 0.35, tmp_path / "whole.parquet")
    monkeypatch.setattr(tables, "ROW_GROUP_SIZE", 7)  # row groups cut images' detections in two
    monkeypatch.setattr("pipeline.rois.ROIS_PER_PART", 5)
    write_table(read_table(detections, DETECTIONS_SCHEMA), tmp_path / "d7.parquet")
    parts = build_rois(tmp_path / "d7.parquet", coco, True, 0.5, 0.35, tmp_path / "parts.parquet")
    assert parts == whole and whole["by_origin"]["gt"] > 0
    a, b = (read_table(tmp_path / f"{n}.parquet", ROIS_SCHEMA) for n in ("whole", "parts"))
    assert a.equals(b) and a.schema.metadata == b.schema.metadata and json.loads(a.schema.metadata[b"mtgan"])["counts"] == whole


def test_detections_out_of_the_splits_image_order_are_refused(tmp_path: Path) -> None:
    detections, coco = _roi_case(tmp_path)
    table = read_table(detections, DETECTIONS_SCHEMA)
    write_table(table.take(np.argsort(table.column("image_id").to_numpy(), kind="stable")), tmp_path / "sorted.parquet")  # by id, not by the split
    with pytest.raises(ValueError, match=r"not in the split's image order \(row \d+, image \d+\): write them with the detect stage"):
        build_rois(tmp_path / "sorted.parquet", coco, False, 0.5, 0.35, tmp_path / "rois.parquet")
    assert not (tmp_path / "rois.parquet").exists()


def reference_merge(rois: pa.Table, inference: pa.Table, settings: MergeSettings, ensemble: bool, category_ids: list[int]) -> list[dict[str, Any]]:
    """Merge as one call over the whole split (torchvision's batched_nms with image x class groups),
    written the straightforward way."""
    r, p = rois.to_pydict(), inference.to_pydict()
    from core.roi_targets import BoxCoder

    n, k1 = len(r["roi_id"]), len(category_ids) + 1
    offsets = torch.tensor([[p[k][i] for k in ("dx", "dy", "dw", "dh")] for i in range(n)])
    boxes = BoxCoder().decode(offsets, torch.tensor([[r[k][i] for k in ("x1", "y1", "x2", "y2")] for i in range(n)]))
    probs, base = torch.tensor(p["probs"]), torch.tensor(r["base_probs"])
    scores = probs * base if ensemble else probs
    width, height = torch.tensor(r["image_width"], dtype=torch.float32), torch.tensor(r["image_height"], dtype=torch.float32)
    boxes = torch.stack([boxes[:, 0].clamp(min=0), boxes[:, 1].clamp(min=0), torch.minimum(boxes[:, 2], width), torch.minimum(boxes[:, 3], height)], 1)
    image_id = torch.tensor(r["image_id"])
    roi, cls = torch.nonzero(scores[:, 1:] > settings.score_floor, as_tuple=True)
    cls = cls + 1
    cb, cs, ci = boxes[roi], scores[roi, cls], image_id[roi]
    valid = (cb[:, 2] > cb[:, 0]) & (cb[:, 3] > cb[:, 1])
    cb, cs, ci, cls = cb[valid], cs[valid], ci[valid], cls[valid]
    keep = batched_nms(cb, cs, ci * k1 + cls, settings.nms_iou)
    out = []
    for image in dict.fromkeys(r["image_id"]):  # the split's image order, each image's best first
        mine = sorted((int(k) for k in keep if ci[k] == image), key=lambda k: -float(cs[k]))[: settings.max_per_image]
        for k in mine:
            xywh = [round(float(v), 3) for v in xyxy_to_xywh(cb[k])]
            out.append({"image_id": image, "category_id": category_ids[int(cls[k]) - 1], "bbox": xywh, "score": round(float(cs[k]), 6)})
    return out


@pytest.mark.parametrize("ensemble", [False, True])
def test_merge_per_image_and_in_parts_is_the_one_call_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ensemble: bool) -> None:
    detections, coco = _roi_case(tmp_path)
    build_rois(detections, coco, False, 0.5, 0.35, tmp_path / "rois.parquet")
    rois = read_table(tmp_path / "rois.parquet", ROIS_SCHEMA)
    rng = np.random.default_rng(5)
    n, categories = rois.num_rows, [c["id"] for c in coco["categories"]]
    probs = rng.dirichlet(np.full(K + 1, 0.3), n).astype(np.float32)  # distinct scores: the order has no ties to break
    offsets = {k: rng.normal(0, 0.5, n).astype(np.float32) for k in ("dx", "dy", "dw", "dh")}
    columns = {"roi_id": np.arange(n), "probs": probs, **offsets, "through_g": np.zeros(n, np.int32)}
    inference = make_table(columns, INFERENCE_SCHEMA, {"category_ids": categories})
    settings = MergeSettings(nms_iou=0.5, score_floor=0.01, max_per_image=9)
    expected = reference_merge(rois, inference, settings, ensemble, categories)
    assert merge_detections(rois, inference, settings, ensemble, categories) == expected and len(expected) > 50
    monkeypatch.setattr(tables, "ROW_GROUP_SIZE", 11)  # the files in row groups that cut images in two
    write_table(rois, tmp_path / "r11.parquet")
    write_table(inference, tmp_path / "i11.parquet")
    merge_files(settings, tmp_path / "r11.parquet", tmp_path / "i11.parquet", {ensemble: tmp_path / "out.json"})
    assert json.loads((tmp_path / "out.json").read_text()) == expected
