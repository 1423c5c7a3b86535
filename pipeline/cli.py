"""The `mtgan` command line: one subcommand per pipeline stage.

The Snakefile's rules call these commands; they are as usable by hand. A command parses its
arguments, resolves its config sections (`--config` files merged in order and validated like the
Snakefile does, or, as the rules pass them, `--sections` JSON) and calls its stage; the stage's
settings come from `<Stage>Settings.from_config(section)` in the stage's own module. The project's
own errors (`core.errors.PipelineError`) print as one line, `Error: ...`, exit status 1; `-v`
adds the traceback. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import yaml

from core.errors import PipelineError
from jobs.mtgan.settings import VARIANTS
from pipeline import cli_options as opt
from pipeline import submit_commands
from pipeline.config import load_config_files, validate_config
from pipeline.report import commands as report_commands
from pipeline.widerface import commands as widerface_commands


class _Group(click.Group):
    """Turns the project's own errors into `Error: <message>` and exit status 1; `-v` adds the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as e:
            if ctx.params.get("verbose"):
                traceback.print_exc()
            raise click.ClickException(str(e)) from e


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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command("config")
@click.argument("files", nargs=-1, required=True, type=opt.existing_files)
def config_cmd(files: tuple[Path, ...]) -> None:
    """Validate config FILES (merged in order) and print the result with every default filled in."""
    resolved = validate_config(load_config_files(files), what=", ".join(map(str, files)))
    click.echo(yaml.safe_dump(resolved, sort_keys=False), nl=False)


@cli.command("data")
@opt.config_option
@opt.sections_option
@click.option("--out", "out_dir", required=True, type=opt.out_folder, help="Output folder, conventionally artifacts/<dataset>/data.")
@click.option("-j", "--jobs", default=1, show_default=True, help="Worker processes for generating images.")
def data_cmd(config_files: tuple[Path, ...], sections_json: str | None, out_dir: Path, jobs: int) -> None:
    """Stage 1: make the dataset available as COCO JSON per split plus an image root.

    \b
    source builtin:   generate the synthetic dataset (deterministic from its seed).
    source coco:      validate a COCO-format dataset on disk and write a cleaned copy of its annotations.
    source widerface: convert WIDER FACE's official files to COCO JSON.
    Writes <split>.json, stats.json, stats.md, preview.png and, last, index.json into --out.
    """
    from pipeline.data.stage import build_dataset

    config = opt.resolve_config(config_files, sections_json, need=("data",))
    for s in build_dataset(config["data"], out_dir, n_jobs=jobs).values():
        click.echo(f"{s.name}: {s.num_images} images, {s.num_annotations} annotations -> {s.annotations}")


@cli.command("train-baseline")
@opt.config_option
@opt.sections_option
@opt.index_option
@click.option("--out", "out_dir", required=True, type=opt.out_folder, help="Output folder, conventionally artifacts/<dataset>/baseline.")
@opt.threads_option
def train_baseline_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, out_dir: Path,
                       threads: int | None) -> None:
    """Train the baseline detector (detector.arch) on the training split (data.train_split).

    \b
    Reads sections data, detector, train_baseline. Writes model.pt, checkpoints/last.pt,
    metrics.jsonl and losses.png into --out; resumes from checkpoints/last.pt when it was made with
    the same settings.
    """
    from jobs.baseline.train import TrainSettings, train_baseline
    from pipeline.data.index import split_coco

    config = opt.resolve_config(config_files, sections_json, need=("data", "detector", "train_baseline"))
    _, coco_json, image_root = split_coco(data_index, config["data"]["train_split"])
    settings = TrainSettings.from_config(config["detector"], config["train_baseline"])
    train_baseline(coco_json, image_root, settings, out_dir, device_name=config["detector"]["device"], threads=threads)


@cli.command("detect")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@click.option("--model", "model_path", type=opt.existing_files,
              help="The trained detector (detector.source train): artifacts/<dataset>/baseline/model.pt.")
@click.option("--out-table", required=True, type=opt.out_file, help="Detections table (.parquet).")
@click.option("--out-results", required=True, type=opt.out_file, help="The same as a COCO results JSON.")
@click.option("--on-bad-image", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="An image that cannot be decoded: stop naming it, or skip it with a count (shards.on_bad_image).")
@opt.threads_option
def detect_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str,
               model_path: Path | None, out_table: Path, out_results: Path, on_bad_image: str, threads: int | None) -> None:
    """Stage 2: the baseline's top-K detections per image of --split, with class-probability vectors.

    \b
    Reads section detector. source train needs --model; source import reads
    detector.import_results[split] and validates it against the split.
    """
    from core.io.tables import write_table
    from pipeline.data.index import split_coco
    from pipeline.detect import detect_split, write_results_json

    config = opt.resolve_config(config_files, sections_json, need=("detector",))
    opt.set_threads(threads)
    coco, _, image_root = split_coco(data_index, split)
    table = detect_split(config["detector"], coco, image_root, split, model_path, on_bad_image, config["data"]["source"])
    write_table(table, out_table)
    write_results_json(table, out_results)
    click.echo(f"{split}: {table.num_rows} detections on {len(coco['images'])} images -> {out_table}")


