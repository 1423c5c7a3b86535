"""The cluster path, run for real: the tiny pipeline through profiles/slurm on the one-node Slurm
cluster of tests/slurm/start.sh (real slurmctld, slurmd, slurmdbd and munge: every job submitted
with sbatch, run through srun inside it, followed with sacct, a train job killed with scancel),
and compared with a local run of the same config.

Marked `slurm` (deselect with -m 'not slow and not slurm'). When that cluster does not answer, the
tests start it (`bash tests/slurm/start.sh`) where they can: as root or with password-free sudo, with
Debian's packages reachable. Where they cannot, they are skipped with the reason, unless
MTGAN_REQUIRE_SLURM=1 (what .ci/run sets: CI runs as root, so a skip there is a failure).
The runs use profiles/slurm followed by profiles/slurm/test-cluster (the GPU-free test cluster's
account, partition, CPUs and memory; that file says what it changes and why)."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, TINY_RUN_SECONDS

pytestmark = pytest.mark.slurm

TINY = str(REPO / "config" / "tiny.yaml")
PRODUCTION = REPO / "profiles" / "slurm"
TEST_CLUSTER = PRODUCTION / "test-cluster"
PROFILES = ["--profile", str(PRODUCTION), "--profile", str(TEST_CLUSTER)]
CLUSTER = "mtgan-local"  # the ClusterName that tests/slurm/start.sh writes
ACCOUNT = "mtgan"  # its account (profiles/slurm/test-cluster submits under it; start.sh adds root and $SUDO_USER)
START = "bash tests/slurm/start.sh"


# --- the cluster ---------------------------------------------------------------------------------


def _cluster_problem() -> str | None:
    """Why the test cluster cannot be used here, or None when it answers."""
    for tool in ("sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "scontrol"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=False)
        if config.returncode != 0:
            return f"no Slurm controller answers ({config.stderr.strip() or config.stdout.strip()})"
        name = re.search(r"^ClusterName\s*=\s*(\S+)", config.stdout, re.MULTILINE)
        if not name or name.group(1) != CLUSTER:
            return f"the Slurm cluster here is {name.group(1) if name else '?'}, not the test cluster {CLUSTER}"
        nodes = subprocess.run(["sinfo", "-h", "-p", "cpu", "-o", "%a %T"], capture_output=True, text=True, timeout=30, check=False)
        if nodes.returncode != 0 or not re.search(r"^up (idle|mixed|allocated|completing)", nodes.stdout, re.MULTILINE):
            return f"partition `cpu` has no usable node ({(nodes.stdout + nodes.stderr).strip()})"
        accounting = subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True, timeout=30, check=False)
        if accounting.returncode != 0:
            return f"`sacct` does not answer ({accounting.stderr.strip()})"
        user = getpass.getuser()
        query = ["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}", f"account={ACCOUNT}", "format=user"]
        member = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        if user not in member.stdout.split():
            return f"user {user} may not submit to the test cluster's account {ACCOUNT} (tests/slurm/start.sh makes root and $SUDO_USER its users)"
    except subprocess.TimeoutExpired as err:
        return f"`{' '.join(err.cmd)}` did not answer within {err.timeout} s"
    return None


def _can_become_root() -> bool:
    """Root, or password-free sudo: what tests/slurm/start.sh needs."""
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return sudo is not None and subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=30, check=False).returncode == 0


def _start_cluster() -> str | None:
    """Start the test cluster with tests/slurm/start.sh; why it could not be, or None."""
    if not _can_become_root():
        return "starting it needs root or password-free sudo"
    try:
        started = subprocess.run(START.split(), cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired:
        return f"`{START}` did not finish within 30 minutes"
    if started.returncode != 0:
        return f"`{START}` failed: {(started.stdout + started.stderr).strip().splitlines()[-1:]}"
    return _cluster_problem()


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem:
        why_not = _start_cluster()  # None: started, and it answers
        problem = None if why_not is None else f"{problem}; {why_not}"
    if problem:
        message = f"no Slurm test cluster: {problem} (start one with `{START}`)"
        if os.environ.get("MTGAN_REQUIRE_SLURM") == "1":
            pytest.fail(message + "; MTGAN_REQUIRE_SLURM=1 makes this a failure", pytrace=False)
        pytest.skip(message)


# --- running Snakemake and reading what it did ---------------------------------------------------


@dataclass
class Run:
    workdir: Path
    returncode: int
    output: str  # stdout and stderr together, as a user sees them


def _start(workdir: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    """The repository's Snakefile run in `workdir` in the background, its output into `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _finish(process: subprocess.Popen[str], workdir: Path, log: Path, timeout: float) -> Run:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        queue = _queue()  # before Snakemake cancels its jobs
        process.send_signal(signal.SIGINT)  # Snakemake cancels its Slurm jobs (scancel) on Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        pytest.fail(f"snakemake ran past {timeout} s in {workdir}:\n{log.read_text()[-5000:]}\n{queue}")
    return Run(workdir, process.returncode, log.read_text())


