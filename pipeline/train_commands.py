"""The commands of the two training jobs: `mtgan train-baseline` (the baseline detector) and
`mtgan train-mtgan` (one MTGAN variant)."""

from __future__ import annotations

from pathlib import Path

import click

from jobs.mtgan.settings import VARIANTS
from pipeline import cli_options as opt


@click.command("train-baseline")
@opt.config_option
@opt.sections_option
@opt.index_option
@click.option("--out", "out_dir", required=True, type=opt.out_folder, help="Output folder, conventionally artifacts/<dataset>/baseline.")
@opt.threads_option
def train_baseline_cmd(config_files: tuple[Path, ...], sections_json: str | None, data_index: Path, out_dir: Path, threads: int | None) -> None:
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


@click.command("train-mtgan")
@opt.config_option
@opt.sections_option
@click.option("--variant", required=True, type=click.Choice(list(VARIANTS)), help="The ablation to train (jobs/mtgan/settings.py, VARIANTS).")
@click.option("--manifest", required=True, type=opt.existing_files, help="The training split's shard manifest.")
@click.option("--out", "out_dir", required=True, type=opt.out_folder, help="Output folder, conventionally artifacts/<dataset>/mtgan/<variant>.")
@opt.threads_option
def train_mtgan_cmd(config_files: tuple[Path, ...], sections_json: str | None, variant: str, manifest: Path, out_dir: Path, threads: int | None) -> None:
    """Stage 5: train one MTGAN variant (MSE pre-training of G, then alternating D / G steps).

    \b
    Reads section mtgan (preset, overrides, seed, device). Writes model.pt, checkpoints/last.pt,
    metrics.jsonl, losses.png and pictures/ into --out; resumes from checkpoints/last.pt when it was
    made with the same settings. Several GPUs: torchrun --nproc_per_node N -m pipeline.cli train-mtgan ...
    """
    from jobs.mtgan.settings import resolve_preset
    from jobs.mtgan.train import train_mtgan

    mtgan = opt.resolve_config(config_files, sections_json, need=("mtgan",))["mtgan"]
    preset = resolve_preset(mtgan["preset"], mtgan["overrides"])
    train_mtgan(
        manifest,
        VARIANTS[variant],
        preset,
        out_dir,
        device_name=mtgan["device"],
        threads=threads,
        seed=mtgan["seed"],
        config={"mtgan": {k: v for k, v in mtgan.items() if k != "variants"}},
    )
