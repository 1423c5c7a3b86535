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
