"""The commands for images without ground truth: `mtgan submission` (a method's results files of
the unlabelled split, as the submit_coco target makes them) and `mtgan rescore` (a trained model
over any detector's results on any images)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import cli_options as opt


@click.command("submission")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@click.option("--method", required=True, help="baseline, or a variant (mtgan, sbu, ...) with or without -<rule> (not _ensemble: see --out-ensemble).")
@click.option("--detections", type=opt.existing_files, help="The baseline's results: the detect stage's <split>_results.json.")
@click.option("--rois", "rois_path", type=opt.existing_files, help="A variant's: the split's ROI table (rois/submit.parquet) ...")
@click.option("--inference", type=opt.existing_files, help="... and the variant's per-ROI predictions on it.")
@click.option("--out", "out_json", required=True, type=opt.out_file, help="detections_<split>_<method>_results.json")
@click.option("--out-ensemble", type=opt.out_file, help="A variant's ensemble with the baseline (p[c] x p_base[c]): ..._<method>_ensemble_results.json")
def submission_cmd(
    config_files: tuple[Path, ...],
    sections_json: str | None,
    data_index: Path,
    split: str,
    method: str,
    detections: Path | None,
    rois_path: Path | None,
    inference: Path | None,
    out_json: Path,
    out_ensemble: Path | None,
) -> None:
    """A method's detections on an unlabelled split (data.submit_split), checked as a COCO results
    file for the split's image list (ids, categories, at most max_per_image per image, xywh, scores);
    a variant's in the ensemble with the baseline too, with --out-ensemble."""
    from pipeline.data.index import split_coco
    from pipeline.merge import MergeSettings
    from pipeline.submit import submission

    config = opt.resolve_config(config_files, sections_json, need=("merge",))
    coco, _, _ = split_coco(data_index, split)
    outputs = opt.ensemble_outputs(out_json, out_ensemble)
    for path, counts in submission(method, coco, MergeSettings.from_config(config["merge"]), outputs, detections, rois_path, inference).items():
        click.echo(f"{counts['detections']} detections on {counts['images_with_detections']} of {counts['images']} images -> {path}")


@click.command("rescore")
@click.option(
    "--model", "model_path", required=True, type=opt.existing_files, help="A trained variant's model.pt (artifacts/<dataset>/mtgan/<variant>/model.pt)."
)
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A folder of images (ids 1..N in sorted file-name order), or an image-info / COCO JSON.",
)
@click.option(
    "--image-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where a JSON's file_name entries are (default: <json folder>/images, else the JSON's folder).",
)
@click.option(
    "--detections",
    required=True,
    type=opt.existing_files,
    help="Any detector's COCO results JSON on these images, or the detect stage's table (detect/<split>.parquet).",
)
@click.option("--out", "out_json", required=True, type=opt.out_file, help="The re-scored detections (COCO results JSON).")
@click.option("--ensemble", is_flag=True, help="Score p[c] x p_base[c]: MTGAN times the detector's own scores.")
@click.option("--top-k", default=100, show_default=True, type=click.IntRange(min=1), help="Detections per image taken from the detector, best first.")
@opt.config_option
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1), help="ROIs per inference batch.")
@opt.device_option
@opt.rule_option
@opt.threads_option
def rescore_cmd(
    model_path: Path,
    images: Path,
    image_root: Path | None,
    detections: Path,
    out_json: Path,
    ensemble: bool,
    top_k: int,
    config_files: tuple[Path, ...],
    batch_size: int,
    device: str,
    rule: str,
    threads: int | None,
) -> None:
    """Re-score another detector's results with a trained MTGAN: the pipeline's crop / infer / merge
    code in one command (merge settings and infer.g_max_side from --config, default
    config/default.yaml's)."""
    from pipeline.config import load_config_files, validate_config
    from pipeline.merge import MergeSettings
    from pipeline.submit import rescore

    if out_json.exists():
        raise click.BadParameter(f"{out_json} exists: rescore never overwrites a file; choose another --out", param_hint="--out")
    opt.set_threads(threads)
    config = validate_config(load_config_files(config_files), require=())
    settings = MergeSettings.from_config(config["merge"])
    counts = rescore(model_path, images, detections, out_json, settings, ensemble, top_k, image_root, batch_size, device, rule, config["infer"]["g_max_side"])
    click.echo(f"{counts['detections']} detections on {counts['images_with_detections']} of {counts['images']} images -> {out_json}")
