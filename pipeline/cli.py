"""The `mtgan` command line: one subcommand per pipeline stage.

The Snakefile's rules call these commands; they are as usable by hand. Each stage reads its
settings either from config files (`--config`, merged in order and validated like the Snakefile
does) or, as the rules pass them, from the config section as JSON (`--section`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import yaml

from pipeline.config import load_config_files, validate_config
from pipeline.errors import PipelineError

USER_ERRORS = (PipelineError, FileNotFoundError, ValueError)


class _Group(click.Group):
    """Turns the project's own errors into `Error: <message>` and exit status 1; `-v` adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if ctx.params.get("verbose"):
                traceback.print_exc()
            raise click.ClickException(str(e)) from e


def _resolve_config(config_files: tuple[Path, ...], sections_json: str | None, need: tuple[str, ...]) -> dict[str, Any]:
    """The validated config (defaults filled in), from files or from the sections' JSON."""
    if bool(config_files) == bool(sections_json):
        raise click.UsageError("give either --config FILE (repeatable) or --sections JSON")
    if sections_json:
        try:
            raw = json.loads(sections_json)
        except json.JSONDecodeError as e:
            raise click.UsageError(f"--sections is not valid JSON: {e}") from None
    else:
        raw = load_config_files(config_files)
    return validate_config(raw, what=", ".join(map(str, config_files)) or "--sections", require=need)


config_option = click.option(
    "--config", "config_files", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
    help="Config YAML file; repeat to merge several (later ones override earlier ones).",
)
sections_option = click.option(
    "--sections", "sections_json", help="The config sections this stage reads, as one JSON object (what the Snakefile passes)."
)
index_option = click.option(
    "--data-index", "data_index", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The data stage's index.json (artifacts/<dataset>/data/index.json).",
)
split_option = click.option("--split", required=True, help="Split name, as in the data index.")
role_option = click.option(
    "--role", required=True, type=click.Choice(["train", "test", "dev"]),
    help="What the ROIs are for: train (ground truth added, sampled), test or dev (the detections as they are). "
         "The same split can serve train and test.",
)
threads_option = click.option(
    "--threads", type=int, default=None,
    callback=lambda ctx, param, value: None if value is None else max(1, min(value, os.cpu_count() or 1)),
    help="CPU threads for torch, at most the machine's CPU count (default: torch's choice).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too, and show the traceback of an error.")
def cli(verbose: bool) -> None:
    """MTGAN for small object detection: the pipeline's stages, one command each.

    \b
    The usual way to run them is Snakemake, which calls these commands in order and caches every
    result under artifacts/:
        snakemake --cores 8 eval_coco
    Each command also runs on its own; `mtgan COMMAND --help` says what it reads and writes.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@cli.command("config")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def config_cmd(files: tuple[Path, ...]) -> None:
    """Validate config FILES (merged in order) and print the result with every default filled in."""
    resolved = validate_config(load_config_files(files), what=", ".join(map(str, files)))
    click.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)


@cli.command("data")
@config_option
@sections_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder, conventionally artifacts/<dataset>/data.")
@click.option("-j", "--jobs", default=1, show_default=True, help="Worker processes for generating images.")
def data_cmd(config_files: tuple[Path, ...], sections_json: str | None, out_dir: Path, jobs: int) -> None:
    """Stage 1: make the dataset available as COCO JSON per split plus an image root.

    \b
    source builtin: generate the synthetic dataset (deterministic from its seed).
    source coco:    validate a COCO-format dataset on disk (boxes, ids, image files) and write a
                    cleaned copy of its annotations; the images stay where they are.
    Writes <split>.json, stats.json, stats.md, preview.png and, last, index.json into --out.
    """
    from pipeline.data.stage import build_dataset

    config = _resolve_config(config_files, sections_json, need=("data",))
    splits = build_dataset(config["data"], out_dir, n_jobs=jobs)
    for s in splits.values():
        click.echo(f"{s.name}: {s.num_images} images, {s.num_annotations} annotations -> {s.annotations}")


def _split_coco(data_index: Path, split: str) -> tuple[dict[str, Any], Path, Path]:
    """The split's COCO dict, its JSON path and its image root, from the data index."""
    from pipeline.data.index import read_index
    from pipeline.io.coco import load_json

    splits = read_index(data_index)
    if split not in splits:
        raise ValueError(f"{data_index}: no split {split!r} (splits: {sorted(splits)})")
    return load_json(splits[split].annotations), splits[split].annotations, splits[split].image_root


