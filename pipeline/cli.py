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
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import click
import yaml

from core.errors import PipelineError, disk_full_message
from pipeline import cli_options as opt
from pipeline import evaluate_commands, submit_commands, train_commands
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
        except PermissionError as e:  # a folder made read-only while the command ran
            if ctx.params.get("verbose"):
                traceback.print_exc()
            raise click.ClickException(f"{e.filename}: {e.strerror}; nothing half-written is left under an output's name") from e
        except (OSError, RuntimeError) as e:  # a full disk, however the writing library says it
            if (message := disk_full_message(e, _output_place(sys.argv))) is None:
                raise
            if ctx.params.get("verbose"):
                traceback.print_exc()
            raise click.ClickException(message) from e
        finally:
            stop_pool_workers()


def _output_place(argv: list[str]) -> str:
    """Where a command writes: its first `--out...` option's value (the working folder without one)."""
    for flag, value in zip(argv, argv[1:]):
        if flag.startswith("--out"):
            return value
    return "."


def stop_pool_workers() -> None:
    """End joblib's worker processes (the data and shards stages' pool): its executor keeps them,
    and their resource trackers, alive for minutes after the work, or after the command was killed."""
    executors = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(executors, "_executor", None)  # None: no pool was started (getting one would start it)
    if executor is not None:
        executor.shutdown(wait=False, kill_workers=True)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (Snakemake stopping a job, `kill`) ends the command as Ctrl-C does: temporary entries
    are removed and the pool's workers stopped on the way out."""
    raise SystemExit(128 + signum)


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
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


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
@opt.jobs_option("generating images")
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


@cli.command("detect")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@click.option("--model", "model_path", type=opt.existing_files, help="The trained detector (detector.source train): artifacts/<dataset>/baseline/model.pt.")
@click.option("--out-table", required=True, type=opt.out_file, help="Detections table (.parquet).")
@click.option(
    "--on-bad-image",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="An image that cannot be decoded: stop naming it, or skip it with a count (shards.on_bad_image).",
)
@opt.threads_option
def detect_cmd(
    config_files: tuple[Path, ...],
    sections_json: str | None,
    data_index: Path,
    split: str,
    model_path: Path | None,
    out_table: Path,
    on_bad_image: str,
    threads: int | None,
) -> None:
    """Stage 2: the baseline's top-K detections per image of --split, with class-probability vectors.

    \b
    Reads section detector. source train needs --model; source import reads
    detector.import_results[split] and validates it against the split. `mtgan results` writes a
    table's COCO results JSON (for a split that is scored or submitted).
    """
    from pipeline.data.index import data_source, split_coco
    from pipeline.detect import detect_split

    config = opt.resolve_config(config_files, sections_json, need=("detector",))
    opt.set_threads(threads)
    coco, _, image_root = split_coco(data_index, split)
    rows = detect_split(config["detector"], coco, image_root, split, out_table, model_path, on_bad_image, data_source(data_index))
    click.echo(f"{split}: {rows} detections on {len(coco['images'])} images -> {out_table}")


@cli.command("results")
@click.option("--detections", required=True, type=opt.existing_files, help="The detect stage's table of a split.")
@click.option("--out", "out_json", required=True, type=opt.out_file, help="COCO results JSON.")
def results_cmd(detections: Path, out_json: Path) -> None:
    """The baseline's detections of a split as a COCO results JSON (written in parts)."""
    from pipeline.detect import write_results_json

    click.echo(f"{write_results_json(detections, out_json)} detections -> {out_json}")


@cli.command("rois")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@opt.role_option
@click.option("--detections", required=True, type=opt.existing_files, help="The detect stage's table of this split.")
@click.option("--out", "out_table", required=True, type=opt.out_file, help="ROI table (.parquet).")
@click.option("--out-counts", required=True, type=opt.out_file, help="Counts of positive / negative / ignored ROIs per size class (.md).")
def rois_cmd(
    config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str, role: str, detections: Path, out_table: Path, out_counts: Path
) -> None:
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


@cli.command("shards-plan")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@opt.role_option
@click.option("--rois", "rois_path", required=True, type=opt.existing_files, help="The rois stage's table of this split.")
@click.option("--out-plan", required=True, type=opt.out_file, help="The kept ROIs and their chunks (.parquet).")
@click.option("--out-images", required=True, type=opt.out_file, help="The split's images, their files and chunks (.parquet).")
def shards_plan_cmd(
    config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, split: str, role: str, rois_path: Path, out_plan: Path, out_images: Path
) -> None:
    """Stage 4, once per split: which ROIs go into shards (--role train is sampled per image and
    thinned as configured) and which chunk writes each; the chunk jobs read only their part."""
    from pipeline.data.index import split_coco
    from pipeline.shards import ShardSettings, plan_shards

    config = opt.resolve_config(config_files, sections_json, need=("shards",))
    coco, _, _ = split_coco(data_index, split)
    plan = plan_shards(rois_path, coco, split, ShardSettings.from_config(config["shards"], role), out_plan, out_images)
    click.echo(f"{split}: {plan['num_rois']} of {plan['source_table']['num_rows']} ROIs in {len(plan['chunk_rois'])} chunks {plan['chunk_rois']}")


