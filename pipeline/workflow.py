"""Helpers for the Snakefile's rule files: turning the validated config into rule inputs and params.

Kept in the package (not in the .smk files) so the rules stay declarative and this code is testable.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from core.errors import InputError, OutputFolderError
from core.io.atomic import foreign_entries
from core.sizes import ERROR_AREAS, SIZE_RANGES
from jobs.mtgan.settings import PAPER_RULE, RULES
from pipeline.config import data_splits
from pipeline.data.sources import DATA_SOURCES
from pipeline.methods import ENSEMBLE, all_methods, inferences_of, method_name, parse_method

__all__ = [
    "ERROR_AREAS",
    "SIZE_RANGES",
    "baseline_model_input",
    "braces_doubled",
    "check_detector_files",
    "data_input_files",
    "data_splits",
    "detect_inputs",
    "error_methods",
    "eval_benchmarks",
    "inactive_data_sources",
    "infer_sections",
    "inference_files",
    "inference_input",
    "inferences",
    "merge_outputs",
    "merged_method_pattern",
    "method_pattern",
    "pool_threads",
    "methods",
    "out_args",
    "out_ensemble_arg",
    "refuse_foreign_entries",
    "report_method",
    "report_rois_args",
    "report_variant",
    "run_deliverables",
    "score_results_input",
    "sections_json",
    "shard_sections",
    "submission_files",
]


def methods(config: dict[str, Any]) -> list[str]:
    """Every method the table scores, in the table's order (pipeline/methods.py): the baseline,
    each variant under each test-time rule that applies to it, and their ensembles."""
    return all_methods(config["mtgan"]["variants"], config["infer"]["rules"], config["merge"]["ensemble"])


def merged_methods(config: dict[str, Any]) -> list[str]:
    """The methods the merge stage makes one job each for: each variant under each rule that applies
    (its ensemble with the baseline comes from the same job)."""
    return [method_name(variant, rule) for variant, rule in inferences(config)]


def merged_method_pattern(config: dict[str, Any]) -> str:
    """The merge jobs' `alone` wildcard's constraint: exactly `merged_methods`."""
    return "|".join(re.escape(m) for m in merged_methods(config))


def merge_outputs(stem: str, suffix: str, config: dict[str, Any]) -> dict[str, str]:
    """A merge job's named outputs: `results` (`<stem><suffix>`, the method alone) and, with
    merge.ensemble, `ensemble` (`<stem>_ensemble<suffix>`)."""
    return {"results": stem + suffix} | ({"ensemble": f"{stem}{ENSEMBLE}{suffix}"} if config["merge"]["ensemble"] else {})


def out_ensemble_arg(output: Any) -> str:
    """A merge job's `--out-ensemble PATH`, when `merge_outputs` gave it one."""
    return f"--out-ensemble {shlex.quote(output.ensemble)}" if "ensemble" in output.keys() else ""


