"""Helpers for the Snakefile's rule files: turning the validated config into rule inputs and params.

Kept in the package (not in the .smk files) so the rules stay declarative and this code is testable.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pipeline.config import data_splits

__all__ = ["data_splits", "data_input_files", "section_json"]


def section_json(config: dict[str, Any], name: str) -> str:
    """A config section as a shell-quoted JSON argument: a changed value reruns the rule."""
    return shlex.quote(json.dumps(config[name], sort_keys=True))


def data_input_files(config: dict[str, Any]) -> list[str]:
    """A dataset on disk: its annotation files, so that a changed file reruns the data stage."""
    if config["data"]["source"] != "coco":
        return []
    return [files["annotations"] for files in config["data"]["coco"]["splits"].values()]
