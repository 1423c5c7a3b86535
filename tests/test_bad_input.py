"""Bad input, interrupted runs and damaged caches: each case is a one-line error naming the file and
the problem (no traceback), or a counted skip where skipping is the documented behaviour; nothing
the pipeline did not write is ever removed.

Most cases run the `mtgan` CLI as a user would, so they check the whole path from the failure to
the message.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from core.errors import OutputFolderError
from core.io import atomic
from core.io.shards import read_manifest
from core.io.tables import ROIS_SCHEMA, read_table
from pipeline.audit import audit
from pipeline.cli import cli
from pipeline.config import ConfigError, load_config_files, validate_config
from pipeline.shards import ShardSettings, write_shards

from conftest import REPO, SHARD_SETTINGS

CONFIGS = [REPO / "config" / "default.yaml", REPO / "config" / "tiny.yaml"]


def cli_error(*args: Any, verbose: bool = False) -> str:
    """Run `mtgan ARGS`; it must fail as a handled error: exit 1, `Error: ...`, no traceback.
    Returns the error text (from `Error:` on)."""
    result = CliRunner().invoke(cli, [*(["-v"] if verbose else []), *map(str, args)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{result.output}"
    assert ("Traceback" in result.output) == verbose, result.output
    return result.output[result.output.index("Error:") :].strip()


def one_line(text: str) -> str:
    assert "\n" not in text, text
    return text


def _config_file(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def _coco_folder(root: Path, modes: dict[int, str] | None = None) -> dict[str, Any]:
    """Three 96x80 JPEGs (modes per image id: RGB, L, CMYK) with two objects each; image 3 has none."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    modes = modes or {}
    for i in (1, 2, 3):
        pixels = rng.integers(0, 255, size=(80, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(modes.get(i, "RGB")).save(root / f"{i}.jpg", quality=90)
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 96, "height": 80} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10 * i + k, "image_id": i, "category_id": 1 + k, "bbox": [5 + 30 * k, 10, 24, 30], "area": 720.0, "iscrowd": 0}
            for i in (1, 2)
            for k in (0, 1)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def _coco_config(tmp_path: Path, coco: dict[str, Any], images: Path, **coco_options: Any) -> Path:
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    split = {"annotations": str(tmp_path / "instances.json"), "images": str(images)}
    return _config_file(
        tmp_path,
        data={
            "name": "mine",
            "source": "coco",
            "train_split": "train",
            "test_split": "val",
            "coco": {"splits": {"train": split, "val": split}, **coco_options},
        },
    )


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --- Never delete what the pipeline did not write ------------------------------------------------


def test_a_users_folder_survives_with_an_error(tmp_path: Path) -> None:
    out = tmp_path / "my-folder"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    message = one_line(cli_error("data", *sum((["--config", c] for c in CONFIGS), []), "--out", out))
    assert str(out) in message and "thesis.tex" in message and "did not write" in message
    assert (out / "thesis.tex").read_text() == "years of work" and sorted(os.listdir(out)) == ["thesis.tex"]
    assert [p.name for p in tmp_path.iterdir()] == ["my-folder"]  # nothing was written beside it either


def test_a_folder_the_pipeline_wrote_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with atomic.atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == [atomic.OUTPUT_MARKER, "b.txt"]
    (out / atomic.OUTPUT_MARKER).unlink()  # without the marker it is no longer ours
    with pytest.raises(OutputFolderError, match="b.txt"):
        with atomic.atomic_dir(out):
            pass
    assert (out / "b.txt").read_text() == "second"


@pytest.mark.parametrize("name", ["..", ".", "../data", "a/b", ".hidden", ""])
def test_dataset_names_are_single_safe_path_components(name: str) -> None:
    config = load_config_files(CONFIGS)
    config["data"]["name"] = name
    with pytest.raises(ConfigError, match="data.name"):
        validate_config(config)


def test_split_names_are_safe_path_components(tmp_path: Path) -> None:
    config = load_config_files(CONFIGS)
    config["data"] |= {"source": "coco", "coco": {"splits": {"../x": {"annotations": "a.json", "images": "i"}}}}
    with pytest.raises(ConfigError, match="data.coco.splits"):
        validate_config(config)


