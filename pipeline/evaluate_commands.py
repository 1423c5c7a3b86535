"""The commands that turn a trained variant into scores: `mtgan infer` (G and D over the test
shards under one test-time rule), `mtgan merge` (a variant's results files under one rule: alone and in the ensemble), `mtgan score`
(pycocotools) and `mtgan table` (the results table)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import cli_options as opt


@click.command("infer")
@opt.config_option
@opt.sections_option
@click.option("--model", "model_path", required=True, type=opt.existing_files, help="A trained variant's model.pt.")
@click.option("--manifest", required=True, type=opt.existing_files, help="The test split's shard manifest.")
@opt.rule_option
@click.option("--out", "out_table", required=True, type=opt.out_file, help="Per-ROI predictions (.parquet).")
@click.option(
    "--out-accuracy", required=True, type=opt.out_file, help="D's classification accuracy on positive / negative / all ROIs, positives by size (.json)."
)
@opt.threads_option
def infer_cmd(
    config_files: tuple[Path, ...],
    sections_json: str | None,
    model_path: Path,
    manifest: Path,
    rule: str,
    out_table: Path,
    out_accuracy: Path,
    threads: int | None,
) -> None:
    """Stage 6: a trained variant's G and D over the test shards under one test-time rule: K+1
    probabilities and box offsets per ROI."""
    from pipeline.infer import InferSettings, write_inference

    config = opt.resolve_config(config_files, sections_json, need=("infer",))
    opt.set_threads(threads)
    accuracy = write_inference(InferSettings.from_config(config["infer"]), rule, model_path, manifest, out_table, out_accuracy)
    click.echo(f"{accuracy['method']}: accuracy {accuracy['accuracy']}")


@click.command("merge")
@opt.config_option
@opt.sections_option
@click.option("--rois", "rois_path", required=True, type=opt.existing_files, help="The test split's ROI table.")
@click.option("--inference", type=opt.existing_files, help="A variant's per-ROI predictions (without it: the baseline's own scores).")
@click.option("--out", "out_json", required=True, type=opt.out_file, help="COCO results JSON of the method alone.")
@click.option("--out-ensemble", type=opt.out_file, help="Also the ensemble with the baseline (p[c] x p_base[c]) here.")
def merge_cmd(
    config_files: tuple[Path, ...], sections_json: str | None, rois_path: Path, inference: Path | None, out_json: Path, out_ensemble: Path | None
) -> None:
    """Stage 7: per-ROI predictions -> detections (decode, class scores, per-class NMS, top-k per
    image), alone and, with --out-ensemble, in the ensemble with the baseline (the tables read once)."""
    from pipeline.merge import MergeSettings, merge_files

    config = opt.resolve_config(config_files, sections_json, need=("merge",))
    outputs = opt.ensemble_outputs(out_json, out_ensemble)
    for path, count in merge_files(MergeSettings.from_config(config["merge"]), rois_path, inference, outputs).items():
        click.echo(f"{count} detections -> {path}")


@click.command("score")
@opt.index_option
@opt.split_option
@click.option("--results", required=True, type=opt.existing_files, help="COCO results JSON.")
@click.option("--method", required=True, help="Name of the method in the table (baseline, mtgan, mtgan_ensemble, mtgan-by_size, ...; pipeline/methods.py).")
@click.option("--out-json", required=True, type=opt.out_file)
@click.option("--out-md", required=True, type=opt.out_file)
@click.option("--out-eval", type=opt.out_file, help="Also keep COCOeval's accumulated precision / recall / scores arrays here (.npz).")
def score_cmd(data_index: Path, split: str, results: Path, method: str, out_json: Path, out_md: Path, out_eval: Path | None) -> None:
    """Stage 8: pycocotools COCOeval (bbox) of --results on --split: AP, AP50, AP75, APS, APM, APL, AR."""
    from pipeline.data.index import split_coco
    from pipeline.score import write_score

    coco, coco_json, _ = split_coco(data_index, split)
    click.echo(write_score(coco_json, coco, results, method, split, out_json, out_md, out_eval))


@click.command("table")
@opt.outputs_option
@click.option("--accuracy", "accuracy_files", multiple=True, type=opt.existing_files, help="infer's accuracy JSON of each variant (repeatable).")
@click.argument("score_files", nargs=-1, required=True, type=opt.existing_files)
def table_cmd(outputs: tuple[str, ...], accuracy_files: tuple[Path, ...], score_files: tuple[Path, ...]) -> None:
    """Gather the score files of every method into the table (--out csv=, markdown=, per_class=, accuracy=)."""
    from pipeline.table import read_json_files, write_tables

    tables = opt.named_paths(outputs, "--out", must_exist=False)
    click.echo(write_tables(read_json_files(list(score_files)), read_json_files(list(accuracy_files)), tables))
