"""MTGAN for small object detection: the pipeline's stages (data, detect, rois, shards, merge, score)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtgan-sod")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "unknown"
