"""Each rule's resources (mem_mb, runtime, gpu) from the sizes of its inputs (pipeline/resources.py),
the machine's memory as a local run's budget, and what a dry run shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from snakemake.iocontainers import InputFiles, Wildcards

from core.io.tables import PLAN_SCHEMA, TableWriter
from pipeline import resources
from pipeline.config import load_config_files, validate_config

from conftest import REPO, TINY_CONFIG, snakemake

ROLES = {"train": "train", "test": "val"}


def _config(*overlays: dict[str, Any]) -> dict[str, Any]:
    config = load_config_files([REPO / "config" / "default.yaml"])
    for overlay in overlays:
        for section, values in overlay.items():
            config[section].update(values)
    return validate_config(config)


def _inputs(**named: Any) -> InputFiles:
    """A job's named input files as Snakemake gives them (a list value: a named list)."""
    files, places = [], {}
    for name, value in named.items():
        values = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        places[name] = (len(files), len(files) + len(values) if isinstance(value, list) else None)
        files += values
    found = InputFiles(files)
    for name, (start, end) in places.items():
        found._set_name(name, start, end)
    return found


def _wildcards(**values: str) -> Wildcards:
    found = Wildcards(list(values.values()))
    for i, name in enumerate(values):
        found._set_name(name, i)
    return found


def _expected(rule: str, device: str, items: int, what: str) -> int:
    entry = resources.costs()["rules"][rule]
    cost, margins = entry.get(device, entry.get("cpu")), resources.costs()["margins"]
    if what == "mem_mb":
        return int(round(margins["memory"] * (cost["mem_mb"] + cost["mem_mb_per_item"] * items)))
    return int(round(max(margins["min_minutes"], margins["time"] * (cost["seconds"] + cost["seconds_per_item"] * items) / 60)))


def test_a_job_asks_for_what_its_inputs_hold(tmp_path: Path) -> None:
    config = _config()
    rows = 300_000  # a table's rows, read from its footer
    pq.write_table(pa.table({"roi_id": pa.array(range(rows), pa.int64())}), tmp_path / "rows.parquet")
    need = resources.need(config, ROLES, "shards_plan", "mem_mb")
    found = need(_wildcards(role="test"), _inputs(index=tmp_path / "index.json", rois=tmp_path / "rows.parquet"))
    assert found == _expected("shards_plan", "cpu", rows, "mem_mb")
    # a shards chunk job: its own chunk's ROIs, from the plan's metadata
    with TableWriter(tmp_path / "plan.parquet", PLAN_SCHEMA, {"chunk_rois": [10, 250_000, 30], "num_rois": 250_040}):
        pass
    chunk = resources.need(config, ROLES, "shards", "runtime")
    assert chunk(_wildcards(role="train", chunk="1"), _inputs(plan=tmp_path / "plan.parquet")) == _expected("shards", "cpu", 250_000, "runtime")
    # a job the cluster killed asks for twice as much
    assert need(_wildcards(role="test"), _inputs(rois=tmp_path / "rows.parquet"), attempt=2) == 2 * _expected("shards_plan", "cpu", rows, "mem_mb")


def test_before_its_inputs_exist_a_job_asks_for_what_the_data_index_says_they_will_hold(tmp_path: Path) -> None:
    config = _config(
        {"data": {"name": "no-such-run", "source": "coco", "coco": {"splits": {"val": {"annotations": "a.json", "images": "i"}}}, "train_split": "val"}}
    )
    index = tmp_path / "index.json"
    rois = resources.need(config, ROLES, "rois", "mem_mb")
    missing = _inputs(index=index, detections=tmp_path / "detect" / "val.parquet")
    assert rois(_wildcards(role="test"), missing) == resources.costs()["fallback"]["mem_mb"]  # nothing says yet: the fallback
    index.write_text(json.dumps({"splits": {"val": {"num_images": 5000}}}))
    assert rois(_wildcards(role="test"), missing) == _expected("rois", "cpu", 5000 * config["detector"]["top_k"], "mem_mb")


