"""Shared fixtures. Tests make their own data; the real samples in ../shared/data are optional."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config_files, validate_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
