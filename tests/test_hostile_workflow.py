"""The third bad-input matrix, the workflow and its processes: Snakemake deletes a job's declared
outputs before the job runs, so a user's file in an output folder, or an output folder that is a
symbolic link to the user's own copy, is refused before any job runs, and nothing changes; a
detector file that does not exist is named by its key instead of leaving the old detections in
place; a killed pool job leaves no worker behind; a leftover of a dead writer whose pid another
program now has is removed; read-only places are named in one line before any work; a run killed
(kill -9 of the whole process group) at any point is finished by the same command, byte for byte
as an uninterrupted run, missing results and scores rebuilt under a table that still stands."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from core.io import atomic
from pipeline.cli import cli
from pipeline.shards import ShardSettings, write_shards

from conftest import REPO, SHARD_SETTINGS, TINY_CONFIG, snakemake
from test_bad_input import CONFIGS

sys.path.insert(0, str(REPO / "bench"))
from compare_artifacts import compare  # noqa: E402

TINY = str(TINY_CONFIG)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny run, its Snakemake metadata included."""
    shutil.copytree(tiny_run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("folder", "forced"),
    [("shards/test/chunk-0", ["--forcerun", "shards"]), ("data", ["--forcerun", "data", "--until", "data"])],
    ids=["a note in a shard chunk", "a note in the data folder"],
)
def test_a_users_file_in_an_output_folder_stops_a_forced_rerun_before_anything_is_deleted(run_copy: Path, folder: str, forced: list[str]) -> None:
    root = run_copy / "artifacts" / "tiny"
    (root / folder / "NOTES.txt").write_text("my notes")
    before = _digests(root / folder)
    run = snakemake(run_copy, "eval_coco", "--cores", "2", "--configfile", TINY, *forced)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "nothing was run or changed" in out and f"artifacts/tiny/{folder}: holds files the pipeline did not write (NOTES.txt)" in out
    assert _digests(root / folder) == before  # every file as it was, the user's and the pipeline's


def test_an_output_folder_linked_to_the_users_copy_is_never_deleted_through(run_copy: Path, tmp_path: Path) -> None:
    root = run_copy / "artifacts" / "tiny"
    mine = tmp_path / "my-data"
    shutil.move(root / "data", mine)
    (root / "data").symlink_to(mine)
    before = _digests(mine)
    run = snakemake(run_copy, "eval_coco", "--cores", "2", "--configfile", TINY, "--forcerun", "data", "--until", "data")
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "artifacts/tiny/data: a symbolic link" in out and "never deletes or replaces through one" in out
    assert _digests(mine) == before and (root / "data").is_symlink()


def test_a_detector_file_that_does_not_exist_is_named_before_anything_runs(run_copy: Path) -> None:
    """After a finished run, Snakemake would leave out the detect job whose input is missing and
    score the old detections with exit 0."""
    imported = run_copy / "import.yaml"
    imported.write_text("detector:\n  source: import\n  import_results: {train: gone/train.json, val: gone/val.json, test: gone/test.json}\n")
    run = snakemake(run_copy, "eval_coco", "--cores", "2", "--configfile", TINY, str(imported))
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "key 'detector.import_results.train': gone/train.json does not exist" in out
    (run_copy / "gone").mkdir()
    for split in ("train", "val", "test"):
        (run_copy / "gone" / f"{split}.json").write_text("[]")
    planned = snakemake(run_copy, "eval_coco", "submit_coco", "-n", "--cores", "2", "--configfile", TINY, str(imported))
    assert planned.returncode == 0 and re.search(r"^detect\s+3$", planned.stdout, re.MULTILINE)  # the detector changed: each split detected again


def test_a_leftover_whose_pid_now_belongs_to_another_program_is_removed(tmp_path: Path) -> None:
    final = tmp_path / "chunk-0"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live process that wrote nothing
    try:
        stale = tmp_path / f".tmp-chunk-0.partial-{other.pid}-abcdefgh"
        stale.mkdir()
        (stale / atomic.OUTPUT_MARKER).write_text("")
        hour_ago = time.time() - 3600
        os.utime(stale, (hour_ago, hour_ago))  # written an hour before the process with that pid started
        live = tmp_path / f".tmp-chunk-0.partial-{os.getpid()}-ijklmnop"  # this process's own write in progress
        live.mkdir()
        (live / atomic.OUTPUT_MARKER).write_text("")
        assert atomic.leftovers_of(final) == [stale]
        assert atomic.remove_leftovers(final) == 1 and not stale.exists() and live.exists()
    finally:
        other.kill()