def inferences(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The (variant, rule) pairs the infer stage runs: one job each, in the table's order."""
    return inferences_of(config["mtgan"]["variants"], config["infer"]["rules"])


def inference_files(infer_dir: str, config: dict[str, Any], suffix: str = ".parquet") -> list[str]:
    """Every inference's output file in `infer_dir` (`_accuracy.json`: its Table 9 accuracies)."""
    return [f"{infer_dir}/{rule}/{variant}{suffix}" for variant, rule in inferences(config)]


def infer_sections(config: dict[str, Any], rule: str) -> str:
    """The `infer` section as one rule's job sees it: without the list of rules (adding a rule
    reruns no other rule's jobs) and, but for a rule that reads it, without `g_max_side`."""
    return sections_json(config, "infer", drop=("rules",) if RULES[rule].reads_g_max_side else ("rules", "g_max_side"))


def report_variant(config: dict[str, Any]) -> str:
    """The variant the report's pictures are about: MTGAN itself when trained, else the first."""
    variants = config["mtgan"]["variants"]
    return "mtgan" if "mtgan" in variants else variants[0]


def report_method(config: dict[str, Any]) -> str:
    """The method the report's pictures are about: the report's variant on the paper's path (on
    the first configured rule when the paper's path is not among them)."""
    variant, rules = report_variant(config), config["infer"]["rules"]
    return method_name(variant, PAPER_RULE if PAPER_RULE in rules else rules[0])


def report_rois_args(config: dict[str, Any]) -> str:
    """The ROI grid's `--rule` (the report method's) and, for a rule that reads it, `--g-max-side`."""
    rule = parse_method(report_method(config)).rule
    return f"--rule {rule}" + (f" --g-max-side {config['infer']['g_max_side']}" if RULES[rule].reads_g_max_side else "")


def error_methods(config: dict[str, Any]) -> list[str]:
    """The methods of the error analysis: the baseline, the report's method and its ensemble."""
    method = report_method(config)
    return [m for m in ("baseline", method, f"{method}_ensemble") if m in methods(config)]


def out_args(output: Any) -> str:
    """A rule's named outputs as the commands' `--out NAME=PATH` arguments."""
    return " ".join(f"--out {shlex.quote(f'{name}={path}')}" for name, path in output.items())


def sections_json(config: dict[str, Any], *names: str, drop: tuple[str, ...] = ()) -> str:
    """The named config sections as one shell-quoted JSON argument: a changed value reruns the rule,
    a change elsewhere in the config (or in a key named in `drop`) does not."""
    sections = {name: {k: v for k, v in config[name].items() if k not in drop} for name in names}
    return shlex.quote(json.dumps(sections, sort_keys=True))


def refuse_foreign_entries(root: str) -> None:
    """Before any job runs (the Snakefile's `onstart`): stop, naming them, when the artifacts hold
    files a rerun could delete that the pipeline did not write (`core.io.atomic.foreign_entries`).
    Snakemake removes a job's declared outputs before the job starts, before the stage's own check."""
    found = foreign_entries(Path(root)) if os.path.isdir(root) else []
    if found:
        raise OutputFolderError(f"nothing was run or changed: {'; '.join(found[:5])}{' ...' if len(found) > 5 else ''}; move them away first")


TRAINING_ONLY_SHARD_KEYS = ("train_sampling", "train_small_positive_share", "train_small_negative_share")


def snakemake_processes_in(folder: Path, own: int) -> list[int]:
    """The Snakemake processes on this machine, other than `own` and its ancestors, whose working
    folder is `folder` (read from /proc; none where there is no /proc)."""
    mine, pid = {own}, own
    while pid > 1:  # own's ancestors: a wrapper that started this Snakemake is not another run
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        mine.add(pid)
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) in mine or b"snakemake" not in (entry / "cmdline").read_bytes():
                continue
            if Path(os.readlink(entry / "cwd")) == folder.resolve():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def remove_stale_locks(folder: Path, main_process: bool) -> list[str]:
    """Snakemake's locks in `folder` left by a run that was killed (kill -9, a lost terminal): removed
    when this is a main Snakemake process (not a cluster job's, not a dry run) and no other
    Snakemake process on this machine works in `folder`; their names (none: nothing removed).
    A run on another machine over a shared folder is not seen: run one at a time there."""
    locks = folder / ".snakemake" / "locks"
    found = sorted(locks.glob("*.lock")) if main_process and locks.is_dir() else []
    if not found or snakemake_processes_in(folder, os.getpid()):
        return []
    for lock in found:
        lock.unlink(missing_ok=True)
    return [lock.name for lock in found]


def shard_sections(config: dict[str, Any], role: str) -> str:
    """The `shards` section as one role's jobs see it: the training split's sampling and its share
    of small positives only for the training role (changing them reruns no other role's shards)."""
    return sections_json(config, "shards", drop=() if role == "train" else TRAINING_ONLY_SHARD_KEYS)


def inactive_data_sources(config: dict[str, Any]) -> tuple[str, ...]:
    """The `data` sub-sections of the sources not in use: a change there reruns nothing."""
    return tuple(s for s in DATA_SOURCES if s != config["data"]["source"])


def baseline_model_input(config: dict[str, Any], root: str) -> list[str]:
    """The trained detector, when the baseline is trained here."""
    return [f"{root}/baseline/model.pt"] if config["detector"]["source"] == "train" else []


def detector_files(config: dict[str, Any]) -> dict[str, str]:
    """The files the detect stage reads, by config key: each split's imported detections, or a
    detector's local weights."""
    detector = config["detector"]
    if detector["source"] == "import":
        return {f"detector.import_results.{split}": path for split, path in detector["import_results"].items()}
    if detector["source"] == "torchvision" and detector["weights"] not in ("none", "torchvision"):
        return {"detector.weights": detector["weights"]}
    return {}


def check_detector_files(config: dict[str, Any]) -> None:
    """A missing file of `detector_files` is an error naming its key, before anything runs:
    Snakemake would otherwise leave out the detect job whose input is missing, keep the detections
    of the detector before, exit 0 and score them."""
    missing = [f"key '{key}': {path} does not exist" for key, path in detector_files(config).items() if not os.path.exists(path)]
    if missing:
        raise InputError("; ".join(missing))


def detect_inputs(config: dict[str, Any], split: str) -> list[str]:
    """The detect job's files of `detector_files` for `split`: a changed file reruns detection."""
    files = detector_files(config)
    return [path for key, path in files.items() if key in (f"detector.import_results.{split}", "detector.weights")]


def data_input_files(config: dict[str, Any]) -> list[str]:
    """The files a dataset on disk is read from, so that a changed file reruns the data stage."""
    return DATA_SOURCES[config["data"]["source"]].input_files(config["data"])


