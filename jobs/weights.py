"""torchvision's pretrained weights, read safely.

torchvision's builders read their `.pth` files from the torch hub cache
(`$TORCH_HOME/hub/checkpoints`, where offline users are told to copy them) through
`torch.hub.load_state_dict_from_url`, which unpickles with `weights_only=False`: a planted file
there runs code. Here every such file is read with `torch.load(weights_only=True)`, which accepts
tensors and plain containers only; anything else is refused with an error naming the file.

- `torchvision_state_dict(url)`: the cached file for `url` (downloaded first when online), loaded
  safely;
- `pretrained_torchvision_model(arch)`: torchvision's builder with its default weights (exactly
  the pretrained model, frozen batch norm and all), after its cached file has been read safely:
  the builder then reads the same bytes, which are known to hold tensors only.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from core.errors import CheckpointError, PipelineError


class WeightsUnavailable(PipelineError, FileNotFoundError):
    """Pretrained weights that are neither cached nor downloadable; names the expected file."""


class UnsafeWeights(PipelineError):
    """A weights file that holds more than tensors (code could run when it is unpickled); names it."""


def cached_weights_path(url: str) -> Path:
    """Where torch keeps the file of `url`: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download(url: str, path: Path) -> None:
    """Fetch `url` into `path` (no unpickling); WeightsUnavailable when offline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as e:  # URLError, socket errors, HTTP errors: all mean "not here"
        raise WeightsUnavailable(
            f"torchvision weights {path.name} are not in the torch hub cache and could not be downloaded "
            f"({type(e).__name__}: {e}). Expected file: {path} (the cache folder is $TORCH_HOME/hub/checkpoints). "
            "Copy it there from a machine with internet, or use a local checkpoint path."
        ) from None


def load_torch_file(path: Path, what: str = "checkpoint") -> Any:
    """A torch file (checkpoint, model, state dict) read with `weights_only=True`.

    UnsafeWeights when it holds more than tensors and plain containers (it is not run);
    CheckpointError, naming the file, when it is missing, truncated or not a torch file.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except pickle.UnpicklingError as e:
        reason = _first_line(e)
        if "weights only load failed" in str(e).lower():
            raise UnsafeWeights(f"{path}: not a plain file of tensors, refused without running it ({reason})") from None
        raise CheckpointError(f"{path}: cannot read the {what} ({reason})") from None
    except Exception as e:  # RuntimeError, EOFError, struct.error, ...: whatever a damaged file raises
        raise CheckpointError(f"{path}: cannot read the {what}: truncated or not a torch file ({_first_line(e)})") from None


def load_torch_mapping(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A torch file that must hold a dict with `keys` (a checkpoint, a model.pt): as
    `load_torch_file`, and CheckpointError naming the file when it holds something else."""
    state = load_torch_file(path, what)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a {what}: it holds a {type(state).__name__}, not a dict of settings and weights")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a {what} of this version: no {', '.join(missing)}")
    return state


def _first_line(e: BaseException) -> str:
    """The informative line of a torch.load error (the unsupported global, when one is named)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported global" in line]
    plain = [line for line in lines if not line.lower().startswith(("weights only load failed", "please file an issue"))]
    line = (named or plain or [type(e).__name__])[0]
    return f"{type(e).__name__}: {line[:200]}"


def torchvision_state_dict(url: str) -> dict[str, Any]:
    """The state dict of torchvision's weights at `url`, from the hub cache (downloaded if absent)."""
    path = cached_weights_path(url)
    if not path.is_file():
        _download(url, path)
    return load_torch_file(path, "torchvision weights file")


def pretrained_torchvision_model(arch: str, **kwargs: Any) -> nn.Module:
    """torchvision's builder `arch` with its default weights. Their cached file is first read with
    `torch.load(weights_only=True)` (fetched when absent and online; WeightsUnavailable offline,
    UnsafeWeights when it holds more than tensors); the builder then loads those same bytes."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    torchvision_state_dict(weights.url)
    return torchvision.models.get_model(arch, weights=weights, **kwargs)
