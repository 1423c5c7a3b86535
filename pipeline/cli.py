"""The `mtgan` command line: one subcommand per pipeline stage.

The Snakefile's rules call these commands; they are as usable by hand. Each stage reads its
settings either from config files (`--config`, merged in order and validated like the Snakefile
does) or, as the rules pass them, from the config section as JSON (`--section`).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from pipeline.config import ConfigError, load_config_files, validate_config
from pipeline.io.coco import CocoFormatError
from pipeline.schema import SchemaError

USER_ERRORS = (ConfigError, SchemaError, CocoFormatError, FileNotFoundError, ValueError)


class _Group(click.Group):
    """Turns the project's own errors into a one-line `Error: ...` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from e


def _resolve_config(config_files: tuple[Path, ...], section_json: str | None, section: str) -> dict[str, Any]:
    """The validated config section named `section`, from files or from its JSON."""
    if bool(config_files) == bool(section_json):
        raise click.UsageError("give either --config FILE (repeatable) or --section JSON")
    if section_json:
        try:
            raw = {section: json.loads(section_json)}
        except json.JSONDecodeError as e:
            raise click.UsageError(f"--section is not valid JSON: {e}") from None
    else:
        raw = load_config_files(config_files)
    return validate_config(raw, what=", ".join(map(str, config_files)) or "--section")[section]


config_option = click.option(
    "--config", "config_files", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
    help="Config YAML file; repeat to merge several (later ones override earlier ones).",
)
section_option = click.option("--section", "section_json", help="The config section as JSON (what the Snakefile passes).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
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
@section_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder, conventionally artifacts/<dataset>/data.")
@click.option("-j", "--jobs", default=1, show_default=True, help="Worker processes for generating images.")
def data_cmd(config_files: tuple[Path, ...], section_json: str | None, out_dir: Path, jobs: int) -> None:
    """Stage 1: make the dataset available as COCO JSON per split plus an image root.

    \b
    source builtin: generate the synthetic dataset (deterministic from its seed).
    source coco:    validate a COCO-format dataset on disk (boxes, ids, image files) and write a
                    cleaned copy of its annotations; the images stay where they are.
    Writes <split>.json, stats.json, stats.md, preview.png and, last, index.json into --out.
    """
    from pipeline.data.stage import build_dataset

    section = _resolve_config(config_files, section_json, "data")
    splits = build_dataset(section, out_dir, n_jobs=jobs)
    for s in splits.values():
        click.echo(f"{s.name}: {s.num_images} images, {s.num_annotations} annotations -> {s.annotations}")


def main() -> None:
    cli(prog_name="mtgan")


if __name__ == "__main__":
    main()
