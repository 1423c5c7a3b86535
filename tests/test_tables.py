"""Typed tables: the schema fixes columns and types; bad values and bad files are named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.io.tables import TableSchemaError, make_table, read_table, table_metadata, write_table

SCHEMA = "detections.schema.yaml"


def columns(n: int = 3) -> dict:
    return {
        "image_id": np.arange(n),
        "rank": np.zeros(n, np.int32),
        "x1": np.zeros(n),
        "y1": np.zeros(n),
        "x2": np.ones(n),
        "y2": np.ones(n),
        "label": np.ones(n, np.int32),
        "category_id": np.full(n, 7),
        "score": np.full(n, 0.5),
        "probs": np.full((n, 3), 1 / 3),
    }


def test_round_trip_keeps_types_values_and_metadata(tmp_path: Path) -> None:
    table = make_table(columns(), SCHEMA, {"category_ids": [7, 9]})
    write_table(table, tmp_path / "t.parquet")
    back = read_table(tmp_path / "t.parquet", SCHEMA)
    assert back.schema.field("score").type == pa.float32() and back.schema.field("image_id").type == pa.int64()
    assert back.column("probs").to_pylist()[0] == pytest.approx([1 / 3] * 3)
    assert table_metadata(back) == {"category_ids": [7, 9]}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"score": np.array([0.5, 1.5, 0.1])}, "'score' has values above 1"),
        ({"label": np.array([1, 0, 1], np.int32)}, "'label' has values below 1"),
        ({"x1": np.array([0.0, np.nan, 0.0])}, "'x1' has non-finite values"),
    ],
)
def test_bad_values_are_named(change: dict, words: str) -> None:
    with pytest.raises(TableSchemaError, match=words):
        make_table({**columns(), **change}, SCHEMA)


def test_missing_or_extra_columns_are_named() -> None:
    cols = columns()
    cols.pop("score")
    cols["extra"] = [1, 2, 3]
    with pytest.raises(TableSchemaError, match=r"missing columns \['score'\], unexpected columns \['extra'\]"):
        make_table(cols, SCHEMA)


def test_a_file_with_other_types_is_rejected(tmp_path: Path) -> None:
    table = make_table(columns(), SCHEMA).cast(
        pa.schema([pa.field(f.name, pa.float64() if f.name == "score" else f.type, nullable=False) for f in make_table(columns(), SCHEMA).schema])
    )
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(TableSchemaError, match="t.parquet"):
        read_table(tmp_path / "t.parquet", SCHEMA)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(TableSchemaError, match="junk.parquet: not a readable Parquet file"):
        read_table(tmp_path / "junk.parquet", SCHEMA)