def _queue() -> str:
    """The cluster's queue as squeue shows it: why jobs wait, when a run did not finish."""
    shown = subprocess.run(["squeue", "-o", "%i %j %T %M %l %R"], capture_output=True, text=True, timeout=60, check=False)
    return f"squeue:\n{shown.stdout}{shown.stderr}"


def _snakemake(workdir: Path, log: Path, *args: str, timeout: float = 900) -> Run:
    return _finish(_start(workdir, log, *args), workdir, log, timeout)


@dataclass
class Job:
    """One job of a Snakemake run, as its output shows it."""

    rule: str
    wildcards: list[str] = field(default_factory=list)
    log: str = ""
    slurm_ids: list[str] = field(default_factory=list)  # one per submission (a retried job has two)
    slurm_logs: list[str] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)  # what the rule declared, as Snakemake prints it

    @property
    def comment(self) -> str:
        """The --comment the SLURM plugin gives the job (sacct's Comment column)."""
        return f"rule_{self.rule}" + (f"_wildcards_{'_'.join(self.wildcards)}" if self.wildcards else "")


def _jobs(output: str) -> tuple[dict[str, Job], set[str]]:
    """The jobs a run sent to Slurm (Snakemake job id -> Job) and the rules it ran locally."""
    jobs: dict[str, Job] = {}
    local: set[str] = set()
    current: Job | None = None
    for line in output.splitlines():
        if m := re.match(r"^rule (\w+):$", line):
            current = Job(m.group(1))
        elif m := re.match(r"^localrule (\w+):$", line):
            local.add(m.group(1))
            current = None
        elif current is not None and (m := re.match(r"^    (\w+): (.*)$", line)):
            key, value = m.groups()
            if key == "wildcards":
                current.wildcards = [pair.split("=", 1)[1] for pair in value.split(", ")]
            elif key == "log":
                current.log = value
            elif key == "resources":
                current.resources = dict(pair.split("=", 1) for pair in value.split(", ") if "=" in pair)
            elif key == "jobid":
                jobs.setdefault(value, current)
        elif m := re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", line):
            jobs[m.group(1)].slurm_ids.append(m.group(2))
            jobs[m.group(1)].slurm_logs.append(m.group(3))
        elif not line.startswith("    "):
            current = None
    return {jobid: job for jobid, job in jobs.items() if job.slurm_ids}, local


