"""The third bad-input matrix, configs: what Snakemake and YAML would otherwise let through silently
(a repeated key, a repeated --configfile flag), what would hang (YAML aliases nested into billions
of values), and settings that pass a lenient check only to fail far from their key (an integer
written 20.0, a split named after the data folder's own files, a rule no variant can take)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import TINY_CONFIG, snakemake
from test_bad_input import CONFIGS, cli_error, one_line

LAUGHS = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)  # 9 levels of 9 aliases: 9^9 = 387 M leaves


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("data:\n  name: first\ndetector:\n  top_k: 5\ndata:\n  name: second\n", "key 'data' appears twice in one mapping (lines 1 and 5)"),
        ("shards:\n  num_chunks: 2\n  num_chunks: 3\n", "key 'num_chunks' appears twice"),
        (LAUGHS, "values with its YAML aliases (at most 100000)"),
    ],
    ids=["repeated section", "repeated key", "billion laughs"],
)
def test_a_config_file_that_repeats_a_key_or_explodes_is_refused_by_both_paths(tmp_path: Path, text: str, words: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    started = time.perf_counter()
    message = one_line(cli_error("config", CONFIGS[0], config))
    assert str(config) in message and words in message
    run = snakemake(tmp_path, "eval_coco", "-n", "--cores", "1", "--configfile", str(TINY_CONFIG), str(config), timeout=120)
    assert run.returncode != 0 and words in run.stdout + run.stderr and str(config) in run.stdout + run.stderr
    assert time.perf_counter() - started < 60  # refused before anything walks the expanded document
    assert not (tmp_path / "artifacts").exists()


def test_yaml_merge_keys_are_not_repeated_keys(tmp_path: Path) -> None:
    config = tmp_path / "merge.yaml"
    config.write_text("detector: &d {top_k: 30, batch_size: 2}\ntrain_baseline:\n  <<: {iterations: 5, batch_size: 3}\n  batch_size: 1\n")
    from pipeline.config import read_config_file

    assert read_config_file(config) == {"detector": {"top_k": 30, "batch_size": 2}, "train_baseline": {"iterations": 5, "batch_size": 1}}


def test_a_repeated_configfile_flag_is_refused(tmp_path: Path) -> None:
    """Snakemake keeps the last `--configfile` list only: the tiny config would silently be dropped."""
    other = tmp_path / "other.yaml"
    other.write_text("merge:\n  nms_iou: 0.6\n")
    run = snakemake(tmp_path, "eval_coco", "-n", "--cores", "1", "--configfile", str(TINY_CONFIG), "--configfile", str(other), timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "--configfile given 2 times" in out and "--configfile config/tiny.yaml my.yaml" in out
    together = snakemake(tmp_path, "eval_coco", "-n", "--cores", "1", "--configfile", str(TINY_CONFIG), str(other), timeout=120)
    assert together.returncode == 0, together.stdout + together.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("detector:\n  top_k: 20.0\n", "key 'detector.top_k': 20.0 is not of type 'integer'"),
        ("shards:\n  num_chunks: 2.0\n", "key 'shards.num_chunks': 2.0 is not of type 'integer'"),
        ("mtgan:\n  variants: [sbu]\ninfer:\n  rules: [by_size]\n", "key 'infer.rules': rule 'by_size' applies to none of mtgan.variants ['sbu']"),
        (
            "data:\n  source: coco\n  train_split: index\n  test_split: stats\n  coco:\n    splits:\n"
            "      index: {annotations: a.json, images: i}\n      stats: {annotations: b.json, images: j}\n",
            "split name(s) ['index', 'stats'] are the data folder's own files",
        ),
    ],
    ids=["float top_k", "float num_chunks", "a rule no variant takes", "splits named index and stats"],
)
def test_settings_that_would_fail_far_from_their_key_are_named(tmp_path: Path, text: str, words: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert words in cli_error("config", CONFIGS[0], config)
    run = snakemake(tmp_path, "eval_coco", "-n", "--cores", "1", "--configfile", str(config), timeout=120)
    assert run.returncode != 0 and words in run.stdout + run.stderr
