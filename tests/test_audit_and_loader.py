"""`mtgan audit` catches damage; the block loader yields every ROI once per epoch, across workers and ranks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from core.errors import ShardReadError
from core.io.shards import sha256_of
from jobs.mtgan.data import ShardBatches
from pipeline.audit import audit
from pipeline.cli import cli
from pipeline.shards import ShardSettings, write_shards

from conftest import REPO, SHARD_SETTINGS


@pytest.fixture(scope="module")
def val_shards(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "val"
    settings = ShardSettings(**SHARD_SETTINGS, sampling=None)
    coco = json.loads((tiny_data / "val.json").read_text())
    write_shards(tiny_rois["val"], coco, tiny_data / "images" / "val", "val", settings, out)
    return out


@pytest.fixture
def shards(val_shards: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    copy = tmp_path / "val"
    shutil.copytree(val_shards, copy)
    return copy


def test_clean_shards_pass_and_are_tabulated(shards: Path, tmp_path: Path) -> None:
    report, readable = audit(shards)
    assert report.problems == []
    doc = json.loads((shards / "manifest.json").read_text())
    assert report.num_rois == doc["num_rois"] == sum(report.labels.values()) == int(report.iou_hist.sum())
    result = CliRunner().invoke(cli, ["audit", str(shards), "--grid", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    assert "| size class | ROIs |" in result.output and (tmp_path / "grid.png").stat().st_size > 5000


def test_a_single_flipped_byte_is_caught(shards: Path) -> None:
    doc = json.loads((shards / "manifest.json").read_text())
    victim = shards / doc["shards"][1]["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    report, _ = audit(shards)
    assert any(doc["shards"][1]["path"] in p and "sha256" in p for p in report.problems)
    result = CliRunner().invoke(cli, ["audit", str(shards / "manifest.json")])
    assert result.exit_code == 1 and doc["shards"][1]["path"] in result.output


def test_missing_and_stray_shards_are_named(shards: Path) -> None:
    doc = json.loads((shards / "manifest.json").read_text())
    gone = shards / doc["shards"][0]["path"]
    gone.rename(shards / "chunk-0" / "renamed.h5")
    problems = audit(shards)[0].problems
    assert any(doc["shards"][0]["path"] in p and "missing" in p for p in problems)
    assert any("renamed.h5" in p and "does not list" in p for p in problems)


def test_a_wrong_count_is_caught(shards: Path) -> None:
    path = shards / "manifest.json"
    doc = json.loads(path.read_text())
    doc["shards"][0]["num_rois"] -= 1
    path.write_text(json.dumps(doc))
    problems = audit(shards)[0].problems
    assert any(doc["shards"][0]["path"] in p and "the manifest says" in p for p in problems)


def test_a_copy_elsewhere_or_a_link_to_one_is_not_the_runs_shard(shards: Path, val_shards: Path, tmp_path: Path) -> None:
    """An identical file that the manifest reaches by an absolute path, or through a symbolic
    link, is refused by audit and by the jobs that read shards."""
    path = shards / "manifest.json"
    doc = json.loads(path.read_text())
    first = doc["shards"][0]["path"]
    elsewhere = str((val_shards / first).resolve())
    doc["shards"][0]["path"] = elsewhere
    path.write_text(json.dumps(doc))
    assert any(f"{elsewhere!r} is outside" in p for p in audit(shards)[0].problems)
    with pytest.raises(ShardReadError, match="is outside"):
        ShardBatches(path, batch_size=8)
    doc["shards"][0]["path"] = first
    doc["source_table"]["path"] = str((val_shards / doc["source_table"]["path"]).resolve())  # the ROI table, absolute
    path.write_text(json.dumps(doc))
    assert any(p.startswith("the ROI table: ") and "is outside" in p for p in audit(shards)[0].problems)
    doc["source_table"]["path"] = json.loads((val_shards / "manifest.json").read_text())["source_table"]["path"]
    path.write_text(json.dumps(doc))
    (shards / first).unlink()
    (shards / first).symlink_to(val_shards / first)  # an identical file, linked
    assert any("a symbolic link" in p for p in audit(shards)[0].problems)
    with pytest.raises(ShardReadError, match="a symbolic link"):
        ShardBatches(path, batch_size=8)


def test_non_finite_numbers_are_caught_by_audit_and_by_the_loader(shards: Path) -> None:
    """NaN written into a shard, its manifest's sha256 and size updated to match: audit names
    the dataset, the loader names the shard and column before any batch reaches a model."""
    path = shards / "manifest.json"
    doc = json.loads(path.read_text())
    for entry, dataset in zip(doc["shards"][:2], ("box", "target")):
        with h5py.File(shards / entry["path"], "r+") as f:
            values = f[dataset][:]
            values[0, 0] = np.nan
            f[dataset][:] = values
        entry["sha256"], entry["bytes"] = sha256_of(shards / entry["path"]), (shards / entry["path"]).stat().st_size
    path.write_text(json.dumps(doc))
    problems = audit(shards)[0].problems
    assert any(doc["shards"][0]["path"] in p and "dataset box holds NaN" in p for p in problems)
    assert any(doc["shards"][1]["path"] in p and "dataset target holds NaN" in p for p in problems)
    with pytest.raises(ShardReadError, match=f"{doc['shards'][1]['path']}: column 'target' holds NaN"):
        for _ in ShardBatches(path, batch_size=8, drop_ignored=False):
            pass


def test_a_changed_roi_table_is_caught(shards: Path, tiny_rois: dict[str, Path]) -> None:
    problems = audit(shards, rois_table=tiny_rois["train"])[0].problems
    assert any("not the one the shards were made from" in p for p in problems)


def _epoch_ids(manifest: Path, batch_size: int, world_size: int = 1, num_workers: int = 0, epoch: int = 0, **kw: object) -> list[np.ndarray]:
    per_rank = []
    for rank in range(world_size):
        ds = ShardBatches(manifest, batch_size=batch_size, seed=1, rank=rank, world_size=world_size, **kw)
        ds.set_epoch(epoch)
        batches = list(DataLoader(ds, batch_size=None, num_workers=num_workers))
        assert all(len(b["label"]) <= batch_size for b in batches)
        per_rank.append(np.concatenate([b["roi_id"].numpy() for b in batches]))
    return per_rank


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_every_roi_exactly_once_per_epoch(val_shards: Path, world_size: int, num_workers: int) -> None:
    manifest = val_shards / "manifest.json"
    total = json.loads(manifest.read_text())["num_rois"]
    per_rank = _epoch_ids(manifest, 7, world_size, num_workers, drop_ignored=False)
    everything = np.concatenate(per_rank)
    assert sorted(everything.tolist()) == list(range(total))
    if world_size == 2:
        assert not set(per_rank[0]) & set(per_rank[1]) and min(map(len, per_rank)) > 0


def test_order_is_seeded_and_changes_with_the_epoch(val_shards: Path) -> None:
    manifest = val_shards / "manifest.json"
    a, b, c = (_epoch_ids(manifest, 8, epoch=e)[0] for e in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a, np.sort(a))  # shuffled within blocks, not only across them


def test_ignored_rois_are_left_out(val_shards: Path) -> None:
    ds = ShardBatches(val_shards / "manifest.json", batch_size=16, seed=0)
    labels = torch.cat([b["label"] for b in ds])
    assert (labels >= 0).all() and len(labels) > 0


def test_balanced_batches(val_shards: Path) -> None:
    ds = ShardBatches(val_shards / "manifest.json", batch_size=8, seed=0, positive_fraction=0.25, fields=("lr", "hr", "label", "roi_id"))
    batches = list(ds)
    assert batches and all(int((b["label"] > 0).sum()) == 2 and int((b["label"] == 0).sum()) == 6 for b in batches)
    ids = torch.cat([b["roi_id"] for b in batches])
    assert len(set(ids.tolist())) == len(ids)  # nothing twice in an epoch
    assert batches[0]["lr"].shape == (8, 16, 16, 3) and batches[0]["hr"].dtype == torch.uint8


def test_no_hdf5_handle_is_opened_in_the_constructor(val_shards: Path) -> None:
    ds = ShardBatches(val_shards / "manifest.json", batch_size=4)
    assert ds._files == {}
    next(iter(ds))
    assert ds._files and ds.__getstate__()["_files"] == {}


OPEN_FILES_RUN = """
import resource, sys
from pathlib import Path
import jobs.mtgan.data as data
from jobs.mtgan.settings import VARIANTS, resolve_preset
from jobs.mtgan.train import train_mtgan

