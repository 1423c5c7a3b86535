"""The detect stage: detections with class-probability vectors, label maps, weights, imported results."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from core.io.coco import CocoFormatError
from core.io.tables import DETECTIONS_SCHEMA, read_table
from jobs import weights
from jobs.baseline.models import DetectorSettings, WeightsUnavailable, build_detector, replace_box_predictor
from jobs.baseline.predict import LabelMap, detect_batch
from pipeline.detect import DetectSettings, import_detections, load_detector, results_records, run_detector, write_results_json

SETTINGS = DetectorSettings(min_size=128, max_size=128, score_thresh=0.0, nms_thresh=0.5, detections_per_img=30)


@pytest.fixture(scope="module")
def random_detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector("fasterrcnn_small_cpu", 4, SETTINGS).eval()


def test_small_cpu_architecture_is_the_documented_size(random_detector: torch.nn.Module) -> None:
    n = sum(p.numel() for p in random_detector.parameters())
    assert 2.0e6 < n < 2.5e6
    assert type(random_detector).__name__ == "FasterRCNN"


def test_detections_equal_torchvision_and_carry_probability_vectors(random_detector: torch.nn.Module) -> None:
    torch.manual_seed(1)
    images = [torch.rand(3, 128, 128), torch.rand(3, 100, 90)]
    with torch.inference_mode():
        reference = random_detector(images)
    ours = detect_batch(random_detector, images, LabelMap.identity([1, 2, 3]))
    for ref, det in zip(reference, ours):
        assert len(det["boxes"]) == len(ref["boxes"]) > 0
        torch.testing.assert_close(det["boxes"], ref["boxes"])
        torch.testing.assert_close(det["scores"], ref["scores"])
        assert torch.equal(det["labels"], ref["labels"])
        assert det["probs"].shape == (len(det["boxes"]), 4)
        torch.testing.assert_close(det["probs"].sum(1), torch.ones(len(det["boxes"])))
        torch.testing.assert_close(det["probs"].gather(1, det["labels"][:, None]).squeeze(1), det["scores"])


def test_label_map_by_name_skips_classes_the_dataset_lacks(random_detector: torch.nn.Module) -> None:
    model_classes = ["__background__", "cat", "N/A", "dog"]
    label_map = LabelMap.by_name(model_classes, [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}])
    assert label_map.category_ids == (2, 5)
    assert label_map.label_to_model.tolist() == [0, 1, 3]
    assert label_map.model_to_label.tolist() == [0, 1, -1, 2]
    dets = detect_batch(random_detector, [torch.rand(3, 128, 128)], label_map)[0]
    assert set(dets["labels"].tolist()) <= {1, 2}
    assert dets["probs"].shape[1] == 3
    with pytest.raises(ValueError, match="zebra"):
        LabelMap.by_name(model_classes, [{"id": 1, "name": "zebra"}])


def test_torchvision_weights_offline_name_the_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights.torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as err:
        build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 91, SETTINGS, pretrained=True)
    message = str(err.value)
    assert "fasterrcnn_mobilenet_v3_large_320_fpn" in message and str(tmp_path / "hub" / "checkpoints") in message


def test_unknown_architecture_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown detector architecture 'yolo'"):
        build_detector("yolo", 3, SETTINGS)
    with pytest.raises(ValueError, match="not a two-stage"):
        build_detector("retinanet_resnet50_fpn", 3, SETTINGS)


def _coco(n_images: int = 2) -> dict[str, Any]:
    return {
        "images": [{"id": i + 1, "file_name": f"{i + 1}.jpg", "width": 100, "height": 80} for i in range(n_images)],
        "annotations": [],
        "categories": [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}],
    }


DETECT = DetectSettings(top_k=30, score_thresh=0.0, nms_thresh=0.5, min_size=128, max_size=128, batch_size=2, num_workers=0)


def test_checkpoint_paths_plain_state_dicts_and_category_checks(random_detector: torch.nn.Module, tmp_path: Path) -> None:
    coco3 = {**_coco(), "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 7, "name": "c"}]}
    plain = tmp_path / "plain.pth"
    torch.save(random_detector.state_dict(), plain)
    model, label_map = load_detector("torchvision", "fasterrcnn_small_cpu", str(plain), coco3, DETECT)
    assert label_map.category_ids == (1, 2, 7)
    ours = tmp_path / "model.pt"
    torch.save({"model": random_detector.state_dict(), "arch": "fasterrcnn_small_cpu", "category_ids": [1, 2, 9]}, ours)
    with pytest.raises(ValueError, match="other categories|not this dataset"):
        load_detector("train", "fasterrcnn_small_cpu", "none", coco3, DETECT, ours)
    with pytest.raises(ValueError, match="has 4 classes; the dataset has 2"):
        load_detector("torchvision", "fasterrcnn_small_cpu", str(plain), _coco(), DETECT)


def _write(tmp_path: Path, records: Any) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(records))
    return path


def _import(tmp_path: Path, path: Path, top_k: int) -> tuple[Any, dict[str, int]]:
    """An import's table (read back) and counts."""
    counts = import_detections(path, _coco(), top_k, tmp_path / "imported.parquet")
    return read_table(tmp_path / "imported.parquet", DETECTIONS_SCHEMA), counts


