"""The Snakemake workflow: lint, DAG, a real tiny run in a temporary folder, caching, atomic writes."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from core.io.atomic import OUTPUT_MARKER, atomic_dir, write_json
from core.io.tables import read_table
from pipeline import resources

from conftest import REPO, snakemake

SLURM_PROFILE = REPO / "profiles" / "slurm"


def _profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def jobs_of(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> number of jobs."""
    block = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {line.split()[0]: int(line.split()[1]) for line in block.splitlines()[3:] if line.strip()}


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


TORCH_RULES = ("train_baseline", "detect", "train_mtgan", "infer", "report_rois")


@pytest.mark.parametrize(("configs", "torch_threads"), [([], 2), (["config/tiny.yaml"], 1)])
def test_torch_jobs_claim_the_threads_they_run(tmp_path: Path, configs: list[str], torch_threads: int) -> None:
    """scheduling.torch_threads: null (default.yaml) gives a torch job every core of --cores, so they
    run one at a time; the tiny preset's 1 lets two run at once on 2 cores. The pool jobs (data,
    shards) claim their 2 workers either way."""
    extra = ["--configfile", *(str(REPO / c) for c in configs)] if configs else []
    result = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    blocks = [block for block in result.stdout.split("\nrule ")[1:]]
    threads: dict[str, set[int]] = {}
    for block in blocks:
        claimed = re.search(r"^    threads: (\d+)$", block, re.MULTILINE)  # Snakemake leaves out threads: 1
        threads.setdefault(block.split(":")[0], set()).add(int(claimed.group(1)) if claimed else 1)
    assert {rule: threads[rule] for rule in TORCH_RULES} == {rule: {torch_threads} for rule in TORCH_RULES}
    assert threads["data"] == threads["shards"] == {2}
    assert threads["merge"] == threads["score"] == {1}


