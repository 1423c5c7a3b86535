"""`model.pt`, the trained variant: the one module that writes it and reads it back.

A model is self-describing: G and D weights, the variant and preset it was trained with, its
categories (ids and names), the HR size, scale, context margin and resize method of its crops,
and the config section it was asked with. Format history: 2 made it self-describing; 3 took the
test-time rule out (an inference setting) and added what D trains on; 4 added the preset's
`channels_last` and runs bf16 autocast on CPUs with native bf16 (`preset.amp`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import CheckpointError
from jobs.common import save_checkpoint
from jobs.mtgan.engine import build_networks
from jobs.mtgan.settings import Preset, Variant, stored_preset_problems
from jobs.weights import load_torch_mapping

MODEL_FORMAT = 4
# What every reader needs (rescore honours a model's crops and categories with them).
MODEL_KEYS = ("format_version", "variant", "preset", "d", "num_labels", "category_ids", "categories", "hr_size", "scale", "margin", "resize_method")


@dataclass
class LoadedModel:
    """A model.pt read back: the variant, its preset, G (None without one) and D in eval mode on the
    device asked for, and the file's other entries (`state`)."""

    variant: Variant
    preset: Preset
    g: nn.Module | None
    d: nn.Module
    state: dict[str, Any]


def save_model(
    path: Path, g: nn.Module | None, d: nn.Module, variant: Variant, preset: Preset, seed: int, step: int, shards: dict[str, Any], config: dict[str, Any] | None
) -> None:
    """Write `path` atomically; `g`: a learned generator (None for a variant without one);
    `shards`: the training shards' manifest (categories, crop geometry)."""
    names = shards.get("category_names") or [str(c) for c in shards["category_ids"]]
    state = {
        "format_version": MODEL_FORMAT,
        "d": d.state_dict(),
        **json.loads(json.dumps({"variant": dataclasses.asdict(variant), "preset": dataclasses.asdict(preset)})),
        "seed": seed,
        "config": json.loads(json.dumps(config or {})),
        "num_labels": shards["num_labels"],
        "category_ids": shards["category_ids"],
        "categories": [{"id": c, "name": n} for c, n in zip(shards["category_ids"], names)],
        **{k: shards[k] for k in ("hr_size", "scale", "margin", "resize_method")},
        "step": step,
    }
    if g is not None:
        state["g"] = g.state_dict()
    save_checkpoint(path, state)


def read_model_state(path: Path) -> dict[str, Any]:
    """model.pt's entries, checked for format and keys (CheckpointError names the file otherwise)."""
    state = load_torch_mapping(path, "MTGAN model")
    if {"arch", "num_classes", "model"} <= set(state):
        raise CheckpointError(f"{path}: the baseline detector's model (train_baseline), not an MTGAN model: give a variant's mtgan/<variant>/model.pt")
    if {"rng", "settings", "metrics"} <= set(state):
        raise CheckpointError(f"{path}: a training checkpoint, not the model a finished training writes: give the model.pt of its training folder")
    if "format_version" not in state:
        raise CheckpointError(f"{path}: a model.pt without a format_version (made by an older train_mtgan); retrain it")
    if state["format_version"] != MODEL_FORMAT:
        raise CheckpointError(
            f"{path}: an MTGAN model of format {state['format_version']!r}, not {MODEL_FORMAT} (made by another version of train_mtgan); retrain it"
        )
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: a model.pt without {missing}; retrain it")
    problems = stored_preset_problems(state["preset"]) + geometry_problems(state)
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems) + " (the model's own settings, checked before anything is built); retrain it")
    return state


def _integer_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def geometry_problems(state: dict[str, Any]) -> list[str]:
    """What is wrong with a model's crop geometry and label count (they size every tensor built
    from it): scale 1-8, an HR side of 8-512 pixels divisible by the scale, 2-10,000 labels."""
    problems = []
    if not _integer_in(state["scale"], 1, 8):
        problems.append(f"scale: must be an integer 1-8, got {state['scale']!r}")
    if not _integer_in(state["hr_size"], 8, 512) or (_integer_in(state["scale"], 1, 8) and state["hr_size"] % state["scale"]):
        problems.append(f"hr_size: must be an integer 8-512 divisible by the scale, got {state['hr_size']!r}")
    if not _integer_in(state["num_labels"], 2, 10_000):
        problems.append(f"num_labels: must be an integer 2-10000, got {state['num_labels']!r}")
    return problems


def _check_finite(path: Path, network: str, weights: dict[str, Any]) -> None:
    """Every floating-point tensor of `weights` finite, else CheckpointError naming the file and tensor."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: {network}'s weights are a {type(weights).__name__}, not a mapping of tensors; retrain it")
    for name, tensor in weights.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: {network}'s {name} holds NaN or infinity; retrain it")


def _frozen(cls: type, values: dict[str, Any]) -> Any:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_model(path: Path, device: torch.device) -> LoadedModel:
    """The networks of model.pt at `path`, in eval mode on `device` (channels-last when the preset says)."""
    state = read_model_state(path)
    try:
        variant, preset = _frozen(Variant, state["variant"]), _frozen(Preset, state["preset"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a model.pt of this version of train_mtgan ({e}); retrain it") from None
    preset = dataclasses.replace(preset, d_weights="none")  # the weights come from the file
    if (variant.generator == "learned") != ("g" in state):
        has = "has no generator, but the file holds generator weights" if "g" in state else "trains a generator, but the file holds none"
        raise CheckpointError(f"{path}: variant {variant.name!r} {has}; retrain it")
    _check_finite(path, "D", state["d"])
    if "g" in state:
        _check_finite(path, "G", state["g"])
    g, d = build_networks(variant, preset, state["num_labels"], state["scale"])
    try:
        d.load_state_dict(state["d"])
        if "g" in state:
            g.load_state_dict(state["g"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the networks of its own settings ({str(e).splitlines()[0]}); retrain it") from None
    layout = torch.channels_last if preset.channels_last else torch.contiguous_format
    g = g.to(device, memory_format=layout).eval() if g is not None else None
    return LoadedModel(variant, preset, g, d.to(device, memory_format=layout).eval(), state)
