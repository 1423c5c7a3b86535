"""The project's own error types: problems a user can fix (bad input, a damaged cache, a folder in
the way), each with a message that names the file and the problem.

The `mtgan` CLI prints any of them as one line, `Error: <message>`, and exits with status 1; with
`mtgan -v` it prints the traceback too. Anything else that escapes a command is a bug and shows
its traceback.
"""

from __future__ import annotations


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


class InputError(PipelineError, ValueError):
    """An input that the stage cannot use: a file's content, a config value, a combination of them."""


class MissingFileError(PipelineError, FileNotFoundError):
    """A file the stage needs that is not there."""


FIRST_FEW = 5  # how many items an error message lists


def first_few(items: list, limit: int = FIRST_FEW) -> str:
    """The first `limit` items, comma-separated, with ", ..." when there are more (for messages)."""
    return ", ".join(str(x) for x in items[:limit]) + (", ..." if len(items) > limit else "")
