"""What each rule's job asks of a machine (Snakemake `resources`: `mem_mb`, `runtime` in minutes),
from the sizes of its inputs and the per-item costs that bench/scale.py measured.

A job's need is a fixed part (the process's imports, a model, its buffers) plus a part per item of
its input (an image, a detection, a ROI, a training pair), the costs of `pipeline/resource_costs.yaml`
(written by `python bench/scale.py --write-costs`: where and when they were measured, and which
are estimates), with margins: memory x `margins.memory`, time x `margins.time` and at least
`margins.min_minutes`. Items are counted cheaply from the inputs' own metadata: a Parquet footer,
a manifest, the data index, a plan's counts, a file's size. Where an input does not exist yet (a
dry run before the stage that makes it), from what the config and the data index say it will hold;
where nothing says, the fallback of the profile or Snakemake's default applies (no number is
invented).

On one machine, the Snakefile makes the machine's available memory the run's `mem_mb` budget
(`machine_memory_mb`, unless `--resources mem_mb=...` sets another), so `--cores N` never starts
jobs whose needs add up to more than it has; the Slurm executor asks sbatch for each job's own.
The GPU stages' time on a GPU was not measured here (no GPU): it is estimated from the FLOPs of
their models, marked as such in the costs file.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import yaml

COSTS_FILE = "resource_costs.yaml"


@functools.cache
def costs() -> dict[str, Any]:
    """The measured costs (pipeline/resource_costs.yaml)."""
    return yaml.safe_load(package_files.files("pipeline").joinpath(COSTS_FILE).read_text())


def _exists(path: Any) -> bool:
    return bool(path) and os.path.exists(str(path))


def _footer_rows(path: Any) -> int | None:
    """A Parquet file's rows, from its footer; None if it does not exist (yet)."""
    if not _exists(path):
        return None
    from core.io.tables import num_rows

    return num_rows(Path(str(path)))


def _index_images(index: Any, split: str) -> int | None:
    """The images of a split, from the data stage's index; None before the data stage."""
    if not _exists(index):
        return None
    with open(str(index), encoding="utf-8") as f:
        return int(json.load(f)["splits"][split]["num_images"])


def _plan_metadata(plan: Any) -> dict[str, Any] | None:
    """A shards plan's metadata (its per-chunk ROI counts), from its footer; None before it exists."""
    if not _exists(plan):
        return None
    from core.io.tables import file_metadata

    return file_metadata(Path(str(plan)))


class Items:
    """How many items each rule's job works on, from its inputs or, before they exist, from the
    config and the data index (None: not known yet)."""

    def __init__(self, config: dict[str, Any], role_split: dict[str, str]) -> None:
        self.config, self.role_split = config, role_split

    def split_of(self, wildcards: Any) -> str:
        if "split" in wildcards.keys():
            return wildcards.split
        if "role" in wildcards.keys():
            return self.role_split[wildcards.role]
        return self.config["data"]["test_split"]

    def images(self, input: Any, wildcards: Any) -> int | None:
        index = input.get("index") if hasattr(input, "get") else None
        # a job without the index among its inputs reads the run's own (the data stage's output)
        found = _index_images(index or f"artifacts/{self.config['data']['name']}/data/index.json", self.split_of(wildcards))
        if found is None and self.config["data"]["source"] == "builtin":
            found = self.config["data"]["builtin"]["num_images"].get(self.split_of(wildcards))
        return found

    def detections(self, input: Any, wildcards: Any, table: Any) -> int | None:
        rows = _footer_rows(table)
        if rows is not None:
            return rows
        images = self.images(input, wildcards)
        return None if images is None else images * self.config["detector"]["top_k"]

    def count(self, rule: str, input: Any, wildcards: Any) -> int | None:
        """The items of `rule`'s job (what resource_costs.yaml's `item` of the rule names)."""
        get = input.get if hasattr(input, "get") else (lambda key, default=None: default)
        if rule == "data":
            if self.config["data"]["source"] == "builtin":
                return sum(self.config["data"]["builtin"]["num_images"].values())
            return sum(os.path.getsize(str(f)) for f in input if _exists(f)) // 2**20 or None
        if rule in ("train_baseline",):
            return self.config["train_baseline"]["iterations"]
        if rule == "detect":
            if self.config["detector"]["source"] == "import":
                files = [f for f in get("imported", []) or [] if _exists(f) and os.path.isfile(str(f))]
                return sum(os.path.getsize(str(f)) for f in files) // 100 or None  # about 100 bytes a record
            return self.images(input, wildcards)
        if rule in ("detect_results", "rois"):
            return self.detections(input, wildcards, get("table") or get("detections"))
        if rule == "shards_plan":
            return _footer_rows(get("rois")) or self.detections(input, wildcards, None)
        if rule == "shards":
            plan = _plan_metadata(get("plan"))
            if plan is not None:
                return int(plan["chunk_rois"][int(wildcards.chunk)])
            rois = self.detections(input, wildcards, get("rois"))
            return None if rois is None else rois // self.config["shards"]["num_chunks"]
        if rule == "shards_manifest":
            plan = _plan_metadata(get("plan"))
            return int(plan["num_rois"]) if plan is not None else self.detections(input, wildcards, None)
        if rule in ("train_mtgan",):
            from jobs.mtgan.settings import resolve_preset

            preset = resolve_preset(self.config["mtgan"]["preset"], self.config["mtgan"]["overrides"])
            return (preset.pretrain_iterations + preset.iterations) * preset.batch_size if preset.epochs is None else None
        if rule in ("infer", "infer_submit"):
            manifest = get("manifest")
            if _exists(manifest):
                with open(str(manifest), encoding="utf-8") as f:
                    return int(json.load(f)["num_rois"])
            return self.detections(input, wildcards, None)
        if rule in ("merge", "submission"):
            return self.detections(input, wildcards, get("rois"))
        if rule in ("score", "submission_baseline"):
            results = get("results") or get("detections")
            return os.path.getsize(str(results)) // 100 if _exists(results) else self.detections(input, wildcards, None)
        return 0  # the small rules: tables, figures, the report