# --- Manifests count what was written -------------------------------------------------------------


def _shards(data: Path, rois: Path, split: str, out: Path, **changes: Any) -> dict[str, Any]:
    settings = ShardSettings(**{**SHARD_SETTINGS, **changes}, sampling=None)
    coco = json.loads((data / f"{split}.json").read_text())
    return read_manifest(write_shards(rois, coco, data / "images" / split, split, settings, out))


def test_a_skipped_corrupt_jpeg_is_counted_and_the_shards_pass_audit(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    _truncate(data / "images" / "val" / "000003.jpg")
    doc = _shards(data, tiny_rois["val"], "val", tmp_path / "shards", on_bad_image="skip")
    table = read_table(tiny_rois["val"], ROIS_SCHEMA)
    lost = table.column("image_id").to_pylist().count(3)
    assert lost > 0 and doc["skipped_rois"] == lost and doc["num_rois"] == table.num_rows - lost
    assert len(doc["skipped_images"]) == 1 and "000003.jpg" in doc["skipped_images"][0]
    labels = table.column("label").to_pylist()
    kept = [label for label, image in zip(labels, table.column("image_id").to_pylist()) if image != 3]
    assert doc["histograms"]["label"] == {str(k): kept.count(k) for k in sorted(set(kept))}
    report, _ = audit(tmp_path / "shards")
    assert report.problems == [] and report.num_rois == doc["num_rois"]


def test_a_truncated_jpeg_stops_the_shards_stage_naming_it(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    _truncate(data / "images" / "val" / "000003.jpg")
    sections = json.dumps({"shards": {**SHARD_SETTINGS, "on_bad_image": "error"}})
    common = ["--sections", sections, "--data-index", data / "index.json", "--split", "val", "--role", "test", "--rois", tiny_rois["val"]]
    plan, images = tmp_path / "plan.parquet", tmp_path / "images.parquet"
    made = CliRunner().invoke(cli, ["shards-plan", *map(str, common), "--out-plan", str(plan), "--out-images", str(images)])
    assert made.exit_code == 0, made.output
    message = one_line(cli_error("shards", *common, "--plan", plan, "--images", images, "--chunk", 0, "--out", tmp_path / "chunk-0"))
    assert "000003.jpg: cannot decode" in message and "on_bad_image: skip" in message


# --- Every knob checked before work starts --------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"iterations": -5}, ["mtgan.overrides.iterations", ">= 1"]),
        ({"iterations": 0}, ["mtgan.overrides.iterations", ">= 1"]),
        ({"batch_size": "big"}, ["mtgan.overrides.batch_size", "must be int", "str"]),
        ({"batch_size": True}, ["mtgan.overrides.batch_size", "must be int", "bool"]),
        ({"iteratons": 500}, ["mtgan.overrides.iteratons", "unknown preset field", "iterations"]),
        ({"d_lr": 0}, ["mtgan.overrides.d_lr", "> 0"]),
        ({"positive_fraction": 1.5}, ["mtgan.overrides.positive_fraction", "<= 1"]),
        ({"d_backbone": "vgg16"}, ["mtgan.overrides.d_backbone", "resnet50"]),
        ({"departures": ["none"]}, ["mtgan.overrides.departures", "unknown"]),
    ],
)
def test_overrides_are_checked_at_config_validation(tmp_path: Path, overrides: dict[str, Any], words: list[str]) -> None:
    path = _config_file(tmp_path, mtgan={"overrides": overrides})
    message = cli_error("config", *CONFIGS, path)
    assert all(w in message for w in words), message


def test_a_bad_override_stops_snakemake_before_any_job(tmp_path: Path) -> None:
    from conftest import snakemake

    path = _config_file(tmp_path, mtgan={"overrides": {"iterations": -1}})
    run = snakemake(tmp_path, "eval_coco", "--cores", "1", "-n", "--configfile", str(CONFIGS[1]), str(path))
    assert run.returncode != 0 and "mtgan.overrides.iterations" in run.stdout + run.stderr
    assert not (tmp_path / "artifacts").exists()


