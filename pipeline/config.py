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
from jobs.mtgan.settings import PRESETS, RULES, VARIANTS, applies, preset_problems
from pipeline.data.index import RESERVED_SPLIT_NAMES
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


# A config file expands to at most this many values (keys, list items, scalars), counting every
# use of a YAML alias: a few anchors and aliases nested in each other ("billion laughs") would
# otherwise expand to billions of values that every later check walks.
MAX_CONFIG_VALUES = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, it does not repeat
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(f"{self.name}: key {key!r} appears twice in one mapping (lines {first[key]} and {line}); YAML would keep the last silently")
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is expanded (each node counted once
    per use; linear in the distinct nodes)."""
    if id(node) not in memo:
        if isinstance(node, yaml.MappingNode):
            memo[id(node)] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            memo[id(node)] = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            memo[id(node)] = 1
    return memo[id(node)]


def read_config_file(path: Path) -> dict[str, Any]:
    """One config file, checked: UTF-8 YAML holding a mapping, no key repeated in a mapping, at most
    MAX_CONFIG_VALUES values with aliases expanded. ConfigError names the file and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            loader = _ConfigLoader(f)
            loader.name = str(path)
            try:
                node = loader.get_single_node()
                if node is not None and (size := _expanded_size(node, {})) > MAX_CONFIG_VALUES:
                    raise ConfigError(f"{path}: expands to {size} values with its YAML aliases (at most {MAX_CONFIG_VALUES}); write the values out")
                doc = loader.construct_document(node) if node is not None else {}
            finally:
                loader.dispose()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f"line {where.line + 1}, column {where.column + 1}: " if where is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({at}{what}; YAML indents with spaces, never tabs)") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys, got {type(doc).__name__}")
    return doc


def load_config_files(paths: Iterable[Path]) -> dict[str, Any]:
    """The files' mappings merged in order, each read by `read_config_file`."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, read_config_file(path))
    return merged


def check_command_line(argv: list[str]) -> None:
    """Refuse a Snakemake command line with `--configfile` (or `--configfiles`) given more than
    once: Snakemake keeps only the last flag's files, silently dropping the others."""
    flags = [a for a in argv if a.split("=", 1)[0] in ("--configfile", "--configfiles")]
    if len(flags) > 1:
        raise ConfigError(
            f"--configfile given {len(flags)} times: Snakemake keeps only the files of the last one; "
            "name every file after a single flag: --configfile config/tiny.yaml my.yaml"
        )


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
    variants = config["mtgan"]["variants"]
    problems += [
        f"key 'infer.rules': rule {rule!r} applies to none of mtgan.variants {variants} ({RULES[rule].description}; it needs a variant whose D "
        "trains on HR crops and has an up-sampler)"
        for rule in config["infer"]["rules"]
        if not any(applies(rule, VARIANTS[v]) for v in variants)
    ]
    if problems:
        raise ConfigError(f"{what} is inconsistent:\n  " + "\n  ".join(problems))


def _data_problems(data: dict[str, Any], detector: dict[str, Any]) -> list[str]:
    splits = data_splits(data)
    reserved = [s for s in splits if s in RESERVED_SPLIT_NAMES]
    roles = (data["train_split"], data["test_split"])
    problems = [
        f"key 'data.{role}': split '{data[role]}' is not among the dataset's splits {splits}"
        for role in ("train_split", "test_split", "dev_split")
        if data[role] not in (None, "auto") and data[role] not in splits
    ]
    if reserved:
        own = ", ".join(RESERVED_SPLIT_NAMES)
        problems.append(f"key 'data.{data['source']}': split name(s) {reserved} are the data folder's own files ({own}); rename them")
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
