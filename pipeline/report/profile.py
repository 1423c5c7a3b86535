"""The run's profile: every job's Snakemake benchmark file gathered into one table and one chart.

Per job: wall time, CPU time (user + system of the job's processes), the CPUs it kept busy on
average (CPU / wall), and its peak resident memory; jobs sorted by wall time, then one row per
stage (the job name before its wildcards) with the sum over its jobs. The sum of wall times is the
run's length when the jobs run one after another (torch jobs do: they claim every core); jobs that
ran side by side overlap in it. A job's benchmark is the last run of that job (a cached job keeps
the figures of the run that made it).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from core.io import atomic
from core.plots import plt

COLUMNS = ("job", "stage", "wall_s", "cpu_s", "cpus_busy", "peak_rss_mb")


def read_benchmark(path: Path) -> dict[str, float]:
    """The last row of a Snakemake benchmark TSV: s, max_rss (MB), cpu_time (s), ..."""
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: an empty benchmark file")

    def number(key: str) -> float:
        value = rows[-1].get(key, "NA")
        return float(value) if value not in ("", "NA", "-") else float("nan")

    return {"wall_s": number("s"), "cpu_s": number("cpu_time"), "peak_rss_mb": number("max_rss")}


def profile_rows(benchmarks: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per job (`<stage>:<wildcards>` or `<stage>` -> its benchmark file), slowest first."""
    rows = []
    for job, path in benchmarks.items():
        b = read_benchmark(path)
        busy = b["cpu_s"] / b["wall_s"] if b["wall_s"] > 0 else float("nan")
        rows.append({"job": job, "stage": job.split(":")[0], **b, "cpus_busy": busy})
    return sorted(rows, key=lambda r: -r["wall_s"])


def stage_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage: its jobs' count and summed wall and CPU time, their largest peak memory."""
    totals: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = totals.setdefault(r["stage"], {"stage": r["stage"], "jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0})
        t["jobs"] += 1
        t["wall_s"] += r["wall_s"]
        t["cpu_s"] += r["cpu_s"]
        t["peak_rss_mb"] = max(t["peak_rss_mb"], r["peak_rss_mb"])
    return sorted(totals.values(), key=lambda t: -t["wall_s"])


def profile_markdown(rows: list[dict[str, Any]]) -> str:
    wall = sum(r["wall_s"] for r in rows)
    lines = [
        f"# Run profile: {len(rows)} jobs, {wall:.0f} s of wall time summed over jobs ({wall / 60:.1f} min)",
        "",
        "| stage | jobs | wall s | share | CPU s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in stage_totals(rows):
        share = t["wall_s"] / wall if wall else 0.0
        lines.append(f"| {t['stage']} | {t['jobs']} | {t['wall_s']:.0f} | {share:.0%} | {t['cpu_s']:.0f} | {t['peak_rss_mb']:.0f} |")
    lines += ["", "| job | wall s | CPU s | CPUs busy | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['job']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['cpus_busy']:.2f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_profile(rows: list[dict[str, Any]], out_png: Path) -> None:
    """Wall time per job, slowest at the top, each bar labelled with the CPUs it kept busy and its peak memory."""
    shown = rows[:30][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(shown) + 1.4))
    ax.barh([r["job"] for r in shown], [r["wall_s"] for r in shown], color="#3b6ea8")
    for y, r in enumerate(shown):
        ax.text(r["wall_s"], y, f"  {r['cpus_busy']:.1f} CPUs, {r['peak_rss_mb']:.0f} MB", va="center", fontsize=6)
    total = sum(r["wall_s"] for r in rows)
    ax.set_xlabel("wall time (s)")
    ax.set_title(f"Run profile: the {len(shown)} longest of {len(rows)} jobs ({total / 60:.1f} min summed over jobs)", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, max(r["wall_s"] for r in rows) * 1.3)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic.write_figure(fig, out_png, dpi=100)


def write_profile(benchmarks: dict[str, Path], out_md: Path, out_csv: Path, out_png: Path) -> list[dict[str, Any]]:
    rows = profile_rows(benchmarks)
    atomic.write_text(out_md, profile_markdown(rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    atomic.write_text(out_csv, buffer.getvalue())
    plot_profile(rows, out_png)
    return rows
