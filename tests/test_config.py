"""Config validation: every shipped config is valid; a malformed one fails naming the key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import ConfigError, deep_merge, load_config_files, validate_config

from conftest import REPO

DEFAULT = REPO / "config" / "default.yaml"


@pytest.mark.parametrize("extra", [[], ["tiny.yaml"], ["coco.yaml"], ["widerface.yaml"]])
def test_shipped_configs_are_valid(extra: list[str]) -> None:
    config = validate_config(load_config_files([DEFAULT, *(REPO / "config" / e for e in extra)]))
    assert config["data"]["name"]


def test_default_config_spells_out_every_default() -> None:
    """default.yaml documents every key: validation adds nothing to it."""
    raw = load_config_files([DEFAULT])
    assert validate_config(raw) == raw


def test_defaults_are_filled_in() -> None:
    config = validate_config({"data": {"name": "x", "source": "builtin"}})
    assert config["data"]["builtin"]["image_size"] == 320
    assert config["data"]["test_split"] == "val"


def _broken(path: list[str], value: object) -> dict:
    config = load_config_files([DEFAULT])
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (["data", "builtin", "imagesize"], 256, "data.builtin.imagesize"),  # typo: unknown key
        (["data", "builtin", "image_size"], "big", "data.builtin.image_size"),  # wrong type
        (["data", "builtin", "seed"], -1, "data.builtin.seed"),  # out of range
        (["data", "source"], "voc", "data.source"),  # not an allowed value
        (["data", "builtin", "num_images"], {"train": 10, "tune": 5}, "data.builtin.num_images"),
        (["data", "test_split"], "test", "data.test_split"),  # not one of the splits
        (["data", "builtin", "size_shares"], [0.5, 0.5, 0.5], "data.builtin.size_shares"),
        (["detectr"], {}, "detectr"),  # unknown top-level section
    ],
)
def test_malformed_config_names_the_key(path: list[str], value: object, named: str) -> None:
    with pytest.raises(ConfigError, match=f"'{named}'"):
        validate_config(_broken(path, value))


def test_coco_split_needs_annotations_and_images() -> None:
    config = deep_merge(load_config_files([DEFAULT]), {"data": {"source": "coco", "coco": {"splits": {"train": {"annotations": "a.json"}}}}})
    with pytest.raises(ConfigError, match="data.coco.splits.train"):
        validate_config(config)


def test_validation_does_not_modify_its_input() -> None:
    raw = {"data": {"name": "x", "source": "builtin"}}
    before = copy.deepcopy(raw)
    validate_config(raw)
    assert raw == before


def test_cli_config_command_reports_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"builtin": {"image_size": "large"}}}))
    result = CliRunner().invoke(cli, ["config", str(DEFAULT), str(bad)])
    assert result.exit_code == 1
    assert "data.builtin.image_size" in result.output
    good = CliRunner().invoke(cli, ["config", str(DEFAULT)])
    assert good.exit_code == 0 and yaml.safe_load(good.output)["data"]["name"] == "builtin"


def test_snakemake_refuses_a_malformed_config_before_running(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"builtin": {"jpeg_quality": 101, "colour": "red"}}}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-n", "--cores", "1", "--configfile", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "data.builtin.jpeg_quality" in result.stderr + result.stdout
    assert "data.builtin.colour" in result.stderr + result.stdout
    assert not (tmp_path / "artifacts").exists()


def test_names_defined_once_reach_the_schema_from_their_registries(tmp_path: Path) -> None:
    """Data sources, presets, variants and test-time rules are defined once, in their registries;
    the config schema names none of them (it takes them by `x-registry`), and a name outside a
    registry is refused naming the key and listing the registry's names."""
    from jobs.mtgan.settings import PRESETS, RULES, VARIANTS
    from pipeline.config import ConfigError, validate_config
    from pipeline.data.sources import DATA_SOURCES
    from pipeline.methods import parse_method

    text = (Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml").read_text()
    for name in ("widerface", "paper-r101", "no_reg_branch", "by_size"):
        assert name not in text.split("description")[0] and f"enum: [{name}" not in text
    for key, value, names in [
        ("data.source", {"data": {"source": "kitti"}}, DATA_SOURCES),
        ("mtgan.preset", {"mtgan": {"preset": "fast"}}, PRESETS),
        ("mtgan.variants", {"mtgan": {"variants": ["mtgan", "sbu2"]}}, VARIANTS),
        ("infer.rules", {"infer": {"rules": ["paper", "all_sr"]}}, RULES),
    ]:
        config = {"data": {"source": "builtin"}} | value
        with pytest.raises(ConfigError) as err:
            validate_config(config)
        assert key in str(err.value) and all(n in str(err.value) for n in names), str(err.value)
    assert all("-" not in name for name in [*VARIANTS, *RULES])  # a method's name splits at its "-"
    from jobs.mtgan.models import ResNetTrunk
    from jobs.mtgan.settings import D_BACKBONES

    assert list(D_BACKBONES) == list(ResNetTrunk.LAYERS)  # the preset's choices are the trunks that exist
    assert parse_method("mtgan-by_size_ensemble").ensemble and parse_method("sbu").rule == "paper"
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("sbu-by_size")  # the paper's SBU never trains on HR crops: no row for it


def test_the_conda_environment_asks_for_what_pyproject_asks_for() -> None:
    """envs/mtgan.yaml (for `snakemake --use-conda`) must list conda's names for pyproject's
    dependencies, with the same lower bounds: pyproject is where they are decided; conda names two
    packages otherwise, and Snakemake itself runs the rules rather than living in their environment."""
    import re

    import tomllib

    conda_name = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {}
    for spec in pyproject:
        name, bound = re.fullmatch(r"([a-z0-9_-]+)(?:\[[a-z,]+\])?>=(\S+)", spec).groups()
        if name != "snakemake":
            wanted[conda_name.get(name, name)] = bound
    listed = dict(line.split(" >=") for line in yaml.safe_load((REPO / "envs" / "mtgan.yaml").read_text())["dependencies"])
    assert {k: v for k, v in listed.items() if k != "python"} == wanted
