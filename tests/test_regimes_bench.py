"""bench/regimes.py: the mechanism test (small positives kept in D's training 1.0 / 0.25 / 0.0), on
the session's tiny run with one seed (the spread and the verdicts are checked on constructed rows):
every regime and method scored, the regime 1.0 rows the pipeline's own, the thinned shards as the
manifest says, a rerun that redoes nothing."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.io.shards import read_manifest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import regimes  # noqa: E402


def run_regimes(work: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(REPO / "bench" / "regimes.py"), "--config", str(REPO / "config" / "tiny.yaml"), "--seeds", "0", "--threads", "1"]
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=900)


def test_regimes_cover_every_method_and_seed_and_rerun_does_nothing(tiny_run: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_run / "artifacts", tmp_path / "artifacts")  # a copy: the script writes beside the run
    first = run_regimes(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "artifacts" / "tiny"
    with open(root / "regimes" / "regimes.csv") as f:
        rows = list(csv.DictReader(f))
    methods = ("mtgan", "mtgan-by_size", "sbu", "d_no_adv", "sbu_hr", "sbu_hr-by_size")
    assert sorted((r["regime"], r["seed"], r["method"]) for r in rows) == sorted((g.name, "0", m) for g in regimes.REGIMES for m in methods)
    with open(root / "eval" / "metrics.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    for r in (r for r in rows if r["regime"] == "1.0" and r["seed"] == "0" and r["method"] in table):  # the pipeline's own models: its numbers
        assert f"{100 * float(r['AP']):.1f}" == table[r["method"]]["AP"] and f"{100 * float(r['APS']):.1f}" == table[r["method"]]["APS"], r["method"]

    train = read_manifest(root / "shards" / "train" / "manifest.json")
    quarter, none, closed = (read_manifest(root / "regimes" / f / "shards" / "manifest.json") for f in ("share-0.25", "share-0.0", "share-0.0-neg-0.0"))
    sampled = quarter["small_positives"]["sampled"]
    assert sampled > 0 and quarter["small_positives"]["kept"] == round(0.25 * sampled) and none["small_positives"]["kept"] == 0
    assert quarter["num_rois"] == train["num_rois"] - (sampled - round(0.25 * sampled)) and none["num_rois"] == train["num_rois"] - sampled
    negatives = closed["small_negatives"]["sampled"]  # the blur shortcut closed: no small negative either
    assert negatives > 0 and closed["small_negatives"]["kept"] == 0 and closed["num_rois"] == none["num_rois"] - negatives
    assert (root / "regimes" / "share-0.0" / "mtgan-seed0" / "model.pt").is_file()
    assert (root / "regimes" / "share-0.0-neg-0.0" / "sbu_hr-seed0" / "model.pt").is_file()

    text = (root / "regimes" / "regimes.md").read_text()
    assert "| 0.0 (0 of " in text and "MTGAN: G for small crops, HR crop above (ours) | APS | 0.25 |" in text
    published = [line for line in text.splitlines() if line.startswith("| MTGAN") and "| APS |" in line]
    assert len(published) == 6  # 2 paths x 3 regimes (no small positive test ROI in the tiny split: no accuracy verdict)
    assert all(line.split(" | ")[-3] == "1" for line in published)  # the number of seeds beside each published verdict
    strict = [line for line in text.splitlines() if "SBU, D also trained on HR crops (ours)" in line and "| APS |" in line]
    assert len(strict) == 4 and "| 0.0, small negatives 0.0 | D w/o adv" in text  # SBU-HR at every regime; D w/o adv with no small crop
    assert "acc_negative_small" in text
    for name in ("regimes.png", *(f"by_side_{g.folder.removeprefix('share-')}.png" for g in regimes.REGIMES)):
        with Image.open(root / "regimes" / name) as im:
            assert im.format == "PNG" and min(im.size) > 200, name

    models = sorted((root / "regimes").glob("share-*/*/model.pt"))
    stamps = [m.stat().st_mtime_ns for m in models]
    again = run_regimes(tmp_path)  # resumable: everything cached, nothing retrained or rescored
    assert again.returncode == 0 and [m.stat().st_mtime_ns for m in models] == stamps
    assert (root / "regimes" / "regimes.md").read_text() == text


def _rows(d_no_adv: tuple[float, ...], mtgan: tuple[float, ...]) -> list[dict[str, object]]:
    return [
        {"regime": regime.name, "method": m, "seed": seed, "APS": v / 100}
        for regime, a, b in zip(regimes.PUBLISHED, d_no_adv, mtgan)
        for m, base in (("d_no_adv", a), ("mtgan", b))
        for seed, v in enumerate((base - 1, base, base + 1))
    ]


def test_the_trend_needs_growth_at_every_step() -> None:
    found = [f for f in regimes.differences(_rows((20, 18, 15), (17, 18, 19))) if f["method"] == "mtgan" and f["metric"] == "APS"]
    assert [round(f["d"], 6) for f in found] == [-3, 0, 4] and [f["held"] for f in found] == [False, False, True] and found[0]["trend"]
    assert [f["seeds"] for f in found] == [3, 3, 3] and found[2]["welch_p"] < 0.05 < found[1]["welch_p"]
    flat = [f for f in regimes.differences(_rows((20, 18, 15), (17, 19, 16))) if f["method"] == "mtgan"]
    assert [round(f["d"], 6) for f in flat] == [-3, 1, 1] and not flat[0]["trend"]  # no growth from 0.25 to 0.0


def test_new_claims_are_judged_by_welch_over_five_seeds() -> None:
    ours = "mtgan-by_size"
    rows = [
        {"regime": regimes.CLOSED.name, "method": m, "seed": seed, "APS": (base + spread) / 100, "acc_positive_small": None}
        for m, base in (("sbu_hr-by_size", 10.0), (ours, 14.0), ("d_no_adv", 13.5))
        for seed, spread in enumerate((-1.0, -0.5, 0.0, 0.5, 1.0, 9.0))  # seed 5 is not among the strict seeds
    ]
    found = {c["lower"]: c for c in regimes.strict_claims(rows)}
    assert found["sbu_hr-by_size"]["seeds"] == 5 and found["sbu_hr-by_size"]["verdict"] == "held (p < 0.05)"
    assert found["d_no_adv"]["verdict"] == "not held" and 0.05 < found["d_no_adv"]["welch_p"] < 0.5


def test_a_subset_of_regimes_is_reported_without_a_trend() -> None:
    assert regimes.chosen_regimes("0.0-neg-0.0,1.0") == (regimes.Regime(1.0), regimes.CLOSED)  # in the registered order
    with pytest.raises(SystemExit, match="unknown 0.5; the regimes are 1.0, 0.25, 0.0, 0.0-neg-0.0"):
        regimes.chosen_regimes("1.0,0.5")
    everything = _rows((20, 18, 15), (17, 18, 19))
    only_default = [r | {"side_rois": [1] * len(regimes.SIDE_BINS)} for r in everything if r["regime"] == "1.0"]
    found = [f for f in regimes.differences(only_default) if f["metric"] == "APS"]
    assert len(found) == 1 and found[0]["trend"] is None  # a trend needs every published regime
    text = regimes.report(only_default, [0, 1, 2], {regimes.Regime(1.0): "all"})
    verdict = next(line for line in text.splitlines() if line.startswith("| MTGAN") and "| APS | 1.0 |" in line)
    assert verdict.endswith("| -3.0 | 1.0 | not held | 3 | 0.989 | n/a |") and "| 0.25 (" not in text
    closed = [{"regime": regimes.CLOSED.name, "method": "mtgan-by_size", "seed": 0, "APS": 0.1, "side_rois": [1] * len(regimes.SIDE_BINS)}]
    text = regimes.report(closed, [0], {regimes.CLOSED: "none"})
    assert "Not judged here: none of its regimes (1.0, 0.25, 0.0) ran." in text and "| MTGAN's path |" not in text


def test_a_subset_of_variants_is_trained_in_the_registered_order() -> None:
    assert regimes.chosen_variants("sbu_hr,mtgan") == ("mtgan", "sbu_hr")
    with pytest.raises(SystemExit, match="unknown srgan; the variants are mtgan, sbu, d_no_adv, sbu_hr"):
        regimes.chosen_variants("mtgan,srgan")
