"""The second bad-input matrix: what a hostile user tried after the first (tests/test_bad_input.py).
Each case is a one-line error naming the file or key, or a documented, counted outcome; none loses
a file or returns a wrong result with exit 0."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from core.io import atomic
from pipeline.cli import cli

from conftest import SHARD_SETTINGS
from test_bad_input import CONFIGS, _coco_config, _coco_folder, _config_file, _truncate, cli_error, one_line
from test_damaged_caches import _train_args

# --- Lost files --------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["train-mtgan", "train-baseline"])
def test_a_training_job_refuses_a_users_out_folder(job: str, tiny_train_shards: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.pt").write_bytes(b"my own model")
    (out / "losses.png").write_bytes(b"my own plot")
    if job == "train-mtgan":
        args = _train_args(tiny_train_shards, out)
    else:
        args = ["train-baseline", *sum((["--config", c] for c in CONFIGS), []), "--data-index", tiny_data / "index.json", "--out", out]
    message = one_line(cli_error(*args))
    assert str(out) in message and "model.pt" in message and "did not write" in message
    assert sorted(os.listdir(out)) == ["losses.png", "model.pt"] and (out / "model.pt").read_bytes() == b"my own model"


def test_a_rerun_never_removes_a_file_the_user_added_to_an_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "data"
    args = ["data", *sum((["--config", c] for c in CONFIGS), []), "--out", out]
    assert CliRunner().invoke(cli, list(map(str, args))).exit_code == 0
    written = sorted(p.name for p in out.iterdir())
    (out / "notes.txt").write_text("my notes")
    message = one_line(cli_error(*args))
    assert str(out) in message and "notes.txt" in message and "added" in message
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, "notes.txt"]) and (out / "notes.txt").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # nothing left beside it either


def test_a_live_writers_temporary_folder_is_never_removed(tmp_path: Path) -> None:
    """Two writers of one output: the later never removes the earlier's work in progress (its pid is
    in the temporary name), while a dead writer's leftover is cleaned up."""
    final = tmp_path / "out"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        in_progress = tmp_path / f".tmp-out.partial-{live.pid}-abcd1234"
        dead = tmp_path / ".tmp-out.partial-999999999-abcd1234"
        for folder in (in_progress, dead):
            folder.mkdir()
            (folder / atomic.OUTPUT_MARKER).write_text("x")
        with atomic.atomic_dir(final) as tmp:
            assert f".partial-{os.getpid()}-" in tmp.name
            (tmp / "a.txt").write_text("done")
        assert in_progress.is_dir() and not dead.exists() and (final / "a.txt").read_text() == "done"
    finally:
        live.kill()
        live.wait()


