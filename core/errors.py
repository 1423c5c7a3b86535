"""The project's own error types: problems a user can fix (bad input, a damaged cache, a folder in
the way), each with a message that names the file and the problem.

The `mtgan` CLI prints any of them as one line, `Error: <message>`, and exits with status 1; with
`mtgan -v` it prints the traceback too. Anything else that escapes a command is a bug and shows
its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil


class PipelineError(Exception):
    """A user-facing problem; the message names the file and the problem."""


class OutputFolderError(PipelineError):
    """An output folder that the pipeline may not replace: it holds files the pipeline did not write."""


class ShardReadError(PipelineError):
    """A ROI shard that cannot be read, or whose bytes differ from its manifest's checksum."""


class CheckpointError(PipelineError):
    """A checkpoint or model file that cannot be read."""


class EmptyInputError(PipelineError):
    """An input that holds nothing to work on (no detections, no ROIs)."""


class TrainingDiverged(PipelineError, FloatingPointError):
    """A training whose loss became NaN or infinite: it stops, its last checkpoint stays."""


class FileAppeared(PipelineError, FileExistsError):
    """A file written for a user appeared under its name while it was being made (never replaced)."""


class InputError(PipelineError, ValueError):
    """An input that the stage cannot use: a file's content, a config value, a combination of them."""


class MissingFileError(PipelineError, FileNotFoundError):
    """A file the stage needs that is not there."""


FIRST_FEW = 5  # how many items an error message lists


def first_few(items: list, limit: int = FIRST_FEW) -> str:
    """The first `limit` items, comma-separated, with ", ..." when there are more (for messages)."""
    return ", ".join(str(x) for x in items[:limit]) + (", ..." if len(items) > limit else "")


# How a full disk shows through the libraries that write the project's files: the OS error itself,
# HDF5's message (h5py), and torch.save's C++ stream error.
_NO_SPACE_SIGNS = ("No space left on device", "errno = 28", "Disk quota exceeded")
_WRITE_FAILED_SIGNS = ("basic_ios::clear", "PytorchStreamWriter failed writing", "unexpected pos", "Can't write data", "file write failed")
NEARLY_FULL_BYTES = 64 * 2**20


def free_bytes(path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """The nearest existing folder at or above `path`, and the bytes free on its file system."""
    place = os.path.abspath(path)
    while not os.path.isdir(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)
    try:
        return place, shutil.disk_usage(place).free
    except OSError:
        return None


def disk_full_message(error: BaseException, place: str | os.PathLike[str]) -> str | None:
    """One line for a write that failed for want of space (None: not that): the path, what is free
    there. `place`: where the command writes, for errors that name no file. A write failure that
    names no cause counts as one only where the disk is (nearly) full."""
    text = str(error)
    stated = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in _NO_SPACE_SIGNS)
    path = getattr(error, "filename", None) or place
    found = free_bytes(path)
    if not stated and not (any(s in text for s in _WRITE_FAILED_SIGNS) and found is not None and found[1] < NEARLY_FULL_BYTES):
        return None
    free = f"{found[1] / 2**20:.0f} MB free on the file system of {found[0]}" if found else "free space unknown"
    return f"{path}: no space left on the device ({free}); free some space and rerun: nothing half-written is left under an output's name"