def test_gpu_stages_ask_for_a_gpu_and_their_estimate_where_they_run_on_one() -> None:
    gpu = resources.job_resources(_config(), ROLES, "train_mtgan")
    cpu = resources.job_resources(_config({"mtgan": {"device": "cpu"}}), ROLES, "train_mtgan")
    assert gpu["gpu"] == 1 and cpu["gpu"] == 0 and "gpu" not in resources.job_resources(_config(), ROLES, "merge")
    assert resources.costs()["rules"]["train_mtgan"]["gpu"]["estimate"] is True  # no GPU was measured: said so
    pairs = (150 + 1500) * 32  # the cpu preset's iterations x batch
    assert cpu["runtime"](_wildcards(variant="mtgan"), _inputs()) == _expected("train_mtgan", "cpu", pairs, "runtime")
    imported = resources.job_resources(_config({"detector": {"source": "import", "import_results": {"train": "t.json", "val": "v.json"}}}), ROLES, "detect")
    assert imported["gpu"] == 0  # an import runs no model


def test_generated_data_and_imported_detections_are_priced_by_their_own_items(tmp_path: Path) -> None:
    builtin = _config()
    images = sum(builtin["data"]["builtin"]["num_images"].values())
    assert resources.need(builtin, ROLES, "data", "mem_mb")(_wildcards(), _inputs()) == _expected("data_builtin", "cpu", images, "mem_mb")
    imported = _config({"detector": {"source": "import", "import_results": {"train": "t.json", "val": "v.json"}}})
    results = tmp_path / "train_results.json"
    results.write_bytes(b" " * 50_000_000)  # about 500k records
    found = resources.need(imported, ROLES, "detect", "mem_mb")(_wildcards(split="train"), _inputs(imported=[results]))
    assert found == _expected("detect_import", "cpu", 500_000, "mem_mb") != _expected("detect", "cpu", 500_000, "mem_mb")


def test_a_local_run_budgets_the_machines_memory_unless_told_otherwise() -> None:
    class Resources(dict):
        def get(self, key: str, default: Any = None) -> Any:
            return super().get(key, SimpleNamespace(value=None))

    registered: dict[str, int] = {}

    def workflow(nodes: int | None, mem: int | None) -> SimpleNamespace:
        found = Resources(_nodes=SimpleNamespace(value=nodes), mem_mb=SimpleNamespace(value=mem))
        return SimpleNamespace(global_resources=found, register_resource=registered.__setitem__)

    budget = resources.register_machine_memory(workflow(None, None))
    assert budget == registered["mem_mb"] and 100 < budget <= resources.machine_memory_mb() + 1024
    registered.clear()
    assert resources.register_machine_memory(workflow(None, 4000)) is None and registered == {}  # --resources mem_mb=4000
    assert resources.register_machine_memory(workflow(100, None)) is None and registered == {}  # a cluster executor


def test_a_dry_run_shows_every_jobs_memory_and_time(tmp_path: Path) -> None:
    run = snakemake(tmp_path, "eval_coco", "submit_coco", "-n", "--cores", "2", "--configfile", str(TINY_CONFIG))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    targets = ("eval_coco:", "submit_coco:")  # the target rules run no job
    blocks = [b for b in run.stdout.split("\nrule ")[1:] if "jobid:" in b and not b.startswith(targets)]
    assert len(blocks) > 40
    for block in blocks:
        found = re.search(r"resources: (.*)", block)
        assert found and re.search(r"mem_mb=\d+", found.group(1)) and re.search(r"runtime=\d+", found.group(1)), block[:400]


@pytest.mark.parametrize("rule", sorted(resources.GPU_RULES))
def test_every_gpu_rule_has_a_cost_on_both_devices(rule: str) -> None:
    entry = resources.costs()["rules"][rule]
    assert {"cpu", "gpu"} <= set(entry) and all(entry[d]["mem_mb"] > 0 for d in ("cpu", "gpu"))
