"""MTGAN for small object detection: the pipeline's stages (data, detect, rois, shards, merge, score)."""

__version__ = "0.1.0"
