"""Typed Parquet tables whose columns are described once, in `schemas/<name>.schema.yaml`.

A table schema lists each column's Arrow type (`int32`, `int64`, `float32`, `string`,
`list<float32>`), an optional `min`/`max`/`enum`, and a description. `make_table` builds the Arrow
table with exactly those types (a missing, extra or unconvertible column is an error) and checks the
values; `read_table` checks a file against the schema before anyone uses it. Metadata (a JSON
object) travels in the Parquet file's key-value metadata under `mtgan`.

Tables of a whole split can outgrow memory (COCO train: 11.8M detections, each with an 81-float
probability vector), so nothing here makes a Python object per row: vector columns go in and out
as 2-D numpy arrays (`vectors`), `TableWriter` streams a table to disk one row group at a time and
`iter_table` reads one back the same way. A file written in parts is byte for byte the file
`write_table` writes of the whole table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
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
PLAN_SCHEMA = "shard_plan.schema.yaml"
IMAGES_SCHEMA = "shard_images.schema.yaml"

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
    """Each of the table's columns (all of the schema's, or some) against its schema's bounds."""
    columns = load_schema(name)["columns"]
    for col, spec in columns.items():
        if col not in table.column_names:
            continue
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


def vector_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """The rows of a 2-D array as one list column (`list<float32>`): the flat values and their
    offsets, without a Python object per row."""
    rows, width = values.shape
    if rows * width >= 2**31:
        raise ValueError(f"{rows} x {width} values: write the table in parts (TableWriter)")
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32) if width else np.zeros(rows + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values, np.float32).reshape(-1)), type=type_)


def vectors(column: pa.Array | pa.ChunkedArray, width: int, where: str = "table") -> np.ndarray:
    """A list column whose rows all hold `width` numbers, as an (N, width) float32 array."""
    lengths = pc.list_value_length(column)
    if len(column) and (pc.min(lengths).as_py() != width or pc.max(lengths).as_py() != width):
        raise TableSchemaError(f"{where}: vectors of {pc.min(lengths).as_py()} to {pc.max(lengths).as_py()} values, expected {width}")
    return np.array(pc.list_flatten(column).to_numpy(zero_copy_only=False), np.float32).reshape(-1, width)  # a writable copy


