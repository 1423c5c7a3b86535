"""What the `mtgan` commands share: config resolution, thread count, and the click options and
argument types every stage command uses."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click

from core.errors import PipelineError
from jobs.mtgan.settings import PAPER_RULE, RULES
from pipeline.config import load_config_files, validate_config


def resolve_config(config_files: tuple[Path, ...], sections_json: str | None, need: tuple[str, ...]) -> dict[str, Any]:
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


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
        raise click.BadParameter(f"{value!r}: one of auto, cpu, cuda, cuda:N")
    return value


def named_paths(values: tuple[str, ...], option: str, must_exist: bool = True) -> dict[str, Path]:
    """`NAME=PATH` option values -> {name: path}; with `must_exist`, each file must exist."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name:
            raise click.UsageError(f"{option} takes NAME=PATH, got {value!r}")
        if must_exist and not Path(path).is_file():
            raise PipelineError(f"{option} {name}: {path}: file not found")
        out[name] = Path(path)
    return out


def ensemble_outputs(out: Path, out_ensemble: Path | None) -> dict[bool, Path]:
    """--out and --out-ensemble of the merging commands as their functions take them: the method
    alone (key False) and, when asked, its ensemble with the baseline (key True)."""
    return {False: out} | ({True: out_ensemble} if out_ensemble else {})


existing_files = click.Path(exists=True, dir_okay=False, path_type=Path)


class OutputPath(click.Path):
    """An output file or folder whose folder the command can write to (and, for a folder that
    exists, replace): a read-only place is one line naming it, before any work."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(super().convert(value, param, ctx))
        for where in writable_problems(path, replace=not self.file_okay):
            self.fail(where, param, ctx)
        return path


def writable_problems(path: Path, replace: bool) -> list[str]:
    """Why `path` cannot be written (its nearest existing folder is read-only) or, with `replace`,
    an existing folder at `path` cannot be replaced whole (it or a folder in it is read-only)."""
    parent = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{parent} is read-only: {path.name} cannot be written there"]
    if replace and path.is_dir() and not path.is_symlink():
        for folder, _, _ in os.walk(path):
            if not os.access(folder, os.W_OK | os.X_OK):
                return [f"{folder} is read-only: {path} cannot be replaced"]
    return []


out_file = OutputPath(dir_okay=False, path_type=Path)
out_folder = OutputPath(file_okay=False, path_type=Path)
config_option = click.option(
    "--config", "config_files", type=existing_files, multiple=True, help="Config YAML file; repeat to merge several (later ones override earlier ones)."
)
sections_option = click.option("--sections", "sections_json", help="The config sections this stage reads, as one JSON object (what the Snakefile passes).")
index_option = click.option(
    "--data-index", "data_index", required=True, type=existing_files, help="The data stage's index.json (artifacts/<dataset>/data/index.json)."
)
split_option = click.option("--split", required=True, help="Split name, as in the data index.")
role_option = click.option(
    "--role",
    required=True,
    type=click.Choice(["train", "test", "dev", "submit"]),
    help="What the ROIs are for: train (ground truth added, sampled), test, dev or submit (the detections as they are). "
    "The same split can serve train and test.",
)


def at_most_the_cpus(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """A thread or worker count capped at the machine's CPUs (Snakemake's --cores may say more)."""
    return None if value is None else max(1, min(value, os.cpu_count() or 1))


threads_option = click.option(
    "--threads", type=int, default=None, callback=at_most_the_cpus, help="CPU threads for torch, at most the machine's CPU count (default: torch's choice)."
)


def jobs_option(what: str) -> Any:
    return click.option("-j", "--jobs", default=1, show_default=True, callback=at_most_the_cpus, help=f"Worker processes {what}, at most the machine's CPUs.")


device_option = click.option(
    "--device", default="auto", show_default=True, callback=lambda ctx, param, value: _device(value), help="auto (CUDA when present), cpu, cuda or cuda:N."
)
rule_option = click.option(
    "--rule",
    type=click.Choice(list(RULES)),
    default=PAPER_RULE,
    show_default=True,
    help="Test-time rule: what D sees for each ROI (" + "; ".join(f"{k}: {r.description}" for k, r in RULES.items()) + ").",
)
outputs_option = click.option("--out", "outputs", multiple=True, required=True, help="NAME=PATH of each output file (repeatable; the rule names them).")