def _job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table a run prints first: rule -> number of jobs."""
    block = output.split("Job stats:")[1].split("total")[0]
    return {line.split()[0]: int(line.split()[1]) for line in block.splitlines()[3:] if line.strip()}


def _run_id(output: str) -> str:
    m = re.search(r"^SLURM run ID: (\S+)$", output, re.MULTILINE)
    assert m, output[-3000:]
    return m.group(1)  # the plugin's --job-name for every job of the run


def _sacct(run_id: str, since: str) -> dict[str, dict[str, Any]]:
    """Slurm's accounting of one run's jobs: Slurm job id -> state, comment, CPUs, memory, exit."""
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "--name", run_id, "-S", since, "-o", "JobIDRaw,State,Comment,AllocCPUS,ReqMem,ExitCode"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        jobid, state, comment, cpus, mem, exit_code = line.split("|")
        rows[jobid] = {"state": state, "comment": comment, "cpus": int(cpus), "mem": mem, "exit": exit_code}
    return rows


def _now_minus(minutes: int) -> str:
    return (datetime.now() - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S")


def _profile(path: Path) -> dict[str, Any]:
    return yaml.safe_load((path / "config.yaml").read_text())


def _requested(job: Job) -> tuple[int, int]:
    """CPUs (the test-cluster profile's) and memory (MB: what the rule computed from its inputs,
    pipeline/resources.py, as Snakemake printed the job) that a job asks for."""
    profile = _profile(TEST_CLUSTER)
    resources = {**profile["default-resources"], **profile["set-resources"].get(job.rule, {})}
    assert "mem_mb" not in profile["set-resources"].get(job.rule, {})  # the rule's own request, not a flat number
    return resources["cpus_per_task"], int(job.resources["mem_mb"])


# --- the tiny pipeline, on Slurm and locally -----------------------------------------------------


@dataclass
class TinyRuns:
    slurm: Run
    local: Path  # the session's local run of the same config (conftest's tiny_run)
    run_id: str
    since: str
    started: float


@pytest.fixture(scope="module")
def tiny_runs(cluster: None, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    """`eval_coco` of config/tiny.yaml through the SLURM profile, and the session's local run of
    the same config (the numbers must not depend on where the jobs ran). The Slurm run starts
    first: while its jobs wait for the scheduler and the status checks, the local run (conftest's
    `tiny_run`, if no test has made it yet) goes beside it."""
    slurm_dir, logs = tmp_path_factory.mktemp("on_slurm"), tmp_path_factory.mktemp("snakemake_output")
    since, started = _now_minus(2), time.time()
    slurm = _start(slurm_dir, logs / "slurm.log", *PROFILES, "--slurm-keep-successful-logs", "eval_coco", "--configfile", TINY)
    try:
        local: Path = request.getfixturevalue("tiny_run")
    except BaseException:
        slurm.send_signal(signal.SIGINT)  # Snakemake cancels its Slurm jobs on Ctrl-C
        slurm.wait(timeout=120)
        raise
    # The Slurm run does what the local run did plus scheduling and status checks (about 10 s per
    # job): its limit scales with the local run's measured time on this machine.
    limit = max(1200.0, 4 * TINY_RUN_SECONDS[0]) if TINY_RUN_SECONDS else 2400.0
    runs = TinyRuns(_finish(slurm, slurm_dir, logs / "slurm.log", limit), local, "", since, started)
    assert runs.slurm.returncode == 0, runs.slurm.output[-5000:]
    runs.run_id = _run_id(runs.slurm.output)
    return runs


def test_every_job_went_through_sbatch_and_sacct_lists_it(tiny_runs: TinyRuns) -> None:
    jobs, local = _jobs(tiny_runs.slurm.output)
    stats = _job_stats(tiny_runs.slurm.output)
    assert local == {"eval_coco"}  # only the target rule, which runs no command, stays on this machine
    remote = {rule: n for rule, n in stats.items() if rule not in local}
    assert Counter(job.rule for job in jobs.values()) == remote  # every other job was submitted with sbatch
    assert all(len(job.slurm_ids) == 1 for job in jobs.values())  # once: nothing failed or was retried

    rows = _sacct(tiny_runs.run_id, tiny_runs.since)
    assert len(rows) == len(jobs) == sum(remote.values())  # one Slurm job per rule instance, and no other
    for job in jobs.values():
        row = rows[job.slurm_ids[0]]
        assert (row["state"], row["exit"]) == ("COMPLETED", "0:0"), (job, row)
        assert row["comment"] == job.comment, (job, row)
        cpus, mem_mb = _requested(job)
        assert (row["cpus"], row["mem"]) == (cpus, f"{mem_mb}M"), (job, row)  # the profile's CPUs and the rule's memory reached Slurm


def test_the_shards_stage_ran_as_one_job_per_chunk(tiny_runs: TinyRuns) -> None:
    chunks = yaml.safe_load(Path(TINY).read_text())["shards"]["num_chunks"]
    rows = _sacct(tiny_runs.run_id, tiny_runs.since)
    shards = sorted(row["comment"] for row in rows.values() if row["comment"].startswith("rule_shards_wildcards_"))
    assert shards == sorted(f"rule_shards_wildcards_{role}_{chunk}" for role in ("train", "test") for chunk in range(chunks))
    for role in ("train", "test"):
        for chunk in range(chunks):
            assert any((tiny_runs.slurm.workdir / "artifacts" / "tiny" / "shards" / role / f"chunk-{chunk}").glob("*.h5"))


def test_every_jobs_log_reached_the_logs_folder(tiny_runs: TinyRuns) -> None:
    jobs, _ = _jobs(tiny_runs.slurm.output)
    assert jobs
    for job in jobs.values():
        assert job.log.startswith("artifacts/tiny/logs/"), job
        log = tiny_runs.slurm.workdir / job.log  # written on the node, by the job (may be empty)
        assert log.is_file() and log.stat().st_mtime >= tiny_runs.started, job
        slurm_log = Path(job.slurm_logs[0])  # the job's Slurm output (kept: --slurm-keep-successful-logs)
        assert slurm_log.is_relative_to(tiny_runs.slurm.workdir / ".snakemake" / "slurm_logs"), job
        text = slurm_log.read_text()
        assert f"rule {job.rule}:" in text and f"Finished jobid: 0 (Rule: {job.rule})" in text, job


def test_the_metrics_equal_a_local_run(tiny_runs: TinyRuns) -> None:
    slurm, local = tiny_runs.slurm.workdir / "artifacts" / "tiny", tiny_runs.local / "artifacts" / "tiny"
    assert (local / "eval" / "metrics.csv").read_bytes() == (slurm / "eval" / "metrics.csv").read_bytes()
    # The tiny preset's APs are mostly 0; these depend on every number upstream of them too.
    compared = [
        "eval/accuracy.csv",
        "eval/per_class_ap.csv",
        "detect/val_results.json",
        *(str(p.relative_to(local)) for p in sorted((local / "merge").glob("*.json"))),
    ]
    assert len(compared) == 3 + 12  # the detections of every method but the baseline (pipeline/methods.py)
    for name in compared:
        assert (local / name).read_bytes() == (slurm / name).read_bytes(), name


# --- a job killed by Slurm, a job that fails -----------------------------------------------------


def test_a_train_job_cancelled_by_slurm_is_resubmitted_and_resumes(tiny_runs: TinyRuns, tmp_path: Path) -> None:
    """scancel of a running train_mtgan job: Snakemake names the job's Slurm log, resubmits it
    (the profile's `retries: 1`), and the new job resumes from the checkpoint the first wrote."""
    workdir = tmp_path / "work"  # a copy: the tiny run stays as the other tests read it
    shutil.copytree(tiny_runs.slurm.workdir, workdir, symlinks=True)
    # Other settings than the first run's, so that training starts afresh and writes a checkpoint
    # early (step 2 of 4 + 48): the job is cancelled then, while up to 50 steps are left to do
    # (the tiny preset's steps take a fraction of a second: enough of them to be caught running).
    changed = tmp_path / "checkpoint_every_2.yaml"
    changed.write_text("mtgan:\n  overrides: {checkpoint_every: 2, iterations: 48}\n")
    variant = workdir / "artifacts" / "tiny" / "mtgan" / "mtgan"
    checkpoint = variant / "checkpoints" / "last.pt"
    started = time.time()
    since = _now_minus(2)
    log = tmp_path / "snakemake.log"
    process = _start(workdir, log, *PROFILES, "--configfile", TINY, str(changed), "--", str(variant.relative_to(workdir) / "model.pt"))

    cancelled = None
    deadline = time.time() + 600
    while cancelled is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
        submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log.read_text())
        if submitted and checkpoint.is_file() and checkpoint.stat().st_mtime > started:
            state = subprocess.run(["squeue", "-h", "-j", submitted[0], "-o", "%T"], capture_output=True, text=True, timeout=60, check=False).stdout
            if state.strip() == "RUNNING":
                subprocess.run(["scancel", submitted[0]], check=True, timeout=60)
                cancelled = submitted[0]
    assert cancelled, f"never caught the train job running after its first checkpoint:\n{log.read_text()[-4000:]}"
    run = _finish(process, workdir, log, 600)
    assert run.returncode == 0, run.output[-5000:]

    jobs, _ = _jobs(run.output)
    (job,) = jobs.values()
    assert job.rule == "train_mtgan" and job.slurm_ids[0] == cancelled and len(job.slurm_ids) == 2, job
    slurm_log = job.slurm_logs[0]
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED" in run.output
    error = run.output.split("Error in rule train_mtgan:")[1].split("Trying to restart job")[0]
    assert f"log: {job.log}, {slurm_log} (check log file(s) for error details)" in error  # where to look
    assert Path(slurm_log).is_file()  # kept: the job failed
    states = {jobid: row["state"] for jobid, row in _sacct(_run_id(run.output), since).items()}
    assert states[cancelled].startswith("CANCELLED") and states[job.slurm_ids[1]] == "COMPLETED", states

    resumed = re.search(r"resuming from \S+last\.pt at step (\d+)", (workdir / job.log).read_text())
    assert resumed and int(resumed.group(1)) >= 2, (workdir / job.log).read_text()[-3000:]
    steps = [line for line in (variant / "metrics.jsonl").read_text().splitlines() if '"stage": "eval"' not in line]
    assert '"step": 52,' in steps[-1]  # and it trained to the end: 4 + 48 steps