@cli.command("rois")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@opt.role_option
@click.option("--detections", required=True, type=opt.existing_files, help="The detect stage's table of this split.")
@click.option("--out", "out_table", required=True, type=opt.out_file, help="ROI table (.parquet).")
@click.option("--out-counts", required=True, type=opt.out_file, help="Counts of positive / negative / ignored ROIs per size class (.md).")
def rois_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str, role: str,
             detections: Path, out_table: Path, out_counts: Path) -> None:
    """Stage 3: label every detection of --split against the ground truth (IoU, class, regression target).

    \b
    Reads section rois. For --role train every ground-truth box is added as a positive ROI when
    rois.add_gt_to_train is set; the test and dev roles keep the detections alone.
    """
    from pipeline.data.index import split_coco
    from pipeline.rois import RoiSettings, write_rois

    config = opt.resolve_config(config_files, sections_json, need=("rois",))
    coco, _, _ = split_coco(data_index, split)
    click.echo(write_rois(RoiSettings.from_config(config["rois"]), detections, coco, split, role, out_table, out_counts))


@cli.command("shards")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@opt.role_option
@click.option("--rois", "rois_path", required=True, type=opt.existing_files, help="The rois stage's table of this split.")
@click.option("--chunk", required=True, type=int, help="Which image chunk of the split (0 .. shards.num_chunks - 1).")
@click.option("--out", "out_dir", required=True, type=opt.out_folder,
              help="Chunk folder, conventionally artifacts/<dataset>/shards/<role>/chunk-<chunk>.")
@click.option("-j", "--jobs", default=1, show_default=True, help="Worker processes decoding and cropping images.")
def shards_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str, role: str,
               rois_path: Path, chunk: int, out_dir: Path, jobs: int) -> None:
    """Stage 4: crop the ROIs of one image chunk of --split to HR and bicubic LR images, in HDF5 shards.

    \b
    Reads section shards (--role train is sampled per image). Writes shard-*.h5 and chunk.json
    into --out (replaced whole when complete). `mtgan shards-manifest` then gathers the chunks.
    """
    from pipeline.data.index import split_coco
    from pipeline.shards import ShardSettings, write_chunk

    config = opt.resolve_config(config_files, sections_json, need=("shards",))
    settings = ShardSettings.from_config(config["shards"], role)
    if not 0 <= chunk < settings.num_chunks:
        raise click.UsageError(f"--chunk {chunk} is not in [0, {settings.num_chunks})")
    coco, _, image_root = split_coco(data_index, split)
    info = write_chunk(rois_path, coco, image_root, split, chunk, settings, out_dir, n_jobs=jobs)
    click.echo(f"{split} chunk {chunk}: {info['num_rois']} ROIs in {len(info['shards'])} shard(s) -> {out_dir}")


@cli.command("shards-manifest")
@opt.config_option
@opt.sections_option
@opt.split_option
@opt.role_option
@click.option("--rois", "rois_path", required=True, type=opt.existing_files)
@click.option("--out", "out_path", required=True, type=opt.out_file, help="manifest.json of the split.")
@click.argument("chunk_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def shards_manifest_cmd(config_files: tuple[Path, ...], sections_json: str | None, split: str, role: str, rois_path: Path,
                        out_path: Path, chunk_dirs: tuple[Path, ...]) -> None:
    """Gather the chunk folders of --split into its manifest (shards, counts, histograms, sha256s)."""
    from pipeline.shards import ShardSettings, gather_manifest

    config = opt.resolve_config(config_files, sections_json, need=("shards",))
    doc = gather_manifest(rois_path, list(chunk_dirs), split, ShardSettings.from_config(config["shards"], role), out_path)
    click.echo(f"{split}: {doc['num_rois']} ROIs in {len(doc['shards'])} shards; labels {doc['histograms']['label']}")


@cli.command("audit")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--rois", "rois_path", type=opt.out_file, help="ROI table to check against (default: the one named in the manifest).")
@click.option("--grid", "grid_png", type=opt.out_file,
              help="Write a PNG grid of random LR / HR pairs here (default: audit.png beside the manifest).")