def det(image_id: int = 1, category_id: int = 3, bbox: list[float] | None = None, score: float = 0.9) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox or [10, 10, 20, 20], "score": score}


def test_imported_detections_become_the_same_table(tmp_path: Path) -> None:
    records = [det(score=0.2), det(category_id=8, score=0.7), det(image_id=2, bbox=[90, 70, 20, 20], score=0.5)]
    table, counts = _import(tmp_path, _write(tmp_path, records), top_k=30)
    t = table.to_pydict()
    assert t["image_id"] == [1, 1, 2] and t["rank"] == [0, 1, 0]
    assert t["category_id"] == [8, 3, 3] and t["label"] == [2, 1, 1]
    np.testing.assert_allclose(t["probs"][0], [0.3, 0.0, 0.7], rtol=1e-6)
    assert [t["x2"][2], t["y2"][2]] == [100.0, 80.0] and counts["clipped"] == 1  # clipped to the image


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ({"not": "a list"}, "JSON list"),
        ([det(), {"image_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}], "1 detection(s) are not {image_id"),
        ([det(image_id=99), det(image_id=98)], "2 detection(s) name an unknown image_id: #0 image 99, #1 image 98"),
        ([det(category_id=5)], "unknown category_id: #0 category 5"),
        ([det(score=float("nan"))], "non-finite"),
        ([det(score=1.5)], "score outside [0, 1]: #0 score 1.5"),
    ],
)
def test_malformed_imports_are_errors_naming_the_file(tmp_path: Path, records: Any, words: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(records).replace("NaN", "NaN"))
    with pytest.raises(CocoFormatError) as err:
        import_detections(path, _coco(), 30, tmp_path / "out.parquet")
    assert str(err.value).startswith(str(path)) and words in str(err.value) and not (tmp_path / "out.parquet").exists()


def test_bad_imported_boxes_are_dropped_and_counted(tmp_path: Path) -> None:
    records = [det(bbox=[10, 10, 0, 5]), det(bbox=[10, 10, -3, 5]), det(bbox=[150, 10, 20, 20]), det()]
    records += [det(image_id=2, score=s / 100) for s in range(40)]
    table, counts = _import(tmp_path, _write(tmp_path, records), top_k=30)
    assert counts["non_positive_size"] == 2 and counts["outside_image"] == 1 and counts["over_top_k"] == 10
    scores = [s for s, i in zip(table.column("score").to_pylist(), table.column("image_id").to_pylist()) if i == 2]
    assert len(scores) == 30 and min(scores) == pytest.approx(0.10)


def test_results_json_loads_in_pycocotools(tmp_path: Path, tiny_data: Path, random_detector: torch.nn.Module) -> None:
    coco = json.loads((tiny_data / "val.json").read_text())
    coco["images"] = coco["images"][:3]
    model, label_map = load_detector("torchvision", "fasterrcnn_small_cpu", "none", coco, DETECT)
    run_detector(model, label_map, coco, tiny_data / "images" / "val", DETECT, torch.device("cpu"), "torchvision", tmp_path / "val.parquet")
    table = read_table(tmp_path / "val.parquet", DETECTIONS_SCHEMA)
    assert table.num_rows > 0 and set(table.column("image_id").to_pylist()) <= {1, 2, 3}
    assert write_results_json(tmp_path / "val.parquet", tmp_path / "val.json") == table.num_rows
    gt = COCO(str(tiny_data / "val.json"))
    loaded = gt.loadRes(str(tmp_path / "val.json"))
    assert len(loaded.getAnnIds()) == table.num_rows
    assert json.loads((tmp_path / "val.json").read_text()) == results_records(table)  # written in parts, the same records


def test_detect_command_imports_results_for_a_split(tiny_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from core.io.tables import read_table
    from pipeline.cli import cli

    gt = json.loads((tiny_data / "val.json").read_text())
    records = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    records.append({"image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4], "score": 0.3})  # dropped, counted
    path = tmp_path / "val_results.json"
    path.write_text(json.dumps(records))
    sections = json.dumps({"detector": {"source": "import", "import_results": {"val": str(path)}}})
    out = tmp_path / "val.parquet"

    def detect(split: str) -> Any:
        options = {"--sections": sections, "--data-index": tiny_data / "index.json", "--split": split, "--out-table": out}
        return CliRunner().invoke(cli, ["detect", *[f"{k}={v}" for k, v in options.items()]])

    result = detect("val")
    assert result.exit_code == 0, result.output
    table = read_table(out, "detections.schema.yaml")
    assert table.num_rows == len(gt["annotations"])
    wrong = detect("train")
    assert wrong.exit_code == 1 and "no file for split 'train'" in wrong.output


def test_fine_tuning_starts_from_cached_torchvision_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """train_baseline.init: torchvision loads the builder's COCO weights from the hub cache (here a
    stand-in file written by the test) and swaps the 91-class box predictor for the dataset's."""
    import torchvision

    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    stand_in = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(stand_in.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)

    model = replace_box_predictor(build_detector(arch, 91, SETTINGS, pretrained=True), 2)
    loaded, saved = model.state_dict(), stand_in.state_dict()
    backbone_keys = [k for k in saved if k.startswith("backbone.") and k in loaded]  # frozen BN: no batch counter
    assert backbone_keys and all(torch.equal(loaded[k], saved[k]) for k in backbone_keys)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 8
