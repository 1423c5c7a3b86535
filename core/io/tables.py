"""Typed Parquet tables whose columns are described once, in `schemas/<name>.schema.yaml`.

A table schema lists each column's Arrow type (`int32`, `int64`, `float32`, `string`,
`list<float32>`), an optional `min`/`max`/`enum`, and a description. `write_table` builds the Arrow
table with exactly those types (a missing, extra or unconvertible column is an error) and checks the
values; `read_table` checks a file against the schema before anyone uses it. Metadata (a JSON
object) travels in the Parquet file's key-value metadata under `mtgan`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import MissingFileError, PipelineError
from core.io import atomic
from core.schema import load_schema

# The project's tables, by schema file.
DETECTIONS_SCHEMA = "detections.schema.yaml"
ROIS_SCHEMA = "rois.schema.yaml"
INFERENCE_SCHEMA = "inference.schema.yaml"

_TYPES: dict[str, pa.DataType] = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "list<float32>": pa.list_(pa.float32()),
}


class TableSchemaError(PipelineError, ValueError):
    """A table that does not match its schema; names the file (or table) and the column."""


@functools.cache
def arrow_schema(name: str) -> pa.Schema:
    columns = load_schema(name)["columns"]
    return pa.schema([pa.field(col, _TYPES[spec["dtype"]], nullable=False) for col, spec in columns.items()])


def _check_values(table: pa.Table, name: str, where: str) -> None:
    columns = load_schema(name)["columns"]
    for col, spec in columns.items():
        values = table.column(col)
        if values.null_count:
            raise TableSchemaError(f"{where}: column '{col}' has {values.null_count} missing values")
        if spec["dtype"] in ("float32", "float64") and len(values) and not pc.all(pc.is_finite(values)).as_py():
            raise TableSchemaError(f"{where}: column '{col}' has non-finite values")
        if len(values) == 0:
            continue
        if "min" in spec and pc.min(values).as_py() < spec["min"]:
            raise TableSchemaError(f"{where}: column '{col}' has values below {spec['min']} (min {pc.min(values).as_py()})")
        if "max" in spec and pc.max(values).as_py() > spec["max"]:
            raise TableSchemaError(f"{where}: column '{col}' has values above {spec['max']} (max {pc.max(values).as_py()})")
        if "enum" in spec:
            bad = set(pc.unique(values).to_pylist()) - set(spec["enum"])
            if bad:
                raise TableSchemaError(f"{where}: column '{col}' has values {sorted(bad)} outside {spec['enum']}")


def make_table(columns: dict[str, Any], name: str, metadata: dict[str, Any] | None = None) -> pa.Table:
    """An Arrow table of schema `schemas/<name>`, from column arrays (numpy arrays or lists)."""
    schema = arrow_schema(name)
    missing = [f.name for f in schema if f.name not in columns]
    extra = [c for c in columns if c not in schema.names]
    if missing or extra:
        raise TableSchemaError(f"table {name}: missing columns {missing}, unexpected columns {extra}")
    arrays = []
    for field in schema:
        values = columns[field.name]
        if isinstance(values, np.ndarray) and values.ndim == 2:  # fixed-length vectors per row
            values = list(values)
        arrays.append(pa.array(values, type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    if metadata is not None:
        table = table.replace_schema_metadata({"mtgan": json.dumps(metadata)})
    _check_values(table, name, f"table {name}")
    return table


ROW_GROUP_SIZE = 65536  # small enough that a reader filtering on image ids skips most of a big table


def write_table(table: pa.Table, path: Path) -> None:
    with atomic.atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_SIZE)


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Type equality that ignores the name of a list's item field (Parquet writers differ)."""
    if pa.types.is_list(a) and pa.types.is_list(b):
        return a.value_type == b.value_type
    return a == b


def read_table(path: Path, name: str, filters: Any = None) -> pa.Table:
    """Read a Parquet file (optionally only rows matching pyarrow `filters`) and check it against
    `schemas/<name>`."""
    try:
        table = pq.read_table(path, filters=filters)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: table not found") from None
    except pa.ArrowInvalid as e:
        raise TableSchemaError(f"{path}: not a readable Parquet file ({e})") from None
    expected = arrow_schema(name)
    if table.schema.names != expected.names or not all(_same_type(a.type, b.type) for a, b in zip(table.schema, expected)):
        raise TableSchemaError(f"{path}: does not match {name}: {column_differences(table.schema, expected)}")
    if b"mtgan" not in (table.schema.metadata or {}):
        raise TableSchemaError(
            f"{path}: has the columns of {name} but not the pipeline's metadata (categories, settings): rewritten by another "
            "program? Write it again with its stage"
        )
    table = table.cast(expected.with_metadata(table.schema.metadata))  # only list item names can differ here
    _check_values(table, name, str(path))
    return table


def column_differences(found: pa.Schema, expected: pa.Schema) -> str:
    """What separates a file's columns from a schema's, in one line: missing, unexpected, retyped
    or reordered columns."""
    missing = [n for n in expected.names if n not in found.names]
    extra = [n for n in found.names if n not in expected.names]
    common = [(f, expected.field(f.name)) for f in found if f.name in expected.names]
    retyped = [f"column '{f.name}' is {f.type} (not {e.type})" for f, e in common if not _same_type(f.type, e.type)]
    parts = [f"missing columns {missing}"] * bool(missing) + [f"unexpected columns {extra}"] * bool(extra) + retyped
    return "; ".join(parts) or f"columns in another order ({', '.join(found.names)})"


def table_metadata(table: pa.Table) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(b"mtgan")
    return json.loads(raw) if raw else {}


def file_metadata(path: Path) -> dict[str, Any]:
    """The `mtgan` metadata of a Parquet file, without reading its rows."""
    raw = (pq.read_schema(path).metadata or {}).get(b"mtgan")
    return json.loads(raw) if raw else {}
