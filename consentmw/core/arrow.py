"""Arrow types of the stored columns, and typed Arrow tables built from column lists.

Both ends of the pipeline speak Arrow: the minimiser builds each purpose's table as Arrow
arrays, and the sink hands Arrow to ClickHouse (`insert_arrow`: no DESCRIBE per insert,
no per-value encoding in Python). The types come from the column vocabulary in `fields`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from consentmw.core.fields import BY_NAME, LEDGER_COLUMNS, Column

_LEDGER_TYPES = {c.name: c.ch_type for c in LEDGER_COLUMNS}


def arrow_type(ch_type: str) -> pa.DataType:
    """The Arrow type ClickHouse reads into a column of this ClickHouse type."""
    base = ch_type.split(" CODEC", 1)[0]
    if base.startswith("Nullable("):
        base = base[len("Nullable("):-1]
    if base.startswith("LowCardinality("):
        base = base[len("LowCardinality("):-1]
    if base.startswith("Array("):
        return pa.list_(arrow_type(base[len("Array("):-1]))
    if base.startswith("Map("):
        return pa.map_(pa.string(), pa.string())
    if base.startswith("DateTime64"):
        return pa.timestamp("ms", tz="UTC")
    return {
        "String": pa.string(), "UUID": pa.string(), "UInt16": pa.uint16(), "UInt32": pa.uint32(),
        "UInt64": pa.uint64(), "UInt8": pa.uint8(), "Float32": pa.float32(), "Bool": pa.bool_(),
        "IPv6": pa.binary(16),
    }[base]


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c.ch_type)) for c in columns])


def to_arrow(table: str, columns: dict[str, list[Any]]) -> pa.Table:
    """Column lists to an Arrow table typed from the schema vocabulary."""
    types = _LEDGER_TYPES if table == "consent_log" else None
    arrays = {}
    for name, values in columns.items():
        ch_type = types[name] if types is not None else BY_NAME[name].ch_type
        kind = arrow_type(ch_type)
        if pa.types.is_map(kind):
            arrays[name] = map_array(values, kind)
        else:
            arrays[name] = pa.array(values, type=kind)
    return pa.table(arrays)


def map_array(values: list[Any], kind: pa.DataType) -> pa.Array:
    """A Map column from dicts, built from flat keys/values (no per-row list of pairs)."""
    if any(v is None for v in values):
        return pa.array([None if v is None else list(v.items()) for v in values], type=kind)
    offsets = [0]
    keys: list[Any] = []
    items: list[Any] = []
    total = 0
    for v in values:
        if v:
            keys.extend(v.keys())
            items.extend(v.values())
            total += len(v)
        offsets.append(total)
    return pa.MapArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(keys, type=kind.key_type),
                                   pa.array(items, type=kind.item_type), type=kind)
