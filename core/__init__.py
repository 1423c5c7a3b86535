"""The ground floor both wings stand on: errors, on-disk formats (atomic writes, COCO JSON, images,
Parquet tables, HDF5 shards), schemas, boxes, crops, size classes and settings helpers. It imports
neither `pipeline` (the stages) nor `jobs` (the training jobs); import-linter checks it."""
