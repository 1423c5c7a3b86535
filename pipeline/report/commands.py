"""The report's commands (`mtgan report-*`): each writes one part of the report from cached
artifacts, to the output files its rule names (`pipeline/rules/report.smk`)."""

from __future__ import annotations

from pathlib import Path

import click

from jobs.mtgan.settings import DEFAULT_G_MAX_SIDE
from pipeline.cli_options import existing_files, index_option, named_paths, out_file, outputs_option, rule_option, split_option


@click.command("report-charts")
@click.option("--score", "score_files", multiple=True, required=True, type=existing_files, help="score/<method>.json (repeatable).")
@click.option("--eval", "eval_files", multiple=True, required=True, type=existing_files, help="score/<method>_eval.npz, in the order of --score (repeatable).")
@click.option("--accuracy", "accuracy_files", multiple=True, type=existing_files, help="infer/<variant>_accuracy.json (repeatable).")
@click.option("--training", "training_logs", multiple=True, help="VARIANT=mtgan/<variant>/metrics.jsonl (repeatable).")
@outputs_option
def report_charts_cmd(
    score_files: tuple[Path, ...], eval_files: tuple[Path, ...], accuracy_files: tuple[Path, ...], training_logs: tuple[str, ...], outputs: tuple[str, ...]
) -> None:
    """Report: PR curves per size range, AP bars, per-class AP change, training curves, Table 9 chart."""
    from pipeline.report.build import write_charts

    if len(score_files) != len(eval_files):
        raise click.UsageError("give one --eval per --score, in the same order")
    write_charts(
        list(score_files), list(eval_files), list(accuracy_files), named_paths(training_logs, "--training"), named_paths(outputs, "--out", must_exist=False)
    )


@click.command("report-profile")
@click.option("--benchmark", "benchmarks", multiple=True, required=True, help="STAGE[:WILDCARDS]=benchmarks/<job>.tsv (repeatable).")
@outputs_option
def report_profile_cmd(benchmarks: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """Report: the run profile (every job's wall time, CPU time and peak memory) as a table and a chart."""
    from pipeline.report.profile import write_profile

    out = named_paths(outputs, "--out", must_exist=False)
    rows = write_profile(named_paths(benchmarks, "--benchmark"), out["markdown"], out["table"], out["chart"])
    click.echo(f"{len(rows)} jobs, {sum(r['wall_s'] for r in rows) / 60:.1f} min of wall time summed -> {out['markdown']}")


@click.command("report-errors")
@index_option
@split_option
@click.option("--results", "results", multiple=True, required=True, help="METHOD=COCO results JSON (repeatable).")
@outputs_option
def report_errors_cmd(data_index: Path, split: str, results: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """Report: COCO error analysis (C75, C50, Loc, Sim, Oth, BG, FN) of each method, all and small objects."""
    from pipeline.data.index import split_coco
    from pipeline.report.build import write_error_analysis

    _, coco_json, _ = split_coco(data_index, split)
    click.echo(write_error_analysis(coco_json, named_paths(results, "--results"), named_paths(outputs, "--out", must_exist=False)))


@click.command("report-rois")
@index_option
@split_option
@click.option("--model", "model_path", required=True, type=existing_files, help="A trained variant's model.pt.")
@click.option("--manifest", required=True, type=existing_files, help="The test split's shard manifest.")
@click.option("--out", "out_png", required=True, type=out_file)
@click.option("--per-group", default=6, show_default=True, help="ROIs per group (small / large positives, negatives).")
@rule_option
@click.option("--g-max-side", type=float, default=DEFAULT_G_MAX_SIDE, show_default=True, help="infer.g_max_side, for a rule that reads it.")
def report_rois_cmd(data_index: Path, split: str, model_path: Path, manifest: Path, out_png: Path, per_group: int, rule: str, g_max_side: float) -> None:
    """Report: the Fig 3 grid of test ROIs as LR / bicubic / SR / HR with D's scores, framing what D sees under --rule."""
    from pipeline.data.index import split_coco
    from pipeline.report.build import category_names
    from pipeline.report.roi_grid import plot_roi_grid

    coco, _, _ = split_coco(data_index, split)
    plot_roi_grid(model_path, manifest, category_names(coco), out_png, per_group, rule, g_max_side)


@click.command("report-detections")
@index_option
@split_option
@click.option("--baseline", "baseline_results", required=True, type=existing_files, help="The baseline's COCO results JSON.")
@click.option("--results", "method_results", required=True, type=existing_files, help="The method's COCO results JSON.")
@click.option("--method", required=True, help="Name of the method (mtgan, mtgan_ensemble, ...).")
@outputs_option
def report_detections_cmd(data_index: Path, split: str, baseline_results: Path, method_results: Path, method: str, outputs: tuple[str, ...]) -> None:
    """Report: pictures of test images where the method changed the outcome (--out better=, worse=, images=)."""
    from pipeline.data.index import split_coco
    from pipeline.report.build import write_detection_pictures

    _, coco_json, image_root = split_coco(data_index, split)
    counts = write_detection_pictures(coco_json, image_root, baseline_results, method_results, method, named_paths(outputs, "--out", must_exist=False))
    click.echo(f"images by change against the baseline: {counts}")