def test_a_killed_shards_job_leaves_no_worker_behind(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("shards:\n  num_chunks: 1\n  rois_per_shard: 50\n")
    common = ["--config", str(CONFIGS[0]), "--config", str(config), "--data-index", str(tiny_data / "index.json")]
    common += ["--split", "val", "--role", "test", "--rois", str(tiny_rois["val"])]
    plan = ["--plan", str(tmp_path / "plan.parquet"), "--images", str(tmp_path / "images.parquet")]
    made = CliRunner().invoke(cli, ["shards-plan", *common, "--out-plan", plan[1], "--out-images", plan[3]])
    assert made.exit_code == 0, made.output
    args = [sys.executable, "-m", "pipeline.cli", "shards", *common, *plan, "--chunk", "0", "--out", str(tmp_path / "chunk-0"), "-j", "2"]
    job = psutil.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[psutil.Process] = set()
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline and len(seen) < 2:
        seen |= set(job.children(recursive=True))
        time.sleep(0.02)
    if job.poll() is None:
        job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) is not None
    assert seen, "the job never started its pool"
    gone, alive = psutil.wait_procs(list(seen), timeout=15)
    assert alive == [], [" ".join(p.cmdline()[:3]) for p in alive]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


@pytest.fixture
def lock() -> Iterator[Callable[[Path], None]]:
    """`lock(folder)` makes a folder read-only for this process: mode 555 for a user, the immutable
    attribute for root (whom modes do not stop); undone after the test."""
    locked: list[Path] = []

    def read_only(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (chattr +i refused)")
        locked.append(folder)

    yield read_only
    for folder in reversed(locked):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o755)


def test_read_only_places_are_named_before_any_work(tiny_rois: dict[str, Path], tmp_path: Path, lock: Callable[[Path], None]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    lock(locked)
    merge = CliRunner().invoke(cli, ["merge", "--config", str(CONFIGS[0]), "--rois", str(tiny_rois["val"]), "--out", str(locked / "out.json")])
    assert merge.exit_code == 2 and f"{locked} is read-only: out.json cannot be written there" in merge.output, merge.output
    data = CliRunner().invoke(cli, ["data", "--config", str(CONFIGS[0]), "--config", str(CONFIGS[1]), "--out", str(locked / "data")])
    assert data.exit_code == 2 and f"{locked} is read-only: data cannot be written there" in data.output, data.output
    assert os.listdir(locked) == []  # nothing generated, nothing left behind


def test_audit_of_a_read_only_folder_checks_everything_and_draws_nothing(
    tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path, lock: Callable[[Path], None]
) -> None:
    settings = ShardSettings(**SHARD_SETTINGS, sampling=None)
    coco = json.loads((tiny_data / "val.json").read_text())
    shards = tmp_path / "shards"
    write_shards(tiny_rois["val"], coco, tiny_data / "images" / "val", "val", settings, shards)
    lock(shards)
    audit = CliRunner().invoke(cli, ["audit", str(shards), "--rois", str(tiny_rois["val"])])
    assert audit.exit_code == 0, audit.output
    assert f"not drawn ({shards} is read-only" in audit.output and "OK: every shard matches" in audit.output and not (shards / "audit.png").exists()


# --- Interrupted runs: the README's command finishes what was started -------------------------------


def test_missing_results_and_scores_are_rebuilt_under_a_table_that_still_stands(run_copy: Path) -> None:
    """What kill -9 of a merge after `--forcerun train_mtgan`, or of a score after `--forcerun
    score`, leaves (Snakemake deletes a job's outputs before it runs): a method's results or score
    missing, the table made before still there. The plain command plans their rebuild and what
    is made from them."""
    tiny = run_copy / "artifacts" / "tiny"
    killed_score = [f"score/d_no_adv_ensemble{suffix}" for suffix in (".json", ".md", "_eval.npz")]
    for name in ("merge/mtgan.json", "merge/mtgan_ensemble.json", *killed_score):
        (tiny / name).unlink()
    plan = snakemake(run_copy, "eval_coco", "--cores", "2", "--configfile", str(TINY_CONFIG), "--dry-run")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.stdout, re.MULTILINE))
    assert jobs.get("merge") == "1" and jobs.get("score") == "3" and jobs.get("table") == "1", plan.stdout[-3000:]
    assert "Missing output files: artifacts/tiny/merge/mtgan" in plan.stdout and "Missing output files: artifacts/tiny/score/d_no_adv_ensemble" in plan.stdout