@cli.command("train-baseline")
@config_option
@sections_option
@index_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder, conventionally artifacts/<dataset>/baseline.")
@threads_option
def train_baseline_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, out_dir: Path,
                       threads: int | None) -> None:
    """Train the baseline detector (detector.arch) on the training split (data.train_split).

    \b
    Reads sections data, detector, train_baseline. Writes model.pt, checkpoints/last.pt,
    train_log.csv and loss.png into --out; resumes from checkpoints/last.pt when it was made with
    the same settings.
    """
    from jobs.baseline.train import TrainSettings, train_baseline

    config = _resolve_config(config_files, sections_json, need=("data", "detector", "train_baseline"))
    detector, train = config["detector"], config["train_baseline"]
    _, coco_json, image_root = _split_coco(data_index, config["data"]["train_split"])
    settings = TrainSettings(arch=detector["arch"], min_size=detector["min_size"], max_size=detector["max_size"], **train)
    train_baseline(coco_json, image_root, settings, out_dir, device_name=detector["device"], threads=threads)


@cli.command("detect")
@config_option
@sections_option
@index_option
@split_option
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The trained detector (detector.source train): artifacts/<dataset>/baseline/model.pt.")
@click.option("--out-table", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Detections table (.parquet).")
@click.option("--out-results", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The same as a COCO results JSON.")
@threads_option
def detect_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str,
               model_path: Path | None, out_table: Path, out_results: Path, threads: int | None) -> None:
    """Stage 2: the baseline's top-K detections per image of --split, with class-probability vectors.

    \b
    Reads section detector. source train needs --model; source import reads
    detector.import_results[split] and validates it against the split.
    """
    import torch

    from jobs.common import pick_device
    from pipeline.detect import (
        DetectSettings,
        import_detections,
        load_model,
        run_detector,
        write_results_json,
    )
    from pipeline.io.tables import write_table

    config = _resolve_config(config_files, sections_json, need=("detector",))
    detector = config["detector"]
    coco, _, image_root = _split_coco(data_index, split)
    settings = DetectSettings(**{k: detector[k] for k in ("top_k", "score_thresh", "nms_thresh", "min_size", "max_size", "batch_size", "num_workers")})
    if threads:
        torch.set_num_threads(threads)
    if detector["source"] == "import":
        if split not in detector["import_results"]:
            raise ValueError(f"detector.import_results has no file for split {split!r}")
        table, _ = import_detections(Path(detector["import_results"][split]), coco, settings.top_k)
    else:
        if detector["source"] == "train" and model_path is None:
            raise click.UsageError("detector.source is train: give --model (the train_baseline job's model.pt)")
        model, label_map = load_model(detector["source"], detector["arch"], detector["weights"], coco, settings, model_path)
        table = run_detector(model, label_map, coco, image_root, settings, pick_device(detector["device"]), detector["source"])
    write_table(table, out_table)
    write_results_json(table, out_results)
    click.echo(f"{split}: {table.num_rows} detections on {len(coco['images'])} images -> {out_table}")


@cli.command("rois")
@config_option
@sections_option
@index_option
@split_option
@role_option
@click.option("--detections", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The detect stage's table of this split.")
@click.option("--out", "out_table", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ROI table (.parquet).")
@click.option("--out-counts", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Counts of positive / negative / ignored ROIs per size class (.md).")
def rois_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str, role: str,
             detections: Path, out_table: Path, out_counts: Path) -> None:
    """Stage 3: label every detection of --split against the ground truth (IoU, class, regression target).

    \b
    Reads section rois. For --role train every ground-truth box is added as a positive ROI when
    rois.add_gt_to_train is set; --role test keeps the detections alone.
    """
    from pipeline.io import atomic
    from pipeline.io.tables import DETECTIONS_SCHEMA, read_table, write_table
    from pipeline.rois import build_rois, counts_markdown

    config = _resolve_config(config_files, sections_json, need=("rois",))
    rois = config["rois"]
    coco, _, _ = _split_coco(data_index, split)
    add_gt = rois["add_gt_to_train"] and role == "train"
    table, summary = build_rois(read_table(detections, DETECTIONS_SCHEMA), coco, add_gt, rois["positive_iou"], rois["negative_iou"])
    write_table(table, out_table)
    markdown = counts_markdown(f"{split} ({role})", summary)
    atomic.write_text(out_counts, markdown)
    click.echo(markdown)


@cli.command("score")
@index_option
@split_option
@click.option("--results", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="COCO results JSON.")
@click.option("--method", required=True, help="Name of the method in the table (baseline, mtgan, mtgan_ensemble, ...).")
@click.option("--out-json", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out-md", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out-eval", type=click.Path(dir_okay=False, path_type=Path),
              help="Also keep COCOeval's accumulated precision / recall / scores arrays here (.npz).")
def score_cmd(data_index: Path, split: str, results: Path, method: str, out_json: Path, out_md: Path, out_eval: Path | None) -> None:
    """Stage 8: pycocotools COCOeval (bbox) of --results on --split: AP, AP50, AP75, APS, APM, APL, AR."""
    import numpy as np

    from pipeline.io import atomic
    from pipeline.score import coco_bbox_eval, metrics_markdown, per_class_ap

    coco, coco_json, _ = _split_coco(data_index, split)
    stats, evaluator = coco_bbox_eval(coco_json, json.loads(Path(results).read_text()))
    category_ids = sorted(c["id"] for c in coco["categories"])
    atomic.write_json(out_json, {
        "method": method, "split": split, "results": str(results), "metrics": stats,
        "per_class_ap": per_class_ap(evaluator, category_ids),
        "category_names": {str(c["id"]): c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])},
    }, indent=2)
    if out_eval is not None:
        arrays = {k: evaluator.eval[k] for k in ("precision", "recall", "scores")} if evaluator else {}
        with atomic.atomic_path(out_eval) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    table = metrics_markdown({method: stats})
    atomic.write_text(out_md, table)
    click.echo(table)


@cli.command("infer")
@config_option
@sections_option
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A trained variant's model.pt.")
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The test split's shard manifest.")
@click.option("--out", "out_table", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Per-ROI predictions (.parquet).")
@click.option("--out-accuracy", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="D's classification accuracy on positive / negative / all ROIs (.json).")
@threads_option
def infer_cmd(config_files: tuple[Path, ...], sections_json: str | None, model_path: Path, manifest: Path, out_table: Path,
              out_accuracy: Path, threads: int | None) -> None:
    """Stage 6: a trained variant's G and D over the test shards: K+1 probabilities and box offsets per ROI."""
    import torch

    from jobs.common import pick_device
    from pipeline.infer import infer
    from pipeline.io import atomic
    from pipeline.io.tables import write_table

    config = _resolve_config(config_files, sections_json, need=("infer",))
    if threads:
        torch.set_num_threads(threads)
    table, accuracy = infer(model_path, manifest, pick_device(config["infer"]["device"]), config["infer"]["batch_size"])
    write_table(table, out_table)
    atomic.write_json(out_accuracy, accuracy, indent=2)
    click.echo(f"{accuracy['variant']}: {table.num_rows} ROIs; accuracy {accuracy['accuracy']}")


@cli.command("merge")
@config_option
@sections_option
@click.option("--rois", "rois_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The test split's ROI table.")
@click.option("--inference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A variant's per-ROI predictions (without it: the baseline's own scores).")
@click.option("--ensemble", is_flag=True, help="Score p[c] x p_base[c] (the ensemble with the baseline).")
@click.option("--out", "out_json", required=True, type=click.Path(dir_okay=False, path_type=Path), help="COCO results JSON.")
def merge_cmd(config_files: tuple[Path, ...], sections_json: str | None, rois_path: Path, inference: Path | None, ensemble: bool,
              out_json: Path) -> None:
    """Stage 7: per-ROI predictions -> detections (decode, class scores, per-class NMS, top-k per image)."""
    from pipeline.io import atomic
    from pipeline.io.tables import (
        INFERENCE_SCHEMA,
        ROIS_SCHEMA,
        file_metadata,
        read_table,
    )
    from pipeline.merge import MergeSettings, merge_detections

    config = _resolve_config(config_files, sections_json, need=("merge",))
    m = config["merge"]
    settings = MergeSettings(m["nms_iou"], m["score_floor"], m["max_per_image"])
    predictions = read_table(inference, INFERENCE_SCHEMA) if inference else None
    records = merge_detections(read_table(rois_path, ROIS_SCHEMA), predictions, settings, ensemble,
                               list(file_metadata(rois_path)["category_ids"]))
    atomic.write_json(out_json, records)
    click.echo(f"{len(records)} detections -> {out_json}")


@cli.command("table")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--accuracy", "accuracy_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="infer's accuracy JSON of each variant (repeatable).")
@click.argument("score_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def table_cmd(out_dir: Path, accuracy_files: tuple[Path, ...], score_files: tuple[Path, ...]) -> None:
    """Gather the score files of every method into metrics.csv / metrics.md / per_class_ap.csv / accuracy.csv."""
    from pipeline.table import load_json, write_tables

    click.echo(write_tables(load_json(list(score_files)), load_json(list(accuracy_files)), out_dir))


def _shard_settings(config: dict[str, Any], role: str) -> Any:
    from pipeline.shards import ShardSettings

    shards = config["shards"]
    sampling = shards["train_sampling"]
    use_sampling = sampling["enabled"] and role == "train"
    return ShardSettings(
        hr_size=shards["hr_size"], scale=shards["scale"], context_margin=shards["context_margin"],
        rois_per_shard=shards["rois_per_shard"], block_size=shards["block_size"], num_chunks=shards["num_chunks"],
        on_bad_image=shards["on_bad_image"],
        sampling={k: sampling[k] for k in ("rois_per_image", "positive_fraction", "seed")} if use_sampling else None,
    )


@cli.command("shards")
@config_option
@sections_option
@index_option
@split_option
@role_option
@click.option("--rois", "rois_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The rois stage's table of this split.")
@click.option("--chunk", required=True, type=int, help="Which image chunk of the split (0 .. shards.num_chunks - 1).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Chunk folder, conventionally artifacts/<dataset>/shards/<role>/chunk-<chunk>.")
@click.option("-j", "--jobs", default=1, show_default=True, help="Worker processes decoding and cropping images.")
def shards_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str, role: str,
               rois_path: Path, chunk: int, out_dir: Path, jobs: int) -> None:
    """Stage 4: crop the ROIs of one image chunk of --split to HR and bicubic LR images, in HDF5 shards.

    \b
    Reads section shards (--role train is sampled per image). Writes shard-*.h5 and chunk.json
    into --out (replaced whole when complete). `mtgan shards-manifest` then gathers the chunks.
    """
    from pipeline.shards import write_chunk

    config = _resolve_config(config_files, sections_json, need=("shards",))
    settings = _shard_settings(config, role)
    if not 0 <= chunk < settings.num_chunks:
        raise click.UsageError(f"--chunk {chunk} is not in [0, {settings.num_chunks})")
    coco, _, image_root = _split_coco(data_index, split)
    info = write_chunk(rois_path, coco, image_root, split, chunk, settings, out_dir, n_jobs=jobs)
    click.echo(f"{split} chunk {chunk}: {info['num_rois']} ROIs in {len(info['shards'])} shard(s) -> {out_dir}")


@cli.command("shards-manifest")
@config_option
@sections_option
@split_option
@role_option
@click.option("--rois", "rois_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="manifest.json of the split.")
@click.argument("chunk_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def shards_manifest_cmd(config_files: tuple[Path, ...], sections_json: str | None, split: str, role: str, rois_path: Path,
                        out_path: Path, chunk_dirs: tuple[Path, ...]) -> None:
    """Gather the chunk folders of --split into its manifest (shards, counts, histograms, sha256s)."""
    from pipeline.shards import gather_manifest

    config = _resolve_config(config_files, sections_json, need=("shards",))
    doc = gather_manifest(rois_path, list(chunk_dirs), split, _shard_settings(config, role), out_path)
    click.echo(f"{split}: {doc['num_rois']} ROIs in {len(doc['shards'])} shards; labels {doc['histograms']['label']}")


@cli.command("audit")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--rois", "rois_path", type=click.Path(dir_okay=False, path_type=Path),
              help="ROI table to check against (default: the one named in the manifest).")
@click.option("--grid", "grid_png", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG grid of random LR / HR pairs here (default: audit.png beside the manifest).")
@click.option("--samples", default=32, show_default=True, help="Pairs in the grid.")
def audit_cmd(target: Path, rois_path: Path | None, grid_png: Path | None, samples: int) -> None:
    """Check the ROI shards of a split (TARGET: its folder or manifest.json).

    \b
    Verifies every shard's sha256, layout version, datasets, shapes and dtypes, and the counts
    against the manifest and the ROI table; prints label / size-class / IoU tables; draws random
    LR / HR pairs. Exits 1 naming the shard and the problem when anything is wrong.
    """
    from pipeline.audit import audit, draw_pairs

    report, readable = audit(target, rois_path)
    click.echo(report.table())
    out = grid_png or (Path(target) if Path(target).is_dir() else Path(target).parent) / "audit.png"
    draw_pairs(readable, out, count=samples)
    click.echo(f"LR / HR pairs: {out}")
    if report.problems:
        raise click.ClickException(f"{len(report.problems)} problem(s):\n  " + "\n  ".join(report.problems))
    click.echo("OK: every shard matches its manifest and the ROI table")


@cli.command("train-mtgan")
@config_option
@sections_option
@click.option("--variant", required=True, help="mtgan, sbu, d_no_adv, no_reg_branch, no_adv_loss, no_cls_loss or no_reg_loss.")
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The training split's shard manifest.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder, conventionally artifacts/<dataset>/mtgan/<variant>.")
@threads_option
def train_mtgan_cmd(config_files: tuple[Path, ...], sections_json: str | None, variant: str, manifest: Path, out_dir: Path,
                    threads: int | None) -> None:
    """Stage 5: train one MTGAN variant (MSE pre-training of G, then alternating D / G steps).

    \b
    Reads section mtgan (preset, overrides, seed, device). Writes model.pt, checkpoints/last.pt,
    metrics.jsonl, losses.png and pictures/ into --out; resumes from checkpoints/last.pt when it was
    made with the same settings. Several GPUs: torchrun --nproc_per_node N -m pipeline.cli train-mtgan ...
    """
    from jobs.mtgan.settings import VARIANTS, resolve_preset
    from jobs.mtgan.train import train_mtgan

    config = _resolve_config(config_files, sections_json, need=("mtgan",))
    mtgan = config["mtgan"]
    if variant not in VARIANTS:
        raise click.UsageError(f"unknown variant {variant!r}: one of {sorted(VARIANTS)}")
    preset = resolve_preset(mtgan["preset"], mtgan["overrides"])
    train_mtgan(manifest, VARIANTS[variant], preset, out_dir, device_name=mtgan["device"], threads=threads, seed=mtgan["seed"])


def _named_paths(values: tuple[str, ...], option: str) -> dict[str, Path]:
    """`NAME=PATH` option values -> {name: path}; each file must exist."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name:
            raise click.UsageError(f"{option} takes NAME=PATH, got {value!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{option} {name}: {path}: file not found")
        out[name] = Path(path)
    return out


existing_files = click.Path(exists=True, dir_okay=False, path_type=Path)
out_dir_option = click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                              help="Output folder, conventionally artifacts/<dataset>/report.")


@cli.command("report-charts")
@click.option("--score", "score_files", multiple=True, required=True, type=existing_files, help="score/<method>.json (repeatable).")
@click.option("--eval", "eval_files", multiple=True, required=True, type=existing_files,
              help="score/<method>_eval.npz, in the order of --score (repeatable).")
@click.option("--accuracy", "accuracy_files", multiple=True, type=existing_files, help="infer/<variant>_accuracy.json (repeatable).")
@click.option("--training", "training_logs", multiple=True, help="VARIANT=mtgan/<variant>/metrics.jsonl (repeatable).")
@out_dir_option
def report_charts_cmd(score_files: tuple[Path, ...], eval_files: tuple[Path, ...], accuracy_files: tuple[Path, ...],
                      training_logs: tuple[str, ...], out_dir: Path) -> None:
    """Report: PR curves per size range, AP bars, per-class AP change, training curves, Table 9 chart."""
    from pipeline.report.build import write_charts

    if len(score_files) != len(eval_files):
        raise click.UsageError("give one --eval per --score, in the same order")
    write_charts(list(score_files), list(eval_files), list(accuracy_files), _named_paths(training_logs, "--training"), out_dir)


@cli.command("report-errors")
@index_option
@split_option
@click.option("--results", "results", multiple=True, required=True, help="METHOD=COCO results JSON (repeatable).")
@out_dir_option
def report_errors_cmd(data_index: Path, split: str, results: tuple[str, ...], out_dir: Path) -> None:
    """Report: COCO error analysis (C75, C50, Loc, Sim, Oth, BG, FN) of each method, all and small objects."""
    from pipeline.report.build import write_error_analysis

    _, coco_json, _ = _split_coco(data_index, split)
    click.echo(write_error_analysis(coco_json, _named_paths(results, "--results"), out_dir))


@cli.command("report-rois")
@index_option
@split_option
@click.option("--model", "model_path", required=True, type=existing_files, help="A trained variant's model.pt.")
@click.option("--manifest", required=True, type=existing_files, help="The test split's shard manifest.")
@click.option("--out", "out_png", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--per-group", default=6, show_default=True, help="ROIs per group (small / large positives, negatives).")
def report_rois_cmd(data_index: Path, split: str, model_path: Path, manifest: Path, out_png: Path, per_group: int) -> None:
    """Report: the Fig 3 grid of test ROIs as LR / bicubic / SR / HR with D's scores."""
    from pipeline.report.build import category_names
    from pipeline.report.roi_grid import plot_roi_grid

    coco, _, _ = _split_coco(data_index, split)
    plot_roi_grid(model_path, manifest, category_names(coco), out_png, per_group)


@cli.command("report-detections")
@index_option
@split_option
@click.option("--baseline", "baseline_results", required=True, type=existing_files, help="The baseline's COCO results JSON.")
@click.option("--results", "method_results", required=True, type=existing_files, help="The method's COCO results JSON.")
@click.option("--method", required=True, help="Name of the method (mtgan, mtgan_ensemble, ...).")
@out_dir_option
def report_detections_cmd(data_index: Path, split: str, baseline_results: Path, method_results: Path, method: str,
                          out_dir: Path) -> None:
    """Report: pictures of test images where the method changed the outcome, and the list as CSV."""
    from pipeline.report.build import write_detection_pictures

    _, coco_json, image_root = _split_coco(data_index, split)
    counts = write_detection_pictures(coco_json, image_root, baseline_results, method_results, method, out_dir)
    click.echo(f"images by change against the baseline: {counts}")


@cli.command("widerface-score")
@index_option
@split_option
@click.option("--results", required=True, type=existing_files, help="COCO results JSON of the method.")
@click.option("--method", required=True, help="Name of the method (baseline, mtgan, mtgan_ensemble, ...).")
@click.option("--ground-truth", "gt_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat (the toolkit's ground_truth).")
@click.option("--out-json", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out-curves", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PR curves (.npz).")
@click.option("--out-predictions", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the detections in the official layout (<event>/<image>.txt).")
def widerface_score_cmd(data_index: Path, split: str, results: Path, method: str, gt_dir: Path, out_json: Path,
                        out_curves: Path, out_predictions: Path) -> None:
    """Stage 8, WIDER FACE: the official Easy / Medium / Hard evaluation (MATLAB toolkit logic)."""
    from pipeline.io.coco import read_json
    from pipeline.widerface.report import results_markdown
    from pipeline.widerface.score import score_widerface, write_score

    coco, _, _ = _split_coco(data_index, split)
    result, predictions = score_widerface(coco, read_json(results), gt_dir, split)
    write_score(method, split, results, result, predictions, out_json, out_curves, out_predictions)
    click.echo(results_markdown({method: result}))


@cli.command("widerface-table")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.argument("score_files", nargs=-1, required=True, type=existing_files)
def widerface_table_cmd(out_dir: Path, score_files: tuple[Path, ...]) -> None:
    """Gather widerface-score's <method>.json files (each with its <method>_pr.npz beside it) into
    widerface.md / widerface.csv / widerface_pr.png (the paper's Table 8)."""
    from pipeline.widerface.score import write_table

    pairs = [(p, p.with_name(f"{p.stem}_pr.npz")) for p in score_files]
    click.echo(write_table(pairs, out_dir))


@cli.command("widerface-eval")
@click.option("--ground-truth", "gt_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat (the toolkit's ground_truth).")
@click.option("--coco", "coco_json", type=existing_files,
              help="For a COCO results JSON: the COCO JSON of the val images it refers to (ids -> file names).")
@click.option("--out-json", type=click.Path(dir_okay=False, path_type=Path), help="Also write the APs and counts here.")
@click.option("--out-png", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the PR curves (3 panels) here.")
@click.argument("predictions", type=click.Path(exists=True, path_type=Path))
def widerface_eval_cmd(gt_dir: Path, coco_json: Path | None, out_json: Path | None, out_png: Path | None, predictions: Path) -> None:
    """The official WIDER FACE evaluation of any detector's PREDICTIONS on val: a folder in the official
    layout (<event>/<image>.txt), or a COCO results JSON with --coco. Prints Easy / Medium / Hard AP."""
    from pipeline.io import atomic
    from pipeline.io.coco import load_json, read_json
    from pipeline.widerface.ground_truth import load_ground_truth
    from pipeline.widerface.predictions import predictions_from_coco_results, read_prediction_dir
    from pipeline.widerface.protocol import evaluate
    from pipeline.widerface.report import plot_pr_curves, result_to_json, results_markdown
    from pipeline.widerface.score import image_keys

    gt = load_ground_truth(gt_dir)
    if predictions.is_dir():
        found = read_prediction_dir(predictions, gt.images)
        keys = None
    else:
        if coco_json is None:
            raise click.UsageError("a COCO results JSON needs --coco: the COCO JSON its image ids refer to")
        key_by_id = image_keys(load_json(coco_json))
        found = predictions_from_coco_results(read_json(predictions), key_by_id)
        keys = list(key_by_id.values())
    result = evaluate(gt, found, image_keys=keys)
    if out_json:
        atomic.write_json(out_json, {"predictions": str(predictions), **result_to_json(result)}, indent=2)
    if out_png:
        plot_pr_curves({predictions.name: result}, out_png, f"WIDER FACE val: {predictions.name}")
    click.echo(results_markdown({predictions.name: result}))


def main() -> None:
    cli(prog_name="mtgan")


if __name__ == "__main__":
    main()
