"""The third bad-input matrix, the workflow and its processes: Snakemake deletes a job's declared
outputs before the job runs, so a user's file in an output folder, or an output folder that is a
symbolic link to the user's own copy, is refused before any job runs, and nothing changes; a
detector file that does not exist is named by its key instead of leaving the old detections in
place; a killed pool job leaves no worker behind; a leftover of a dead writer whose pid another
program now has is removed; read-only places are named in one line before any work."""

from __future__ import annotations

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