# --- Silent wrong results ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("merge: {nms_iou: .nan}", "merge.nms_iou"),
        ("merge: {score_floor: .nan}", "merge.score_floor"),
        ("data: {coco: {box_tolerance: .nan}}", "data.coco.box_tolerance"),
        ("mtgan: {overrides: {d_lr: .nan}}", "mtgan.overrides.d_lr"),
        ("train_baseline: {lr: .inf}", "train_baseline.lr"),
        ("shards: {context_margin: .inf}", "shards.context_margin"),
        ("rois: {positive_iou: .nan}", "rois.positive_iou"),
        ("infer: {g_max_side: -.inf}", "infer.g_max_side"),
        ('data: {name: "tiny\\n"}', "data.name"),
        (f"data: {{name: {'x' * 300}}}", "data.name"),
        ('mtgan: {device: "cpu\\n"}', "mtgan.device"),
        ("shards: {scale: 1}", "shards.scale"),
        ("shards: {scale: 3}", "shards.scale"),
    ],
)
def test_non_finite_numbers_and_unanchored_strings_are_refused_by_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    (tmp_path / "bad.yaml").write_text(yaml_text + "\n")
    result = CliRunner().invoke(cli, ["config", *map(str, CONFIGS), str(tmp_path / "bad.yaml")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"key '{key}'" in result.output


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A small real PNG whose header (IHDR) claims another size, its CRC fixed."""
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_sixteen_bit_images_are_scaled_and_float_images_refused(tmp_path: Path) -> None:
    from core.io.images import ImageReadError, read_rgb

    grey = (np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)  # 0 .. 59970
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    rgb = read_rgb(tmp_path / "grey16.png")
    np.testing.assert_array_equal(rgb[..., 0], np.round(grey / 257).astype(np.uint8))  # not 99.7% white
    assert abs(rgb.mean() - grey.mean() / 257) < 0.5
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match=r"float\.tif.*mode F"):
        read_rgb(tmp_path / "float.tif")


def test_audit_works_from_any_folder(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.shards import ShardSettings, write_shards

    coco = json.loads((tiny_data / "val.json").read_text())
    settings = ShardSettings(**SHARD_SETTINGS, sampling=None)
    monkeypatch.chdir(tiny_rois["val"].parent)
    write_shards(Path(tiny_rois["val"].name), coco, tiny_data / "images" / "val", "val", settings, tmp_path / "shards")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["audit", str(tmp_path / "shards"), "--grid", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("option", "value"), [("--top-k", "-5"), ("--top-k", "0"), ("--batch-size", "0"), ("--device", "cpu\n")])
def test_rescore_options_are_ranged(tmp_path: Path, option: str, value: str) -> None:
    for name in ("model.pt", "dets.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "images").mkdir()
    args = [
        "rescore",
        "--model",
        tmp_path / "model.pt",
        "--images",
        tmp_path / "images",
        "--detections",
        tmp_path / "dets.json",
        "--out",
        tmp_path / "out.json",
        option,
        value,
    ]
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 2 and option in result.output, result.output
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c: c.update(categories=[]), "'categories' is empty"),
        (lambda c: c["annotations"][0].update(iscrowd="yes"), "iscrowd is not 0 or 1"),
        (lambda c: c["annotations"][0].update(iscrowd=None), "iscrowd is not 0 or 1"),
        (lambda c: c["categories"].append({"id": 9, "name": "a"}), "1 category name(s) given to more than one category ('a': ids [1, 9])"),
        (lambda c: c["images"][0].update(id=2**64), "images id(s) outside 0 .. 2^63 - 1"),
    ],
)
def test_more_bad_coco_files_are_named_in_one_line(tmp_path: Path, change: Any, words: str) -> None:
    images = tmp_path / "images"
    coco = _coco_folder(images)
    change(coco)
    config = _coco_config(tmp_path, coco, images)
    message = one_line(cli_error("data", "--config", CONFIGS[0], "--config", config, "--out", tmp_path / "out"))
    assert "instances.json" in message and words in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("content", "words"), [(b"data:\n\tname: x\n", "tabs"), (b"data:\n  name: caf\xe9\n", "not UTF-8")])
def test_a_config_file_that_is_not_yaml_or_not_utf8_is_named(tmp_path: Path, content: bytes, words: str) -> None:
    (tmp_path / "bad.yaml").write_bytes(content)
    message = one_line(cli_error("config", tmp_path / "bad.yaml"))
    assert str(tmp_path / "bad.yaml") in message and words in message


# --- Models and checkpoints that are not what they claim -----------------------------------------


@pytest.mark.parametrize("content", [5, torch.zeros(3), "format 3"])
def test_a_model_that_is_not_a_model_is_named(tiny_train_shards: Path, tmp_path: Path, content: Any) -> None:
    model = tmp_path / "model.pt"
    if content == "format 3":
        from jobs.mtgan.settings import VARIANTS, resolve_preset
        from jobs.mtgan.train import train_mtgan

        state = torch.load(train_mtgan(tiny_train_shards, VARIANTS["sbu"], resolve_preset("tiny"), tmp_path / "m", "cpu", 1), weights_only=True)
        torch.save(state | {"format_version": "3"}, model)
    else:
        torch.save(content, model)
    message = one_line(
        cli_error(
            "infer",
            *sum((["--config", c] for c in CONFIGS), []),
            "--model",
            model,
            "--manifest",
            tiny_train_shards,
            "--out",
            tmp_path / "t.parquet",
            "--out-accuracy",
            tmp_path / "a.json",
        )
    )
    assert str(model) in message and ("not a MTGAN model" in message or "format '3'" in message), message
    assert not (tmp_path / "t.parquet").exists()


def test_a_checkpoint_that_is_not_a_checkpoint_is_named(tiny_train_shards: Path, tmp_path: Path) -> None:
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    (tmp_path / "out" / atomic.OUTPUT_MARKER).write_text("{}")  # the job's own folder, resumed
    torch.save(5, last)
    message = one_line(cli_error(*_train_args(tiny_train_shards, tmp_path / "out")))
    assert str(last) in message and "not a checkpoint" in message


# --- Images and chunk folders --------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_in_the_detect_stage_reads_the_same_with_workers(tmp_path: Path, workers: int) -> None:
    from core.io.images import ImageReadError
    from core.io.tables import DETECTIONS_SCHEMA, read_table
    from pipeline.detect import detect_split

    images = tmp_path / "images"
    coco = _coco_folder(images)
    _truncate(images / "2.jpg", 0.3)
    detector = {
        "source": "torchvision",
        "arch": "fasterrcnn_small_cpu",
        "weights": "none",
        "top_k": 5,
        "score_thresh": 0.0,
        "nms_thresh": 0.5,
        "min_size": 64,
        "max_size": 96,
        "batch_size": 2,
        "num_workers": workers,
        "device": "cpu",
        "import_results": {},
    }
    with pytest.raises(ImageReadError) as error:
        detect_split(detector, coco, images, "val", tmp_path / "val.parquet")
    assert "2.jpg" in str(error.value) and "\n" not in str(error.value) and "on_bad_image" in str(error.value)
    assert not (tmp_path / "val.parquet").exists() and not list(tmp_path.glob(".tmp-*"))  # nothing half-written
    detect_split(detector, coco, images, "val", tmp_path / "val.parquet", on_bad_image="skip")
    table = read_table(tmp_path / "val.parquet", DETECTIONS_SCHEMA)
    assert json.loads(table.schema.metadata[b"mtgan"])["skipped_images"] == 1  # recorded after the rows were written
    assert 2 not in set(table.column("image_id").to_pylist())


def test_gathering_a_folder_without_chunks_is_named(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.shards import ShardSettings, plan_shards

    empty = tmp_path / "chunk-0"
    empty.mkdir()
    config = _config_file(tmp_path, shards=SHARD_SETTINGS)
    coco = json.loads((tiny_data / "val.json").read_text())
    plan_shards(tiny_rois["val"], coco, "val", ShardSettings(**SHARD_SETTINGS, sampling=None), tmp_path / "plan.parquet", tmp_path / "images.parquet")
    message = one_line(
        cli_error(
            "shards-manifest",
            f"--config={CONFIGS[0]}",
            f"--config={config}",
            "--split=val",
            "--role=test",
            f"--rois={tiny_rois['val']}",
            f"--plan={tmp_path / 'plan.parquet'}",
            f"--out={tmp_path / 'manifest.json'}",
            empty,
        )
    )
    assert str(empty) in message and "chunk.json" in message
    assert not (tmp_path / "manifest.json").exists()


def test_the_preview_never_allocates_from_an_unchecked_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A PNG whose header claims 32000 x 32000 (a decompression bomb to Pillow): drawn as a small
    grey panel stretched to that size, and named; nothing the size of the claim is allocated."""
    import resource

    from pipeline.data.stats import draw_preview

    _png_claiming(tmp_path / "huge.png", 32000, 32000)
    coco = {"images": [{"id": 1, "file_name": "huge.png", "width": 32000, "height": 32000}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert draw_preview(coco, tmp_path, tmp_path / "preview.png", "t") == 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KB: far below the 3 GB of the claim
    assert "huge.png" in caplog.text and (tmp_path / "preview.png").stat().st_size > 1000
