# Shared by every rule file: the validated config, artifact paths, and how rules call the CLI.

import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pipeline.config import check_command_line, dev_split, read_config_file, validate_config
from pipeline.resources import job_resources, register_machine_memory
from pipeline.data.widerface.ground_truth import ground_truth_files as widerface_ground_truth_files
from pipeline.workflow import (
    ERROR_AREAS,
    SIZE_RANGES,
    baseline_model_input,
    braces_doubled,
    check_detector_files,
    data_input_files,
    data_splits,
    detect_inputs,
    error_methods,
    eval_benchmarks,
    inactive_data_sources,
    infer_sections,
    inference_files,
    inference_input,
    merge_outputs,
    merged_method_pattern,
    method_pattern,
    pool_threads,
    methods,
    out_args,
    out_ensemble_arg,
    report_method,
    report_rois_args,
    report_variant,
    run_deliverables,
    score_results_input,
    refuse_foreign_entries,
    remove_stale_locks,
    sections_json,
    shard_sections,
    submission_files,
)

# Fail before any job runs if a key is unknown, mistyped or inconsistent (the error names it), if
# a config file repeats a key or expands its YAML aliases beyond bounds (Snakemake's own loader
# keeps the last of a repeated key and expands every alias), or if --configfile was given twice
# (Snakemake would keep the last flag's files only).
check_command_line(sys.argv)
for _path in [os.path.join(workflow.basedir, "config", "default.yaml"), *workflow.overwrite_configfiles]:
    read_config_file(_path)
_resolved = validate_config(config)
config.clear()
config.update(_resolved)
check_detector_files(config)

# A run killed with kill -9 leaves Snakemake's locks behind, and the same command would then stop
# on them: removed here, before Snakemake locks, when no other Snakemake process on this machine
# works in this folder. Files a killed job left incomplete are rerun (profiles/default/config.yaml:
# rerun-incomplete, the workflow's own profile, which Snakemake reads by itself).
_stale = remove_stale_locks(Path(os.getcwd()), workflow.is_main_process)
if _stale:
    print(f"Removed the locks of an interrupted run in {os.getcwd()} (no Snakemake process works there): {', '.join(_stale)}", file=sys.stderr)

DATASET = config["data"]["name"]
ROOT = f"artifacts/{DATASET}"
# The jobs' conda environment (`--use-conda`), as an absolute path whose braces are doubled:
# Snakemake formats the path with a job's wildcards, and a checkout's folder may hold `{x}`.
CONDA_ENV = braces_doubled(os.path.join(workflow.basedir, "envs", "mtgan.yaml"))
LOGS = f"{ROOT}/logs"
BENCHMARKS = f"{ROOT}/benchmarks"
TRAIN_SPLIT = config["data"]["train_split"]
TEST_SPLIT = config["data"]["test_split"]
# ROIs and shards are made per role: the training role adds ground truth and samples, the test
# role keeps the detections as they are, and so does the dev role (the development split, where
# bench/dev_sweep.py makes its choices). One split may serve train and test (a small dataset).
ROLE_SPLIT = {"train": TRAIN_SPLIT, "test": TEST_SPLIT}
if dev_split(config["data"]):
    ROLE_SPLIT["dev"] = dev_split(config["data"])
# The submit role: an unlabelled split (data.submit_split) detected and re-scored for upload.
SUBMIT_SPLIT = config["data"]["submit_split"]
if SUBMIT_SPLIT:
    ROLE_SPLIT["submit"] = SUBMIT_SPLIT


wildcard_constraints:
    split="|".join(data_splits(config["data"])),
    chunk=r"\d+",
    role="|".join(ROLE_SPLIT),
    variant="|".join(config["mtgan"]["variants"]),
    rule="|".join(config["infer"]["rules"]),
    method=method_pattern(config),

# Torch jobs (training, detection, inference) claim every core Snakemake was given, so they run
# one at a time: two PyTorch processes sharing a few cores slow each other down several times
# over (their OpenMP threads spin). With scheduling.torch_threads: n they claim n cores and run n
# threads each, up to cores/n at once (the tiny preset's jobs, too small to keep two cores busy).
# Snakemake sets OMP_NUM_THREADS to a job's `{threads}`, and the torch commands also get it as
# --threads, capped at the machine's CPUs by the CLI. The process-pool jobs (data, shards: 2
# workers) claim as many cores as they use, or every core when --cores exceeds the machine's CPUs
# (the README's --cores 8 on a 2-core laptop), so that jobs running at once never keep more CPUs
# busy than the machine has.
try:
    CORES = workflow.cores
except WorkflowError:  # no --cores: a run that executes nothing (--report, --lint)
    CORES = 1
TORCH_THREADS = min(CORES, config["scheduling"]["torch_threads"] or CORES)
POOL_THREADS = pool_threads(2, CORES)

# Each rule declares what its job needs (`resources`: mem_mb and runtime from its inputs' sizes,
# pipeline/resources.py). On one machine the run's memory budget is what the machine has
# available, unless --resources mem_mb=... says otherwise: jobs start only while their needs fit.
register_machine_memory(workflow)


# Rules call `mtgan`, run from this checkout, so they work in a virtualenv where the project is
# pip-installed and in the conda environment of envs/mtgan.yaml (`--use-conda`) alike. The prefix
# is formatted like a rule's shell command, so its literal braces are doubled once more, and so are
# those of the checkout's path (a folder named `{x}` is text, not a placeholder).
shell.executable("bash")
shell.prefix(
    "set -euo pipefail; "
    f"export PYTHONPATH={braces_doubled(shlex.quote(workflow.basedir))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    'mtgan() {{ python -m pipeline.cli "$@"; }}; '
)