def test_good_overrides_pass() -> None:
    config = load_config_files(CONFIGS)
    config["mtgan"]["overrides"] = {"iterations": 50, "d_lr": 1, "positive_fraction": None, "amp": False}
    assert validate_config(config)["mtgan"]["overrides"]["iterations"] == 50


# --- Leftovers of killed jobs ------------------------------------------------------------------------


KILLED_WRITER = """
import json, os, signal, sys
from pathlib import Path
import pipeline.shards as shards
from pipeline.shards import ShardSettings, plan_shards, write_chunk

rois, data, out, settings = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
original = shards.write_shard
calls = []

def dies_on_second(path, *args):
    calls.append(path)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no finally block runs
    original(path, *args)

shards.write_shard = dies_on_second
coco = json.loads((data / "val.json").read_text())
settings = ShardSettings(**settings, sampling=None)
plan_shards(rois, coco, "val", settings, out.parent / "plan.parquet", out.parent / "images.parquet")
write_chunk(out.parent / "plan.parquet", out.parent / "images.parquet", rois, data / "images" / "val", 0, settings, out)
"""


def test_a_killed_shards_job_leaves_a_leftover_that_the_rerun_removes(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "shards"
    settings = {**SHARD_SETTINGS, "rois_per_shard": 10}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tiny_rois["val"]), str(tiny_data), str(out / "chunk-0"), json.dumps(settings)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    leftovers = atomic.leftovers_of(out / "chunk-0")
    assert len(leftovers) == 1 and list(leftovers[0].glob("*.h5")) and not (out / "chunk-0").exists()

    _shards(tiny_data, tiny_rois["val"], "val", out, rois_per_shard=10)  # the rerun
    assert atomic.leftovers_of(out / "chunk-0") == [] and not leftovers[0].exists()
    report, _ = audit(out)
    assert report.problems == [] and report.leftovers == []


def test_audit_names_leftovers_as_leftovers_not_damage(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "shards"
    _shards(tiny_data, tiny_rois["val"], "val", out)
    stale = out / ".tmp-chunk-1.partial-abcd1234"  # what a killed rerun of chunk 1 leaves
    shutil.copytree(out / "chunk-1", stale)
    report, _ = audit(out)
    assert report.problems == [] and report.leftovers == [stale.name]
    result = CliRunner().invoke(cli, ["audit", str(out)])
    assert result.exit_code == 0 and "Leftovers of interrupted runs" in result.output and stale.name in result.output
    (stale / atomic.OUTPUT_MARKER).unlink()  # not ours: never removed, and its shards are strays
    assert atomic.leftovers_of(out / "chunk-1") == []
    assert any("does not list" in p for p in audit(out)[0].problems)


# --- Weights from disk never run code ------------------------------------------------------------


class _Planted:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["plain pickle", "torch.save"])
def test_a_planted_pickle_in_the_torch_hub_cache_does_not_execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    import torch
    import torchvision

    from jobs.baseline.models import DetectorSettings, build_detector
    from jobs.mtgan.models import resnet_backbone
    from jobs.weights import UnsafeWeights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    for arch in ("resnet18", "fasterrcnn_mobilenet_v3_large_320_fpn"):
        path = checkpoints / Path(torchvision.models.get_model_weights(arch).DEFAULT.url).name
        if how == "plain pickle":
            path.write_bytes(pickle.dumps(_Planted(marker)))
        else:
            torch.save({"conv1.weight": _Planted(marker)}, path)
    with pytest.raises(UnsafeWeights, match="resnet18-.*refused without running it"):
        resnet_backbone("resnet18", "torchvision")
    settings = DetectorSettings(min_size=128, max_size=128, score_thresh=0.0, nms_thresh=0.5, detections_per_img=10)
    with pytest.raises(UnsafeWeights, match="fasterrcnn_mobilenet_v3_large_320_fpn"):
        build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 91, settings, pretrained=True)
    assert not marker.exists()
