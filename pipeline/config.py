"""The pipeline's configuration: YAML files merged in order, validated against
`schemas/config.schema.yaml`, with the schema's defaults filled in.

Snakemake merges `config/default.yaml` with any `--configfile` and `--config` given on its command
line; the Snakefile then calls `validate_config`. The `mtgan` CLI merges `--config` files the same
way (later files override earlier ones key by key; lists are replaced whole).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from core.schema import SchemaError, validate_document
from jobs.mtgan.settings import PRESETS, RULES, VARIANTS, preset_problems
from pipeline.data.sources import DATA_SOURCES

CONFIG_SCHEMA = "config.schema.yaml"
# The names the schema takes from the code (`x-registry: <name>`): each is defined once, in its registry.
REGISTRIES = {"data_sources": list(DATA_SOURCES), "presets": list(PRESETS), "variants": list(VARIANTS), "rules": list(RULES)}


class ConfigError(SchemaError):
    """An invalid configuration; the message names each offending key."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config_files(paths: Iterable[Path]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the config as UTF-8") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f"line {where.line + 1}, column {where.column + 1}: " if where is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML ({at}{what}; YAML indents with spaces, never tabs)") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(doc).__name__}")
        merged = deep_merge(merged, doc)
    return merged


def validate_config(config: dict[str, Any], what: str = "config", require: tuple[str, ...] = ("data",)) -> dict[str, Any]:
    """A validated copy of `config` with every default filled in; ConfigError names bad keys.

    `require` lists the sections that must be present (a stage's command needs only its own).
    """
    missing = [name for name in require if name not in config]
    if missing:
        raise ConfigError(f"{what}: missing section(s) {missing}")
    try:
        config = validate_document(dict(config), CONFIG_SCHEMA, what, defaults=True, registries=REGISTRIES)
    except SchemaError as e:
        raise ConfigError(str(e)) from None
    _check_cross_keys(config, what)
    return config


def dev_split(data: dict[str, Any]) -> str | None:
    """The development split of the `data` section (`auto`: the split named dev, if any)."""
    if data["dev_split"] == "auto":
        return "dev" if "dev" in data_splits(data) else None
    return data["dev_split"]


def data_splits(data: dict[str, Any]) -> list[str]:
    """The split names the `data` section will produce."""
    if data["source"] == "builtin":
        return list(data["builtin"]["num_images"])
    return list(data[data["source"]]["splits"])


def _check_cross_keys(config: dict[str, Any], what: str) -> None:
    """Checks that involve several keys, which the schema cannot express."""
    problems = []
    if config["rois"]["negative_iou"] > config["rois"]["positive_iou"]:
        problems.append("key 'rois.negative_iou': must not exceed rois.positive_iou")
    if config["shards"]["hr_size"] % config["shards"]["scale"]:
        problems.append(f"key 'shards.scale': {config['shards']['scale']} does not divide shards.hr_size {config['shards']['hr_size']}")
    if "data" in config:
        problems += _data_problems(config["data"], config["detector"])
    problems += preset_problems(config["mtgan"]["preset"], config["mtgan"]["overrides"])
    if problems:
        raise ConfigError(f"{what} is inconsistent:\n  " + "\n  ".join(problems))


def _data_problems(data: dict[str, Any], detector: dict[str, Any]) -> list[str]:
    splits = data_splits(data)
    roles = (data["train_split"], data["test_split"])
    problems = [
        f"key 'data.{role}': split '{data[role]}' is not among the dataset's splits {splits}"
        for role in ("train_split", "test_split", "dev_split")
        if data[role] not in (None, "auto") and data[role] not in splits
    ]
    submit = data["submit_split"]
    if submit is not None and submit not in splits:
        problems.append(f"key 'data.submit_split': split '{submit}' is not among the dataset's splits {splits}")
    if submit is not None and submit in roles:
        problems.append(f"key 'data.submit_split': '{submit}' is also the train or test split, which must be labelled")
    if data["source"] == "builtin" and submit is not None and submit not in data["builtin"]["unlabelled"]:
        problems.append(f"key 'data.submit_split': built-in split '{submit}' is labelled; list it in data.builtin.unlabelled")
    if data["source"] == "builtin" and set(roles) & set(data["builtin"]["unlabelled"]):
        problems.append(f"key 'data.builtin.unlabelled': the train and test splits {list(roles)} must keep their annotations")
    if data["source"] == "builtin" and dev_split(data) in data["builtin"]["unlabelled"]:
        problems.append("key 'data.builtin.unlabelled': the development split must keep its annotations")
    if dev_split(data) in roles:
        problems.append(f"key 'data.dev_split': '{dev_split(data)}' is also the train or test split; choices are made on a split of their own")
    if data["source"] == "builtin":
        b = data["builtin"]
        if b["objects_per_image"][0] > b["objects_per_image"][1]:
            problems.append(f"key 'data.builtin.objects_per_image': min > max in {b['objects_per_image']}")
        if b["distractors_per_image"][0] > b["distractors_per_image"][1]:
            problems.append(f"key 'data.builtin.distractors_per_image': min > max in {b['distractors_per_image']}")
        if abs(sum(b["size_shares"]) - 1.0) > 1e-6:
            problems.append(f"key 'data.builtin.size_shares': {b['size_shares']} must sum to 1")
        if b["max_side"] > 0.75 * b["image_size"]:
            problems.append(f"key 'data.builtin.max_side': {b['max_side']} is over 75% of image_size {b['image_size']}")
    if detector["source"] == "import":
        lacking = [s for s in (*roles, data["submit_split"]) if s is not None and s not in detector["import_results"]]
        if lacking:
            problems.append(f"key 'detector.import_results': no results file for split(s) {lacking}")
    return problems