def test_a_failing_job_names_its_slurm_log(cluster: None, tmp_path: Path) -> None:
    """A job that exits with an error: Snakemake's error gives the Slurm state and the job's Slurm
    log, which is kept, next to the rule's own log, which holds the job's one-line error."""
    (tmp_path / "images").mkdir()
    (tmp_path / "instances.json").write_text("{not json")
    split = {"annotations": str(tmp_path / "instances.json"), "images": str(tmp_path / "images")}
    broken = tmp_path / "broken.yaml"
    data = {"name": "broken", "source": "coco", "train_split": "train", "test_split": "val", "submit_split": None}
    broken.write_text(yaml.safe_dump({"data": data | {"coco": {"splits": {"train": split, "val": split}}}}))
    since = _now_minus(2)
    args = [*PROFILES, "--retries=0", "--configfile", TINY, str(broken), "--", "artifacts/broken/data/index.json"]
    run = _snakemake(tmp_path, tmp_path / "snakemake.log", *args, timeout=300)
    assert run.returncode != 0
    jobs, _ = _jobs(run.output)
    (job,) = jobs.values()
    (slurm_id,), (slurm_log,) = job.slurm_ids, job.slurm_logs
    assert f"SLURM-job '{slurm_id}' failed, SLURM status is: 'FAILED'" in run.output
    assert f"log: artifacts/broken/logs/data.log, {slurm_log} (check log file(s) for error details)" in run.output
    assert "Error in rule data:" in Path(slurm_log).read_text()
    assert "instances.json" in (tmp_path / "artifacts" / "broken" / "logs" / "data.log").read_text()
    assert _sacct(_run_id(run.output), since)[slurm_id]["state"] == "FAILED"


