"""The train_mtgan job: it learns, resumes exactly, and DDP over 2 gloo processes matches one process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ddp_worker
import pytest
import torch
import torch.multiprocessing as mp

from jobs.mtgan.data import ShardBatches
from jobs.mtgan.engine import build_networks, to_model
from jobs.mtgan.settings import VARIANTS, resolve_preset
from jobs.mtgan.train import train_mtgan


@torch.no_grad()
def evaluate(model_path: Path | None, manifest: Path, variant: str = "mtgan") -> dict[str, float]:
    """G's MSE and D's classification accuracy (on G's output) over all training shards."""
    doc = json.loads(manifest.read_text())
    torch.manual_seed(0)
    g, d = build_networks(VARIANTS[variant], resolve_preset("tiny"), doc["num_labels"], doc["scale"])
    if model_path is not None:
        state = torch.load(model_path, weights_only=True)
        d.load_state_dict(state["d"])
        if "g" in state:
            g.load_state_dict(state["g"])
    g.eval()
    d.eval()
    mse, correct, n = 0.0, 0, 0
    for batch in ShardBatches(manifest, batch_size=64, shuffle=False):
        lr, hr = to_model(batch["lr"], torch.device("cpu")), to_model(batch["hr"], torch.device("cpu"))
        sr = g(lr)
        mse += float(((sr - hr) ** 2).mean()) * len(lr)
        correct += int((d(sr)["cls"].argmax(1) == batch["label"].long()).sum())
        n += len(lr)
    return {"mse": mse / n, "accuracy": correct / n}


# 80 GAN iterations: with 40, D's accuracy rose by 0.06 on an AMD EPYC (0.08 -> 0.15) and by over
# 0.1 on the Xeon the test was written on; float kernels differ across CPUs, the learning does not.
LEARNING = {"pretrain_iterations": 30, "iterations": 80, "d_lr": 1.0, "d_lr_step": 1000, "log_every": 10, "picture_every": 35, "checkpoint_every": 1000}


def test_a_tiny_run_lowers_the_losses_and_raises_accuracy(tiny_train_shards: Path, tmp_path: Path) -> None:
    before = evaluate(None, tiny_train_shards)
    model = train_mtgan(tiny_train_shards, VARIANTS["mtgan"], resolve_preset("tiny", LEARNING), tmp_path, "cpu", threads=1)
    after = evaluate(model, tiny_train_shards)
    assert after["mse"] < 0.8 * before["mse"]
    assert after["accuracy"] > before["accuracy"] + 0.1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["pretrain"] * 3 + ["gan"] * 8 + ["eval"]  # eval_every > steps: at the end
    assert {"eval_acc_pos", "eval_acc_neg"} <= set(rows[-1]) and all(0 <= v <= 1 for k, v in rows[-1].items() if k.startswith("eval"))
    gan = [r for r in rows if r["stage"] == "gan"]
    assert gan[-1]["d_loss_cls"] < gan[0]["d_loss_cls"]
    assert {"d_real", "d_sr", "acc_sr", "acc_hr", "g_loss_adv", "g_loss_cls", "g_loss_reg", "d_lr", "pairs_per_s"} <= set(gan[0])
    assert (tmp_path / "losses.png").stat().st_size > 5000 and list((tmp_path / "pictures").glob("step-*.png"))


def test_resume_continues_exactly(tiny_train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = resolve_preset("tiny")  # 4 pre-training + 8 GAN steps, checkpoints every 4
    straight = train_mtgan(tiny_train_shards, VARIANTS["mtgan"], preset, tmp_path / "straight", "cpu", threads=1)

    import jobs.mtgan.train as train_module

    original, calls = train_module.train_step, []

    def killed(*args: object, **kwargs: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 6:  # step 10: after the checkpoint of step 8
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_mtgan(tiny_train_shards, VARIANTS["mtgan"], preset, tmp_path / "resumed", "cpu", threads=1)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["step"] == 8
    monkeypatch.setattr(train_module, "train_step", original)
    resumed = train_mtgan(tiny_train_shards, VARIANTS["mtgan"], preset, tmp_path / "resumed", "cpu", threads=1)

    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for net in ("g", "d"):
        for key, value in a[net].items():
            torch.testing.assert_close(b[net][key], value, rtol=0, atol=0, msg=f"{net}.{key}")


def test_sbu_never_touches_a_generator(tiny_train_shards: Path, tmp_path: Path) -> None:
    model = train_mtgan(tiny_train_shards, VARIANTS["sbu"], resolve_preset("tiny"), tmp_path, "cpu", threads=1)
    state = torch.load(model, weights_only=True)
    assert "g" not in state and state["step"] == 8  # no pre-training stage either
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    gan = [r for r in rows if r["stage"] == "gan"]
    # the paper's SBU: D trains on the bilinear up-sampled ROIs only
    assert gan and all(not any(k.startswith("g_loss") for k in r) and "acc_sr" in r and "acc_hr" not in r for r in gan)
    evals = [r for r in rows if r["stage"] == "eval"]
    assert evals and all("eval_acc_pos" in r and not any(k.endswith(("-by_size", "-all_hr")) for k in r) for r in evals)


def test_ddp_with_two_gloo_processes_matches_one_process(tmp_path: Path) -> None:
    ddp_worker.run_steps(0, 1, tmp_path)
    mp.spawn(ddp_worker.run_steps, args=(2, tmp_path), nprocs=2, join=True)
    single = torch.load(tmp_path / "world1-rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"world2-rank{r}.pt", weights_only=True) for r in range(2)]
    for net in ("g", "d"):
        for key, value in single[net].items():
            torch.testing.assert_close(ranks[0][net][key], ranks[1][net][key], rtol=0, atol=0)  # ranks agree exactly
            torch.testing.assert_close(ranks[0][net][key], value, rtol=1e-9, atol=1e-12, msg=f"{net}.{key}")  # float64
        moved = [k for k, v in single[net].items() if v.is_floating_point() and not torch.equal(v, single["initial"][net][k])]
        assert len(moved) > len(single[net]) // 3, f"training should move most of {net}'s weights"


def test_a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tiny_train_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.mtgan.losses as losses

    original, calls = losses.mse, []

    def nan_at_step_6(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        value = original(sr, hr)
        return value * float("nan") if len(calls) == 6 else value

    monkeypatch.setattr(losses, "mse", nan_at_step_6)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_mtgan(tiny_train_shards, VARIANTS["mtgan"], resolve_preset("tiny"), tmp_path, "cpu", threads=1)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["g"].values() if v.is_floating_point())
    assert not (tmp_path / "model.pt").exists()


def held_out_model(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MTGAN with 3 held-out blocks, trained once per test process."""
    out = tmp_path_factory.getbasetemp() / "held_out_model"
    preset = resolve_preset("tiny", {"holdout_blocks": 3})
    return out / "model.pt" if (out / "model.pt").is_file() else train_mtgan(shards, VARIANTS["mtgan"], preset, out, "cpu", threads=1)


@pytest.mark.parametrize("rule", ["paper", "by_size"])
def test_held_out_eval_and_infer_see_a_roi_identically(tiny_train_shards: Path, tmp_path_factory: pytest.TempPathFactory, rule: str) -> None:
    """The training job's held-out accuracy under each test-time rule is what infer gets on the
    same ROIs under that rule: the same routing (the paper's path: every ROI through G; by_size:
    small ROIs through G, large ones as HR crops), the same eval-mode networks."""
    import numpy as np

    from jobs.mtgan.data import read_holdout
    from jobs.mtgan.engine import rule_key
    from jobs.mtgan.settings import DEFAULT_G_MAX_SIDE
    from pipeline.infer import infer

    model = held_out_model(tiny_train_shards, tmp_path_factory)
    logged = [json.loads(line) for line in (model.parent / "metrics.jsonl").read_text().splitlines()][-1]
    table, accuracy = infer(model, tiny_train_shards, torch.device("cpu"), 16, rule, DEFAULT_G_MAX_SIDE)
    holdout = read_holdout(tiny_train_shards, 3, ("roi_id", "label", "size_class"))
    check_accuracy_by_side(table, tiny_train_shards, accuracy["accuracy"]["positive_by_side"])
    rows = table.to_pydict()
    position = {r: i for i, r in enumerate(rows["roi_id"])}
    picked = [position[int(r)] for r in holdout["roi_id"]]
    predicted = np.asarray(rows["probs"], np.float32)[picked].argmax(1)
    through_g = np.asarray(rows["through_g"])[picked]
    if rule == "paper":
        assert through_g.all()
    else:
        assert 0 < through_g.sum() < len(picked)  # both paths occur among the held-out ROIs
    right = predicted == holdout["label"]
    for name, mask in (("eval_acc_pos", holdout["label"] > 0), ("eval_acc_neg", holdout["label"] == 0)):
        assert logged[rule_key(name, rule)] == pytest.approx(float(right[mask].mean()))


HEAP_PROBE = """
import ctypes, ctypes.util, sys
import numpy as np, torch
from jobs.mtgan.model_file import load_model
from pipeline.infer import predict_batches

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
if not hasattr(libc, "mallinfo2"):
    sys.exit(77)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

def own_mapping():
    # a block larger than all the free heap (no free chunk can serve it), under glibc's 32 MiB
    nbytes = libc.mallinfo2().fordblks + (1 << 20)
    assert nbytes < 32 << 20, f"the heap holds {nbytes >> 20} MiB free"
    before = libc.mallinfo2().hblks
    block = libc.malloc(nbytes)
    mapped = libc.mallinfo2().hblks > before
    libc.free(block)
    return mapped

batches = predict_batches(load_model(sys.argv[1], torch.device("cpu")), sys.argv[2], lambda b: np.ones(len(b["label"]), bool), torch.device("cpu"), 16)
next(batches)
during = own_mapping()
rest = sum(1 for _ in batches)
print(during, rest, own_mapping())
"""


def test_infer_bounds_the_heap_only_while_its_batches_run(tiny_train_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """While infer's batches run, a block of over 1 MiB gets a mapping of its own (given back when
    freed: the infer stage's memory stays flat over the ROIs); once they are done, it comes from the
    heap, as under glibc's own threshold. Left bounded, a training run later in the same process
    (the bench scripts score, then train) ran at 0.5-0.8 of its speed (jobs.common.bounded_host_heap).
    Probed in a fresh process, whose heap holds little free memory (in a test worker's it may not)."""
    import subprocess
    import sys

    model = held_out_model(tiny_train_shards, tmp_path_factory)
    found = subprocess.run([sys.executable, "-c", HEAP_PROBE, str(model), str(tiny_train_shards)], capture_output=True, text=True)
    if found.returncode == 77:
        pytest.skip("glibc 2.33 or later is needed to count malloc's own mappings")
    assert found.returncode == 0, found.stderr[-3000:]
    during, rest, after = found.stdout.split()[-3:]
    assert (during, after) == ("True", "False") and int(rest) > 0


def check_accuracy_by_side(table: Any, manifest: Path, by_side: list[dict[str, Any]]) -> None:
    """infer's accuracy on positives by the crop's side, recomputed here from the shards' boxes
    (margin 0: the box clipped to its image) and the table's probabilities, bins written out."""
    import h5py
    import numpy as np

    doc = json.loads(manifest.read_text())
    assert doc["margin"] == 0
    predicted = dict(zip(table.column("roi_id").to_pylist(), np.asarray(table.column("probs").to_pylist()).argmax(1)))
    edges = [(0, 8), (8, 12), (12, 16), (16, 24), (24, 32), (32, 48), (48, 64), (64, 96), (96, 1e9)]  # (low, high]
    right, total = [0] * len(edges), [0] * len(edges)
    for entry in doc["shards"]:
        with h5py.File(manifest.parent / entry["path"], "r") as f:
            for roi, label, box, (w, h) in zip(f["roi_id"][:], f["label"][:], f["box"][:], f["image_size"][:]):
                if label <= 0:
                    continue
                x1, y1, x2, y2 = map(float, box)  # in double precision, as the crops are cut
                side = max(max(min(x2, w) - max(x1, 0), 1), max(min(y2, h) - max(y1, 0), 1))
                k = next(i for i, (low, high) in enumerate(edges) if low < side <= high)
                total[k] += 1
                right[k] += int(predicted[int(roi)] == label)
    assert [b["side"] for b in by_side] == ["<=8", "8-12", "12-16", "16-24", "24-32", "32-48", "48-64", "64-96", ">96"]
    assert [b["rois"] for b in by_side] == total and sum(total) > 0
    for b, r, n in zip(by_side, right, total):
        assert b["accuracy"] == (pytest.approx(r / n) if n else None), b
