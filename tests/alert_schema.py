"""The alert event schema (docs/alert-event.schema.json) and a small validator of the
keywords it uses (no extra dependency): shared by the unit tests of the event builders and
the integration tests, which check every event they receive."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "schema_errors"]

SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "docs" / "alert-event.schema.json").read_text()
)

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
}
_NOTES = {"$schema", "$id", "$defs", "title", "description", "format"}  # assert nothing


def schema_errors(value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (a subschema of :data:`SCHEMA`); empty when valid."""
    out: list[str] = []
    for key, rule in schema.items():
        if key in _NOTES:
            continue
        if key == "$ref":
            assert rule.startswith("#/$defs/"), f"only local refs: {rule}"
            out += schema_errors(value, SCHEMA["$defs"][rule.removeprefix("#/$defs/")], at)
        elif key == "type":
            types = [rule] if isinstance(rule, str) else rule
            if not any(_TYPES[t](value) for t in types):
                out.append(f"{at}: {value!r} is not of type {rule}")
        elif key == "const":
            if value != rule or type(value) is not type(rule):
                out.append(f"{at}: {value!r} is not {rule!r}")
        elif key == "enum":
            if value not in rule:
                out.append(f"{at}: {value!r} is not one of {rule}")
        elif key == "required":
            if isinstance(value, dict):
                out += [f"{at}: {k!r} is missing" for k in rule if k not in value]
        elif key == "properties":
            if isinstance(value, dict):
                for k, sub in rule.items():
                    if k in value:
                        out += schema_errors(value[k], sub, f"{at}.{k}")
        elif key == "items":
            if isinstance(value, list):
                for i, v in enumerate(value):
                    out += schema_errors(v, rule, f"{at}[{i}]")
        elif key in ("minimum", "maximum"):
            if _TYPES["number"](value) and (value < rule if key == "minimum" else value > rule):
                out.append(f"{at}: {value!r} breaks {key} {rule}")
        elif key in ("minLength", "maxLength"):
            if isinstance(value, str) and (
                len(value) < rule if key == "minLength" else len(value) > rule
            ):
                out.append(f"{at}: {value!r} breaks {key} {rule}")
        elif key == "pattern":
            if isinstance(value, str) and not re.search(rule, value):
                out.append(f"{at}: {value!r} does not match {rule}")
        elif key == "oneOf":
            fits = [i for i, sub in enumerate(rule) if not schema_errors(value, sub, at)]
            if len(fits) != 1:
                out.append(f"{at}: matches {len(fits)} of the oneOf branches, not 1")
        else:
            raise AssertionError(f"the schema uses {key!r}, which this validator does not check")
    return out