def _mtgan_command(process: psutil.Process) -> str | None:
    """The `mtgan` command a job's Python process runs (`python -m pipeline.cli <command>`, how the
    rules call it); None for any other process, or one that ended while it was read."""
    try:
        arguments = process.cmdline()
    except psutil.Error:
        return None
    return arguments[arguments.index("pipeline.cli") + 1] if "pipeline.cli" in arguments[:-1] else None


def _kill_when_running(command: list[str], subcommand: str, timeout: float = 900.0) -> None:
    """Start `command` in its own process group and kill -9 the whole group once a job runs
    `mtgan <subcommand>` (its Python process, not the shell around it)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before a `{subcommand}` job started")
            descendants = psutil.Process(process.pid).children(recursive=True)
            if any(_mtgan_command(p) == subcommand for p in descendants):
                os.killpg(process.pid, signal.SIGKILL)
                for child in descendants:  # a job in a session of its own, if any
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                process.wait(timeout=60)
                return
            time.sleep(0.1)
        pytest.fail(f"no `{subcommand}` job started within {timeout:.0f} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def test_kill_9_at_three_points_then_the_same_command_gives_the_uninterrupted_run(tiny_run: Path, run_copy: Path) -> None:
    """A forced retraining killed (the whole process group) while training, the README's command
    killed while inferring and again while merging, and the README's command once more: it
    finishes with no flag, and every output equals the uninterrupted run's byte for byte (the
    checkpoints' measured throughput aside)."""
    snakemake_in_copy = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(run_copy)]
    run = [*snakemake_in_copy, "eval_coco", "--cores", "2", "--configfile", str(TINY_CONFIG)]
    _kill_when_running([*run, "--forcerun", "train_mtgan"], "train-mtgan")
    _kill_when_running(run, "infer")
    _kill_when_running(run, "merge")
    final = subprocess.run(run, capture_output=True, text=True, timeout=1200, check=False)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    _, timing_only, different, only = compare(tiny_run / "artifacts" / "tiny", run_copy / "artifacts" / "tiny")
    assert not different and not only, (different, only)
    assert all(name.endswith("checkpoints/last.pt") for name in timing_only), timing_only


# --- A full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path, int], None]]:
    """`small_disk(folder, kib)` mounts a file system of `kib` KiB (tmpfs) on `folder`: as root
    only (skipped otherwise, or where mounting is refused); unmounted after the test."""
    mounted: list[Path] = []

    def mount(folder: Path, kib: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("a small file system is mounted by root only (mount -t tmpfs)")
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"mount -t tmpfs refused here: {made.stderr.strip()}")
        mounted.append(folder)

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize(
    ("folder", "target", "kib"),
    [
        ("artifacts", "data/index.json", 1024),
        ("artifacts/tiny/shards/test", "shards/test/manifest.json", 1024),
        ("artifacts/tiny/mtgan/sbu", "mtgan/sbu/model.pt", 3072),
    ],
    ids=["data", "shards", "train_mtgan"],
)
def test_a_full_disk_is_one_line_in_the_log_and_the_rerun_after_freeing_space_matches(
    tiny_run: Path, run_copy: Path, tmp_path: Path, small_disk: Callable[[Path, int], None], folder: str, target: str, kib: int
) -> None:
    """A full file system under a stage: the data stage's (the artifacts, its logs included, in a
    new folder), or the folder of a shards or training job in a copy of a finished run (an HDF5
    shard, torch.save of a checkpoint). The failing job's log ends in one line naming the path and
    the free space, with no traceback; nothing stands under the output's name; once there is
    room, the same command makes the uninterrupted run's file byte for byte."""
    work = tmp_path / "new" if folder == "artifacts" else run_copy
    if work == run_copy:
        shutil.rmtree(work / folder)  # the job's own outputs, written by the pipeline: made again below
    small_disk(work / folder, kib)
    tiny = work / "artifacts" / "tiny"
    run = [f"artifacts/tiny/{target}", "--cores", "1", "--configfile", TINY]
    full = snakemake(work, *run)
    assert full.returncode != 0 and not (tiny / target).exists(), full.stderr[-3000:]
    logs = {log.name: log.read_text() for log in (tiny / "logs").iterdir()}
    failed = {name: text for name, text in logs.items() if "Error:" in text}
    assert failed, full.stderr[-3000:]
    for name, text in failed.items():
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        assert last.startswith("Error: ") and "no space left on the device (" in last and "MB free on the file system of" in last, (name, text[-3000:])
    assert not [name for name, text in logs.items() if "Traceback" in text or "Segmentation fault" in text], failed
    subprocess.run(["umount", str(work / folder)], check=True)
    rerun = snakemake(work, *run)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tiny / target).read_bytes() == (tiny_run / "artifacts" / "tiny" / target).read_bytes()