def make_table(columns: dict[str, Any], name: str, metadata: dict[str, Any] | None = None) -> pa.Table:
    """An Arrow table of schema `schemas/<name>`, from column arrays (numpy arrays or lists; a
    list column from a 2-D array, one row per row)."""
    schema = arrow_schema(name)
    missing = [f.name for f in schema if f.name not in columns]
    extra = [c for c in columns if c not in schema.names]
    if missing or extra:
        raise TableSchemaError(f"table {name}: missing columns {missing}, unexpected columns {extra}")
    arrays = []
    for field in schema:
        values = columns[field.name]
        if isinstance(values, np.ndarray) and values.ndim == 2:  # fixed-length vectors per row
            arrays.append(vector_array(values, field.type))
        else:
            arrays.append(values if isinstance(values, pa.Array) and values.type == field.type else pa.array(values, type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    if metadata is not None:
        table = table.replace_schema_metadata({"mtgan": json.dumps(metadata)})
    _check_values(table, name, f"table {name}")
    return table


ROW_GROUP_SIZE = 65536  # small enough that a reader filtering on image ids skips most of a big table
PARQUET_OPTIONS = {"compression": "zstd"}


def write_table(table: pa.Table, path: Path) -> None:
    with atomic.atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, **PARQUET_OPTIONS)


class TableWriter:
    """A table of schema `schemas/<name>` written to `path` in parts, as they come (`write`), in row
    groups of ROW_GROUP_SIZE rows: the memory of one row group whatever the table's size, and the
    same bytes as `write_table` of the whole table. Atomic: the file appears under its name when the
    `with` block ends without an error, never half-written.

    Parquet keeps the schema's metadata from the file's first byte on. Metadata that is known only
    at the end (counts) is set on `metadata` before the block ends: the row groups are then copied
    once into a file that carries it."""

    def __init__(self, path: Path, name: str, metadata: dict[str, Any]) -> None:
        self.path, self.name, self.metadata = Path(path), name, metadata
        self.rows = 0
        self._opened_with = json.dumps(metadata)
        self._pending: list[pa.Table] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> TableWriter:
        self._tmp = self._stack.enter_context(atomic.atomic_path(self.path))
        self._writer = pq.ParquetWriter(self._tmp, self._schema(self._opened_with), **PARQUET_OPTIONS)
        return self

    def _schema(self, metadata: str) -> pa.Schema:
        return arrow_schema(self.name).with_metadata({"mtgan": metadata})

    def write(self, columns: dict[str, Any]) -> None:
        """Append rows (columns as `make_table` takes them; values checked against the schema)."""
        part = make_table(columns, self.name)
        self.rows += part.num_rows
        self._pending.append(part)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        pending = pa.concat_tables(self._pending) if self._pending else None
        self._pending = []
        while pending is not None and pending.num_rows and (final or pending.num_rows >= ROW_GROUP_SIZE):
            group = pending.slice(0, ROW_GROUP_SIZE).combine_chunks()  # one contiguous array per column, as write_table's
            self._writer.write_table(group.replace_schema_metadata(None), row_group_size=ROW_GROUP_SIZE)
            pending = pending.slice(ROW_GROUP_SIZE)
        if pending is not None and pending.num_rows:
            self._pending = [pending]

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if kind is None:
                self._flush(final=True)
            self._writer.close()
            if kind is None and json.dumps(self.metadata) != self._opened_with:
                self._rewrite(json.dumps(self.metadata))
        finally:
            self._stack.__exit__(kind, error, trace)

    def _rewrite(self, metadata: str) -> None:
        """Copy the written row groups into a file whose schema carries `metadata`."""
        copy = atomic.temporary_file(self.path)
        try:
            source = pq.ParquetFile(self._tmp)
            with pq.ParquetWriter(copy, self._schema(metadata), **PARQUET_OPTIONS) as writer:
                for i in range(source.num_row_groups):
                    writer.write_table(source.read_row_group(i).replace_schema_metadata(None), row_group_size=ROW_GROUP_SIZE)
            os.replace(copy, self._tmp)
        finally:
            copy.unlink(missing_ok=True)


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Type equality that ignores the name of a list's item field (Parquet writers differ)."""
    if pa.types.is_list(a) and pa.types.is_list(b):
        return a.value_type == b.value_type
    return a == b


def _checked_schema(path: Path, name: str) -> pa.Schema:
    """The file's schema, checked against `schemas/<name>` (columns, types, the pipeline's metadata)."""
    try:
        found = pq.read_schema(path)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: table not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise TableSchemaError(f"{path}: not a readable Parquet file ({e})") from None
    expected = arrow_schema(name)
    if found.names != expected.names or not all(_same_type(a.type, b.type) for a, b in zip(found, expected)):
        raise TableSchemaError(f"{path}: does not match {name}: {column_differences(found, expected)}")
    if b"mtgan" not in (found.metadata or {}):
        raise TableSchemaError(
            f"{path}: has the columns of {name} but not the pipeline's metadata (categories, settings): rewritten by another "
            "program? Write it again with its stage"
        )
    return expected.with_metadata(found.metadata)


def _conformed(table: pa.Table, schema: pa.Schema, name: str, where: str) -> pa.Table:
    """`table` (some of `schema`'s columns) cast to the schema's types (only list item names can
    differ) and its values checked."""
    table = table.cast(pa.schema([schema.field(c) for c in table.column_names], metadata=schema.metadata))
    _check_values(table, name, where)
    return table


def read_table(path: Path, name: str, filters: Any = None, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (optionally only rows matching pyarrow `filters`, only `columns`) and
    check it against `schemas/<name>`."""
    schema = _checked_schema(path, name)
    try:
        table = pq.read_table(path, filters=filters, columns=columns, schema=None)
    except (pa.ArrowInvalid, OSError) as e:
        raise TableSchemaError(f"{path}: not a readable Parquet file ({e})") from None
    return _conformed(table, schema, name, str(path))


def iter_table(path: Path, name: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet file checked against `schemas/<name>`, read one row group at a time (only
    `columns`, each group's values checked): the memory of one row group whatever the table's size."""
    schema = _checked_schema(path, name)
    try:
        source = pq.ParquetFile(path)
        for i in range(source.num_row_groups):
            yield _conformed(source.read_row_group(i, columns=columns), schema, name, str(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise TableSchemaError(f"{path}: not a readable Parquet file ({e})") from None


def num_rows(path: Path) -> int:
    """The rows of a Parquet file, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


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


def checked_metadata(path: Path, name: str) -> dict[str, Any]:
    """The `mtgan` metadata of a Parquet file checked against `schemas/<name>` (columns, types, the
    pipeline's metadata there at all), without reading its rows."""
    return json.loads(_checked_schema(path, name).metadata[b"mtgan"])


def file_metadata(path: Path) -> dict[str, Any]:
    """The `mtgan` metadata of a Parquet file, without reading its rows."""
    raw = (pq.read_schema(path).metadata or {}).get(b"mtgan")
    return json.loads(raw) if raw else {}
