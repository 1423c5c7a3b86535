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
    methods = ("mtgan", "mtgan-by_size", "sbu", "d_no_adv")
    assert sorted((r["share"], r["seed"], r["method"]) for r in rows) == sorted((str(s), "0", m) for s in regimes.SHARES for m in methods)
    with open(root / "eval" / "metrics.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    for r in (r for r in rows if r["share"] == "1.0" and r["seed"] == "0"):  # the pipeline's own models: its numbers
        assert f"{100 * float(r['AP']):.1f}" == table[r["method"]]["AP"] and f"{100 * float(r['APS']):.1f}" == table[r["method"]]["APS"], r["method"]

    train = read_manifest(root / "shards" / "train" / "manifest.json")
    quarter, none = (read_manifest(root / "regimes" / f"share-{s}" / "shards" / "manifest.json") for s in (0.25, 0.0))
    sampled = quarter["small_positives"]["sampled"]
    assert sampled > 0 and quarter["small_positives"]["kept"] == round(0.25 * sampled) and none["small_positives"]["kept"] == 0
    assert quarter["num_rois"] == train["num_rois"] - (sampled - round(0.25 * sampled)) and none["num_rois"] == train["num_rois"] - sampled
    assert (root / "regimes" / "share-0.0" / "mtgan-seed0" / "model.pt").is_file()

    text = (root / "regimes" / "regimes.md").read_text()
    assert "| 0.0 (0 of " in text and "MTGAN: G for small crops, HR crop above (ours) | APS | 0.25 |" in text
    judged = [line for line in text.splitlines() if line.startswith("| MTGAN") and "| APS |" in line]
    assert len(judged) == 6  # 2 paths x 3 regimes (no small positive test ROI in the tiny split: no accuracy verdict)
    for name in ("regimes.png", *(f"by_side_{s}.png" for s in regimes.SHARES)):
        with Image.open(root / "regimes" / name) as im:
            assert im.format == "PNG" and min(im.size) > 200, name

    models = sorted((root / "regimes").glob("share-*/*/model.pt"))
    stamps = [m.stat().st_mtime_ns for m in models]
    again = run_regimes(tmp_path)  # resumable: everything cached, nothing retrained or rescored
    assert again.returncode == 0 and [m.stat().st_mtime_ns for m in models] == stamps
    assert (root / "regimes" / "regimes.md").read_text() == text


def test_the_trend_needs_growth_at_every_step() -> None:
    def rows(d_no_adv: tuple[float, ...], mtgan: tuple[float, ...]) -> list[dict[str, object]]:
        return [
            {"share": share, "method": m, "seed": seed, "APS": v / 100}
            for share, a, b in zip(regimes.SHARES, d_no_adv, mtgan)
            for m, base in (("d_no_adv", a), ("mtgan", b))
            for seed, v in enumerate((base - 1, base, base + 1))
        ]

    found = [f for f in regimes.differences(rows((20, 18, 15), (17, 18, 19))) if f["method"] == "mtgan" and f["metric"] == "APS"]
    assert [round(f["d"], 6) for f in found] == [-3, 0, 4] and [f["held"] for f in found] == [False, False, True] and found[0]["trend"]
    flat = [f for f in regimes.differences(rows((20, 18, 15), (17, 19, 16))) if f["method"] == "mtgan"]
    assert [round(f["d"], 6) for f in flat] == [-3, 1, 1] and not flat[0]["trend"]  # no growth from 0.25 to 0.0
