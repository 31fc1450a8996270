"""One function derives every Parquet schema from its pydantic model."""

from __future__ import annotations

import types
import typing
from datetime import date, datetime
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
    date: pa.date32(),
}


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """(arrow type, nullable) for one field annotation."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unions other than Optional[X] have no Parquet type: {annotation}")
        return _arrow_type(args[0])[0], True
    if origin is Literal:
        kinds = {type(v) for v in get_args(annotation)}
        if len(kinds) != 1:
            raise TypeError(f"mixed Literal has no Parquet type: {annotation}")
        return _SCALARS[kinds.pop()], False
    if origin is typing.Annotated:
        return _arrow_type(get_args(annotation)[0])
    if origin is dict:
        # key/value structs, not an Arrow map: Hugging Face `datasets` has no type for a map
        key, value = get_args(annotation)
        entry = pa.struct([pa.field("key", _arrow_type(key)[0]), pa.field("value", _arrow_type(value)[0])])
        return pa.list_(pa.field("item", entry, nullable=False)), False
    if origin is list:
        (item,) = get_args(annotation)
        return pa.list_(_field("item", item)), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(list(arrow_schema(annotation))), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"no Parquet type for {annotation!r}")


def _field(name: str, annotation: Any) -> pa.Field:
    dtype, nullable = _arrow_type(annotation)
    return pa.field(name, dtype, nullable=nullable)


@cache
def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow/Parquet schema of a record model: field order, types and nullability."""
    hints = typing.get_type_hints(model)
    return pa.schema([_field(name, hints[name]) for name in model.model_fields])


def to_table(model: type[BaseModel], records: typing.Iterable[BaseModel]) -> pa.Table:
    """Records → Arrow table with the model's schema (an empty iterable gives a zero-row table)."""
    rows = [r.model_dump(mode="python") for r in records]
    return pa.Table.from_pylist(rows, schema=arrow_schema(model))
