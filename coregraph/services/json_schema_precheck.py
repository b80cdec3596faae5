"""A fast yes for the common shapes of JSON Schema (draft 2020-12): most payloads an edge app
emits meet their type's schema, and ``jsonschema`` spends ~50 µs proving it for a small object.

``compile_precheck(schema)`` turns a schema written only with the keywords below into one
Python function that answers True when an instance is valid, and False when it is not *or*
when it cannot tell; it returns None for a schema using anything else. A False always goes on
to ``jsonschema``, which decides and names the error. So a precheck may be stricter than
``jsonschema`` (that only costs time), never more lenient: every keyword here follows
``jsonschema``'s own implementation (``_keywords.py``, ``_types.py``: ``integer`` accepts
``2.0``, ``number`` refuses ``True``, ``format`` is an annotation without a format checker),
and ``tests/test_json_schema_precheck.py`` compares both on generated schemas and instances.

Supported: boolean schemas; ``type``; ``properties``, ``required``, ``additionalProperties``;
``items`` (without ``prefixItems``), ``minItems``, ``maxItems``; ``minLength``, ``maxLength``;
``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``; ``enum`` and ``const`` of
strings; and the annotations ``title``, ``description``, ``$comment``, ``examples``,
``default``, ``deprecated``, ``readOnly``, ``writeOnly``, ``format``, and ``$schema`` naming
draft 2020-12.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "$comment",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",
    }
)


class _Unsupported(Exception):
    pass


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_integer(value: Any) -> bool:
    kind = type(value)
    return kind is int or (kind is float and value.is_integer())


_TYPES: dict[str, Check] = {
    "object": lambda value: type(value) is dict,
    "array": lambda value: type(value) is list,
    "string": lambda value: type(value) is str,
    "number": _is_number,
    "integer": _is_integer,
    "boolean": lambda value: type(value) is bool,
    "null": lambda value: value is None,
}


def compile_precheck(schema: Any) -> Check | None:
    """A function saying True only for instances valid against ``schema``; None when the
    schema uses a keyword this module does not handle."""
    try:
        return _compile(schema, top=True)
    except _Unsupported:
        return None


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _Unsupported
    return value


def _bound(value: Any) -> int | float:
    if not _is_number(value):
        raise _Unsupported
    return value  # type: ignore[no-any-return]


def _compile(schema: Any, *, top: bool = False) -> Check:
    if schema is True:
        return lambda value: True
    if schema is False:
        return lambda value: False
    if type(schema) is not dict:
        raise _Unsupported
    checks: list[Check] = []
    for keyword, argument in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "$schema":
            if not top or argument != DRAFT_2020_12:
                raise _Unsupported
        elif keyword == "type":
            checks.append(_type(argument))
        elif keyword == "properties":
            checks.append(_properties(argument))
        elif keyword == "required":
            checks.append(_required(argument))
        elif keyword == "additionalProperties":
            checks.append(_additional_properties(argument, schema.get("properties", {})))
        elif keyword == "items":
            if "prefixItems" in schema:
                raise _Unsupported
            checks.append(_items(_compile(argument)))
        elif keyword in ("minItems", "maxItems"):
            checks.append(_length("array", keyword == "minItems", _count(argument)))
        elif keyword in ("minLength", "maxLength"):
            checks.append(_length("string", keyword == "minLength", _count(argument)))
        elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            checks.append(_numeric_bound(keyword, _bound(argument)))
        elif keyword == "enum":
            checks.append(_strings(argument))
        elif keyword == "const":
            checks.append(_strings([argument]))
        else:
            raise _Unsupported
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _type(argument: Any) -> Check:
    names = [argument] if type(argument) is str else argument
    if type(names) is not list or not names or any(name not in _TYPES for name in names):
        raise _Unsupported
    tests = [_TYPES[name] for name in names]
    if len(tests) == 1:
        return tests[0]
    return lambda value: any(test(value) for test in tests)


def _properties(argument: Any) -> Check:
    if type(argument) is not dict:
        raise _Unsupported
    compiled = [(name, _compile(subschema)) for name, subschema in argument.items()]

    def check(value: Any) -> bool:
        if type(value) is not dict:
            return True
        for name, subcheck in compiled:
            if name in value and not subcheck(value[name]):
                return False
        return True

    return check


def _required(argument: Any) -> Check:
    if type(argument) is not list or any(type(name) is not str for name in argument):
        raise _Unsupported
    names = tuple(argument)
    return lambda value: type(value) is not dict or all(name in value for name in names)


def _additional_properties(argument: Any, properties: Any) -> Check:
    if type(properties) is not dict:
        raise _Unsupported
    known = frozenset(properties)
    subcheck = _compile(argument)

    def check(value: Any) -> bool:
        if type(value) is not dict:
            return True
        return all(subcheck(item) for name, item in value.items() if name not in known)

    return check


def _items(subcheck: Check) -> Check:
    return lambda value: type(value) is not list or all(subcheck(item) for item in value)


def _length(kind: str, at_least: bool, limit: int) -> Check:
    applies = _TYPES[kind]
    if at_least:
        return lambda value: not applies(value) or len(value) >= limit
    return lambda value: not applies(value) or len(value) <= limit


def _numeric_bound(keyword: str, limit: int | float) -> Check:
    if keyword == "minimum":
        return lambda value: not _is_number(value) or value >= limit
    if keyword == "maximum":
        return lambda value: not _is_number(value) or value <= limit
    if keyword == "exclusiveMinimum":
        return lambda value: not _is_number(value) or value > limit
    return lambda value: not _is_number(value) or value < limit


def _strings(argument: Any) -> Check:
    # Only strings: jsonschema's equality for other values (1 vs 1.0 vs True, nested
    # containers) is its own, and a schema using it goes to jsonschema.
    if type(argument) is not list or any(type(item) is not str for item in argument):
        raise _Unsupported
    allowed = frozenset(argument)
    return lambda value: type(value) is str and value in allowed
