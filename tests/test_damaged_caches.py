"""Damaged caches and bad files, each named in one line; and the cases that already worked stay working
(split from test_bad_input.py, whose helpers these tests share)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from core.io import atomic
from core.io.shards import read_manifest
from core.io.tables import ROIS_SCHEMA, read_table, write_table
from pipeline.audit import audit
from pipeline.cli import cli
from pipeline.detect import import_detections
from pipeline.rois import build_rois
from pipeline.shards import ShardSettings, write_shards

from conftest import SHARD_SETTINGS
from test_bad_input import CONFIGS, _coco_config, _coco_folder, _config_file, _shards, _truncate, cli_error, one_line

# --- Damaged caches: one line naming the file ------------------------------------------------------


def _train_args(manifest: Path, out: Path) -> list[Any]:
    return ["train-mtgan", *sum((["--config", c] for c in CONFIGS), []), "--variant", "mtgan", "--manifest", manifest, "--out", out, "--threads", 1]


@pytest.fixture
def train_shards(tiny_train_shards: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny training shards, to damage."""
    shutil.copytree(tiny_train_shards.parent, tmp_path / "train")
    return tmp_path / "train" / "manifest.json"


def _first_shard(manifest: Path) -> Path:
    return manifest.parent / read_manifest(manifest)["shards"][0]["path"]


def test_a_flipped_byte_in_a_shard_stops_training_naming_it(train_shards: Path, tmp_path: Path) -> None:
    shard = _first_shard(train_shards)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    message = one_line(cli_error(*_train_args(train_shards, tmp_path / "out")))
    assert str(shard) in message and "checksums do not match" in message  # HDF5's, on the read of the changed chunk
    assert not (tmp_path / "out" / "model.pt").exists()


def test_a_truncated_shard_is_named_by_the_loader(train_shards: Path) -> None:
    from core.errors import ShardReadError
    from jobs.mtgan.data import ShardBatches

    shard = _first_shard(train_shards)
    _truncate(shard, 0.6)
    with pytest.raises(ShardReadError, match=str(shard)):
        for _ in ShardBatches(train_shards, batch_size=8, shuffle=False):
            pass


def test_a_truncated_shard_stops_training_naming_it(train_shards: Path, tmp_path: Path) -> None:
    shard = _first_shard(train_shards)
    _truncate(shard, 0.6)
    assert str(shard) in one_line(cli_error(*_train_args(train_shards, tmp_path / "out")))


def test_a_corrupt_checkpoint_is_named(train_shards: Path, tmp_path: Path) -> None:
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    (tmp_path / "out" / atomic.OUTPUT_MARKER).write_text("{}")  # the job's own folder, being resumed
    last.write_bytes(b"PK\x03\x04 not really a checkpoint")
    message = one_line(cli_error(*_train_args(train_shards, tmp_path / "out")))
    assert str(last) in message and "cannot read the checkpoint" in message and "delete it" in message


def test_verbose_shows_the_traceback(train_shards: Path, tmp_path: Path) -> None:
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    (tmp_path / "out" / atomic.OUTPUT_MARKER).write_text("{}")
    last.write_bytes(b"junk")
    assert str(last) in cli_error(*_train_args(train_shards, tmp_path / "out"), verbose=True)