def test_tiny_pipeline_runs_then_caches(tiny_run: Path, tmp_path: Path) -> None:
    tiny = str(REPO / "config" / "tiny.yaml")
    shutil.copytree(tiny_run, tmp_path, dirs_exist_ok=True)  # a copy: this test writes into its folder
    data = tmp_path / "artifacts" / "tiny" / "data"
    index = json.loads((data / "index.json").read_text())
    assert set(index["splits"]) == {"train", "dev", "val", "test"} and index["splits"]["test"]["labelled"] is False
    assert len(list((data / "images" / "train").glob("*.jpg"))) == 24
    assert (tmp_path / "artifacts" / "tiny" / "logs" / "data.log").read_text().count("builtin train") >= 1
    assert (tmp_path / "artifacts" / "tiny" / "benchmarks" / "data.tsv").is_file()
    root = tmp_path / "artifacts" / "tiny"
    assert (root / "baseline" / "model.pt").is_file() and (root / "baseline" / "metrics.jsonl").is_file()
    rois = read_table(root / "rois" / "train.parquet", "rois.schema.yaml").to_pydict()
    assert "gt" in rois["origin"] and "detector" in rois["origin"]  # ground truth added on the training split
    assert set(read_table(root / "rois" / "test.parquet", "rois.schema.yaml").column("origin").to_pylist()) == {"detector"}
    baseline = json.loads((root / "score" / "baseline.json").read_text())
    assert baseline["method"] == "baseline" and baseline["metrics"]["images"] == 12
    COCO(str(data / "val.json")).loadRes(str(root / "detect" / "val_results.json"))
    with open(root / "eval" / "metrics.csv") as f:
        methods = [row["method"] for row in csv.DictReader(f)]
    # the paper's experiment on its path (Tables 3, 4, 6), then our by-size path beside it, each with
    # the matched control (sbu_hr: the bilinear up-sampler instead of G, D trained on HR crops too)
    paper = ["d_no_adv", "sbu", "sbu_hr", "mtgan"]
    by_size = ["sbu_hr-by_size", "mtgan-by_size"]
    assert methods == ["baseline", *paper, *(f"{m}_ensemble" for m in paper), *by_size, *(f"{m}_ensemble" for m in by_size)]
    table = (root / "eval" / "metrics.md").read_text()
    assert "| MTGAN x baseline: every ROI through G (paper's path) |" in table
    assert "| MTGAN: G for small crops, HR crop above (ours) |" in table
    with open(root / "eval" / "accuracy.csv") as f:  # Table 9 of each variant on its paths
        assert [(r["method"], r["rule"]) for r in csv.DictReader(f)] == [
            ("d_no_adv", "paper"),
            ("sbu", "paper"),
            ("sbu_hr", "paper"),
            ("mtgan", "paper"),
            ("sbu_hr-by_size", "by_size"),
            ("mtgan-by_size", "by_size"),
        ]
    for variant, rule, through in (("mtgan", "paper", "all"), ("sbu", "paper", "all"), ("d_no_adv", "paper", "none"), ("mtgan", "by_size", "some")):
        seen = read_table(root / "infer" / rule / f"{variant}.parquet", "inference.schema.yaml").column("through_g").to_pylist()
        assert {"all": all(seen), "none": not any(seen), "some": 0 < sum(seen) < len(seen)}[through], (variant, rule)
    assert (root / "eval" / "per_class_ap.csv").read_text().count("\n") == 1 + 7
    figures = [f"pr_{a}.png" for a in ("all", "small", "medium", "large")] + [
        "metrics_bars.png",
        "per_class_ap_change.png",
        "training_curves.png",
        "accuracy.png",
        "accuracy_by_side.png",
        "roi_grid.png",
        "detections/better.png",
        "detections/worse.png",
        *(f"errors/{m}_{a}.png" for m in ("baseline", "mtgan", "mtgan_ensemble") for a in ("all", "small")),
    ]
    for name in figures:
        with Image.open(root / "report" / name) as im:  # a real, decodable picture
            assert im.format == "PNG" and min(im.size) > 200, name
    assert (root / "report" / "detections" / "images.csv").read_text().count("\n") == 1 + 12
    assert (root / "report" / "errors" / "errors.md").read_text().count("| mtgan_ensemble |") == 2

    report = snakemake(tmp_path, "--report", "report.html", "eval_coco", "--configfile", tiny)
    assert report.returncode == 0, report.stdout + report.stderr
    html = (tmp_path / "report.html").read_text()
    assert len(html) > 100_000 and all(Path(name).name in html for name in figures)
    assert '<script src="http' not in html  # self-contained: opens offline

    second = snakemake(tmp_path, "eval_coco", "submit_coco", "--cores", "2", "--configfile", tiny)
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr

    forced = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", "--configfile", tiny, "--forcerun", "merge")
    reports = {"report_charts": 1, "report_errors": 1, "report_detections": 1, "profile": 1}  # the profile gathers the new benchmarks
    # one merge job per variant and rule writes the method alone and its ensemble
    assert jobs_of(forced.stdout) == {"merge": 6, "score": 12, "table": 1, "eval_coco": 1} | reports
    more = tmp_path / "more.yaml"
    more.write_text("mtgan:\n  variants: [mtgan, sbu, d_no_adv, sbu_hr, no_reg_branch]\n")
    added = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", "--configfile", tiny, str(more))
    assert jobs_of(added.stdout) == {
        "train_mtgan": 1,
        "infer": 2,
        "merge": 2,
        "score": 4,
        "table": 1,
        "eval_coco": 1,
        "report_charts": 1,
        "profile": 1,
    }  # a Table 5 ablation on the paper's path and by size

    # The test-time rules are an inference setting: changing them retrains nothing.
    rules = tmp_path / "rules.yaml"
    rules.write_text("infer:\n  rules: [paper, all_hr]\n")
    other_rule = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", "--configfile", tiny, str(rules))
    assert jobs_of(other_rule.stdout) == {"infer": 2, "merge": 2, "score": 4, "table": 1, "eval_coco": 1, "report_charts": 1, "profile": 1}
    threshold = tmp_path / "threshold.yaml"
    threshold.write_text("infer:\n  g_max_side: 24\n")
    moved = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", "--configfile", tiny, str(threshold))
    assert jobs_of(moved.stdout) == {"infer": 2, "merge": 2, "score": 4, "table": 1, "eval_coco": 1, "report_charts": 1, "profile": 1}

    # Fewer small positives in D's training (bench/regimes.py) remake the training shards only: the
    # test split's shards, the ROI tables, the detector and the data stay as they are.
    thinned = tmp_path / "thinned.yaml"
    thinned.write_text("shards:\n  train_small_positive_share: 0.25\n")
    fewer = snakemake(tmp_path, "eval_coco", "-n", "--cores", "2", "--configfile", tiny, str(thinned))
    retrained = {"train_mtgan": 4, "infer": 6, "merge": 6, "score": 12, "table": 1, "eval_coco": 1}
    pictures = {"report_charts": 1, "report_rois": 1, "report_errors": 1, "report_detections": 1, "profile": 1}
    assert jobs_of(fewer.stdout) == {"shards_plan": 1, "shards": 2, "shards_manifest": 1} | retrained | pictures
    shard_jobs = [block for block in fewer.stdout.split("\nrule ")[1:] if block.startswith(("shards_plan:", "shards:", "shards_manifest:"))]
    assert len(shard_jobs) == 4 and all("role=train" in block for block in shard_jobs)

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

    with atomic_dir(final) as tmp:
        (tmp / "old.txt").write_text("previous run")
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("this run")
    assert sorted(os.listdir(final)) == [OUTPUT_MARKER, "new.txt"] and os.listdir(tmp_path) == ["out"]


