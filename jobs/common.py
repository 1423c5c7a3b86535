"""What both training jobs (the baseline detector, MTGAN) share: the device, checkpoints that
resume only when they were made with the same settings, and the random-number state.

Checkpoints are plain dicts of tensors and Python values, written atomically and read with
`torch.load(weights_only=True)` (`jobs.weights.load_torch_file`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from core.errors import PipelineError
from core.io import atomic
from jobs.weights import load_torch_mapping

log = logging.getLogger(__name__)


# Both jobs' checkpoints/last.pt: 2 names the step `step` and the logged rows `metrics` (the same
# words in both jobs); a checkpoint of another format is not resumed from (training starts over).
CHECKPOINT_FORMAT = 2


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device {name!r} asked for, but CUDA is not available here")
    return torch.device(name)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_MMAP_THRESHOLD = 1 << 20
# Where glibc's dynamic threshold ends up once blocks that large have been freed (64-bit: 32 MiB,
# the trim threshold twice that): what a training step's allocations are served under.
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


_LIBC_NAME = ctypes.util.find_library("c")


def _mallopt(*settings: tuple[int, int]) -> bool:
    """glibc's mallopt for each (parameter, value); False, and nothing set, where there is no glibc."""
    try:
        libc = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None
        return bool(libc) and all(libc.mallopt(parameter, value) for parameter, value in settings)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def bounded_host_heap() -> Iterator[bool]:
    """Inside, every allocation of 1 MiB or more has its own mapping, returned to the system when
    freed (glibc's `mallopt(M_MMAP_THRESHOLD)`; yields False, a no-op, where there is no glibc).

    glibc's default raises that threshold to the largest block freed so far (up to 32 MiB), and
    then serves such blocks from a heap that, under PyTorch's CPU inference (hundreds of MB
    allocated and freed per batch), only grows: measured on 2 cores, the infer stage's resident
    memory grew by 27 KB per ROI (3.8 GB at 100k ROIs, past this machine's 24 GB at COCO val's
    500k), and stayed flat with the threshold fixed, for about 15% more time per batch. Used by
    the infer stage, whose memory must not grow with the ROIs.

    On leaving, the thresholds are set where glibc's own end up (32 MiB, trim 64 MiB; mallopt can
    set them but not restore the dynamic rule): left at 1 MiB, a training run later in the same
    process (bench/seeds.py scores, then trains) ran at 0.5-0.8 of its speed (bench/README.md)."""
    bounded = _mallopt((M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD))
    try:
        yield bounded
    finally:
        if bounded:
            _mallopt((M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX))


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast pays on `device`: CUDA, or a CPU with AMX tiles that torch can use.
    Measured with bench/train_throughput.py (a stage-2 step of the `cpu` preset, 2 cores): with AMX
    2.4x fp32's pairs/s (bf16 and channels-last together); on a CPU with AVX512-BF16 but no AMX
    (an Emerald Rapids VM whose hypervisor hides AMX) 0.75x, so bf16 there runs in fp32."""
    if device.type == "cuda":
        return True
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, torch >= 2.3; absent: no AMX assumed
    return device.type == "cpu" and is_amx is not None and bool(is_amx())


def autocast_factory(device: torch.device, enabled: bool) -> Callable[[], AbstractContextManager]:
    """A callable giving the bf16 autocast context on `device` when `enabled` and bf16 pays there
    (`bf16_fast`), a no-op context otherwise (fp32)."""
    if enabled and bf16_fast(device):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`state` at `path`, atomically (a killed job leaves the previous checkpoint whole)."""
    with atomic.atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)


def rng_state() -> dict[str, Any]:
    """The torch random-number state: CPU, and every CUDA device when there is one."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resumable_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at `path` when each of its `expected` entries (its settings, ...) is exactly
    as given, to resume from; None when there is none or it was made otherwise (training starts over)."""
    path = Path(path)
    if not path.is_file():
        return None
    state = load_torch_mapping(path, "checkpoint (delete it to train from the start)")
    differ = [key for key, value in expected.items() if state.get(key) != value]
    if differ:
        log.info("ignoring %s: it was made with other %s", path, " and ".join(differ))
        return None
    return state