def _device(config: dict[str, Any], rule: str) -> str:
    """`gpu` where the rule's job runs on a GPU when there is one (its config's device not cpu), else `cpu`."""
    section = {"train_baseline": "detector", "detect": "detector", "train_mtgan": "mtgan", "infer": "infer", "infer_submit": "infer"}.get(rule)
    if section is None or config[section]["device"] == "cpu" or (rule == "detect" and config["detector"]["source"] == "import"):
        return "cpu"
    return "gpu"


def cost_entry(config: dict[str, Any], rule: str) -> str:
    """The entry of resource_costs.yaml that prices `rule`'s job: the built-in dataset's generation
    and an imported detections file have their own (their items are images and records)."""
    if rule == "data" and config["data"]["source"] == "builtin":
        return "data_builtin"
    if rule == "detect" and config["detector"]["source"] == "import":
        return "detect_import"
    return rule


def need(config: dict[str, Any], role_split: dict[str, str], rule: str, what: str) -> Callable[..., int | str]:
    """A rule's `mem_mb` or `runtime` (`what`) as Snakemake calls it: (wildcards, input, attempt).
    Attempt n (a job the cluster killed, `retries`) asks for n times as much."""
    items = Items(config, role_split)

    def compute(wildcards: Any, input: Any, attempt: int = 1) -> int | str:
        entry = costs()["rules"].get(cost_entry(config, rule))
        fallback = costs()["fallback"][what]
        if entry is None:
            return fallback
        cost = entry.get(_device(config, rule), entry.get("cpu"))
        n = items.count(rule, input, wildcards)
        if n is None or cost is None:
            return fallback
        margins = costs()["margins"]
        if what == "mem_mb":
            value = margins["memory"] * (cost["mem_mb"] + cost["mem_mb_per_item"] * n)
        else:
            value = max(margins["min_minutes"], margins["time"] * (cost["seconds"] + cost["seconds_per_item"] * n) / 60)
        return int(round(value)) * attempt

    compute.__name__ = f"{rule}_{what}"
    return compute


GPU_RULES = ("train_baseline", "detect", "train_mtgan", "infer", "infer_submit")


def job_resources(config: dict[str, Any], role_split: dict[str, str], rule: str) -> dict[str, Any]:
    """A rule's `resources`: `mem_mb` and `runtime` from its inputs, and `gpu: 1` where its job
    runs a model on a GPU when there is one (`--resources gpu=N` limits them on one machine;
    the Slurm executor asks for it)."""
    found: dict[str, Any] = {"mem_mb": need(config, role_split, rule, "mem_mb"), "runtime": need(config, role_split, rule, "runtime")}
    if rule in GPU_RULES:
        found["gpu"] = int(_device(config, rule) == "gpu")
    return found


def machine_memory_mb() -> int:
    """The memory this machine can give a run: what /proc/meminfo calls available, and no more than
    a cgroup's limit on this process."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) // 1024
    except OSError:
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:
            available = min(available or 2**62, int(value) // 2**20)
    return available or 8000


def register_machine_memory(workflow: Any) -> int | None:
    """On one machine (no cluster executor), make its available memory the run's `mem_mb` budget
    unless the command line set one (`--resources mem_mb=...`): jobs then start only while their
    needs fit. Returns the budget set (None: left as it was)."""
    resources = workflow.global_resources
    if resources["_nodes"].value is not None:  # a cluster executor: each job asks its own node
        return None
    for key in ("mem_mb", "mem_mib", "mem"):
        found = resources.get(key)
        if found is not None and getattr(found, "value", None) is not None:
            return None
    budget = machine_memory_mb()
    workflow.register_resource("mem_mb", budget)
    return budget