limit, lru = int(sys.argv[3]), sys.argv[4] == "lru"
if not lru:
    data.MAX_OPEN_SHARDS = 10**6  # every shard kept open, as the loader did before
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
preset = resolve_preset("tiny", {"pretrain_iterations": 2, "iterations": int(sys.argv[5]), "holdout_blocks": 0, "positive_fraction": None})
train_mtgan(Path(sys.argv[1]), VARIANTS["mtgan"], preset, Path(sys.argv[2]), "cpu", threads=1)
"""


def test_training_reads_more_shards_than_the_open_file_limit_allows(tiny_data: Path, tiny_rois: dict[str, Path], tmp_path: Path) -> None:
    """COCO train has more shards than the usual limit of 1,024 open files: the loader keeps at most
    MAX_OPEN_SHARDS open (closing the least recently used), so a training over more shards than a
    lowered limit allows finishes; kept all open, as before, it fails."""
    import subprocess
    import sys

    from jobs.mtgan.data import MAX_OPEN_SHARDS

    coco = json.loads((tiny_data / "train.json").read_text())
    settings = ShardSettings(**{**SHARD_SETTINGS, "rois_per_shard": 4, "block_size": 4}, sampling=None)
    manifest = write_shards(tiny_rois["train"], coco, tiny_data / "images" / "train", "train", settings, tmp_path / "shards")
    doc = json.loads(manifest.read_text())
    limit = 48  # the process's own files (about 10) + MAX_OPEN_SHARDS + room
    assert len(doc["shards"]) > 2 * limit and MAX_OPEN_SHARDS + 12 < limit
    epoch = -(-doc["num_rois"] // 8) + 2  # the tiny preset's batches of 8: every shard read

    def train(mode: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-c", OPEN_FILES_RUN, str(manifest), str(tmp_path / mode), str(limit), mode, str(epoch)]
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    bounded = train("lru")
    assert bounded.returncode == 0, bounded.stderr[-3000:]
    assert (tmp_path / "lru" / "model.pt").is_file()
    unbounded = train("all")
    assert unbounded.returncode != 0 and "Too many open files" in unbounded.stderr, unbounded.stderr[-2000:]