def inference_input(infer_dir: str, method: str) -> list[str]:
    """A method's per-ROI predictions in `infer_dir` (the test split's `<root>/infer`, the submit
    split's `<root>/submit/infer`); none for the baseline, which keeps its own scores."""
    m = parse_method(method)
    return [] if m.variant is None else [f"{infer_dir}/{m.rule}/{m.variant}.parquet"]


def method_pattern(config: dict[str, Any]) -> str:
    """The `method` wildcard's constraint: exactly the configured methods."""
    return "|".join(re.escape(m) for m in methods(config))


def pool_threads(workers: int, cores: int) -> int:
    """Snakemake cores for a job with `workers` worker processes when Snakemake was given `cores`:
    its workers, or every core when `cores` exceeds this machine's CPUs (then the job runs alone
    and its --jobs is capped at the CPUs), so jobs running at once never oversubscribe the machine."""
    return cores if cores > (os.cpu_count() or 1) else min(workers, cores)


def eval_benchmarks(config: dict[str, Any], benchmarks: str) -> dict[str, str]:
    """Every eval_coco job's Snakemake benchmark file, by job (`<stage>:<wildcards>`): what the run
    profile gathers."""
    data = config["data"]
    roles = {"train": data["train_split"], "test": data["test_split"]}
    jobs = {"data": "data"} | ({"train_baseline": "train_baseline"} if config["detector"]["source"] == "train" else {})
    jobs |= {f"detect:{split}": f"detect_{split}" for split in dict.fromkeys(roles.values())}
    jobs |= {f"detect_results:{data['test_split']}": f"detect_results_{data['test_split']}"}
    jobs |= {f"rois:{role}": f"rois_{role}" for role in roles}
    jobs |= {f"shards_plan:{role}": f"shards_plan_{role}" for role in roles}
    jobs |= {f"shards:{role}/{c}": f"shards_{role}_{c}" for role in roles for c in range(config["shards"]["num_chunks"])}
    jobs |= {f"shards_manifest:{role}": f"shards_manifest_{role}" for role in roles}
    jobs |= {f"train_mtgan:{v}": f"train_mtgan_{v}" for v in config["mtgan"]["variants"]}
    jobs |= {f"infer:{rule}/{v}": f"infer_{rule}_{v}" for v, rule in inferences(config)}
    jobs |= {f"merge:{m}": f"merge_{m}" for m in merged_methods(config)}
    jobs |= {f"score:{m}": f"score_{m}" for m in methods(config)}
    jobs |= {name: name for name in ("table", "report_charts", "report_errors", "report_rois", "report_detections")}
    return {job: f"{benchmarks}/{name}.tsv" for job, name in jobs.items()}


def submission_files(config: dict[str, Any], root: str) -> list[str]:
    """Every method's results file of the unlabelled split; a clear error where there is none."""
    split = config["data"]["submit_split"]
    if not split:
        raise InputError(
            "submit_coco needs data.submit_split: an unlabelled split (images without annotations), e.g. "
            "snakemake --cores 8 submit_coco --configfile config/coco.yaml config/coco-testdev.yaml"
        )
    return [f"{root}/submit/detections_{split}_{method}_results.json" for method in methods(config)]


def score_results_input(root: str, test_split: str, method: str) -> str:
    """The results a method is scored on: the baseline's are the detect stage's own."""
    return f"{root}/detect/{test_split}_results.json" if method == "baseline" else f"{root}/merge/{method}.json"


def run_deliverables(config: dict[str, Any], root: str, test_split: str) -> list[str]:
    """The files of a finished run that a user reads, named as inputs of the run's targets so that a
    missing one is rebuilt (and everything made from it), however the run before ended: each
    method's results and score, every inference table and its accuracies, each trained model.
    Snakemake rebuilds a missing file that no target names only when a job after it must run (how
    its temp files work): a merge killed after a forced rerun of training would otherwise leave
    the merge's results missing under a table that still stands."""
    score_files = [f"{root}/score/{m}{suffix}" for m in methods(config) for suffix in (".json", ".md", "_eval.npz")]
    results = [score_results_input(root, test_split, m) for m in methods(config)]
    models = [f"{root}/mtgan/{variant}/model.pt" for variant in config["mtgan"]["variants"]]
    inference = inference_files(f"{root}/infer", config) + inference_files(f"{root}/infer", config, "_accuracy.json")
    return [*baseline_model_input(config, root), *models, *inference, *results, *score_files]


def braces_doubled(text: str) -> str:
    """`text` as literal text in a string Snakemake formats (a rule's shell command, its conda
    environment's path): a checkout's folder may be named `{x}`."""
    return text.replace("{", "{{").replace("}", "}}")
