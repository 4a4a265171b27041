"""Turning a raw record into a validated object: UTF-8, JSON, required string fields."""
from __future__ import annotations

import json
from typing import Any, Union

from .errors import BadRecord
from .inputs import RawRecord

Parsed = Union[str, dict]  # a .txt record is its text; others are objects


def parse(raw: RawRecord, fmt: str) -> Parsed:
    if fmt == "parquet":
        return raw.payload
    try:
        text = raw.payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord("invalid_utf8") from None
    if fmt == "txt":
        return text
    try:
        obj = json.loads(text)
    except ValueError:
        raise BadRecord("malformed_json") from None
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object")
    return obj


def text_field(obj: Parsed, name: str, required: bool = True) -> str | None:
    """A string field (or the whole text of a .txt record)."""
    if isinstance(obj, str):
        return obj
    value = obj.get(name)
    if value is None:
        if required:
            raise BadRecord(f"missing_field:{name}")
        return None
    if not isinstance(value, str):
        raise BadRecord(f"non_string_field:{name}")
    return value


def string_list_field(obj: Parsed, name: str, one_string: bool = True) -> list[str] | None:
    """A field holding a list of strings (or, where ``one_string``, one string); None when absent."""
    if isinstance(obj, str):
        return None
    value: Any = obj.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        if not one_string:  # "negatives": "a text" is a mistake for ["a text"] (or for "negative")
            raise BadRecord(f"non_list_field:{name}")
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadRecord(f"non_string_field:{name}")


def doc_id(obj: Parsed, id_field: str, location: str) -> str:
    """The record's id field when it has a usable one, else its file:line location."""
    if isinstance(obj, dict):
        value = obj.get(id_field)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return location
