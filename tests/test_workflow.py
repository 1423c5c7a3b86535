"""The Snakemake workflow: lint, DAG, a real tiny run in a temporary folder, caching, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pycocotools.coco import COCO

from pipeline.io.atomic import atomic_dir, write_json
from pipeline.io.tables import read_table

from conftest import REPO


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def test_lint_is_clean(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize("configs", [[], ["config/coco.yaml"]])
def test_dry_run_dag(tmp_path: Path, configs: list[str]) -> None:
    extra = ["--configfile", *(str(REPO / c) for c in configs)] if configs else []
    result = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", *extra)
    if configs:  # COCO on disk: the DAG is complete, and its missing input is named
        assert result.returncode != 0
        assert "instances_train2017.json" in result.stdout + result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "data" in result.stdout and "eval_coco" in result.stdout


def test_tiny_pipeline_runs_then_caches(tmp_path: Path) -> None:
    first = snakemake(tmp_path, "eval_coco", "--cores", "2", "--configfile", str(REPO / "config" / "tiny.yaml"))
    assert first.returncode == 0, first.stdout + first.stderr
    data = tmp_path / "artifacts" / "tiny" / "data"
    index = json.loads((data / "index.json").read_text())
    assert set(index["splits"]) == {"train", "val"}
    assert len(list((data / "images" / "train").glob("*.jpg"))) == 24
    assert (tmp_path / "artifacts" / "tiny" / "logs" / "data.log").read_text().count("builtin train") >= 1
    assert (tmp_path / "artifacts" / "tiny" / "benchmarks" / "data.tsv").is_file()
    root = tmp_path / "artifacts" / "tiny"
    assert (root / "baseline" / "model.pt").is_file() and (root / "baseline" / "train_log.csv").is_file()
    rois = read_table(root / "rois" / "train.parquet", "rois.schema.yaml").to_pydict()
    assert "gt" in rois["origin"] and "detector" in rois["origin"]  # ground truth added on the training split
    assert set(read_table(root / "rois" / "val.parquet", "rois.schema.yaml").column("origin").to_pylist()) == {"detector"}
    baseline = json.loads((root / "score" / "baseline.json").read_text())
    assert baseline["method"] == "baseline" and baseline["metrics"]["images"] == 12
    COCO(str(data / "val.json")).loadRes(str(root / "detect" / "val_results.json"))

    second = snakemake(tmp_path, "eval_coco", "--cores", "2", "--configfile", str(REPO / "config" / "tiny.yaml"))
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr

    reseeded = tmp_path / "seed3.yaml"
    reseeded.write_text("data:\n  builtin:\n    seed: 3\n")
    changed = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", "--configfile", str(REPO / "config" / "tiny.yaml"), str(reseeded))
    assert changed.returncode == 0, changed.stdout + changed.stderr
    out = changed.stdout + changed.stderr
    assert "rule data:" in out and "Params have changed" in out  # a changed value reruns the stage


def test_atomic_dir_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            write_json(tmp / "index.json", {"half": "written"})
            raise RuntimeError("killed")
    assert not final.exists() and os.listdir(tmp_path) == []

    final.mkdir()
    (final / "old.txt").write_text("previous run")
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("this run")
    assert sorted(os.listdir(final)) == ["new.txt"]
