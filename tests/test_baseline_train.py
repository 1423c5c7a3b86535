"""The train_baseline job: it trains, logs, checkpoints, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.baseline.data import SeededBatches
from jobs.baseline.models import DetectorSettings, build_detector
from jobs.baseline.train import TrainSettings, train_baseline

SETTINGS = TrainSettings(
    arch="fasterrcnn_small_cpu",
    iterations=4,
    batch_size=2,
    lr=1e-3,
    weight_decay=1e-4,
    warmup_iterations=2,
    final_lr_fraction=0.1,
    checkpoint_every=2,
    log_every=1,
    seed=0,
    hflip=True,
    num_workers=0,
    min_size=128,
    max_size=128,
    amp=False,
)


def test_seeded_batches_resume_where_they_stopped() -> None:
    full = list(SeededBatches(10, 3, seed=5, hflip=True, start=0, stop=9))
    assert list(SeededBatches(10, 3, seed=5, hflip=True, start=4, stop=9)) == full[4:]
    epoch0 = [i for batch in full[:4] for i, _ in batch]
    assert sorted(epoch0) == list(range(10))  # each image once per epoch


def initial_weights(num_classes: int) -> dict[str, torch.Tensor]:
    """Weights of a freshly initialised model with the run's seed."""
    torch.manual_seed(SETTINGS.seed)
    return build_detector(SETTINGS.arch, num_classes, DetectorSettings(128, 128, 0.05, 0.5, 100)).state_dict()


def test_training_writes_model_log_and_resumes_exactly(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ann, images = tiny_data / "train.json", tiny_data / "images" / "train"
    straight = train_baseline(ann, images, SETTINGS, tmp_path / "straight", device_name="cpu", threads=1)

    # Kill a second run while it fetches iteration 3's batch (the checkpoint of iteration 2 is written) ...
    original = SeededBatches.batch

    def killed_at_3(self: SeededBatches, iteration: int) -> list:
        if iteration == 2:
            raise KeyboardInterrupt
        return original(self, iteration)

    monkeypatch.setattr(SeededBatches, "batch", killed_at_3)
    with pytest.raises(KeyboardInterrupt):
        train_baseline(ann, images, SETTINGS, tmp_path / "resumed", device_name="cpu", threads=1)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    monkeypatch.setattr(SeededBatches, "batch", original)
    # ... and rerun it: it resumes at iteration 2 and ends with exactly the same weights.
    resumed = train_baseline(ann, images, SETTINGS, tmp_path / "resumed", device_name="cpu", threads=1)

    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 4
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    init = initial_weights(a["num_classes"])
    assert any(not torch.equal(init[k], v) for k, v in a["model"].items() if v.is_floating_point())

    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr"} <= set(rows[0])
    assert all(float(r["loss"]) > 0 for r in rows)
    assert (tmp_path / "straight" / "losses.png").stat().st_size > 1000
    resumed_rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in rows]
