"""The WIDER FACE commands (`mtgan widerface-*`): the official evaluation of a method in the
pipeline, the Table 8 gathering, and the evaluation of any detector's output on its own."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli_options import existing_files, index_option, named_paths, out_file, out_folder, outputs_option, split_option

ground_truth_option = click.option(
    "--ground-truth",
    "gt_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat (the toolkit's ground_truth).",
)


@click.command("widerface-score")
@index_option
@split_option
@click.option("--results", required=True, type=existing_files, help="COCO results JSON of the method.")
@click.option("--method", required=True, help="Name of the method (baseline, mtgan, mtgan_ensemble, ...).")
@ground_truth_option
@click.option("--out-json", required=True, type=out_file)
@click.option("--out-curves", required=True, type=out_file, help="PR curves (.npz).")
@click.option("--out-predictions", required=True, type=out_folder, help="Folder for the detections in the official layout (<event>/<image>.txt).")
def widerface_score_cmd(
    data_index: Path, split: str, results: Path, method: str, gt_dir: Path, out_json: Path, out_curves: Path, out_predictions: Path
) -> None:
    """Stage 8, WIDER FACE: the official Easy / Medium / Hard evaluation (MATLAB toolkit logic)."""
    from core.io.coco import read_json
    from pipeline.data.index import split_coco
    from pipeline.widerface.report import results_markdown
    from pipeline.widerface.score import score_widerface, write_score

    coco, _, _ = split_coco(data_index, split)
    result, predictions = score_widerface(coco, read_json(results), gt_dir, split)
    write_score(method, split, results, result, predictions, out_json, out_curves, out_predictions)
    click.echo(results_markdown({method: result}))


@click.command("widerface-table")
@outputs_option
@click.argument("score_files", nargs=-1, required=True, type=existing_files)
def widerface_table_cmd(outputs: tuple[str, ...], score_files: tuple[Path, ...]) -> None:
    """Gather widerface-score's <method>.json files (each with its <method>_pr.npz beside it) into the
    paper's Table 8 (--out markdown=, csv=, figure=)."""
    from pipeline.widerface.score import write_widerface_table

    pairs = [(p, p.with_name(f"{p.stem}_pr.npz")) for p in score_files]
    click.echo(write_widerface_table(pairs, named_paths(outputs, "--out", must_exist=False)))


@click.command("widerface-eval")
@ground_truth_option
@click.option("--coco", "coco_json", type=existing_files, help="For a COCO results JSON: the COCO JSON of the val images it refers to (ids -> file names).")
@click.option("--out-json", type=out_file, help="Also write the APs and counts here.")
@click.option("--out-png", type=out_file, help="Also draw the PR curves (3 panels) here.")
@click.argument("predictions", type=click.Path(exists=True, path_type=Path))
def widerface_eval_cmd(gt_dir: Path, coco_json: Path | None, out_json: Path | None, out_png: Path | None, predictions: Path) -> None:
    """The official WIDER FACE evaluation of any detector's PREDICTIONS on val: a folder in the official
    layout (<event>/<image>.txt), or a COCO results JSON with --coco. Prints Easy / Medium / Hard AP."""
    from pipeline.widerface.score import evaluate_any

    click.echo(evaluate_any(gt_dir, predictions, coco_json, out_json, out_png))
