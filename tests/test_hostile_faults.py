"""The fourth hostile matrix: user text that reaches a format or markup parser, interrupted and
raced runs, poisoned caches and model files. Each test is a reproduction of a case that crashed,
lost or silently passed before its fix (docs/usage.md, "When something goes wrong")."""

from __future__ import annotations

import base64
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from core.errors import CheckpointError, FileAppeared, disk_full_message
from core.io.tables import DETECTIONS_SCHEMA, read_table
from jobs.mtgan.engine import build_networks
from jobs.mtgan.model_file import load_model, save_model
from jobs.mtgan.settings import VARIANTS, resolve_preset
from pipeline import cli as cli_module
from pipeline.data.stats import draw_preview
from pipeline.detect import import_detections
from pipeline.submit import write_submission

from conftest import REPO, TINY_CONFIG, snakemake


def test_a_category_name_in_dollar_signs_is_drawn_as_written(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), "white").save(tmp_path / "1.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "$\\x$"}],  # mathtext would stop on the unknown symbol
    }
    assert draw_preview(coco, tmp_path, tmp_path / "preview.png", "split $\\x$ {0}") == 0
    with Image.open(tmp_path / "preview.png") as im:
        assert im.format == "PNG"


def test_a_checkout_whose_path_holds_braces_runs(tmp_path: Path) -> None:
    checkout = tmp_path / "co{x}"
    os.symlink(REPO, checkout)  # the repository as seen through a folder named `co{x}`
    work = tmp_path / "work"
    work.mkdir()
    run = snakemake(work, "artifacts/tiny/data/index.json", "--cores", "1", "--configfile", str(TINY_CONFIG), snakefile=checkout / "Snakefile")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (work / "artifacts" / "tiny" / "data" / "index.json").is_file()


def test_a_users_file_that_appears_while_it_is_written_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    coco = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "a"}]}
    record = {"image_id": 1, "category_id": 1, "bbox": [1.0, 1.0, 2.0, 2.0], "score": 0.5}

    def parts() -> Iterator[list[dict[str, Any]]]:
        yield [record]
        out.write_text("[] another run's results\n")  # a second `mtgan rescore --out o.json` finished first
        yield [record]

    with pytest.raises(FileAppeared, match="appeared while"):
        write_submission(parts(), coco, out, new_only=True)
    assert out.read_text() == "[] another run's results\n" and sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]
    write_submission(iter([[record]]), coco, tmp_path / "p.json", new_only=True)  # a new name: written
    assert json.loads((tmp_path / "p.json").read_text()) == [record]


def _model_file(path: Path) -> dict[str, Any]:
    """A tiny MTGAN model.pt written by the project's own writer; its entries."""
    variant, preset = VARIANTS["mtgan"], resolve_preset("tiny")
    g, d = build_networks(variant, preset, 3, 4)
    shards = {"category_ids": [1, 2], "category_names": ["a", "b"], "num_labels": 3, "hr_size": 64, "scale": 4, "margin": 0.1, "resize_method": "bicubic"}
    save_model(path, g, d, variant, preset, 0, 0, shards, None)
    load_model(path, torch.device("cpu"))  # as written: loads
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("entry", "value", "named"),
    [
        (("preset", "g_channels"), "many", "preset field 'g_channels': must be int"),
        (("preset", "d_backbone"), "../../evil", "preset field 'd_backbone': must be one of"),
        (("preset", "d_width"), 4_000_000, "preset field 'd_width': must be <= 256"),  # 576 TB were asked for
        (("scale",), 0, "scale: must be an integer 1-8"),
        (("hr_size",), -64, "hr_size: must be an integer 8-512"),
    ],
)
def test_a_model_files_own_settings_are_checked_before_anything_is_built(tmp_path: Path, entry: tuple[str, ...], value: Any, named: str) -> None:
    state = _model_file(tmp_path / "model.pt")
    (state[entry[0]] if len(entry) == 2 else state)[entry[-1]] = value
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=re.escape(named)) as found:
        load_model(tmp_path / "bad.pt", torch.device("cpu"))
    assert str(found.value).startswith(f"{tmp_path / 'bad.pt'}: ") and "\n" not in str(found.value)


def test_non_finite_weights_are_named_by_the_model_file(tmp_path: Path) -> None:
    state = _model_file(tmp_path / "model.pt")
    name = next(k for k, v in state["d"].items() if v.is_floating_point() and v.numel() > 1)
    state["d"][name].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'nan.pt'}: D's {name} holds NaN or infinity")):
        load_model(tmp_path / "nan.pt", torch.device("cpu"))


def test_a_full_disk_is_one_line_naming_the_path_and_the_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "shard.h5"

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(cli_module, "load_config_files", full)
    result = CliRunner().invoke(cli_module.cli, ["config", str(REPO / "config" / "tiny.yaml")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"Error: {target}: no space left on the device (") and "MB free on the file system of" in result.output
    # torch.save's stream error says nothing of space: a disk with room left is not called full
    assert disk_full_message(RuntimeError("basic_ios::clear: iostream error"), tmp_path) is None
    assert "no space left" in (disk_full_message(OSError("Can't write data (file write failed: errno = 28)"), tmp_path) or "")


def test_repeated_detections_are_dropped_and_counted_before_the_top_k(tmp_path: Path) -> None:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2)]
    coco = {"images": images, "annotations": [], "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}
    records = [
        {"image_id": i, "category_id": c, "bbox": [float(k), 2.0, 10.0, 12.0], "score": round(0.9 - k / 100, 2)}
        for i in (1, 2)
        for c in (3, 7)
        for k in range(4)
    ]
    (tmp_path / "once.json").write_text(json.dumps(records))
    (tmp_path / "copies.json").write_text(json.dumps([r for r in records for _ in range(50)]))  # each record 50 times
    once = import_detections(tmp_path / "once.json", coco, 8, tmp_path / "once.parquet")
    copies = import_detections(tmp_path / "copies.json", coco, 8, tmp_path / "copies.parquet")
    assert once["duplicates"] == 0 and once["written"] == copies["written"] == 16  # 8 distinct a image: none crowded out
    assert copies["duplicates"] == 49 * len(records) and copies["over_top_k"] == 0
    assert read_table(tmp_path / "once.parquet", DETECTIONS_SCHEMA).equals(read_table(tmp_path / "copies.parquet", DETECTIONS_SCHEMA))


def test_the_same_command_finishes_a_run_that_was_killed(tmp_path: Path) -> None:
    """What kill -9 of the whole Snakemake process group leaves, made by hand: Snakemake's locks
    and an output marked incomplete. The same command removes the locks (no Snakemake process
    works in the folder), reruns the incomplete job and finishes, with no flag."""
    target = "artifacts/tiny/data/index.json"
    args = (target, "--cores", "1", "--configfile", str(TINY_CONFIG))
    assert snakemake(tmp_path, *args).returncode == 0
    made = (tmp_path / target).stat().st_mtime_ns
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "0.input.lock").write_text(str(tmp_path / "artifacts/tiny/data/index.json"))
    (locks / "0.output.lock").write_text(str(tmp_path / target))
    incomplete = tmp_path / ".snakemake" / "incomplete"
    incomplete.mkdir(parents=True, exist_ok=True)
    (incomplete / base64.urlsafe_b64encode(target.encode()).decode()).write_text('{"external_jobid": null}')
    run = snakemake(tmp_path, *args)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Removed the locks of an interrupted run" in run.stderr and not list(locks.glob("*.lock"))
    assert (tmp_path / target).stat().st_mtime_ns > made  # the incomplete job was run again