@click.option("--samples", default=32, show_default=True, help="Pairs in the grid.")
def audit_cmd(target: Path, rois_path: Path | None, grid_png: Path | None, samples: int) -> None:
    """Check the ROI shards of a split (TARGET: its folder or manifest.json).

    \b
    Verifies every shard's sha256, layout version, datasets, shapes and dtypes, and the counts
    against the manifest and the ROI table; prints label / size-class / IoU tables; names leftovers
    of interrupted runs; draws random LR / HR pairs. Exits 1 naming the shard and the problem when
    anything is wrong.
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
@opt.config_option
@opt.sections_option
@click.option("--variant", required=True, type=click.Choice(list(VARIANTS)), help="The ablation to train (jobs/mtgan/settings.py, VARIANTS).")
@click.option("--manifest", required=True, type=opt.existing_files, help="The training split's shard manifest.")
@click.option("--out", "out_dir", required=True, type=opt.out_folder, help="Output folder, conventionally artifacts/<dataset>/mtgan/<variant>.")
@opt.threads_option
def train_mtgan_cmd(config_files: tuple[Path, ...], sections_json: str | None, variant: str, manifest: Path, out_dir: Path,
                    threads: int | None) -> None:
    """Stage 5: train one MTGAN variant (MSE pre-training of G, then alternating D / G steps).

    \b
    Reads section mtgan (preset, overrides, seed, device). Writes model.pt, checkpoints/last.pt,
    metrics.jsonl, losses.png and pictures/ into --out; resumes from checkpoints/last.pt when it was
    made with the same settings. Several GPUs: torchrun --nproc_per_node N -m pipeline.cli train-mtgan ...
    """
    from jobs.mtgan.settings import resolve_preset
    from jobs.mtgan.train import train_mtgan

    mtgan = opt.resolve_config(config_files, sections_json, need=("mtgan",))["mtgan"]
    if variant not in VARIANTS:
        raise click.UsageError(f"unknown variant {variant!r}: one of {sorted(VARIANTS)}")
    preset = resolve_preset(mtgan["preset"], mtgan["overrides"])
    train_mtgan(manifest, VARIANTS[variant], preset, out_dir, device_name=mtgan["device"], threads=threads, seed=mtgan["seed"],
                config={"mtgan": {k: v for k, v in mtgan.items() if k != "variants"}})


@cli.command("infer")
@opt.config_option
@opt.sections_option
@click.option("--model", "model_path", required=True, type=opt.existing_files, help="A trained variant's model.pt.")
@click.option("--manifest", required=True, type=opt.existing_files, help="The test split's shard manifest.")
@opt.rule_option
@click.option("--out", "out_table", required=True, type=opt.out_file, help="Per-ROI predictions (.parquet).")
@click.option("--out-accuracy", required=True, type=opt.out_file,
              help="D's classification accuracy on positive / negative / all ROIs, positives by size (.json).")
@opt.threads_option
def infer_cmd(config_files: tuple[Path, ...], sections_json: str | None, model_path: Path, manifest: Path, rule: str,
              out_table: Path, out_accuracy: Path, threads: int | None) -> None:
    """Stage 6: a trained variant's G and D over the test shards under one test-time rule: K+1
    probabilities and box offsets per ROI."""
    from pipeline.infer import InferSettings, write_inference

    config = opt.resolve_config(config_files, sections_json, need=("infer",))
    opt.set_threads(threads)
    accuracy = write_inference(InferSettings.from_config(config["infer"]), rule, model_path, manifest, out_table, out_accuracy)
    click.echo(f"{accuracy['method']}: accuracy {accuracy['accuracy']}")


@cli.command("merge")
@opt.config_option
@opt.sections_option
@click.option("--rois", "rois_path", required=True, type=opt.existing_files, help="The test split's ROI table.")
@click.option("--inference", type=opt.existing_files, help="A variant's per-ROI predictions (without it: the baseline's own scores).")
@click.option("--ensemble", is_flag=True, help="Score p[c] x p_base[c] (the ensemble with the baseline).")
@click.option("--out", "out_json", required=True, type=opt.out_file, help="COCO results JSON.")
def merge_cmd(config_files: tuple[Path, ...], sections_json: str | None, rois_path: Path, inference: Path | None, ensemble: bool,
              out_json: Path) -> None:
    """Stage 7: per-ROI predictions -> detections (decode, class scores, per-class NMS, top-k per image)."""
    from pipeline.merge import MergeSettings, merge_file

    config = opt.resolve_config(config_files, sections_json, need=("merge",))
    count = merge_file(MergeSettings.from_config(config["merge"]), rois_path, inference, ensemble, out_json)
    click.echo(f"{count} detections -> {out_json}")


@cli.command("score")
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


@cli.command("table")
@opt.outputs_option
@click.option("--accuracy", "accuracy_files", multiple=True, type=opt.existing_files, help="infer's accuracy JSON of each variant (repeatable).")
@click.argument("score_files", nargs=-1, required=True, type=opt.existing_files)
def table_cmd(outputs: tuple[str, ...], accuracy_files: tuple[Path, ...], score_files: tuple[Path, ...]) -> None:
    """Gather the score files of every method into the table (--out csv=, markdown=, per_class=, accuracy=)."""
    from pipeline.table import read_json_files, write_tables

    tables = opt.named_paths(outputs, "--out", must_exist=False)
    click.echo(write_tables(read_json_files(list(score_files)), read_json_files(list(accuracy_files)), tables))


for _command in (report_commands.report_charts_cmd, report_commands.report_errors_cmd, report_commands.report_rois_cmd,
                 report_commands.report_detections_cmd, widerface_commands.widerface_score_cmd,
                 widerface_commands.widerface_table_cmd, widerface_commands.widerface_eval_cmd, submit_commands.submission_cmd,
                 submit_commands.rescore_cmd):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="mtgan")


if __name__ == "__main__":
    main()
