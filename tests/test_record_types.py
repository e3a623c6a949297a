"""The run record's TypedDicts (`dwlib.record_types`) say what `record.schema.json` says."""

from __future__ import annotations

import json
import types
from enum import StrEnum
from typing import Any, Literal, TypedDict, Union, get_args, get_origin, get_type_hints, is_typeddict

from dwlib.record import SCHEMA_FILE
from dwlib.record_types import RunRecordData

SCHEMA = json.loads(SCHEMA_FILE.read_text())
SIMPLE = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A schema as a list of one-type alternatives (anyOf and type lists flattened)."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        return [alt for branch in schema["anyOf"] for alt in _alternatives(branch)]
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return [{**schema, "type": kind} for kind in kinds]
    return [schema]


def _members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return list(get_args(annotation))
    return [annotation]


def _fits(alt: dict[str, Any], member: Any, where: str) -> list[str] | None:
    """None if `member` cannot stand for the schema alternative `alt`; else the problems found
    deeper (an empty list when it fits)."""
    if member is Any:
        return []
    if "const" in alt:
        return [] if member == Literal[alt["const"]] or member is type(alt["const"]) else None
    if "enum" in alt:
        if isinstance(member, type) and issubclass(member, StrEnum):
            values = {str(m) for m in member}
            return [] if values == set(alt["enum"]) else [f"{where}: {member.__name__} is {sorted(values)}, "
                                                          f"the schema {sorted(alt['enum'])}"]
        return [] if member is str else None
    kind = alt.get("type")
    if kind is None:
        return None
    if kind in SIMPLE:
        return [] if member is SIMPLE[kind] or (kind == "string" and isinstance(member, type)
                                                 and issubclass(member, StrEnum)) else None
    if kind == "array":
        if get_origin(member) is not list:
            return None
        return compare(alt["items"], get_args(member)[0], f"{where}[]") if "items" in alt else []
    if kind == "object":
        if is_typeddict(member):
            return compare_object(alt, member, where)
        if get_origin(member) is dict:
            extra = alt.get("additionalProperties")
            return compare(extra, get_args(member)[1], f"{where}.*") if isinstance(extra, dict) else []
        return None
    return None


def compare(schema: dict[str, Any], annotation: Any, where: str) -> list[str]:
    """What differs between a schema and a type: each alternative of one has a counterpart in the other."""
    alts, members = _alternatives(schema), _members(annotation)
    if alts == [{}] or (len(alts) == 1 and set(alts[0]) <= {"description"}):
        return [] if annotation is Any else [f"{where}: the schema says nothing, the type is {annotation}"]
    problems: list[str] = []
    matched: set[int] = set()
    for alt in alts:
        fits = [(i, _fits(alt, m, where)) for i, m in enumerate(members)]
        found = [(i, p) for i, p in fits if p is not None]
        if not found:
            problems.append(f"{where}: no type for the schema's {alt}")
            continue
        matched.update(i for i, _ in found)
        problems += found[0][1]
    problems += [f"{where}: {m} is not in the schema" for i, m in enumerate(members) if i not in matched]
    return problems


def compare_object(schema: dict[str, Any], typed: type, where: str) -> list[str]:
    """Keys and required keys agree (the schema's `required` may name keys it gives no property)."""
    hints = get_type_hints(typed)
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    name = typed.__name__
    keys = set(props) | required
    problems = [f"{where}.{k}: in the schema, not in {name}" for k in sorted(keys - set(hints))]
    problems += [f"{where}.{k}: in {name}, not in the schema" for k in sorted(set(hints) - keys)]
    if required != set(typed.__required_keys__):  # type: ignore[attr-defined]
        problems.append(f"{where}: required {sorted(required)} in the schema, "
                        f"{sorted(typed.__required_keys__)} in {typed.__name__}")  # type: ignore[attr-defined]
    for key in sorted(set(hints) & set(props)):
        problems += compare(props[key], hints[key], f"{where}.{key}")
    return problems


def test_the_typeddicts_are_the_schema() -> None:
    assert compare_object(SCHEMA, RunRecordData, "record") == []


def test_the_comparison_sees_a_difference() -> None:
    class Wrong(TypedDict):
        path: str
        sha256: int  # a string in the schema
        extra: str  # not in the schema

    problems = compare_object(SCHEMA["$defs"]["hashed_file"], Wrong, "f")
    assert problems == ["f.bytes: in the schema, not in Wrong", "f.extra: in Wrong, not in the schema",
                        "f: required ['path', 'sha256'] in the schema, ['extra', 'path', 'sha256'] in Wrong",
                        "f.sha256: no type for the schema's {'type': 'string', 'pattern': '^[0-9a-f]{64}$'}",
                        f"f.sha256: {int} is not in the schema"]