@cli.command("shards")
@opt.config_option
@opt.sections_option
@opt.index_option
@opt.split_option
@opt.role_option
@click.option("--rois", "rois_path", required=True, type=opt.existing_files, help="The rois stage's table of this split.")
@click.option("--plan", "plan_path", required=True, type=opt.existing_files, help="The split's plan (mtgan shards-plan --out-plan).")
@click.option("--images", "images_path", required=True, type=opt.existing_files, help="The split's images by chunk (mtgan shards-plan --out-images).")
@click.option("--chunk", required=True, type=int, help="Which image chunk of the split (0 .. shards.num_chunks - 1).")
@click.option("--out", "out_dir", required=True, type=opt.out_folder, help="Chunk folder, conventionally artifacts/<dataset>/shards/<role>/chunk-<chunk>.")
@opt.jobs_option("decoding and cropping images")
def shards_cmd(
    config_files: tuple[Path, ...],
    sections_json: str | None,
    data_index: Path,
    split: str,
    role: str,
    rois_path: Path,
    plan_path: Path,
    images_path: Path,
    chunk: int,
    out_dir: Path,
    jobs: int,
) -> None:
    """Stage 4: crop the ROIs of one image chunk of --split to HR and bicubic LR images, in HDF5 shards.

    \b
    Reads section shards and the chunk's part of the plan. Writes shard-*.h5 and chunk.json into
    --out (replaced whole when complete). `mtgan shards-manifest` then gathers the chunks.
    """
    from pipeline.data.index import read_index
    from pipeline.shards import ShardSettings, write_chunk

    config = opt.resolve_config(config_files, sections_json, need=("shards",))
    settings = ShardSettings.from_config(config["shards"], role)
    if not 0 <= chunk < settings.num_chunks:
        raise click.UsageError(f"--chunk {chunk} is not in [0, {settings.num_chunks})")
    splits = read_index(data_index)
    if split not in splits:
        raise click.UsageError(f"{data_index}: no split {split!r} (splits: {sorted(splits)})")
    info = write_chunk(plan_path, images_path, rois_path, splits[split].image_root, chunk, settings, out_dir, n_jobs=jobs)
    click.echo(f"{split} chunk {chunk}: {info['num_rois']} ROIs in {len(info['shards'])} shard(s) -> {out_dir}")


@cli.command("shards-manifest")
@opt.config_option
@opt.sections_option
@opt.split_option
@opt.role_option
@click.option("--rois", "rois_path", required=True, type=opt.existing_files)
@click.option("--plan", "plan_path", required=True, type=opt.existing_files, help="The split's plan (mtgan shards-plan --out-plan).")
@click.option("--out", "out_path", required=True, type=opt.out_file, help="manifest.json of the split.")
@click.argument("chunk_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def shards_manifest_cmd(
    config_files: tuple[Path, ...],
    sections_json: str | None,
    split: str,
    role: str,
    rois_path: Path,
    plan_path: Path,
    out_path: Path,
    chunk_dirs: tuple[Path, ...],
) -> None:
    """Gather the chunk folders of --split into its manifest (shards, counts, histograms, sha256s)."""
    from pipeline.shards import ShardSettings, gather_manifest

    config = opt.resolve_config(config_files, sections_json, need=("shards",))
    doc = gather_manifest(rois_path, plan_path, list(chunk_dirs), split, ShardSettings.from_config(config["shards"], role), out_path)
    click.echo(f"{split}: {doc['num_rois']} ROIs in {len(doc['shards'])} shards; labels {doc['histograms']['label']}")


@cli.command("audit")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--rois", "rois_path", type=opt.out_file, help="ROI table to check against (default: the one named in the manifest).")
@click.option("--grid", "grid_png", type=opt.out_file, help="Write a PNG grid of random LR / HR pairs here (default: audit.png beside the manifest).")
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
    if grid_png is None and not os.access(out.parent, os.W_OK | os.X_OK):
        click.echo(f"LR / HR pairs: not drawn ({out.parent} is read-only; --grid names another file)")
    else:
        draw_pairs(readable, out, count=samples)
        click.echo(f"LR / HR pairs: {out}")
    if report.problems:
        raise click.ClickException(f"{len(report.problems)} problem(s):\n  " + "\n  ".join(report.problems))
    click.echo("OK: every shard matches its manifest and the ROI table")


for _command in (
    train_commands.train_baseline_cmd,
    train_commands.train_mtgan_cmd,
    evaluate_commands.infer_cmd,
    evaluate_commands.merge_cmd,
    evaluate_commands.score_cmd,
    evaluate_commands.table_cmd,
    report_commands.report_charts_cmd,
    report_commands.report_profile_cmd,
    report_commands.report_errors_cmd,
    report_commands.report_rois_cmd,
    report_commands.report_detections_cmd,
    widerface_commands.widerface_score_cmd,
    widerface_commands.widerface_table_cmd,
    widerface_commands.widerface_eval_cmd,
    submit_commands.submission_cmd,
    submit_commands.rescore_cmd,
):
    cli.add_command(_command)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="mtgan")


if __name__ == "__main__":
    main()