def test_slurm_profile_dry_run(tmp_path: Path) -> None:
    """The SLURM profile's DAG: GPU rules ask for a GPU, data rules for cores and memory, and the
    shards stage scatters per image chunk."""
    result = snakemake(tmp_path, "eval_coco", "-n", "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(REPO / "config" / "tiny.yaml"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert jobs_of(result.stdout)["shards"] == 4  # 2 splits x 2 chunks
    blocks = {block.split("\n")[0].strip(": "): block for block in out.split("rule ")[1:]}
    for rule in ("train_baseline", "detect", "train_mtgan", "infer"):
        assert "gpu=1" in blocks[rule] and "slurm_extra" not in blocks[rule], rule
    assert "cpus_per_task=8" in blocks["shards"] and "gres" not in blocks["shards"]


def test_every_rule_declares_its_own_resources_and_the_gpu_rules_are_the_profiles() -> None:
    """Every rule that runs a job asks for its own costs (`job_resources(..., "<its name>")`: memory,
    time and, for resources.GPU_RULES, a GPU), and the GPU rules all exist, which
    test_the_test_cluster_profile_overrides_every_rule_of_the_production_profile checks in both profiles."""
    blocks = [block for path in sorted((REPO / "pipeline" / "rules").glob("*.smk")) for block in path.read_text().split("\nrule ")[1:]]
    jobs = {block.split(":")[0]: block for block in blocks if "    shell:" in block or "    run:" in block}
    for name, block in jobs.items():
        declared = re.findall(r'job_resources\(config, ROLE_SPLIT, "(\w+)"\)', block)
        assert declared == [name], f"rule {name}: resources {declared}"
    assert set(resources.GPU_RULES) <= set(jobs)


def test_the_test_cluster_profile_overrides_every_rule_of_the_production_profile() -> None:
    """A later --profile replaces a key whole: the test-cluster profile must name every rule that
    profiles/slurm names, or that rule would silently lose its settings there."""
    production, test = _profile(SLURM_PROFILE), _profile(SLURM_PROFILE / "test-cluster")
    assert set(production["set-threads"]) <= set(test["set-threads"])
    assert set(production["set-resources"]) <= set(test["set-resources"])
    assert set(production["default-resources"]) <= set(test["default-resources"])
    for rule in resources.GPU_RULES:
        assert production["set-resources"][rule]["gpu"] >= 1 and test["set-resources"][rule]["gpu"] == 0, rule
    for rule, threads in test["set-threads"].items():
        assert test["set-resources"][rule]["cpus_per_task"] == threads, rule  # --cpus-per-task = threads
