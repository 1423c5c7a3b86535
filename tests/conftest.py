"""Shared fixtures. Tests make their own data; the real samples in ../shared/data are optional.

The suite runs in two processes (pytest-xdist, `-n 2` in pyproject.toml): most tests keep one core
busy (Snakemake runs of a tiny pipeline, pycocotools), so two processes on two cores finish
sooner: 17.5 minutes against 25.4 in one process on a 2-core Xeon VM (a2ddb3a). Since then each
process, and each torch job of the tiny preset, runs one thread (two such jobs at a time), and the
tiny preset's D is a quarter as wide: 10.5 minutes there (18cdaaa; three processes: no faster,
13.0 against 12.5 minutes at c370074). Session fixtures are made once per process, so the files whose tests read the
session's tiny run, and the Slurm tests, are one unit of work that goes to one process
(`pytest_xdist_make_scheduler`; xdist's own `--dist loadgroup` marks do nothing under pytest 9,
whose node ids xdist 3.8 can no longer rename). There the Slurm tests come first, so the Slurm
run and the local run it is compared with go side by side: the Slurm jobs mostly wait.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config_files, validate_config

# Each of the two processes runs its own torch work with one thread (set before torch is imported):
# with torch's default of every core each, the two would put four OpenMP threads on two cores.
# The Snakemake jobs that tests start get their own threads (OMP_NUM_THREADS, --threads).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def snakemake(workdir: Path, *args: str, timeout: int = 900, snakefile: Path = REPO / "Snakefile") -> subprocess.CompletedProcess[str]:
    """The repository's Snakefile run in `workdir` (a test's own folder), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


TINY_CONFIG = REPO / "config" / "tiny.yaml"
# The test files that read the session's tiny run (or run the Slurm tests), in one process.
TINY_RUN_FILES = (
    *("test_hostile_workflow.py", "test_report.py", "test_regimes_bench.py", "test_seeds_bench.py", "test_baselines_bench.py"),
    *("test_slurm.py", "test_submit.py", "test_workflow.py"),
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load balancing, test by test, except TINY_RUN_FILES: one unit for one process."""
    from xdist.scheduler import LoadScopeScheduling

    class TinyRunTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tiny_run" if nodeid.split("::", 1)[0].rsplit("/", 1)[-1] in TINY_RUN_FILES else nodeid

    return TinyRunTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Slurm tests first (see above). (Starting the longest other files next was tried: 1111 s
    against 1049 s without, one run each; not kept.)"""
    items.sort(key=lambda item: item.path.name != "test_slurm.py")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test of the tiny run outside TINY_RUN_FILES fails before its fixtures are made: its process
    would make a second tiny run."""
    if not {"tiny_run", "tiny_runs"}.isdisjoint(getattr(item, "fixturenames", ())) and item.path.name not in TINY_RUN_FILES:
        pytest.fail(f"{item.nodeid} uses the tiny run: add {item.path.name} to TINY_RUN_FILES in tests/conftest.py", pytrace=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline run locally once per session (`eval_coco submit_coco` of config/tiny.yaml):
    its working folder, artifacts under artifacts/tiny/. Tests read it; none may change it."""
    work = tmp_path_factory.mktemp("tiny_run")
    started = time.perf_counter()
    run = snakemake(work, "eval_coco", "submit_coco", "--cores", "2", "--configfile", str(TINY_CONFIG))
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    TINY_RUN_SECONDS.append(time.perf_counter() - started)
    return work


# How long the session's tiny run took on this machine, once it has run: other runs of the tiny
# pipeline (the Slurm tests') scale their time limits with it rather than with a fixed number.
TINY_RUN_SECONDS: list[float] = []


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    root = SHARED_DATA / "coco-mini"
    if not (root / "annotations" / "instances_train2017.json").is_file():
        pytest.skip("real COCO sample ../shared/data/coco-mini is absent")
    return root


def tiny_config(**builtin_overrides: Any) -> dict[str, Any]:
    """The repository's tiny preset (default.yaml + tiny.yaml), validated, with optional overrides."""
    config = load_config_files([REPO / "config" / "default.yaml", REPO / "config" / "tiny.yaml"])
    config["data"]["builtin"].update(builtin_overrides)
    return validate_config(config)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset's built-in dataset (data stage output folder), built once per session."""
    from pipeline.data.stage import build_dataset

    out = tmp_path_factory.mktemp("tiny") / "data"
    build_dataset(tiny_config()["data"], out, n_jobs=1)
    return out


SHARD_SETTINGS = {"hr_size": 64, "scale": 4, "context_margin": 0.0, "rois_per_shard": 50, "block_size": 16, "num_chunks": 2, "on_bad_image": "error"}


@pytest.fixture(scope="session")
def tiny_rois(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ROI tables of the tiny dataset's splits, from jittered ground truth plus random boxes as
    imported detections (no detector training needed)."""
    import json

    import numpy as np

    from pipeline.detect import import_detections
    from pipeline.rois import build_rois

    out = tmp_path_factory.mktemp("rois")
    paths = {}
    for split in ("train", "val"):
        coco = json.loads((tiny_data / f"{split}.json").read_text())
        rng = np.random.default_rng(0)
        records = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "score": float(rng.uniform(0.2, 1)),
                "bbox": [a["bbox"][0] + float(rng.normal(0, 2)), a["bbox"][1] + float(rng.normal(0, 2)), a["bbox"][2], a["bbox"][3]],
            }
            for a in coco["annotations"]
        ]
        for im in coco["images"]:
            for _ in range(8):
                x, y = rng.uniform(0, im["width"] - 20, 2)
                records.append({"image_id": im["id"], "category_id": 1, "bbox": [float(x), float(y), 16.0, 16.0], "score": 0.1})
        (out / f"{split}.json").write_text(json.dumps(records))
        import_detections(out / f"{split}.json", coco, 100, out / f"{split}_detections.parquet")
        build_rois(out / f"{split}_detections.parquet", coco, split == "train", 0.5, 0.35, out / f"{split}.parquet")
        paths[split] = out / f"{split}.parquet"
    return paths


@pytest.fixture(scope="session")
def tiny_train_shards(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of the tiny dataset's training shards (every ROI kept)."""
    import json

    from pipeline.shards import ShardSettings, write_shards

    out = tmp_path_factory.mktemp("train_shards")
    settings = ShardSettings(**SHARD_SETTINGS, sampling=None)
    coco = json.loads((tiny_data / "train.json").read_text())
    return write_shards(tiny_rois["train"], coco, tiny_data / "images" / "train", "train", settings, out)