def test_a_truncated_jpeg_in_the_test_split_does_not_crash_the_data_stage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = tmp_path / "images"
    coco = _coco_folder(images)
    _truncate(images / "2.jpg")  # the header (and so the size check) is intact; the pixels are not
    config = _coco_config(tmp_path, coco, images)
    result = CliRunner().invoke(cli, ["data", "--config", str(CONFIGS[0]), "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 of 3 image(s) could not be read" in caplog.text and "2.jpg" in caplog.text
    assert (tmp_path / "out" / "preview.png").stat().st_size > 1000


def test_the_preview_does_not_need_images_when_they_are_not_checked(tmp_path: Path) -> None:
    images = tmp_path / "images"
    coco = _coco_folder(images)
    (images / "1.jpg").unlink()
    config = _coco_config(tmp_path, coco, images, check_image_files=False, check_image_sizes=False)
    result = CliRunner().invoke(cli, ["data", "--config", str(CONFIGS[0]), "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output


def test_an_empty_detections_file_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    empty = tmp_path / "none.json"
    empty.write_text("[]")
    sections = json.dumps({"detector": {"source": "import", "import_results": {"val": str(empty)}}})
    message = one_line(
        cli_error("detect", "--sections", sections, "--data-index", tiny_data / "index.json", "--split", "val", "--out-table", tmp_path / "d.parquet")
    )
    assert str(empty) in message and "no usable detections" in message


def test_detections_that_are_all_dropped_are_an_error(tiny_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "outside.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1000, 1000, 5, 5], "score": 0.5}]))
    with pytest.raises(Exception, match="no usable detections.*outside_image"):
        import_detections(path, json.loads((tiny_data / "val.json").read_text()), 10, tmp_path / "out.parquet")


def test_empty_test_shards_are_an_error_in_infer(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    table = read_table(tiny_rois["val"], ROIS_SCHEMA)
    empty = tmp_path / "empty.parquet"
    write_table(table.slice(0, 0), empty)
    _shards(tiny_data, empty, "val", tmp_path / "shards")
    model = tmp_path / "model.pt"
    _tiny_model(model, read_manifest(tmp_path / "shards" / "manifest.json"))
    sections = json.dumps({"infer": {"batch_size": 8, "device": "cpu"}})
    message = one_line(
        cli_error(
            "infer",
            "--sections",
            sections,
            "--model",
            model,
            "--manifest",
            tmp_path / "shards" / "manifest.json",
            "--out",
            tmp_path / "i.parquet",
            "--out-accuracy",
            tmp_path / "a.json",
        )
    )
    assert "hold no ROIs" in message and "manifest.json" in message


def _tiny_model(path: Path, doc: dict[str, Any]) -> None:
    from jobs.mtgan.engine import build_networks
    from jobs.mtgan.model_file import save_model
    from jobs.mtgan.settings import VARIANTS, resolve_preset

    preset = resolve_preset("tiny")
    g, d = build_networks(VARIANTS["mtgan"], preset, doc["num_labels"], doc["scale"])
    save_model(path, g, d, VARIANTS["mtgan"], preset, 0, 0, doc, None)


# --- The cases that already worked stay working ---------------------------------------------------


def _import_error(tmp_path: Path, coco: dict[str, Any], records: Any) -> str:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(records) if not isinstance(records, str) else records)
    with pytest.raises(Exception) as err:
        import_detections(path, coco, 10, tmp_path / "out.parquet")
    assert str(path) in str(err.value) and not (tmp_path / "out.parquet").exists()
    return str(err.value)


GOOD = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 10.0], "score": 0.5}


@pytest.mark.parametrize(
    ("records", "words"),
    [
        ([GOOD | {"category_id": 99}], "unknown category_id"),
        ([GOOD | {"image_id": 12345}], "unknown image_id"),
        ([GOOD | {"score": float("nan")}], "non-finite"),
        ([GOOD | {"score": 1.5}], "outside [0, 1]"),
        ([GOOD | {"bbox": [1.0, 2.0, 3.0]}], "are not {image_id"),
        ({"annotations": []}, "JSON list of detections"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_detection_files_are_named(tiny_data: Path, tmp_path: Path, records: Any, words: str) -> None:
    coco = json.loads((tiny_data / "val.json").read_text())
    assert words in _import_error(tmp_path, coco, records)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c: c["annotations"][0].update(category_id=7), "unknown"),
        (lambda c: c["annotations"][0].update(bbox=[float("nan"), 1, 2, 3]), "bbox"),
        (lambda c: c["annotations"][1].update(id=c["annotations"][0]["id"]), "duplicate"),
        (lambda c: c["images"].append({"id": 9, "file_name": "missing.jpg", "width": 96, "height": 80}), "missing.jpg"),
        (lambda c: c.pop("images"), "images"),
    ],
)
def test_bad_coco_datasets_are_named(tmp_path: Path, change: Any, words: str) -> None:
    images = tmp_path / "images"
    coco = _coco_folder(images)
    change(coco)
    config = _coco_config(tmp_path, coco, images)
    message = cli_error("data", "--config", CONFIGS[0], "--config", config, "--out", tmp_path / "out")
    assert "instances.json" in message and words in message, message
    assert not (tmp_path / "out").exists()


def test_greyscale_cmyk_and_object_free_images_work(tmp_path: Path) -> None:
    images = tmp_path / "images"
    coco = _coco_folder(images, modes={1: "L", 2: "CMYK"})
    config = _coco_config(tmp_path, coco, images)
    runner = CliRunner()
    data = runner.invoke(cli, ["data", "--config", str(CONFIGS[0]), "--config", str(config), "--out", str(tmp_path / "data")])
    assert data.exit_code == 0, data.output
    clean = json.loads((tmp_path / "data" / "val.json").read_text())
    assert [im["id"] for im in clean["images"]] == [1, 2, 3]  # image 3, without objects, is kept
    records = [{"image_id": i, "category_id": 1, "bbox": [10.0, 10.0, 30.0, 30.0], "score": 0.9} for i in (1, 2, 3)]
    (tmp_path / "dets.json").write_text(json.dumps(records))
    import_detections(tmp_path / "dets.json", clean, 10, tmp_path / "dets.parquet")
    build_rois(tmp_path / "dets.parquet", clean, False, 0.5, 0.35, tmp_path / "rois.parquet")
    settings = ShardSettings(**{**SHARD_SETTINGS, "num_chunks": 1}, sampling=None)
    doc = read_manifest(write_shards(tmp_path / "rois.parquet", clean, images, "val", settings, tmp_path / "shards"))
    assert doc["num_rois"] == 3 and doc["skipped_rois"] == 0
    assert audit(tmp_path / "shards")[0].problems == []


def test_snakemake_error_message_is_not_a_traceback(tmp_path: Path) -> None:
    """The Snakefile validates at start: a bad key is named, not a Python traceback."""
    from conftest import snakemake

    path = _config_file(tmp_path, data={"name": ".."})
    run = snakemake(tmp_path, "eval_coco", "--cores", "1", "-n", "--configfile", str(path))
    assert run.returncode != 0 and "data.name" in run.stdout + run.stderr