# --- the production profile ----------------------------------------------------------------------


def test_the_production_profile_asks_slurm_for_a_gpu(tiny_runs: TinyRuns, tmp_path: Path) -> None:
    """profiles/slurm alone, on this GPU-free cluster: its GPU rule reaches sbatch asking for a GPU
    and 8 CPUs (the plugin accepts the request; Slurm here cannot give it)."""
    shutil.copytree(tiny_runs.slurm.workdir / "artifacts" / "tiny" / "data", tmp_path / "artifacts" / "tiny" / "data")
    run = _snakemake(
        tmp_path,
        tmp_path / "snakemake.log",
        "--profile",
        str(PRODUCTION),
        "--retries",
        "0",
        "--slurm-init-seconds-before-status-checks",
        "3",  # else Snakemake exits 40 s after the error
        "--configfile",
        TINY,
        "--",
        "artifacts/tiny/baseline/model.pt",
        timeout=300,
    )
    assert run.returncode != 0
    assert "Error in rule train_baseline:" in run.output and "SLURM sbatch failed" in run.output, run.output[-3000:]
    call = run.output.split("sbatch call:")[1].split("\n")[1]
    block = run.output.split("rule train_baseline:")[1].split("\n\n")[0]
    declared = re.search(r"mem_mb=(\d+)", block)  # what the rule computed (pipeline/resources.py), not the profile's flat number
    assert declared and "--gpus=1" in call and "--cpus-per-task=8" in call and f"--mem {declared.group(1)}" in call, (call, block)
