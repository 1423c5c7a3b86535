"""The HDF5 ROI shard layout (`schemas/shard_layout.yaml`) and the per-split manifest
(`schemas/shard_manifest.schema.yaml`): writing, reading, checksums.

A shard is one HDF5 file of at most `rois_per_shard` ROIs, stacked:
`hr` (N, S, S, 3) uint8 and `lr` (N, S/scale, S/scale, 3) uint8, plus the ROI table's columns
needed downstream, each a dataset of N rows. Datasets are chunked in blocks of `block_size` rows,
the unit in which the training loader reads (a contiguous, aligned slice is hundreds of times
faster than fancy indexing in h5py), and are not compressed: measured on the built-in dataset, gzip
and lzf shrink image shards by only about 10% and cost writes and random reads (see README).
Files are written under a temporary name and renamed when complete; creation times are not
recorded, so the same input gives byte-identical files.

Integrity, without rereading every byte in every job (COCO train's shards are about 100 GB):
every dataset carries HDF5's Fletcher-32 checksum per chunk, and the file is written in HDF5's
latest format, whose metadata (superblock, object headers, chunk indexes) carries checksums too;
HDF5 checks them on every read, so a job never uses a changed byte it reads, and reads nothing
else. Before a job starts, `check_shards` makes the cheap checks: every shard is a regular file
inside its manifest's folder, of the size the manifest records; when a shard is opened, its
attributes must be the manifest's (layout, split, ROI count, the ROI table's sha256). The sha256
of every whole file, recorded when it was written, is what `mtgan audit` checks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from core.errors import InputError, MissingFileError, ShardReadError
from core.io import atomic
from core.schema import load_schema, validate_document
from core.sizes import SIZE_CLASSES

LAYOUT_VERSION = 2  # 2: Fletcher-32 checksums per chunk, HDF5's latest format, shard sizes in the manifest
MANIFEST_SCHEMA = "shard_manifest.schema.yaml"
LAYOUT_SCHEMA = "shard_layout.yaml"
ORIGIN_CODES = ("detector", "gt")


def layout() -> dict[str, Any]:
    """Dataset name -> {dtype, shape} with symbolic sizes (N, S, L, C = K+1), from the schema."""
    return load_schema(LAYOUT_SCHEMA)["datasets"]


def shapes(n: int, hr_size: int, lr_size: int, num_labels: int) -> dict[str, tuple[int, ...]]:
    sizes = {"N": n, "S": hr_size, "L": lr_size, "C": num_labels}
    return {name: tuple(sizes.get(d, d) for d in spec["shape"]) for name, spec in layout().items()}  # type: ignore[misc]


@dataclass(frozen=True)
class ShardSpec:
    hr_size: int
    scale: int
    margin: float
    block_size: int
    num_labels: int
    category_ids: tuple[int, ...]
    split: str
    source_table_sha256: str
    resize_method: str

    @property
    def lr_size(self) -> int:
        return self.hr_size // self.scale


def write_shard(path: Path, arrays: dict[str, np.ndarray], spec: ShardSpec, index: int) -> None:
    """Write one shard atomically. `arrays` holds every dataset of the layout, N rows each."""
    n = len(arrays["roi_id"])
    expected = shapes(n, spec.hr_size, spec.lr_size, spec.num_labels)
    for name, spec_ds in layout().items():
        a = arrays[name]
        if a.shape != expected[name] or a.dtype != np.dtype(spec_ds["dtype"]):
            raise ValueError(f"shard {path}: dataset {name} is {a.dtype}{a.shape}, layout wants {spec_ds['dtype']}{expected[name]}")
    # Made in memory (HDF5's core driver: the same datasets and attributes; the file comes out 512
    # bytes longer than HDF5's own write to disk), then written by Python: a write that fails (a
    # full disk) is one OSError, not an HDF5 file left open that fails again at every flush until
    # the interpreter exits (where it segfaulted, h5py 3.16).
    with h5py.File(str(path), "w", driver="core", backing_store=False, track_order=True, libver="latest") as f:
        for name in layout():
            a = arrays[name]
            chunks = (min(spec.block_size, n), *a.shape[1:]) if n else None
            f.create_dataset(name, data=a, chunks=chunks, fletcher32=bool(n), track_times=False)
        f.attrs.update(
            {
                "layout_version": LAYOUT_VERSION,
                "split": spec.split,
                "shard_index": index,
                "num_rois": n,
                "hr_size": spec.hr_size,
                "lr_size": spec.lr_size,
                "scale": spec.scale,
                "margin": spec.margin,
                "block_size": spec.block_size,
                "resize_method": spec.resize_method,
                "category_ids": json.dumps(list(spec.category_ids)),
                "source_table_sha256": spec.source_table_sha256,
                "size_classes": json.dumps(SIZE_CLASSES),  # a shard stores a size class as its index here
                "origins": json.dumps(ORIGIN_CODES),
            }
        )
        f.flush()
        image = f.id.get_file_image()
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(image)


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(path: Path, doc: dict[str, Any]) -> None:
    validate_document(doc, MANIFEST_SCHEMA, str(path))
    atomic.write_json(path, doc, indent=1)


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"{path}: shard manifest not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    validate_document(doc, MANIFEST_SCHEMA, str(path))
    if doc["layout_version"] != LAYOUT_VERSION:
        raise InputError(f"{path}: layout_version {doc['layout_version']}, this code reads {LAYOUT_VERSION}")
    return doc


def shard_paths(manifest_path: Path, manifest: dict[str, Any]) -> list[Path]:
    return [Path(manifest_path).parent / s["path"] for s in manifest["shards"]]


def place_problem(manifest_path: Path, listed: str, within: Path) -> str | None:
    """What is wrong with where a manifest's `listed` path (relative to the manifest's folder)
    points: an absolute path, a place outside `within`, a symbolic link on the way (None: nothing).
    A copy of a cache elsewhere, or a link to one, is not the file this run wrote."""
    within = Path(os.path.abspath(within))
    path = Path(os.path.abspath(Path(manifest_path).parent / listed))  # `..` resolved by name, links kept
    if Path(listed).is_absolute() or not path.is_relative_to(within):
        return f"{manifest_path}: {listed!r} is outside {within}"
    on_the_way = [path, *(p for p in path.parents if p.is_relative_to(within) and p != within)]
    if any(p.is_symlink() for p in on_the_way):
        return f"{path}: a symbolic link on the way to {listed!r}, not the file the pipeline wrote"
    return None


def check_shards(manifest_path: Path, manifest: dict[str, Any] | None = None) -> list[Path]:
    """The shards of a manifest, after the checks a job makes before it reads any (no byte is
    reread: see the module's docstring): each is a regular file, not a link, inside the manifest's
    folder, of the size the manifest records. ShardReadError names the first that is not."""
    manifest = manifest or read_manifest(manifest_path)
    paths = shard_paths(manifest_path, manifest)
    for path, entry in zip(paths, manifest["shards"]):
        if (problem := place_problem(manifest_path, entry["path"], Path(manifest_path).parent)) is not None:
            raise ShardReadError(f"{problem}; rerun the shards stage")
        if not path.is_file():
            raise ShardReadError(f"{path}: listed in {manifest_path} but missing; rerun the shards stage")
        if path.stat().st_size != entry["bytes"]:
            raise ShardReadError(
                f"{path}: {path.stat().st_size} bytes, {manifest_path} says {entry['bytes']} (the file changed or is damaged); "
                "rerun the shards stage (mtgan audit lists every problem)"
            )
    return paths


def check_attributes(path: Path, attrs: Any, manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    """An opened shard's attributes are its manifest's: its layout, split, ROI count and the ROI
    table it was made from (a shard of another split, run or table is named)."""
    expected = {
        "layout_version": LAYOUT_VERSION,
        "split": manifest["split"],
        "num_rois": entry["num_rois"],
        "source_table_sha256": manifest["source_table"]["sha256"],
    }
    for key, value in expected.items():
        if attrs.get(key) != value:
            raise ShardReadError(f"{path}: attribute {key} is {attrs.get(key)!r}, {entry['path']} of the manifest says {value!r}; rerun the shards stage")
